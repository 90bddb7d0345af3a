// The store failure policy against a real PostgreSQL: a refused connection
// and an exhausted pool each answer 503 FST_SESSION_STORE_UNAVAILABLE within
// storeTimeout, and the same app serves again once the database is back.
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { build, cookieHeader, sessionCookie } from '../fixtures/app.js'
import { DATABASE_URL, requirePostgres } from '../fixtures/services.js'
import { startProxy } from '../fixtures/tcp-proxy.js'
import { captureLogs, WARN } from '../fixtures/log-capture.js'
import { freePort } from '../fixtures/redis-server.js'
import { createPostgresProvider, PostgresProvider } from '../../providers/postgres.js'

const STORE_TIMEOUT = 500
const json = { 'content-type': 'application/json' }

async function timed (app: FastifyInstance, request: InjectOptions): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = performance.now()
  const res = await app.inject(request)
  return { res, ms: performance.now() - started }
}

/** The exceptions nobody caught while `t` runs: an 'error' event without a listener lands there. */
function uncaughtDuring (t: Test): unknown[] {
  const uncaught: unknown[] = []
  const onUncaught = (err: unknown): void => { uncaught.push(err) }
  process.on('uncaughtException', onUncaught)
  t.teardown(() => process.off('uncaughtException', onUncaught))
  return uncaught
}

function table (): string {
  return `rel_pg_${randomBytes(6).toString('hex')}`
}

t.test('with PostgreSQL', async (t) => {
  if (!(await requirePostgres(t))) return
  const admin = new pg.Pool({ connectionString: DATABASE_URL, max: 2 })
  t.teardown(() => admin.end())
  const dropAfter = (name: string): void => { t.teardown(() => admin.query(`DROP TABLE IF EXISTS "${name}"`)) }

  t.test('a PostgreSQL that refuses connections answers 503 FST_SESSION_STORE_UNAVAILABLE within storeTimeout, and 200 once it is back', async (t) => {
    const proxy = await startProxy(t, DATABASE_URL, 5432)
    const tableName = table()
    dropAfter(tableName)
    const app = await build(t, { provider: 'postgres', providerOptions: { connectionString: proxy.url(DATABASE_URL), tableName }, storeTimeout: STORE_TIMEOUT })
    const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
    t.equal(login.statusCode, 200)
    const cookie = sessionCookie(login) as string

    await proxy.stop()
    const requests = [
      { name: 'a read of a stored session', request: { url: '/get/userId', headers: cookieHeader(cookie) } },
      { name: 'a write to a stored session', request: { method: 'POST' as const, url: '/set/a', payload: '1', headers: { ...json, ...cookieHeader(cookie) } } },
      { name: 'a login without a cookie', request: { method: 'POST' as const, url: '/login', payload: { user: 'bo' }, headers: json } },
      { name: 'a logout', request: { method: 'POST' as const, url: '/logout', headers: cookieHeader(cookie) } }
    ]
    for (const { name, request } of requests) {
      const { res, ms } = await timed(app, request)
      t.equal(res.statusCode, 503, name)
      t.equal(res.json().code, 'FST_SESSION_STORE_UNAVAILABLE', name)
      t.ok(ms <= STORE_TIMEOUT + 100, `${name}: 503 in ${Math.round(ms)} ms`)
      t.comment(`refused: ${name} → 503 in ${Math.round(ms)} ms`)
    }

    await proxy.start()
    const back = await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })
    t.equal(back.statusCode, 200, 'the pool connects again by itself')
    t.same(back.json(), { value: 'ada' }, 'the session outlived the outage')
    t.equal((await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, ...cookieHeader(cookie) } })).statusCode, 200)
  })

  t.test('a connection reset while the provider holds a pooled connection fails that call, and only that call: the process goes on', async (t) => {
    const uncaught = uncaughtDuring(t)
    const proxy = await startProxy(t, DATABASE_URL, 5432)
    const tableName = table()
    dropAfter(tableName)
    const provider = await createPostgresProvider({ connectionString: proxy.url(DATABASE_URL), tableName })
    t.teardown(() => provider.close())
    const now = Date.now()
    const record = { data: new Map([['a', '1']]), createdAt: now, lastSeenAt: now, expiresAt: now + 60_000, user: 'ada' }
    t.equal(await provider.create('old', record), true)

    proxy.cutOn = 'BEGIN' // inside the transaction of a replacing create
    await t.rejects(provider.create('new', record, 'old'))
    proxy.cutOn = 'pg_try_advisory_lock' // the sweep, on its own connection
    await t.rejects(provider.gc())
    proxy.cutOn = null
    t.equal(await provider.create('new', record, 'old'), true, 'the pool connects again, and the failed create had changed nothing')
    t.equal(await provider.gc(), 0)
    await sleep(50)
    t.same(uncaught, [], 'no uncaught exception')
  })

  t.test('a backend terminated just as the pool hands its connection over fails that call only: the process goes on', async (t) => {
    const uncaught = uncaughtDuring(t)
    const proxy = await startProxy(t, DATABASE_URL, 5432)
    // a pool with no connection yet: the sweep's connection is made, and killed, as it is handed over
    const pool = new pg.Pool({ connectionString: proxy.url(DATABASE_URL) })
    pool.on('error', () => {})
    t.teardown(() => pool.end())
    const tableName = table()
    dropAfter(tableName)
    await (await createPostgresProvider({ connectionString: DATABASE_URL, tableName })).close()
    const provider = new PostgresProvider({ pool, tableName })
    proxy.terminateWhenReady = true
    await t.rejects(provider.gc())
    await t.rejects(provider.destroyByUser('ada'))
    proxy.terminateWhenReady = false
    t.equal(await provider.destroyByUser('ada'), 0, 'the next connection works')
    await sleep(50)
    t.same(uncaught, [], 'no uncaught exception')
  })

  t.test('a connection lost while startup checks the table\'s columns fails startup with that failure', async (t) => {
    const proxy = await startProxy(t, DATABASE_URL, 5432)
    const tableName = table()
    dropAfter(tableName)
    await (await createPostgresProvider({ connectionString: DATABASE_URL, tableName })).close()
    proxy.cutOn = 'LIMIT 0'
    const err = await createPostgresProvider({ connectionString: proxy.url(DATABASE_URL), tableName }).catch((err: unknown) => err)
    t.type(err, Error)
    t.not((err as { code?: unknown }).code, 'FST_SESSION_INVALID_TABLE', 'not taken for a table of another shape')
  })

  t.test('connections that stop answering are dropped after queryTimeout, so the pool recovers and close() ends', async (t) => {
    const proxy = await startProxy(t, DATABASE_URL, 5432)
    const tableName = table()
    dropAfter(tableName)
    const provider = await createPostgresProvider({ connectionString: proxy.url(DATABASE_URL), tableName, queryTimeout: 300 })
    let closed = false
    t.teardown(async () => { if (!closed) await provider.close() })
    // every connection of the pool (10 at most) open, then all turned into black holes
    await Promise.all(Array.from({ length: 10 }, () => provider.get('x')))
    proxy.stallOpen()
    const started = performance.now()
    const stuck = Promise.allSettled(Array.from({ length: 10 }, () => provider.get('x')))
    const outcome = await Promise.race([stuck, sleep(3000, 'still waiting' as const)])
    t.not(outcome, 'still waiting', 'every call on a dead connection ends')
    if (outcome === 'still waiting') return
    t.ok(outcome.every((result) => result.status === 'rejected'), 'as a failure')
    t.comment(`calls on dead connections failed after ${Math.round(performance.now() - started)} ms`)
    t.equal(await provider.get('x'), null, 'new connections answer')
    const closing = performance.now()
    await provider.close()
    closed = true
    t.ok(performance.now() - closing < 1000, 'close() ends promptly')
  })

  t.test('a provider handed a pool on a closed port answers 503 within storeTimeout', async (t) => {
    const pool = new pg.Pool({ host: '127.0.0.1', port: await freePort(), user: 'postgres', database: 'test', max: 2 })
    t.teardown(() => pool.end())
    const { lines, logger } = captureLogs()
    const app = await build(t, { provider: new PostgresProvider({ pool }), storeTimeout: STORE_TIMEOUT }, { logger })
    const { res, ms } = await timed(app, { method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
    t.equal(res.statusCode, 503)
    t.equal(res.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
    t.match(lines.find((line) => line.level === WARN)?.msg, /ECONNREFUSED/, 'the log names the cause')
    t.ok(ms <= STORE_TIMEOUT, `503 in ${Math.round(ms)} ms`)
  })

  t.test('registering against a PostgreSQL that refuses connections fails promptly instead of hanging', async (t) => {
    const started = performance.now()
    await t.rejects(createPostgresProvider({ connectionString: `postgres://postgres@127.0.0.1:${await freePort()}/test` }), { code: 'ECONNREFUSED' })
    t.ok(performance.now() - started < 2000)
  })

  t.test('an exhausted pool answers 503 FST_SESSION_STORE_UNAVAILABLE at storeTimeout, and 200 once a client is released', async (t) => {
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 1 })
    t.teardown(() => pool.end())
    const tableName = table()
    dropAfter(tableName)
    const provider = await createPostgresProvider({ pool, tableName })
    const { lines, logger } = captureLogs()
    const app = await build(t, { provider, storeTimeout: STORE_TIMEOUT }, { logger })
    const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
    const cookie = sessionCookie(login) as string

    const held = await pool.connect()
    let released = false
    t.teardown(() => { if (!released) held.release() })
    const read = await timed(app, { url: '/get/userId', headers: cookieHeader(cookie) })
    t.equal(read.res.statusCode, 503)
    t.equal(read.res.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
    t.match(lines.find((line) => line.level === WARN)?.msg, new RegExp(`no answer within ${STORE_TIMEOUT} ms`), 'the log names the cause')
    t.ok(read.ms >= STORE_TIMEOUT - 5 && read.ms <= STORE_TIMEOUT + 400, `503 after ${Math.round(read.ms)} ms`)
    const fresh = await timed(app, { method: 'POST', url: '/login', payload: { user: 'bo' }, headers: json })
    t.equal(fresh.res.statusCode, 503, 'a new login waits for the pool too')
    t.comment(`exhausted pool: 503 after ${Math.round(read.ms)} and ${Math.round(fresh.ms)} ms; ${pool.waitingCount} abandoned queries still queued in the pool`)

    held.release()
    released = true
    // The queries abandoned at the timeout still run once a client is free;
    // the next request queues behind them.
    const after = await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })
    t.equal(after.statusCode, 200)
    t.same(after.json(), { value: 'ada' })
    await sleep(50)
    t.equal(pool.waitingCount, 0, 'nothing is left waiting once the pool is free')
  })
})

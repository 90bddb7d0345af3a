import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { inspect } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import pg from 'pg'
import { DATABASE_URL, requirePostgres } from '../fixtures/services.js'
import { createPostgresProvider, PostgresProvider, POSTGRES_PROVIDER } from '../../providers/postgres.js'
import type { PostgresProviderOptions } from '../../providers/postgres.js'
import { getProvider } from '../../lib/registry.js'
import { validateTableName } from '../../lib/sql.js'
import { testProvider } from '../../lib/testing.js'
import type { NewSession, SessionPatch } from '../../lib/provider.js'

const MINUTE = 60_000

function storeKey (): string {
  return randomBytes(32).toString('base64url')
}

function randomTable (): string {
  return 'sess_' + randomBytes(6).toString('hex')
}

function texts (data: Record<string, unknown>): Map<string, string> {
  return new Map(Object.entries(data).map(function toText ([name, value]) {
    return [name, JSON.stringify(value)]
  }))
}

function newSession (data: Record<string, unknown> = {}, extra: Partial<NewSession> = {}): NewSession {
  const now = Date.now()
  return { data: texts(data), createdAt: now, lastSeenAt: now, expiresAt: now + MINUTE, user: null, ...extra }
}

function expiredSession (data: Record<string, unknown> = {}, extra: Partial<NewSession> = {}): NewSession {
  const now = Date.now()
  return newSession(data, { createdAt: now - 2 * MINUTE, lastSeenAt: now - 2 * MINUTE, expiresAt: now - 1, ...extra })
}

function patch (changes: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + MINUTE, ...changes }
}

// Parsed, so that the expectations read as plain objects.
function values (data: ReadonlyMap<string, string> | undefined): Record<string, unknown> {
  return Object.fromEntries([...data ?? []].map(function parse ([name, json]) {
    return [name, JSON.parse(json)]
  }))
}

t.test('validateTableName', async function (t) {
  t.same(validateTableName('sessions', { schemaQualified: false }), { schema: null, table: 'sessions', quoted: '"sessions"' })
  t.same(validateTableName('App.Sessions', { schemaQualified: true }), { schema: 'App', table: 'Sessions', quoted: '"App"."Sessions"' })
  t.throws(() => validateTableName('app.sessions', { schemaQualified: false }), { code: 'FST_SESSION_INVALID_TABLE', message: /cannot be schema-qualified/ })
  t.throws(() => validateTableName('a.b.c', { schemaQualified: true }), { code: 'FST_SESSION_INVALID_TABLE', message: /at most one dot/ })
  t.throws(() => validateTableName(undefined, { schemaQualified: true }), { code: 'FST_SESSION_INVALID_TABLE', message: /must be a string/ })
  t.throws(() => validateTableName('.x', { schemaQualified: true }), { code: 'FST_SESSION_INVALID_TABLE' })
  t.ok(validateTableName('_' + 'a'.repeat(62), { schemaQualified: false }))
})

t.test('registers itself as "postgres"', async function (t) {
  t.equal(POSTGRES_PROVIDER, 'postgres')
  t.equal(getProvider('postgres'), createPostgresProvider)
})

t.test('option errors', async function (t) {
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 1 })
  t.teardown(() => pool.end())
  const bad: unknown[] = [
    undefined,
    {},
    { pool, connectionString: DATABASE_URL },
    { pool: null },
    { pool: {} },
    { connectionString: '' },
    { connectionString: 42 },
    { pool, createTable: 'yes' },
    { pool, gcBatchSize: 0 },
    { pool, gcBatchSize: 1.5 },
    { connectionString: DATABASE_URL, queryTimeout: 0 },
    { connectionString: DATABASE_URL, queryTimeout: 2 ** 31 },
    { connectionString: DATABASE_URL, queryTimeout: '5000' },
    { pool, queryTimeout: 1000 },
    { connectionString: DATABASE_URL, table: 'sessions' }
  ]
  for (const options of bad) {
    await t.rejects(createPostgresProvider(options as PostgresProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION' }, JSON.stringify(options))
  }
  t.equal(pool.totalCount, 0, 'no option error reaches the database')
})

/** What `call` settled with (the error, or 'answered'), or 'still waiting' after `ms`, and how long that took. */
async function settledWithin (call: Promise<unknown>, ms: number): Promise<{ outcome: unknown, ms: number }> {
  const started = performance.now()
  const outcome = await Promise.race([call.then(() => 'answered', (err: unknown) => err), sleep(ms, 'still waiting')])
  return { outcome, ms: performance.now() - started }
}

t.test('its own pool gives up on a server that accepts connections but never answers after about 2 s', { timeout: 30_000 }, async function (t) {
  const sockets = new Set<net.Socket>()
  const silent = net.createServer(function swallow (socket) {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.resume()
  })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  const { port } = silent.address() as net.AddressInfo
  const provider = new PostgresProvider({ connectionString: `postgres://postgres@127.0.0.1:${port}/test` })
  t.teardown(async function stop () {
    // the server's connections go first: should the pool wait on one for good, close() would too
    for (const socket of sockets) socket.destroy()
    silent.close()
    await provider.close()
  })
  const { outcome, ms } = await settledWithin(provider.get(storeKey()), 6000)
  t.match(outcome, { message: /timeout/ }, 'the call fails for want of a connection')
  t.comment(`failed after ${Math.round(ms)} ms`)
  t.ok(ms > 1500 && ms < 5000, `after the 2 s connection timeout, not before and not much later (${Math.round(ms)} ms)`)
  t.equal(sockets.size, 1, 'having reached the server')
})

t.test('with PostgreSQL', async function (t) {
  if (!(await requirePostgres(t))) return

  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 5 })
  t.teardown(() => pool.end())

  async function rowCount (table: string): Promise<number> {
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM ${table}`)
    return rows[0].n
  }

  function dropAfter (t: Test, table: string): void {
    t.teardown(async function drop () {
      await pool.query(`DROP TABLE IF EXISTS ${table}`)
    })
  }

  async function setup (t: Test, options: Partial<PostgresProviderOptions> = {}): Promise<{ provider: PostgresProvider, table: string }> {
    const table = options.tableName ?? randomTable()
    dropAfter(t, table)
    const provider = await createPostgresProvider({ pool, tableName: table, ...options })
    t.teardown(() => provider.close())
    return { provider, table }
  }

  const kitTable = randomTable()
  dropAfter(t, kitTable)
  testProvider(t, {
    name: 'postgres',
    create: () => createPostgresProvider({ pool, tableName: kitTable })
  })

  t.test('round trip and misses', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    const session = newSession({ name: 'Ada', cart: [1, 2.5, { x: null }], flag: true }, { user: 'u1' })
    t.equal(await provider.create(key, session), true)
    const got = await provider.get(key)
    t.same(values(got?.data), { name: 'Ada', cart: [1, 2.5, { x: null }], flag: true })
    t.equal(got?.createdAt, session.createdAt)
    t.equal(got?.lastSeenAt, session.lastSeenAt)
    t.equal(got?.expiresAt, session.expiresAt)

    const empty = storeKey()
    t.equal(await provider.create(empty, newSession()), true)
    t.equal((await provider.get(empty))?.data.size, 0)

    const missing = storeKey()
    t.equal(await provider.get(missing), null)
    t.equal(await provider.update(missing, patch()), false)
    t.equal(await provider.destroy(missing), false)
  })

  t.test('an expired row is invisible but stays until gc', async function (t) {
    const { provider, table } = await setup(t)
    const key = storeKey()
    t.equal(await provider.create(key, expiredSession({ a: 1 })), true)
    t.equal(await provider.get(key), null)
    t.equal(await provider.update(key, patch({ set: texts({ a: 2 }) })), false)
    t.same(await provider.listByUser('nobody', []), [])
    t.equal(await rowCount(table), 1, 'reads never delete')
    t.equal(await provider.gc(), 1)
    t.equal(await rowCount(table), 0)

    const other = storeKey()
    await provider.create(other, expiredSession())
    t.equal(await provider.destroy(other), false, 'destroying an expired row answers false')
    t.equal(await rowCount(table), 0, 'but removes it')
  })

  t.test('create never overwrites a live row but replaces an expired one', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    t.equal(await provider.create(key, newSession({ v: 'first' })), true)
    t.equal(await provider.create(key, newSession({ v: 'second' })), false)
    t.same(values((await provider.get(key))?.data), { v: 'first' })

    const stale = storeKey()
    await provider.create(stale, expiredSession({ v: 'old' }, { user: 'u' }))
    const fresh = newSession({ v: 'new' })
    t.equal(await provider.create(stale, fresh), true)
    const got = await provider.get(stale)
    t.same(values(got?.data), { v: 'new' })
    t.equal(got?.createdAt, fresh.createdAt)
    t.same(await provider.listByUser('u', []), [], 'the old owner does not carry over')
  })

  t.test('update after destroy does not resurrect', async function (t) {
    const { provider, table } = await setup(t)
    const key = storeKey()
    await provider.create(key, newSession({ a: 1 }))
    t.equal(await provider.destroy(key), true)
    t.equal(await provider.destroy(key), false)
    t.equal(await provider.update(key, patch({ set: texts({ a: 2 }) })), false)
    t.equal(await provider.update(key, patch()), false)
    t.equal(await rowCount(table), 0)
  })

  t.test('update applies only the keys it names', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    await provider.create(key, newSession({ a: 1, b: 2, c: 3 }, { user: 'u' }))

    const p1 = patch({ set: texts({ a: 10, d: { deep: [true] } }), delete: ['b', 'nope'] })
    t.equal(await provider.update(key, p1), true)
    let got = await provider.get(key)
    t.same(values(got?.data), { a: 10, c: 3, d: { deep: [true] } })
    t.equal(got?.lastSeenAt, p1.lastSeenAt)
    t.equal(got?.expiresAt, p1.expiresAt)

    t.equal(await provider.update(key, patch({ delete: ['a'] })), true)
    t.same(values((await provider.get(key))?.data), { c: 3, d: { deep: [true] } })

    t.equal(await provider.update(key, patch({ set: texts({ e: 'x' }), delete: ['e', 'c'] })), true)
    t.same(values((await provider.get(key))?.data), { d: { deep: [true] } }, 'a key both set and deleted ends up deleted')

    const touch = patch({ set: new Map(), delete: [], lastSeenAt: Date.now() + 5, expiresAt: Date.now() + 2 * MINUTE })
    t.equal(await provider.update(key, touch), true)
    got = await provider.get(key)
    t.same(values(got?.data), { d: { deep: [true] } })
    t.equal(got?.lastSeenAt, touch.lastSeenAt)
    t.equal(got?.expiresAt, touch.expiresAt)
    t.equal((await provider.listByUser('u', [])).length, 1, 'a patch without user keeps the owner')

    t.equal(await provider.update(key, patch({ user: 'v' })), true)
    t.same(await provider.listByUser('u', []), [])
    t.same((await provider.listByUser('v', [])).map((r) => r.key), [key])
    t.equal(await provider.update(key, patch({ user: null })), true)
    t.same(await provider.listByUser('v', []), [])

    t.equal(await provider.update(key, patch({ expiresAt: Date.now() - 1 })), true, 'a write may set a past deadline')
    t.equal(await provider.get(key), null)
  })

  t.test('concurrent updates of different keys all survive', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    await provider.create(key, newSession({ base: 0 }))
    const results = await Promise.all(Array.from({ length: 50 }, function write (_, i) {
      return provider.update(key, patch({ set: texts({ [`k${i}`]: i }) }))
    }))
    t.ok(results.every(Boolean))
    const expected: Record<string, number> = { base: 0 }
    for (let i = 0; i < 50; i++) expected[`k${i}`] = i
    t.same(values((await provider.get(key))?.data), expected)
  })

  t.test('create with replaces', async function (t) {
    const { provider, table } = await setup(t)
    const old = storeKey()
    const next = storeKey()
    await provider.create(old, newSession({ v: 'old' }))
    t.equal(await provider.create(next, newSession({ v: 'next' }), old), true)
    t.equal(await provider.get(old), null)
    t.same(values((await provider.get(next))?.data), { v: 'next' })
    t.equal(await rowCount(table), 1)

    const orphan = storeKey()
    t.equal(await provider.create(orphan, newSession(), storeKey()), false, 'a missing old row')
    t.equal(await provider.get(orphan), null, 'creates nothing')

    const expired = storeKey()
    await provider.create(expired, expiredSession())
    t.equal(await provider.create(orphan, newSession(), expired), false, 'an expired old row')
    t.equal(await provider.get(orphan), null)

    const taken = storeKey()
    await provider.create(taken, newSession({ v: 'taken' }))
    t.equal(await provider.create(taken, newSession({ v: 'mine' }), next), false, 'a live row under the new key')
    t.same(values((await provider.get(next))?.data), { v: 'next' }, 'keeps the old row')
    t.same(values((await provider.get(taken))?.data), { v: 'taken' })

    await t.rejects(provider.create(orphan, { ...newSession(), data: new Map([['nul\u0000', '1']]) }, next), { code: 'FST_SESSION_UNSUPPORTED' })
    t.same(values((await provider.get(next))?.data), { v: 'next' }, 'a refused replace keeps the old row')
    // the old row is deleted first; the insert then fails inside the transaction
    await t.rejects(provider.create(orphan, newSession({ v: 'orphan' }, { createdAt: NaN }), next), { code: '22P02' })
    t.same(values((await provider.get(next))?.data), { v: 'next' }, 'a replace failing midway keeps the old row')
    t.equal(await provider.get(orphan), null)
  })

  t.test('user index', async function (t) {
    const { provider } = await setup(t)
    const now = Date.now()
    const a = storeKey()
    const b = storeKey()
    const gone = storeKey()
    await provider.create(a, newSession({ name: 'laptop', ip: '1.2.3.4', secret: 's' }, { user: 'u', createdAt: now - 10 }))
    await provider.create(b, newSession({ name: 'phone' }, { user: 'u', createdAt: now - 5 }))
    await provider.create(gone, expiredSession({ name: 'old' }, { user: 'u' }))
    await provider.create(storeKey(), newSession({ name: 'other' }, { user: 'v' }))
    await provider.create(storeKey(), newSession({ name: 'anon' }))

    const list = await provider.listByUser('u', ['name', 'ip', 'missing'])
    t.same(list.map((r) => r.key), [a, b], 'live sessions only, oldest first')
    t.same(values(list[0].info), { name: 'laptop', ip: '1.2.3.4' })
    t.same(values(list[1].info), { name: 'phone' })
    t.equal(list[0].createdAt, now - 10)
    t.type(list[0].lastSeenAt, 'number')
    t.ok(list[0].expiresAt > now)
    t.equal((await provider.listByUser('u', []))[0].info.size, 0)
    t.same(await provider.listByUser('nobody', ['name']), [])

    t.equal(await provider.destroyByUser('u', a), 1, 'all but the current one, expired ones not counted')
    t.same((await provider.listByUser('u', [])).map((r) => r.key), [a])
    t.equal(await provider.destroyByUser('u'), 1)
    t.same(await provider.listByUser('u', []), [])
    t.equal(await provider.destroyByUser('u'), 0)
    t.equal((await provider.listByUser('v', [])).length, 1, 'other users untouched')
  })

  /** DATABASE_URL with its sessions defaulting to another isolation level, as `ALTER DATABASE ... SET` would make them. */
  function defaultingTo (level: string): string {
    const url = new URL(DATABASE_URL)
    url.searchParams.set('options', `-c default_transaction_isolation=${level.replace(' ', '\\ ')}`)
    return url.href
  }

  t.test('the provider\'s own pool runs at read committed on a database defaulting to serializable: concurrent writes to one session all land', async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    const provider = await createPostgresProvider({ connectionString: defaultingTo('serializable'), tableName: table })
    t.teardown(() => provider.close())
    const key = storeKey()
    await provider.create(key, newSession({ base: 0 }, { user: 'u' }))
    const writes = Array.from({ length: 30 }, function write (_, i) {
      return provider.update(key, patch({ set: texts({ [`k${i}`]: i }) }))
    })
    const results = await Promise.all([...writes, provider.destroyByUser('nobody')])
    t.same(results.slice(0, 30), Array(30).fill(true))
    t.equal(Object.keys(values((await provider.get(key))?.data)).length, 31)
  })

  const races = [
    { when: '', level: undefined, qualified: false },
    { when: ', on pools handed in whose database defaults to repeatable read', level: 'repeatable read', qualified: false },
    { when: ', when one instance names the table with its schema and the other without', level: undefined, qualified: true }
  ]
  for (const { when, level, qualified } of races) {
    t.test(`ending a user's sessions also ends the one a regenerate() is moving at that moment${when}`, async function (t) {
      const url = level === undefined ? DATABASE_URL : defaultingTo(level)
      const banningPool = new pg.Pool({ connectionString: url, max: 2 })
      t.teardown(() => banningPool.end())
      const table = randomTable()
      const { provider: banning } = await setup(t, { pool: banningPool, tableName: qualified ? `public.${table}` : table })
      // a second instance on the same table whose transactions stop before COMMIT until let go
      const moving = new pg.Pool({ connectionString: url, max: 2 })
      t.teardown(() => moving.end())
      let reachCommit: () => void = () => {}
      const atCommit = new Promise<void>((resolve) => { reachCommit = resolve })
      let letGo: () => void = () => {}
      const gate = new Promise<void>((resolve) => { letGo = resolve })
      moving.on('acquire', function holdCommit (client: pg.PoolClient & { held?: boolean }) {
        if (client.held === true) return
        client.held = true
        const query = client.query.bind(client) as (...args: unknown[]) => unknown
        Object.assign(client, {
          query (...args: unknown[]) {
            if (args[0] !== 'COMMIT') return query(...args)
            reachCommit()
            return gate.then(() => query(...args))
          }
        })
      })
      const regenerating = await createPostgresProvider({ pool: moving, tableName: table })
      t.teardown(() => regenerating.close())

      const before = storeKey()
      const after = storeKey()
      await banning.create(before, newSession({ n: 1 }, { user: 'u' }))
      const regenerated = regenerating.create(after, newSession({ n: 1 }, { user: 'u' }), before)
      await atCommit
      const banned = banning.destroyByUser('u')
      await sleep(200)
      letGo()
      t.equal(await regenerated, true, 'the move committed')
      t.equal(await banned, 1, 'and the session it moved was ended')
      t.equal(await banning.get(after), null)
      t.same(await banning.listByUser('u', []), [])
    })
  }

  t.test('a pg-compatible pool whose connect() answers with a promise, instead of the callback or as well', async function (t) {
    const real = new pg.Pool({ connectionString: DATABASE_URL, max: 2 })
    t.teardown(() => real.end())
    const wrappers = {
      'a promise only': { connect: () => real.connect() },
      both: {
        connect (callback: (err: Error | undefined, client?: pg.PoolClient) => void) {
          const connected = real.connect()
          connected.then((client) => callback(undefined, client), callback)
          return connected
        }
      }
    }
    for (const [name, wrapper] of Object.entries(wrappers)) {
      const pool = { query: real.query.bind(real), ...wrapper } as unknown as pg.Pool
      const { provider } = await setup(t, { pool })
      const before = storeKey()
      const after = storeKey()
      await provider.create(before, newSession({ n: 1 }, { user: 'u' }))
      t.equal(await provider.create(after, newSession({ n: 1 }, { user: 'u' }), before), true, `${name}: a regenerate`)
      t.equal(await provider.destroyByUser('u'), 1, `${name}: ending a user's sessions`)
      t.equal(await provider.gc(), 0, `${name}: a sweep`)
      t.equal(real.idleCount, real.totalCount, `${name}: every connection went back to the pool`)
    }
  })

  t.test('a failing delete of a user\'s sessions rejects, and its connection is not reused', async function (t) {
    const { provider, table } = await setup(t)
    await provider.create(storeKey(), newSession({ n: 1 }, { user: 'u' }))
    await pool.query(`DROP TABLE ${table}`)
    await t.rejects(provider.destroyByUser('u'), { code: '42P01' })
    await provider.prepare()
    t.equal(await provider.destroyByUser('u'), 0, 'the next call runs on a connection outside any transaction')
  })

  t.test('gc removes only expired rows, in batches', async function (t) {
    const { provider, table } = await setup(t, { gcBatchSize: 7 })
    t.equal(provider.gcBatchSize, 7)
    t.equal(await provider.gc(), 0)
    for (let i = 0; i < 20; i++) await provider.create(storeKey(), expiredSession())
    const live = [storeKey(), storeKey(), storeKey()]
    for (const key of live) await provider.create(key, newSession({ key }))
    t.equal(await provider.gc(), 20)
    t.equal(await rowCount(table), 3)
    for (const key of live) t.same(values((await provider.get(key))?.data), { key })

    for (let i = 0; i < 21; i++) await provider.create(storeKey(), expiredSession())
    t.equal(await provider.gc(), 21, 'an exact multiple of the batch size')
    t.equal(await provider.gc(), 0)
  })

  t.test('gc spares a row revived while it waits to delete it', async function (t) {
    const { provider, table } = await setup(t)
    const key = storeKey()
    await provider.create(key, expiredSession({ v: 'old' }))
    const other = await pool.connect()
    t.teardown(() => other.release())
    await other.query('BEGIN')
    await other.query(`UPDATE ${table} SET expires_at = $2 WHERE key = $1`, [key, Date.now() + MINUTE])
    const sweeping = provider.gc()
    for (let waiting = 0; waiting === 0; await sleep(10)) {
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM "${table}"%'`)
      waiting = rows[0].n
    }
    await other.query('COMMIT')
    t.equal(await sweeping, 0)
    t.equal(await rowCount(table), 1)
  })

  t.test('gc answers 0 while another instance holds the lock', async function (t) {
    const { provider, table } = await setup(t)
    for (let i = 0; i < 3; i++) await provider.create(storeKey(), expiredSession())
    const other = await pool.connect()
    t.teardown(() => other.release())
    await other.query('SELECT pg_advisory_lock($1::bigint)', [provider.gcLockKey])
    t.equal(await provider.gc(), 0)
    t.equal(await rowCount(table), 3)
    await other.query('SELECT pg_advisory_unlock($1::bigint)', [provider.gcLockKey])
    t.equal(await provider.gc(), 3)
    const { rows } = await other.query('SELECT pg_try_advisory_lock($1::bigint) AS locked', [provider.gcLockKey])
    t.equal(rows[0].locked, true, 'gc let go of the lock')
    await other.query('SELECT pg_advisory_unlock($1::bigint)', [provider.gcLockKey])
  })

  t.test('a failing gc rejects and leaves no lock behind', async function (t) {
    const { provider, table } = await setup(t)
    await pool.query(`DROP TABLE ${table}`)
    await t.rejects(provider.gc(), { code: '42P01' })
    const { rows } = await pool.query('SELECT pg_try_advisory_lock($1::bigint) AS locked, pg_advisory_unlock($1::bigint) AS unlocked', [provider.gcLockKey])
    t.same(rows[0], { locked: true, unlocked: true })
  })

  t.test('invalid table names', async function (t) {
    for (const tableName of ['a-b', '1x', 'a.b.c', 'x; drop', 'a'.repeat(64), '', 'a.', 'a b', 'é', 42]) {
      await t.rejects(createPostgresProvider({ pool, tableName: tableName as string }), { code: 'FST_SESSION_INVALID_TABLE' }, String(tableName))
    }
  })

  t.test('schema-qualified table', async function (t) {
    const schema = 'sch_' + randomBytes(6).toString('hex')
    await pool.query(`CREATE SCHEMA ${schema}`)
    t.teardown(() => pool.query(`DROP SCHEMA ${schema} CASCADE`))
    const { provider } = await setup(t, { tableName: `${schema}.Sessions` })
    const key = storeKey()
    await provider.create(key, newSession({ a: 1 }, { user: 'u' }))
    t.same(values((await provider.get(key))?.data), { a: 1 })
    const { rows } = await pool.query('SELECT indexname FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname', [schema])
    t.same(rows.map((r) => r.indexname), ['Sessions_expires_at_idx', 'Sessions_pkey', 'Sessions_user_id_idx'])

    const missing = 'nope_' + randomBytes(6).toString('hex')
    await t.rejects(createPostgresProvider({ pool, tableName: `${missing}.sessions` }), { code: '3F000' }, 'a missing schema is not created')
    await t.rejects(createPostgresProvider({ pool, tableName: `${missing}.sessions`, createTable: false }), { code: 'FST_SESSION_MISSING_TABLE' })
  })

  t.test('a table of that name without this provider\'s columns fails startup with FST_SESSION_INVALID_TABLE, and is left as it was', async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    await pool.query(`CREATE TABLE ${table} (sid text PRIMARY KEY, sess json NOT NULL, expire timestamp NOT NULL)`)
    await pool.query(`INSERT INTO ${table} VALUES ('a', '{}', now())`)
    await t.rejects(createPostgresProvider({ pool, tableName: table }), { code: 'FST_SESSION_INVALID_TABLE', message: new RegExp(`${table}.*column`) })
    t.same((await pool.query(`SELECT sid FROM ${table}`)).rows, [{ sid: 'a' }])
  })

  t.test('createTable: false', async function (t) {
    const table = randomTable()
    await t.rejects(createPostgresProvider({ pool, tableName: table, createTable: false }), { code: 'FST_SESSION_MISSING_TABLE', message: new RegExp(table) })
    t.equal((await pool.query('SELECT to_regclass($1) AS t', [table])).rows[0].t, null, 'nothing created')
    const { provider: first } = await setup(t, { tableName: table })
    const key = storeKey()
    await first.create(key, newSession({ a: 1 }))
    const second = await createPostgresProvider({ pool, tableName: table, createTable: false })
    t.equal(second.createTable, false)
    t.same(values((await second.get(key))?.data), { a: 1 })
  })

  t.test('providers created concurrently on a new table', async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    const providers = await Promise.all(Array.from({ length: 6 }, function start () {
      return createPostgresProvider({ connectionString: DATABASE_URL, tableName: table })
    }))
    t.teardown(() => Promise.all(providers.map((p) => p.close())))
    const key = storeKey()
    await providers[0].create(key, newSession({ a: 1 }))
    for (const provider of providers) t.same(values((await provider.get(key))?.data), { a: 1 })
    const { rows } = await pool.query('SELECT indexname FROM pg_indexes WHERE tablename = $1 ORDER BY indexname', [table])
    t.same(rows.map((r) => r.indexname), [`${table}_expires_at_idx`, `${table}_pkey`, `${table}_user_id_idx`])
    const comment = await pool.query('SELECT obj_description($1::regclass, \'pg_class\') AS c', [table])
    t.equal(comment.rows[0].c, 'fastify-sessions schema version 1')
  })

  t.test('tables in one schema each get their own indexes', async function (t) {
    const prefix = 's' + randomBytes(6).toString('hex')
    // Long enough that PostgreSQL has to shorten the index names.
    const tables = [prefix + 'x'.repeat(49) + 'a', prefix + 'x'.repeat(49) + 'b', randomTable()]
    for (const table of tables) {
      t.equal(table.length <= 63, true)
      const { provider } = await setup(t, { tableName: table })
      const key = storeKey()
      await provider.create(key, newSession({}, { user: 'u' }))
      t.equal((await provider.listByUser('u', [])).length, 1)
    }
    const names = new Set<string>()
    for (const table of tables) {
      const { rows } = await pool.query('SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1', [table])
      t.same(rows.map((r) => r.indexdef.replace(/^.* USING /, '')).sort(), [
        'btree (expires_at)',
        'btree (key)',
        'btree (user_id) WHERE (user_id IS NOT NULL)'
      ], `${table} has all its indexes`)
      for (const row of rows) names.add(row.indexname)
    }
    t.equal(names.size, 9, 'under names of their own')
  })

  t.test('pool ownership and close', async function (t) {
    const { provider } = await setup(t)
    await provider.close()
    await provider.close()
    t.equal((await pool.query('SELECT 1 AS one')).rows[0].one, 1, 'an injected pool stays open')
    t.equal(await provider.get(storeKey()), null, 'and the provider still works with it')

    const table = randomTable()
    dropAfter(t, table)
    const own = await createPostgresProvider({ connectionString: DATABASE_URL, tableName: table })
    await own.get(storeKey())
    await Promise.all([own.close(), own.close()])
    await own.close()
    await t.rejects(own.get(storeKey()), 'its own pool is ended')
  })

  t.test('its own pool, with the password in the connection string, is not shown by inspect() or JSON', async function (t) {
    const url = new URL(DATABASE_URL)
    url.password = 'pw-never-shown'
    const table = randomTable()
    dropAfter(t, table)
    const own = await createPostgresProvider({ connectionString: url.href, tableName: table })
    t.teardown(() => own.close())
    t.equal(await own.get(storeKey()), null, 'the pool works')
    t.notMatch(inspect(own, { depth: 20 }), 'pw-never-shown')
    t.notMatch(JSON.stringify(own), 'pw-never-shown')
  })

  t.test('persistence across provider instances', async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    const key = storeKey()
    const writer = await createPostgresProvider({ connectionString: DATABASE_URL, tableName: table })
    await writer.create(key, newSession({ kept: 'yes' }, { user: 'u' }))
    await writer.close()
    const reader = await createPostgresProvider({ connectionString: DATABASE_URL, tableName: table })
    t.teardown(() => reader.close())
    t.same(values((await reader.get(key))?.data), { kept: 'yes' })
    t.equal((await reader.listByUser('u', [])).length, 1)
  })

  t.test('a second instance on the same table sees the first one\'s writes', async function (t) {
    const { provider: one, table } = await setup(t)
    const { provider: two } = await setup(t, { tableName: table })
    const key = storeKey()
    await one.create(key, newSession({ n: 1 }))
    t.same(values((await two.get(key))?.data), { n: 1 })
    await two.update(key, patch({ set: texts({ m: 2 }) }))
    t.same(values((await one.get(key))?.data), { n: 1, m: 2 })
    t.equal(await one.create(key, newSession()), false)
    t.equal(await two.destroy(key), true)
    t.equal(await one.get(key), null)
  })

  t.test('unicode and large values', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    const big = '€'.repeat(400_000) // 1.2 MB of UTF-8
    const list = Array.from({ length: 30_000 }, (_, i) => ({ i, s: 'ü' + i }))
    const data = { ключ: 'значение', '😀': '🎉 ok', 'ä"\\\n': ['日本語', '\u2028'], big, list }
    await provider.create(key, newSession(data))
    t.same(values((await provider.get(key))?.data), data)
    await provider.update(key, patch({ set: texts({ '🔑': big + '!' }) }))
    const got = values((await provider.get(key))?.data)
    t.equal(got['🔑'], big + '!')
    t.equal(got.big, big)
  })

  t.test('a key named __proto__ round-trips without pollution', async function (t) {
    const { provider } = await setup(t)
    const key = storeKey()
    await provider.create(key, { ...newSession(), data: new Map([['__proto__', '{"polluted":true}'], ['constructor', '1']]) })
    await provider.update(key, patch({ set: new Map([['__proto__', '{"polluted":"again"}']]) }))
    const got = await provider.get(key)
    t.same(JSON.parse(got?.data.get('__proto__') as string), { polluted: 'again' })
    t.equal(got?.data.get('constructor'), '1')
    t.equal(({} as Record<string, unknown>).polluted, undefined)
    t.equal(Object.hasOwn(Object.prototype, 'polluted'), false)
  })

  t.test('JSON texts come back verbatim', async function (t) {
    const { provider, table } = await setup(t)
    const key = storeKey()
    const data = new Map([
      ['o', '{"b":1,"a":{"y":2,"x":1},"a":3}'],
      ['n', '1.50e0'],
      ['e', '"\\u00e9 \\/ \\u0000 \\ud800"'],
      ['s', ' [ 1 , 2 ] ']
    ])
    await provider.create(key, { ...newSession(), data })
    t.same((await provider.get(key))?.data, data)
    await provider.update(key, patch({ set: new Map([['n', '2.0'], ['x', '{ }']]) }))
    t.same((await provider.get(key))?.data, new Map([...data, ['n', '2.0'], ['x', '{ }']]))
    t.same((await provider.listByUser('nobody', ['o'])), [])
    const { rows } = await pool.query(`SELECT (data ->> 'o')::jsonb -> 'a' AS a FROM ${table}`)
    t.equal(rows[0].a, 3, 'the values stay queryable as JSON')
  })

  t.test('keys and owners PostgreSQL cannot hold are refused with a coded error, and deleting or looking them up finds nothing', async function (t) {
    const { provider, table } = await setup(t)
    const unsupported = { code: 'FST_SESSION_UNSUPPORTED' }
    await t.rejects(provider.create(storeKey(), { ...newSession(), data: new Map([['nul\u0000', '1']]) }), unsupported, 'a key holding NUL')
    await t.rejects(provider.create(storeKey(), { ...newSession(), data: new Map([['lone\ud800', '1']]) }), unsupported, 'a key holding a lone surrogate')
    await t.rejects(provider.create(storeKey(), newSession({ a: 1 }, { user: 'al\u0000ice' })), unsupported, 'an owner holding NUL')
    t.equal(await rowCount(table), 0, 'none of which stored anything')
    const key = storeKey()
    await provider.create(key, newSession({ a: 1 }, { user: 'alice' }))
    await t.rejects(provider.update(key, patch({ set: texts({ 'b\u0000': 2 }) })), unsupported, 'a patch setting such a key')
    await t.rejects(provider.update(key, patch({ user: 'bo\u0000b' })), unsupported, 'a patch naming such an owner')
    t.equal(await provider.update(key, patch({ delete: ['a\u0000', 'x\ud800'] })), true, 'deleting such keys is only a touch')
    t.same(values((await provider.get(key))?.data), { a: 1 }, 'and changes nothing')
    t.equal(await provider.update(key, patch({ delete: ['a', 'a\u0000'] })), true)
    t.same(values((await provider.get(key))?.data), {}, 'the storable key beside it is deleted')
    await provider.update(key, patch({ set: texts({ name: 'laptop' }) }))
    t.same((await provider.listByUser('alice', ['name', 'n\u0000'])).map((r) => values(r.info)), [{ name: 'laptop' }], 'an info key holding NUL shows nothing')
    t.same(await provider.listByUser('al\u0000ice', ['name']), [], 'nobody owns under such a name')
    t.equal(await provider.destroyByUser('al\u0000ice'), 0)
    t.equal(await provider.destroy(key, 'al\u0000ice'), false, 'nor deletes under such a name')
    t.equal(await rowCount(table), 1)
  })

  t.test('an unreachable database rejects instead of hanging', async function (t) {
    const refused = new pg.Pool({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'test', max: 1 })
    t.teardown(() => refused.end())
    const provider = new PostgresProvider({ pool: refused })
    await t.rejects(provider.get(storeKey()), { code: 'ECONNREFUSED' })
    await t.rejects(provider.update(storeKey(), patch()), { code: 'ECONNREFUSED' })
    await t.rejects(provider.gc(), { code: 'ECONNREFUSED' })
    await t.rejects(createPostgresProvider({ pool: refused }), { code: 'ECONNREFUSED' })
    await t.rejects(createPostgresProvider({ connectionString: 'postgres://postgres@127.0.0.1:1/test' }), { code: 'ECONNREFUSED' })
  })

  t.test('a call finding every connection of its own pool taken fails after about 2 s instead of queueing on', { timeout: 30_000 }, async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    // a statement timeout far off, so that only the wait for a connection can end the call
    const provider = await createPostgresProvider({ connectionString: DATABASE_URL, tableName: table, queryTimeout: MINUTE })
    const key = storeKey()
    await provider.create(key, newSession({ n: 0 }))
    // the row locked by a transaction held open here, so that each update of it keeps its connection waiting
    const holder = await pool.connect()
    await holder.query('BEGIN')
    await holder.query(`UPDATE ${table} SET last_seen_at = last_seen_at WHERE key = $1`, [key])
    let holding = true
    t.teardown(async function letGo () {
      if (holding) await holder.query('ROLLBACK')
      holder.release()
      await provider.close()
    })
    // as many as pg.Pool's default max, which the provider's own pool keeps
    const waiting = Array.from({ length: 10 }, (_, i) => provider.update(key, patch({ set: texts({ [`k${i}`]: i }) })))
    for (let locked = 0; locked < 10; await sleep(10)) {
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE "${table}"%'`)
      locked = rows[0].n
    }
    const { outcome, ms } = await settledWithin(provider.get(key), 6000)
    t.match(outcome, { message: /timeout/ }, 'the call fails for want of a connection')
    t.comment(`failed after ${Math.round(ms)} ms`)
    t.ok(ms > 1500 && ms < 5000, `after the 2 s connection timeout, not before and not much later (${Math.round(ms)} ms)`)
    await holder.query('COMMIT')
    holding = false
    t.same(await Promise.all(waiting), Array(10).fill(true), 'the updates that held the connections go through once the row is free')
    t.equal((await provider.get(key))?.data.size, 11, 'and the pool serves calls again')
  })

  t.test('its own pool survives the server dropping an idle connection', async function (t) {
    const table = randomTable()
    dropAfter(t, table)
    const name = 'fss_' + randomBytes(6).toString('hex')
    const url = new URL(DATABASE_URL)
    url.searchParams.set('application_name', name)
    const provider = await createPostgresProvider({ connectionString: url.href, tableName: table })
    t.teardown(() => provider.close())
    t.equal(await provider.get(storeKey()), null)
    const { rows } = await pool.query('SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1', [name])
    t.equal(rows[0].n, 1)
    await sleep(100)
    t.equal(await provider.get(storeKey()), null, 'the next query gets a new connection')
  })
})

// A real Redis outage under load: a private redis-server is SIGKILLed in the
// middle of a run of logins and writes and restarted on the same port from
// its append-only file. The plugin must keep the process alive, answer every
// request with 200 or 503 in bounded time, never acknowledge a write that
// did not reach Redis, and serve again once Redis is back.
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import { build, cookieHeader, SECRET } from '../fixtures/app.js'
import { freePort, RedisServer, requireRedisServer } from '../fixtures/redis-server.js'
import { CookieSigner } from '../../lib/cookie.js'
import { generateId, storeKey } from '../../lib/id.js'
import '../../providers/redis.js'

const STORE_TIMEOUT = 1000
/** A request still unanswered after this long counts as hung. */
const HANG_MS = 5000
const WORKERS = 10
const TARGET_REQUESTS = 300
/** Requests still to run once Redis is back, so recovery is seen under load. */
const MIN_AFTER_RESTART = 60
const HARD_CAP = 450
const MAX_RUN_MS = 20_000
/** Each worker waits this long between its requests: about 65 requests a second in all. */
const PACE_MS = 150
const KILL_AFTER_REQUESTS = 80
const DOWN_MS = 1500

type Phase = 'before' | 'down' | 'after'

interface Outcome {
  kind: 'login' | 'write'
  phase: Phase
  status: number | 'hang' | 'error'
  ms: number
  detail?: string
}

interface AckedWrite {
  key: string
  value: string
  /** The session cookie in force after the response: the one it set, or the one sent. */
  cookie: string
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? NaN : sorted[Math.floor(sorted.length / 2)]
}

function sessionCookieOf (headers: Headers): string | null {
  for (const header of headers.getSetCookie()) {
    const match = /^sessionid=([^;]*)/.exec(header)
    if (match !== null) return match[1] === '' ? null : match[1]
  }
  return null
}

const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))

t.test('a Redis SIGKILLed and restarted mid-load: no crash, only 200 or 503, every acknowledged write survives, and traffic is served again', async (t) => {
  if (!requireRedisServer(t)) return
  const dir = mkdtempSync(path.join(tmpdir(), 'fastify-sessions-outage-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // AOF on, so that a restarted server has its data back, and
  // `appendfsync always`, so that Redis writes and fsyncs the AOF before it
  // replies: "acknowledged means durable" holds for every reply, even across
  // a machine crash, instead of up to a second of acknowledged writes being
  // at the mercy of the page cache (everysec). Without AOF, the fixture's
  // default, the restart would come back empty and the check below that every
  // 200 write survives would fail.
  const server = new RedisServer(await freePort(), ['--appendonly', 'yes', '--appendfsync', 'always'], dir)
  t.teardown(() => server.stop())
  await server.start()

  const rejections: unknown[] = []
  const onRejection = (reason: unknown): void => { rejections.push(reason) }
  process.on('unhandledRejection', onRejection)
  t.teardown(() => { process.off('unhandledRejection', onRejection) })

  const app = await build(t, { provider: 'redis', providerOptions: { url: server.url }, storeTimeout: STORE_TIMEOUT })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  let phase: Phase = 'before'
  let issued = 0
  let afterRestart = 0
  const outcomes: Outcome[] = []
  const acked: AckedWrite[] = []
  const deadline = Date.now() + MAX_RUN_MS

  async function send (kind: Outcome['kind'], url: string, body: unknown, cookie: string | null): Promise<{ status: number | 'hang' | 'error', cookie: string | null }> {
    const started = performance.now()
    const at = phase
    try {
      const res = await fetch(base + url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(cookie === null ? {} : cookieHeader(cookie)) },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(HANG_MS)
      })
      const text = await res.text()
      outcomes.push({ kind, phase: at, status: res.status, ms: performance.now() - started, detail: res.status === 200 ? undefined : text })
      if (at === 'after') afterRestart++
      return { status: res.status, cookie: sessionCookieOf(res.headers) }
    } catch (err) {
      const status = (err as Error).name === 'TimeoutError' ? 'hang' : 'error'
      outcomes.push({ kind, phase: at, status, ms: performance.now() - started, detail: String(err) })
      return { status, cookie: null }
    }
  }

  function more (): boolean {
    if (Date.now() > deadline || issued >= HARD_CAP) return false
    return issued < TARGET_REQUESTS || phase !== 'after' || afterRestart < MIN_AFTER_RESTART
  }

  async function worker (w: number): Promise<void> {
    let cookie: string | null = null
    let sinceLogin = 0
    let n = 0
    while (more()) {
      issued++
      if (cookie === null || sinceLogin >= 15) {
        // A new visitor logs in: no cookie, so a fresh session.
        const res = await send('login', '/login', { user: `user-${w}-${n}` }, null)
        cookie = res.status === 200 ? res.cookie : null
        sinceLogin = 0
      } else {
        const key = `k-${w}-${n}`
        const value = `v-${w}-${n}-${generateId()}`
        const res = await send('write', `/set/${key}`, value, cookie)
        if (res.status === 200) {
          if (res.cookie !== null) cookie = res.cookie
          acked.push({ key, value, cookie })
        }
        sinceLogin++
      }
      n++
      await sleep(PACE_MS)
    }
  }

  const chaos = (async function killAndRestart (): Promise<{ killedAt: number, restartedAt: number }> {
    const killAt = Date.now() + MAX_RUN_MS / 2
    // `issued` is advanced by the workers meanwhile
    while (Date.now() < killAt) {
      if (issued >= KILL_AFTER_REQUESTS) break
      await sleep(10)
    }
    await server.stop()
    phase = 'down'
    const killedAt = performance.now()
    await sleep(DOWN_MS)
    await server.start()
    phase = 'after'
    return { killedAt, restartedAt: performance.now() }
  })()

  const started = performance.now()
  await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)))
  const { killedAt, restartedAt } = await chaos
  const elapsed = performance.now() - started

  const count = (predicate: (o: Outcome) => boolean): number => outcomes.filter(predicate).length
  const unavailable = outcomes.filter((o) => o.status === 503)
  const latencies = outcomes.map((o) => o.ms)
  t.comment(`${outcomes.length} requests in ${Math.round(elapsed)} ms, Redis down ${Math.round(restartedAt - killedAt)} ms`)
  for (const at of ['before', 'down', 'after'] as const) {
    t.comment(`  ${at}: ${count((o) => o.phase === at && o.status === 200)} × 200, ${count((o) => o.phase === at && o.status === 503)} × 503`)
  }
  t.comment(`time to 503: median ${Math.round(median(unavailable.map((o) => o.ms)))} ms, max ${Math.round(Math.max(...unavailable.map((o) => o.ms)))} ms; slowest request ${Math.round(Math.max(...latencies))} ms`)
  t.comment(`${acked.length} writes acknowledged with 200`)

  t.same(rejections, [], 'no unhandled rejection')
  t.ok(outcomes.length >= TARGET_REQUESTS, `at least ${TARGET_REQUESTS} requests ran`)
  t.same(outcomes.filter((o) => o.status !== 200 && o.status !== 503), [], 'every request finished, with 200 or 503: no 500, no hang')
  t.ok(unavailable.length > 0, 'the outage was seen: some requests got 503')
  t.same([...new Set(unavailable.map((o) => JSON.parse(o.detail as string).code))], ['FST_SESSION_STORE_UNAVAILABLE'], 'every 503 carries the store code')
  t.ok(Math.max(...latencies) < STORE_TIMEOUT + 1000, 'no request waited much past storeTimeout')
  t.ok(count((o) => o.phase === 'after' && o.status === 200) > 0, 'requests after the restart succeed')
  t.ok(acked.length > 100, 'enough acknowledged writes to mean something')

  // Every acknowledged write, read back through the app with the cookie the
  // client held after it...
  const lost: AckedWrite[] = []
  for (const write of acked) {
    const res = await app.inject({ url: `/get/${write.key}`, headers: cookieHeader(write.cookie) })
    if (res.statusCode !== 200 || res.json().value !== write.value) lost.push(write)
  }
  t.same(lost, [], 'every write that got a 200 is read back through the app')
  // ...and straight from Redis, where the session hash holds it under d<key>.
  const direct = new Redis(server.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => direct.disconnect())
  const missing: AckedWrite[] = []
  for (const write of acked) {
    const stored = await direct.hget(`sess:{${storeKey(decodeURIComponent(idOf(write.cookie)))}}`, `d${write.key}`)
    if (stored !== JSON.stringify(write.value)) missing.push(write)
  }
  t.same(missing, [], 'every write that got a 200 is in Redis')

  // New traffic is served: a new visitor logs in, writes and reads.
  const login = await send('login', '/login', { user: 'after' }, null)
  t.equal(login.status, 200)
  const write = await send('write', '/set/fresh', 'yes', login.cookie)
  t.equal(write.status, 200)
  const read = await app.inject({ url: '/get/fresh', headers: cookieHeader(login.cookie as string) })
  t.same(read.json(), { value: 'yes' })
})

t.test('the app boots while its Redis is down, answers 503 where it needs the store, and 200 once Redis starts', async (t) => {
  const port = await freePort()
  const app = await build(t, { provider: 'redis', providerOptions: { url: `redis://127.0.0.1:${port}` }, storeTimeout: STORE_TIMEOUT })
  await app.ready()
  t.pass('registered and ready with nothing listening on the Redis port')

  t.equal((await app.inject('/none')).statusCode, 200, 'a request without a cookie that writes nothing needs no store')

  let started = performance.now()
  const write = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { 'content-type': 'application/json' } })
  const writeMs = performance.now() - started
  t.equal(write.statusCode, 503, 'a write needs the store')
  t.equal(write.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.ok(writeMs < STORE_TIMEOUT + 500, `the write failed in ${Math.round(writeMs)} ms`)

  const planted = new CookieSigner([SECRET]).sign(generateId())
  started = performance.now()
  const read = await app.inject({ url: '/get/a', headers: cookieHeader(planted) })
  const readMs = performance.now() - started
  t.equal(read.statusCode, 503, 'a request with a signed cookie needs the store to load it')
  t.ok(readMs < STORE_TIMEOUT + 500, `the read failed in ${Math.round(readMs)} ms`)
  t.comment(`time to 503 with nothing listening: write ${Math.round(writeMs)} ms, read ${Math.round(readMs)} ms`)

  if (!requireRedisServer(t)) return
  const server = new RedisServer(port)
  t.teardown(() => server.stop())
  await server.start()
  const until = Date.now() + 5000
  let res = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { 'content-type': 'application/json' } })
  while (res.statusCode !== 200 && Date.now() < until) {
    await sleep(100)
    res = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { 'content-type': 'application/json' } })
  }
  t.equal(res.statusCode, 200, 'served once Redis is up')
  const cookie = /^sessionid=([^;]*)/.exec(String(res.headers['set-cookie']))?.[1] as string
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: 1 })
  t.equal((await app.inject({ url: '/get/a', headers: cookieHeader(planted) })).statusCode, 200, 'an unknown cookie is no session again, not an error')
})

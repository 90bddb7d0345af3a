// Resources: the memory provider under a flood of new sessions stays within
// maxSessions and a bounded heap, and fastify.close() releases everything the
// plugin started, so that the process exits on its own. Both run in child
// processes: the heap is measured after full collections (--expose-gc) with
// nothing else in the process, and "exits on its own" can only be seen from
// outside.
//
// The flood is 100,000 requests by default (about 10 s); SOAK=1 makes it
// 1,000,000 (about 70 s on two cores), past tap's 120 s file timeout once
// the rest of the file is added, so give it room:
//
//   SOAK=1 npx tap --disable-coverage --timeout=600 test/reliability/resources.test.ts
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { DATABASE_URL, REDIS_URL, requirePostgres, requireRedis } from '../fixtures/services.js'
import { freePort } from '../fixtures/redis-server.js'

const SOAK = process.env.SOAK === '1'
const FLOOD_REQUESTS = SOAK ? 1_000_000 : 100_000
const MAX_SESSIONS = 10_000
const MB = 1024 * 1024

const FLOOD_CHILD = fileURLToPath(new URL('../fixtures/flood-child.ts', import.meta.url))
const CLOSE_CHILD = fileURLToPath(new URL('../fixtures/close-child.ts', import.meta.url))
const CHURN_CHILD = fileURLToPath(new URL('../fixtures/churn-child.ts', import.meta.url))

/**
 * How this process loads TypeScript, for a child to load the fixtures the
 * same way; tap's other hooks (coverage, mocks) stay out of the child.
 */
function typescriptLoader (): string[] {
  return process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
}

interface Child {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  exit: Promise<{ code: number | null, signal: NodeJS.Signals | null, at: number }>
}

function run (t: Test, args: string[], env: Record<string, string> = {}): Child {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', ...env }
  delete childEnv.NODE_V8_COVERAGE
  const child = spawn(process.execPath, [...typescriptLoader(), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv })
  let out = ''
  let err = ''
  child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { err += chunk.toString() })
  const exit = new Promise<{ code: number | null, signal: NodeJS.Signals | null, at: number }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal, at: performance.now() }))
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  return { child, stdout: () => out, stderr: () => err, exit }
}

function timeout<T> (promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), ms) })
  ])
}

t.test('a memory provider that was full once keeps a bounded heap while sessions come and go under its bound', { timeout: 120_000 }, async (t) => {
  // 20,000 sessions, then 5 × 100,000 destroyed and created again: a cursor
  // kept from the one eviction held every table the churn outgrew, about
  // 13 MB more per checkpoint
  const churn = run(t, ['--expose-gc', CHURN_CHILD, '100000', '5', '20000'])
  const { code } = await churn.exit
  t.equal(code, 0, churn.stderr())
  if (code !== 0) return
  const { heap, size } = JSON.parse(churn.stdout().trim()) as { heap: number[], size: number }
  t.equal(size, 19_999)
  t.ok(heap[4] - heap[0] < 4 * MB, `the heap stays put: ${heap.map((h) => (h / MB).toFixed(1)).join(', ')} MB`)
})

t.test(`the memory provider under ${FLOOD_REQUESTS.toLocaleString('en')} cookieless writes stays within maxSessions and a bounded heap`, { timeout: SOAK ? 900_000 : 120_000 }, async (t) => {
  const flood = run(t, ['--expose-gc', FLOOD_CHILD, String(FLOOD_REQUESTS), String(MAX_SESSIONS)])
  const { code } = await flood.exit
  t.equal(code, 0, flood.stderr())
  if (code !== 0) return
  const result = JSON.parse(flood.stdout().trim().split('\n').at(-1) as string) as {
    base: number
    full: { done: number, heap: number } | null
    checkpoints: Array<{ done: number, size: number, heap: number }>
    maxSize: number
    failed: number
    ms: number
  }
  t.equal(result.failed, 0, 'every request created a session and answered 200')
  t.equal(result.maxSize, MAX_SESSIONS, 'the store filled up to maxSessions and never past it')
  t.ok(result.full !== null, 'the store was full')
  const full = result.full as { done: number, heap: number }
  const perSession = (full.heap - result.base) / MAX_SESSIONS
  const later = result.checkpoints.filter((point) => point.done > full.done)
  const highest = Math.max(...later.map((point) => point.heap))
  const growth = highest - full.heap
  t.comment(`${FLOOD_REQUESTS.toLocaleString('en')} requests in ${Math.round(result.ms / 1000)} s (${Math.round(FLOOD_REQUESTS / result.ms * 1000)} req/s)`)
  t.comment(`heap after gc: ${(result.base / MB).toFixed(1)} MB empty, ${(full.heap / MB).toFixed(1)} MB with ${MAX_SESSIONS.toLocaleString('en')} sessions (${Math.round(perSession)} bytes per session), highest afterwards ${(highest / MB).toFixed(1)} MB`)
  t.comment(`checkpoints (requests: sessions, heap MB): ${result.checkpoints.map((p) => `${p.done}: ${p.size}, ${(p.heap / MB).toFixed(1)}`).join('; ')}`)
  t.ok(later.length >= 5, 'measured at several points after the store filled')
  t.ok(later.every((point) => point.size === MAX_SESSIONS), 'the store stays at maxSessions')
  // Bounded: once full, further sessions only replace evicted ones, so the
  // heap must not keep growing with the request count.
  t.ok(growth < Math.max(4 * MB, 0.25 * (full.heap - result.base)), `the heap grew by ${(growth / MB).toFixed(1)} MB after the store filled`)
  t.ok(perSession < 4096, `a session costs ${Math.round(perSession)} bytes of heap`)
})

interface CloseReport {
  report: Record<string, { statuses: number[], resourcesAfterClose: string[] }>
  sweeps: { beforeClose: number, afterClose: number }
  resources: string[]
}

/**
 * Runs the close child on `stores` and answers what it reported and how long
 * the process lived on after it had closed every app.
 */
async function closeChild (t: Test, stores: Array<{ name: string, options: object }>): Promise<{ result: CloseReport, lingered: number } | null> {
  const closer = run(t, [CLOSE_CHILD], { CLOSE_CHILD_STORES: JSON.stringify(stores) })
  const closedAt = await timeout(new Promise<number>((resolve) => {
    closer.child.stdout?.on('data', () => { if (closer.stdout().includes('"closed":true')) resolve(performance.now()) })
  }), 30_000)
  t.not(closedAt, 'timeout', `the child closed its apps: ${closer.stderr()}`)
  if (closedAt === 'timeout') return null
  const exited = await timeout(closer.exit, 10_000)
  t.not(exited, 'timeout', 'the process exited on its own after close')
  if (exited === 'timeout') return null
  t.equal(exited.code, 0, closer.stderr())
  const result = JSON.parse(closer.stdout().trim().split('\n').at(-1) as string) as CloseReport
  return { result, lingered: exited.at - closedAt }
}

t.test('fastify.close() releases everything the plugin started: timers, clients and pools; the process exits on its own at once', async (t) => {
  const stores: Array<{ name: string, options: object }> = [{ name: 'memory', options: { provider: 'memory' } }]
  if (await requireRedis(t)) {
    stores.push({ name: 'redis', options: { provider: 'redis', providerOptions: { url: REDIS_URL, prefix: `rel-close-${process.pid}:` } } })
  }
  if (await requirePostgres(t)) {
    const table = `rel_close_${process.pid}`
    stores.push({ name: 'postgres', options: { provider: 'postgres', providerOptions: { connectionString: DATABASE_URL, tableName: table } } })
    t.teardown(async () => {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 1 })
      await pool.query(`DROP TABLE IF EXISTS "${table}"`)
      await pool.end()
    })
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'fastify-sessions-close-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  stores.push({ name: 'sqlite', options: { provider: 'sqlite', providerOptions: { filename: path.join(dir, 'sessions.db') } } })

  const outcome = await closeChild(t, stores)
  if (outcome === null) return
  const { result, lingered } = outcome
  t.comment(`exited ${Math.round(lingered)} ms after closing ${stores.map((s) => s.name).join(', ')}`)
  t.ok(lingered < 1000, `exited ${Math.round(lingered)} ms after the last close`)
  for (const [name, { statuses, resourcesAfterClose }] of Object.entries(result.report)) {
    t.same(statuses, [200, 200, 200, 200], `${name}: requests answered 200`)
    t.same(resourcesAfterClose, [], `${name}: no timer, socket or handle left open by its close`)
  }
  t.ok(result.sweeps.beforeClose > 0, 'the sweep timers ran while the apps were open')
  t.equal(result.sweeps.afterClose, 0, 'and never after close')
  t.same(result.resources, [])
})

t.test('fastify.close() while Redis is down releases the client at once: no timer left, the process exits on its own', async (t) => {
  const url = `redis://127.0.0.1:${await freePort()}`
  const outcome = await closeChild(t, [{ name: 'redis on a dead port', options: { provider: 'redis', providerOptions: { url } } }])
  if (outcome === null) return
  const { result, lingered } = outcome
  t.comment(`exited ${Math.round(lingered)} ms after closing; open after close: ${JSON.stringify(result.report['redis on a dead port'].resourcesAfterClose)}`)
  // The requests that need the store fail; those without a cookie do not need it.
  t.same(result.report['redis on a dead port'].statuses, [503, 200, 503, 200])
  t.ok(lingered < 3000, 'the process exits on its own within a few seconds')
  t.same(result.report['redis on a dead port'].resourcesAfterClose, [], 'no timer or socket is left open by close()')
})

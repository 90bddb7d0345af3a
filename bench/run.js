#!/usr/bin/env node
// The benchmark orchestrator. `npm run bench` builds dist/ and runs this.
//
// Every implementation runs in its own server process pinned to core 0; the
// load generator (autocannon, bench/lib/load.js) runs in another process
// pinned to core 1. Rounds are interleaved: each round restarts and re-seeds
// every server, then runs route by route, every implementation in turn
// (A B C ... A B C ...). Each cell = warm-up, server CPU snapshot, measured
// load, CPU snapshot; a cell with any non-2xx, error, timeout, lost request
// or wrong body is FAILED and gives no number. Then the micro-measurements
// (heap per session, sweep times, Redis commands per request), which fail
// the same way, and the report (RESULTS.md, ratios.svg, results.json). Any
// failure makes the exit code 1; SIGINT or SIGTERM ends the servers, removes
// what the run stored and exits 130 or 143.
//
// Options (node bench/run.js --help): see USAGE below.
import { parseArgs } from 'node:util'
import { execFileSync, spawn } from 'node:child_process'
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath, pathToFileURL } from 'node:url'
import net from 'node:net'
import { implementations, unavailableReason, ROUTES, SERVERS_DIR, DIST_DIR } from './lib/impls.js'
import { endChildren, hasTaskset, startChild, track } from './lib/procs.js'
import { httpClient } from './lib/http.js'
import { loadSpec, problems, runLoad, seed } from './lib/cells.js'
import { measureHeap } from './lib/heap.js'
import { measureRedisCommands } from './lib/redis-commands.js'
import { aggregate, microFailures, writeReport } from './lib/report.js'

const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url))

const USAGE = `node bench/run.js [options]
  --rounds N           interleaved rounds (default 3; the issue asks for at least 3)
  --duration S         measured seconds per cell (default 3; whole seconds: autocannon stops on its 1 s tick)
  --warmup S           warm-up seconds per cell, not measured (default 1)
  --connections N      autocannon connections (default 10)
  --many N             live sessions for the "many" route (default 10000)
  --impls a,b          implementations (default all but the diagnostics): ${implementations({}).map((i) => i.id + (i.diagnostic === true ? ' (diagnostic)' : '')).join(', ')}
  --routes a,b         routes (default all): ${ROUTES.join(', ')}
  --skip-micro         skip heap / sweep / redis-command measurements
  --only-micro         run only those
  --heap-count N       sessions for the heap measurement (default 100000)
  --sweep-total N      sessions for the sweep measurement (default 1000000)
  --redis-requests N   requests per kind for the Redis command count (default 500)
  --out DIR            where RESULTS.md, ratios.svg and results.json go (default bench/, json in bench/out/)
  --fault IMPL:[KIND:]ROUTE
                       break that server's route on purpose (harness self-test; repeatable).
                       KIND (default wrong): wrong, status, hang, drop, nocount (write), unsaved (write),
                       forget (new), samecookie (new); see FAULTS in bench/lib/server.js
  --redis-url URL      (default $BENCH_REDIS_URL or redis://127.0.0.1:6379/9; keys under bench:<run>:, removed afterwards)
  --pg-url URL         (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432/test; table bench_sessions_<run>)
  --from-json FILE     measure nothing: write RESULTS.md and ratios.svg (to --out) from a results.json`

const { values: opts } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    duration: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '1' },
    connections: { type: 'string', default: '10' },
    many: { type: 'string', default: '10000' },
    impls: { type: 'string' },
    routes: { type: 'string' },
    'skip-micro': { type: 'boolean', default: false },
    'only-micro': { type: 'boolean', default: false },
    'heap-count': { type: 'string', default: '100000' },
    'sweep-total': { type: 'string', default: '1000000' },
    'redis-requests': { type: 'string', default: '500' },
    out: { type: 'string' },
    fault: { type: 'string', multiple: true, default: [] },
    'redis-url': { type: 'string', default: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/9' },
    'pg-url': { type: 'string', default: process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test' },
    'from-json': { type: 'string' },
    help: { type: 'boolean', default: false }
  }
})

if (opts.help) {
  console.log(USAGE)
  process.exit(0)
}

const settings = {
  rounds: positive('rounds', opts.rounds, true),
  duration: positive('duration', opts.duration),
  warmup: positive('warmup', opts.warmup, false, true),
  connections: positive('connections', opts.connections, true),
  many: positive('many', opts.many, true),
  heapCount: positive('heap-count', opts['heap-count'], true),
  sweepTotal: positive('sweep-total', opts['sweep-total'], true),
  redisRequests: positive('redis-requests', opts['redis-requests'], true)
}
if (settings.rounds < 3 && !opts['only-micro']) {
  console.warn(`warning: --rounds ${settings.rounds}: the issue asks for at least 3 interleaved rounds; medians of fewer are not robust to one disturbed round`)
}
const outDir = opts.out === undefined ? BENCH_DIR : opts.out.replace(/\/?$/, '/')
const jsonPath = opts.out === undefined ? BENCH_DIR + 'out/results.json' : outDir + 'results.json'
// Everything this run stores is named after it, so concurrent runs (and
// anybody else's data in the same Redis or PostgreSQL) are never touched.
const runId = Date.now().toString(36) + process.pid.toString(36)
const runDir = BENCH_DIR + `out/run-${runId}/`
const sqliteFile = runDir + 'sessions.db'
const redisPrefix = `bench:${runId}:`
const pgTable = `bench_sessions_${runId}`
// The servers load a snapshot of dist/ taken now: dist/ may be rebuilt
// (by a test run, say) while the bench runs.
const snapshot = runDir + 'dist/'
const snapshotModule = pathToFileURL(snapshot + 'index.js').href

function positive (name, value, integer = false, allowZero = false) {
  const n = Number(value)
  if (!Number.isFinite(n) || n < 0 || (n === 0 && !allowZero) || (integer && !Number.isInteger(n))) {
    console.error(`--${name}: expected a ${integer ? 'whole ' : ''}${allowZero ? 'non-negative' : 'positive'} number, got ${value}\n\n${USAGE}`)
    process.exit(2)
  }
  return n
}

function pick (all, list, what) {
  if (list === undefined) return all.filter((x) => x.diagnostic !== true)
  const wanted = list.split(',').map((s) => s.trim()).filter(Boolean)
  for (const w of wanted) {
    if (!all.some((x) => (x.id ?? x) === w)) {
      console.error(`unknown ${what}: ${w}\n\n${USAGE}`)
      process.exit(2)
    }
  }
  return all.filter((x) => wanted.includes(x.id ?? x))
}

const allImpls = implementations({ redisUrl: opts['redis-url'], pgUrl: opts['pg-url'], sqliteFile, redisPrefix, pgTable, module: snapshotModule })
let impls = pick(allImpls, opts.impls, 'implementation')
const routes = pick(ROUTES, opts.routes, 'route')
if (!impls.some((i) => i.id === 'baseline') && !opts['only-micro']) impls = [allImpls[0], ...impls]
// Implementation id -> its faults, e.g. 'ours-memory:hang:read' -> ['hang:read'].
const faults = new Map()
for (const spec of opts.fault) {
  const [impl, ...rest] = spec.split(':')
  if (!impls.some((i) => i.id === impl) || rest.length === 0) {
    console.error(`--fault ${spec}: expected IMPL:[KIND:]ROUTE for an implementation of this run\n\n${USAGE}`)
    process.exit(2)
  }
  faults.set(impl, [...(faults.get(impl) ?? []), rest.join(':')])
}

const log = (...args) => console.log(...args)
// Set by SIGINT or SIGTERM (see cleanUpOnSignals): no further cell, measurement or report.
let interrupted = false

// ---------------------------------------------------------------- machine

function machine () {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).trim()
    } catch {
      return null
    }
  }
  let cpuModel = cpus()[0]?.model ?? 'unknown'
  try {
    const m = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))
    if (m !== null) cpuModel = m[1].trim()
  } catch {}
  const commit = sh('git', ['-C', BENCH_DIR, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', BENCH_DIR + '..', 'status', '--porcelain', '--', 'index.ts', 'lib', 'providers'])
  return {
    git: commit === null ? 'unknown' : commit + (dirty ? ' (with uncommitted changes in index.ts/lib/providers)' : ''),
    nproc: sh('nproc', []) ?? String(cpus().length),
    cpuModel,
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    memGiB: Math.round(Number(sh('awk', ['/MemTotal/ {print $2}', '/proc/meminfo']) ?? 0) / 1048576),
    date: new Date().toISOString(),
    taskset: hasTaskset(),
    loadavgStart: loadavg()
  }
}

// ---------------------------------------------------------------- services

function reachable (url, defaultPort) {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port || defaultPort) })
    socket.setTimeout(1000)
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
    socket.once('timeout', () => { socket.destroy(); resolve(false) })
  })
}

/** Removes what this run stored: its Redis keys, its table, its SQLite file. Only stores the run uses. */
async function cleanStores (services, used) {
  if (services.redis && used.some((i) => i.needs === 'redis')) {
    const { default: Redis } = await import('ioredis')
    const client = new Redis(opts['redis-url'], { maxRetriesPerRequest: 1 })
    try {
      let cursor = '0'
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', redisPrefix + '*', 'COUNT', 1000)
        if (keys.length > 0) await client.unlink(...keys)
        cursor = next
      } while (cursor !== '0')
    } finally {
      client.disconnect()
    }
  }
  if (services.postgres && used.some((i) => i.ours === 'postgres')) {
    const { default: pg } = await import('pg')
    const client = new pg.Client({ connectionString: opts['pg-url'] })
    try {
      await client.connect()
      await client.query(`DROP TABLE IF EXISTS "${pgTable}"`)
    } finally {
      await client.end().catch(() => {})
    }
  }
  for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(sqliteFile + suffix, { force: true })
}

// ---------------------------------------------------------------- cells

async function startServer (impl) {
  const config = { ...impl.config, faults: faults.get(impl.id) }
  const server = startChild(SERVERS_DIR + impl.script, [JSON.stringify(config)], { core: 0, timeoutMs: 60_000 })
  const { port } = await server.ready
  server.base = `http://127.0.0.1:${port}`
  return server
}

async function peekAll (server, cookies) {
  const http = httpClient(server.base, { sockets: 1 })
  try {
    const values = []
    for (const cookie of cookies) {
      const res = await http.get('/peek', cookie)
      values.push(Number(res.body))
    }
    return values
  } finally {
    http.close()
  }
}

/**
 * Reads the session of each cookie back through `path`, which must answer
 * `expected`: `new` checks that the sessions it made hold their value, and a
 * stateless `write`, which cannot be counted on the server, that each
 * connection's last cookie holds the incremented counter (n = 1 over the
 * seeded 0). `what` names the cookies in the sentences it answers.
 */
async function readBack (server, route, cookies, path, expected, what) {
  if (cookies.length === 0) return [`${route}: no session cookie to read back`]
  const http = httpClient(server.base, { sockets: 1 })
  try {
    const wrong = []
    for (const cookie of cookies) {
      const res = await http.get(path, cookie)
      if (res.status !== 200 || res.body !== expected) wrong.push(`${res.status} ${JSON.stringify(res.body.slice(0, 60))}`)
    }
    return wrong.length === 0 ? [] : [`read back ${wrong.length} of the ${cookies.length} ${what}, e.g. ${wrong.slice(0, 2).join(', ')}`]
  } finally {
    http.close()
  }
}

async function runCell (load, server, impl, route, seeds) {
  const spec = loadSpec(route, server.base, seeds, { connections: settings.connections, stateless: impl.stateless })

  const failures = []
  if (settings.warmup > 0) {
    const warm = await runLoad(load, { ...spec, duration: settings.warmup })
    failures.push(...problems(warm, 'warm-up'))
  }
  const counting = route === 'write' && !impl.stateless
  // Requests in flight when a load stops still land on the server: let them
  // finish before reading the counters.
  const settle = () => new Promise((resolve) => setTimeout(resolve, 250))
  if (counting) await settle()
  const before = counting ? await peekAll(server, seeds.conn.cookies) : null
  const cpu0 = await server.request({ type: 'cpu' })
  const res = await runLoad(load, { ...spec, duration: settings.duration })
  const cpu1 = await server.request({ type: 'cpu' })
  failures.push(...problems(res, 'measured'))
  if (counting) {
    await settle()
    const after = await peekAll(server, seeds.conn.cookies)
    const advanced = after.reduce((sum, n, i) => sum + (n - before[i]), 0)
    // Requests still in flight when the load stopped may have landed, no others.
    const inFlight = res.sent - res.responses
    if (!(advanced >= res.ok && advanced <= res.ok + inFlight)) {
      failures.push(`counters advanced by ${advanced} for ${res.ok} 2xx responses and ${inFlight} requests in flight at the end (before ${before.join(',')}; after ${after.join(',')})`)
    }
  }
  if (route === 'new') failures.push(...await readBack(server, route, res.newCookies, '/read', 'new', "newest sessions the new route made without its value 'new'"))
  if (route === 'write' && impl.stateless) failures.push(...await readBack(server, route, res.writtenCookies, '/peek', '1', 'cookies the write route last set without n = 1'))
  const cpuUs = (cpu1.cpu.user - cpu0.cpu.user) + (cpu1.cpu.system - cpu0.cpu.system)
  return {
    failed: failures.length > 0,
    failures,
    rps: res.rps,
    p50: res.p50,
    p99: res.p99,
    ok: res.ok,
    sent: res.sent,
    responses: res.responses,
    seconds: res.seconds,
    cpuUsPerRequest: res.responses === 0 ? null : cpuUs / res.responses,
    serverCpuShare: cpuUs / 1e6 / res.seconds,
    loadCpuShare: res.loadCpuShare,
    heapUsedAfter: cpu1.heapUsed
  }
}

// ---------------------------------------------------------------- rounds

async function runRounds (available, services) {
  const load = startChild(BENCH_DIR + 'lib/load.js', [], { core: 1 })
  await load.ready
  const cells = []
  try {
    for (let round = 1; round <= settings.rounds; round++) {
      log(`\n== round ${round}/${settings.rounds} (load average ${loadavg().map((x) => x.toFixed(2)).join(' ')})`)
      await cleanStores(services, available)
      const servers = new Map()
      const seeds = new Map()
      for (const impl of available) {
        const t0 = Date.now()
        try {
          const server = await startServer(impl)
          servers.set(impl.id, server)
          seeds.set(impl.id, await seed(server.base, impl.id, { connections: settings.connections, many: routes.includes('many') ? settings.many : 0 }))
          log(`  started and seeded ${impl.id} in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
        } catch (err) {
          log(`  ${impl.id}: could not start or seed: ${err.message.split('\n')[0]}`)
          seeds.set(impl.id, { error: err.message })
        }
      }
      // Rotate the order each round so no implementation always runs first.
      const order = available.map((_, i) => available[(i + round - 1) % available.length])
      for (const route of routes) {
        for (const impl of order) {
          // The servers are being ended: the cells left would only fail.
          if (interrupted) return cells
          if (route === 'none-optout' && !impl.optOut) continue
          const server = servers.get(impl.id)
          const seeded = seeds.get(impl.id)
          let cell
          if (seeded.error !== undefined || server === undefined) {
            cell = { failed: true, failures: [`server did not start or seed: ${seeded.error}`] }
          } else if (server.exited !== null) {
            cell = { failed: true, failures: [`server exited: ${server.stderr.slice(-500)}`] }
          } else {
            try {
              cell = await runCell(load, server, impl, route, seeded)
            } catch (err) {
              cell = { failed: true, failures: [err.message.split('\n').slice(0, 3).join(' ')] }
            }
          }
          cells.push({ round, impl: impl.id, route, ...cell })
          log(`  r${round} ${route.padEnd(11)} ${impl.id.padEnd(16)} ` + (cell.failed
            ? `FAILED: ${cell.failures.join('; ').slice(0, 300)}`
            : `${cell.rps.toFixed(0).padStart(7)} req/s  p99 ${cell.p99.toFixed(2).padStart(6)} ms  ${cell.cpuUsPerRequest.toFixed(1).padStart(6)} µs CPU/req  server ${(cell.serverCpuShare * 100).toFixed(0)}% load ${(cell.loadCpuShare * 100).toFixed(0)}%`))
        }
      }
      await Promise.all([...servers.values()].map((s) => s.stop()))
    }
  } finally {
    await load.stop()
  }
  return cells
}

// ---------------------------------------------------------------- micro

function runScript (script, args) {
  return new Promise((resolve, reject) => {
    const child = track(spawn(process.execPath, ['--expose-gc', '--max-old-space-size=6144', BENCH_DIR + script, ...args.map(String)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BENCH_MODULE: snapshotModule } }))
    let out = ''
    let err = ''
    child.stdout.on('data', (c) => { out += c })
    child.stderr.on('data', (c) => { err += c })
    child.on('exit', (code) => {
      if (code === 0) resolve(JSON.parse(out.trim().split('\n').pop()))
      else reject(new Error(`${script} exited ${code}: ${err.slice(-1000)}`))
    })
  })
}

async function runMicro (services, unavailable) {
  const micro = { heap: [], sweep: [], evict: null, redis: null, notes: [] }
  for (const id of ['ours-memory', 'fsession-memory', 'mgcrea-memory']) {
    const impl = allImpls.find((i) => i.id === id)
    try {
      log(`  heap: ${id} (${settings.heapCount} sessions)`)
      micro.heap.push({ impl: id, ...(await measureHeap({ serversDir: SERVERS_DIR, impl, count: settings.heapCount, core: 0 })) })
    } catch (err) {
      micro.heap.push({ impl: id, error: err.message.split('\n')[0] })
    }
  }
  for (const share of [0, 0.01, 0.5]) {
    try {
      log(`  sweep: ${settings.sweepTotal} sessions, ${share * 100}% expired`)
      micro.sweep.push(await runScript('lib/sweep.js', [settings.sweepTotal, share]))
    } catch (err) {
      micro.sweep.push({ total: settings.sweepTotal, share, error: err.message.split('\n')[0] })
    }
  }
  try {
    log('  memory provider: create() below and at maxSessions (100000)')
    micro.evict = await runScript('lib/evict.js', [100_000, 50_000, 4])
  } catch (err) {
    micro.evict = { error: err.message.split('\n')[0] }
  }
  const redisImpl = allImpls.find((i) => i.id === 'ours-redis')
  const why = !services.redis ? `Redis not reachable at ${opts['redis-url']}` : unavailableReason(redisImpl)
  if (why !== null) {
    micro.redis = { unavailable: why }
  } else {
    try {
      log(`  redis commands: ${settings.redisRequests} requests per kind`)
      micro.redis = await measureRedisCommands({ redisUrl: opts['redis-url'], serversDir: SERVERS_DIR, requests: settings.redisRequests, core: 0, prefix: redisPrefix + 'commands:', module: snapshotModule })
    } catch (err) {
      micro.redis = { error: err.message.split('\n')[0] }
    }
  }
  return micro
}

// ---------------------------------------------------------------- main

/** Removes everything this run stored: the stores' data, then the run's directory (dist/ snapshot, SQLite file). */
async function cleanUp (services) {
  await cleanStores(services, allImpls).catch((err) => log(`cleaning up the stores failed: ${err.message}`))
  rmSync(runDir, { recursive: true, force: true })
}

/**
 * On SIGINT or SIGTERM: ends every child first (a server still running
 * could store again), removes what the run stored and exits 130 or 143. A
 * second signal ends the process at once.
 */
function cleanUpOnSignals (services) {
  const onSignal = async (signal) => {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    interrupted = true
    log(`\n${signal}: ending the servers and removing what this run stored`)
    await endChildren()
    await cleanUp(services)
    process.exit(signal === 'SIGINT' ? 130 : 143)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
}

async function main () {
  const started = Date.now()
  const info = machine()
  log(`fastify-sessions bench: ${info.nproc} CPUs (${info.cpuModel}), node ${info.node}, taskset ${info.taskset ? 'yes' : 'NO: processes are not pinned'}, load average ${info.loadavgStart.map((x) => x.toFixed(2)).join(' ')}`)
  const services = {
    redis: await reachable(opts['redis-url'], 6379),
    postgres: await reachable(opts['pg-url'], 5432)
  }
  const unavailable = {}
  const available = []
  for (const impl of impls) {
    const why = impl.needs !== undefined && !services[impl.needs]
      ? `${impl.needs} is not reachable`
      : unavailableReason(impl)
    if (why === null) available.push(impl)
    else unavailable[impl.id] = why
  }
  for (const [id, why] of Object.entries(unavailable)) log(`  skipping ${id}: ${why}`)
  mkdirSync(BENCH_DIR + 'out', { recursive: true })
  mkdirSync(outDir, { recursive: true })
  if (!existsSync(DIST_DIR + 'index.js')) throw new Error('dist/index.js does not exist: run npm run build')
  cleanUpOnSignals(services)
  cpSync(DIST_DIR, snapshot, { recursive: true })
  try {
    await measureAll(info, services, unavailable, available, started)
  } finally {
    await cleanUp(services)
  }
}

async function measureAll (info, services, unavailable, available, started) {
  let cells = []
  if (!opts['only-micro']) {
    if (!available.some((i) => i.id === 'baseline')) throw new Error('the baseline cannot run: ' + unavailable.baseline)
    cells = await runRounds(available, services)
  }
  let micro = null
  if (!opts['skip-micro'] && !interrupted) {
    log('\n== micro-measurements')
    micro = await runMicro(services, unavailable)
  }
  // Cells and measurements cut short by the signal would read as failures.
  if (interrupted) return

  const results = {
    machine: { ...info, loadavgEnd: loadavg(), wallSeconds: (Date.now() - started) / 1000 },
    settings: { ...settings, routes, impls: impls.map((i) => i.id), faults: opts.fault },
    implementations: Object.fromEntries(allImpls.map((i) => [i.id, { label: i.label, optOut: i.optOut === true, stateless: i.stateless === true }])),
    unavailable,
    cells,
    micro
  }
  results.summary = aggregate(results)
  mkdirSync(jsonPath.replace(/[^/]*$/, ''), { recursive: true })
  writeFileSync(jsonPath, JSON.stringify(results, null, 2) + '\n')
  writeReport(results, { markdown: outDir + 'RESULTS.md', svg: outDir + 'ratios.svg' })
  log(`\nwrote ${outDir}RESULTS.md, ${outDir}ratios.svg and ${jsonPath} in ${((Date.now() - started) / 1000).toFixed(0)} s`)
  const failed = cells.filter((c) => c.failed)
  if (failed.length > 0) log(`${failed.length} FAILED cell(s)`)
  const failedMicro = microFailures(micro)
  for (const failure of failedMicro) log(`FAILED: ${failure}`)
  if (failed.length > 0 || failedMicro.length > 0) process.exitCode = 1
}

if (!existsSync(SERVERS_DIR)) throw new Error('bench/servers is missing')
if (opts['from-json'] !== undefined) {
  const results = JSON.parse(readFileSync(opts['from-json'], 'utf8'))
  results.summary = aggregate(results)
  writeReport(results, { markdown: outDir + 'RESULTS.md', svg: outDir + 'ratios.svg' })
  log(`wrote ${outDir}RESULTS.md and ${outDir}ratios.svg from ${opts['from-json']}`)
} else {
  main().catch((err) => {
    console.error(err)
    process.exitCode = 1
  })
}

#!/usr/bin/env node
// Instructions per request, counted by valgrind's callgrind in each bench
// server while the bench's own load generator drives it. Unlike req/s and
// CPU time, a count does not move with what else the machine runs: on a
// shared host, where two runs of the same build differ by 15% in CPU per
// request, it is the figure that still tells a few percent apart.
//
// What it counts: the instructions of the server process, every thread
// (V8's compiler and GC helpers included), in user space; the kernel's work
// (sockets) is not in it. Only implementations that keep sessions in the
// process or the cookie are counted: under valgrind, one waiting on Redis
// runs into timeouts, and what costs there is the round trip, which
// bench/round-trip.js and bench/redis-cost.js measure. Under valgrind the server runs about
// 50 times slower, and valgrind's CPU model has no SHA extensions, so SHA-256
// takes its AVX2 path, several times the instructions of the native one on
// a CPU that has them. After the warm-up, several windows are counted in a
// row (instrumentation switched on and off with callgrind_control) and the
// median is the figure: a major GC, or the JIT still compiling, lands in one
// window and lifts it well above the others, which the output shows.
//
// One server per implementation serves the routes in turn, as in a round of
// bench/run.js; every response is checked as there.
//
// --cache-sim also counts, with callgrind's cache simulation (several times
// slower again), the data reads and writes that miss the last-level cache.
// Instructions do not see what a miss costs, and on a route that walks a
// store of many sessions (`many`) the misses, not the instructions, are what
// separates it from a route with one hot session. The simulated cache is
// set by --ll (size,associativity,line size): 8 MB, 16-way by default, as a
// VM's share of a server's L3 might be. Valgrind's own guess follows what
// the CPU reports, which in a VM can be anything (512 MB, 2-way, on one).
//
// --functions N prints, per route, the N functions with the most
// instructions of their own in the median window. Callgrind knows no names
// for code V8 compiled; the server runs with --perf-basic-prof, and such an
// address is named from the map V8 writes (/tmp/perf-<pid>.map), as it
// stood when that window ended. A function V8 compiled more than once is
// listed once per copy. Logging code creation adds instructions of its own:
// compare counts taken with --functions only with each other.
//
//   node bench/instructions.js [--impls baseline,ours-memory,secure-session,fsession-memory,mgcrea-memory]
//                              [--routes read,write,none,none-optout,many,new]
//                              [--warmup 20] [--duration 6] [--windows 3] [--cache-sim [--ll 8388608,16,64]]
//                              [--functions 30]
import { parseArgs } from 'node:util'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { implementations, unavailableReason, ROUTES, SERVERS_DIR } from './lib/impls.js'
import { startChild } from './lib/procs.js'
import { loadSpec, problems, runLoad, seed } from './lib/cells.js'
import { median } from './lib/stats.js'

const OUT = fileURLToPath(new URL('out/instructions/', import.meta.url))

const { values: opts } = parseArgs({
  options: {
    impls: { type: 'string', default: 'baseline,ours-memory,secure-session,fsession-memory,mgcrea-memory' },
    routes: { type: 'string', default: ROUTES.join(',') },
    warmup: { type: 'string', default: '20' },
    duration: { type: 'string', default: '6' },
    windows: { type: 'string', default: '3' },
    connections: { type: 'string', default: '10' },
    many: { type: 'string', default: '10000' },
    'cache-sim': { type: 'boolean', default: false },
    functions: { type: 'string', default: '0' },
    ll: { type: 'string', default: '8388608,16,64' }
  }
})

if (spawnSync('valgrind', ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error('valgrind is not installed (Debian: apt-get install valgrind)')
  process.exit(2)
}

const functionCount = Number(opts.functions)
const all = implementations({})
const impls = opts.impls.split(',').map((id) => {
  const impl = all.find((i) => i.id === id)
  if (impl === undefined) throw new Error(`unknown implementation ${id}`)
  if (impl.needs !== undefined || impl.ours === 'sqlite') throw new Error(`${id}: only implementations that keep sessions in the process or the cookie are counted here`)
  const why = unavailableReason(impl)
  if (why !== null) throw new Error(`${id}: ${why}`)
  return impl
})
const routes = opts.routes.split(',')
const connections = Number(opts.connections)

rmSync(OUT, { recursive: true, force: true })
mkdirSync(OUT, { recursive: true })

const cacheSim = opts['cache-sim']

/**
 * The counts in a callgrind output file, by event name (`Ir`, and with the
 * cache simulation `DLmr`, `DLmw`, …): its `totals:` line, whose order the
 * `events:` line gives (`summary:` may read 0 in a dump on request).
 */
function countsIn (file) {
  const lines = readFileSync(file, 'utf8').split('\n')
  const events = lines.find((l) => l.startsWith('events:'))
  const totals = lines.find((l) => l.startsWith('totals:'))
  if (events === undefined || totals === undefined) throw new Error(`${file}: no events or totals line`)
  const names = events.split(/\s+/).slice(1)
  const values = totals.split(/\s+/).slice(1).map(Number)
  return Object.fromEntries(names.map((name, i) => [name, values[i] ?? 0]))
}

/** Per request: instructions, and with the cache simulation last-level data misses. */
function perRequestIn (file, responses) {
  const counts = countsIn(file)
  return { instructions: counts.Ir / responses, misses: cacheSim ? (counts.DLmr + counts.DLmw) / responses : null }
}

/** The functions with the most instructions of their own in a dump, compiled JavaScript named through V8's perf map (its first `mapBytes` bytes). */
function topFunctions (file, pid, mapBytes, responses, count) {
  const jit = readPerfMap(perfMapOf(pid), mapBytes)
  const annotated = execFileSync('callgrind_annotate', ['--inclusive=no', '--threshold=100', file], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 })
  const rows = []
  for (const line of annotated.split('\n')) {
    const match = /^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$/.exec(line)
    if (match === null || match[2].startsWith('PROGRAM TOTALS')) continue
    const address = /^\?\?\?:0x([0-9a-f]+) /.exec(match[2])
    const name = address === null ? match[2].replace(/ \[[^\]]*\]$/, '') : nameAt(jit, parseInt(address[1], 16)) ?? match[2]
    rows.push({ name, perRequest: Number(match[1].replaceAll(',', '')) / responses })
    if (rows.length === count) break
  }
  return rows
}

const perfMapOf = (pid) => `/tmp/perf-${pid}.map`

/** How far V8's perf map has been written. */
function perfMapBytes (pid) {
  try {
    return statSync(perfMapOf(pid)).size
  } catch {
    return 0
  }
}

/** V8's perf map, up to `bytes`, as [start, end, name] triples in the order written. */
function readPerfMap (path, bytes) {
  let text = ''
  try {
    text = readFileSync(path).subarray(0, bytes).toString('utf8')
  } catch {
    return []
  }
  const entries = []
  for (const line of text.split('\n')) {
    const match = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line)
    if (match !== null) entries.push([parseInt(match[1], 16), parseInt(match[1], 16) + parseInt(match[2], 16), match[3]])
  }
  return entries
}

/** The name of the code at `address`: the latest entry covering it, as V8 reuses the memory of code it dropped. */
function nameAt (entries, address) {
  for (let i = entries.length - 1; i >= 0; i--) {
    if (entries[i][0] <= address && address < entries[i][1]) return entries[i][2]
  }
  return undefined
}

const fmt = (n) => Math.round(n).toLocaleString('en')
const fmtMisses = (n) => n.toFixed(1)

/** The newest dump callgrind wrote for that server (`<impl>.<pid>.<n>`). */
function latestDump (implId, pid) {
  const prefix = `${implId}.${pid}.`
  const n = Math.max(...readdirSync(OUT).filter((f) => f.startsWith(prefix)).map((f) => Number(f.slice(prefix.length))))
  return OUT + prefix + n
}

const results = []
const load = startChild(fileURLToPath(new URL('lib/load.js', import.meta.url)), [], { core: 1 })
await load.ready
try {
  for (const impl of impls) {
    const outFile = `${OUT}${impl.id}.%p`
    const server = startChild(SERVERS_DIR + impl.script, [JSON.stringify(impl.config)], {
      core: 0,
      // --perf-basic-prof also writes a V8 log into the working directory
      nodeArgs: functionCount > 0 ? ['--perf-basic-prof', '--logfile=/dev/null'] : [],
      timeoutMs: 300_000,
      wrapper: ['valgrind', '--tool=callgrind', '--instr-atstart=no', '--smc-check=all-non-file', ...(cacheSim ? ['--cache-sim=yes', `--LL=${opts.ll}`] : []), `--callgrind-out-file=${outFile}`]
    })
    try {
      const { port } = await server.ready
      const pid = String(server.child.pid)
      const base = `http://127.0.0.1:${port}`
      const seeds = await seed(base, impl.id, { connections, many: routes.includes('many') ? Number(opts.many) : 0 })
      for (const route of routes) {
        if (route === 'none-optout' && impl.optOut !== true) continue
        // under valgrind a major GC stops the server for seconds
        const spec = { ...loadSpec(route, base, seeds, { connections, stateless: impl.stateless === true }), timeout: 60 }
        const warm = await runLoad(load, { ...spec, duration: Number(opts.warmup) })
        const bad = problems(warm, 'warm-up')
        // several windows in a row: a major GC or a burst of compiling falls
        // into one of them, and the median leaves it out
        const windows = []
        for (let w = 0; w < Number(opts.windows); w++) {
          execFileSync('callgrind_control', ['--zero', pid], { stdio: 'ignore' })
          execFileSync('callgrind_control', ['--instr=on', pid], { stdio: 'ignore' })
          const res = await runLoad(load, { ...spec, duration: Number(opts.duration) })
          execFileSync('callgrind_control', ['--instr=off', pid], { stdio: 'ignore' })
          execFileSync('callgrind_control', [`--dump=${route}-${w}`, pid], { stdio: 'ignore' })
          bad.push(...problems(res, `window ${w + 1}`))
          const file = latestDump(impl.id, pid)
          windows.push({ ...perRequestIn(file, res.responses), file, responses: res.responses, mapBytes: perfMapBytes(pid) })
        }
        const perRequest = median(windows.map((w) => w.instructions))
        const misses = cacheSim ? median(windows.map((w) => w.misses)) : null
        results.push({ impl: impl.id, label: impl.label, route, perRequest, misses, bad })
        const missText = cacheSim ? `, ${fmtMisses(misses)} LL data misses/req (windows: ${windows.map((w) => fmtMisses(w.misses)).join(', ')})` : ''
        console.log(`${impl.id.padEnd(16)} ${route.padEnd(12)} ${fmt(perRequest).padStart(9)} instructions/req (windows: ${windows.map((w) => fmt(w.instructions)).join(', ')})${missText}${bad.length > 0 ? ' FAILED ' + bad.join('; ') : ''}`)
        if (functionCount > 0) {
          // the window nearest the median: with an even count the median is between two
          const middle = windows.reduce((a, b) => Math.abs(b.instructions - perRequest) < Math.abs(a.instructions - perRequest) ? b : a)
          for (const row of topFunctions(middle.file, pid, middle.mapBytes, middle.responses, functionCount)) console.log(`  ${fmt(row.perRequest).padStart(7)}  ${row.name}`)
        }
      }
    } finally {
      await server.stop(20_000)
      if (functionCount > 0) rmSync(perfMapOf(server.child.pid), { force: true })
    }
  }
} finally {
  await load.stop()
}

const baseline = new Map(results.filter((r) => r.impl === 'baseline').map((r) => [r.route, r]))
console.log(`\n| implementation | route | instructions/req | over bare Fastify | ratio |${cacheSim ? ' LL data misses/req | over bare Fastify |' : ''}`)
console.log(`| --- | --- | ---: | ---: | ---: |${cacheSim ? ' ---: | ---: |' : ''}`)
for (const r of results) {
  const b = baseline.get(r.route)
  const failed = r.bad.length > 0
  const over = (mine, theirs, format) => b === undefined || failed ? '' : (mine - theirs >= 0 ? '+' : '') + format(mine - theirs)
  const cell = failed ? 'FAILED' : fmt(r.perRequest)
  const ratio = b === undefined || failed ? '' : (b.perRequest / r.perRequest).toFixed(2)
  const missCells = cacheSim ? ` ${failed ? '' : fmtMisses(r.misses)} | ${over(r.misses, b?.misses, fmtMisses)} |` : ''
  console.log(`| ${r.label} | ${r.route} | ${cell} | ${over(r.perRequest, b?.perRequest, fmt)} | ${ratio} |${missCells}`)
}
process.exitCode = results.some((r) => r.bad.length > 0) ? 1 : 0

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
//   node bench/instructions.js [--impls baseline,ours-memory,secure-session,fsession-memory,mgcrea-memory]
//                              [--routes read,write,none,none-optout,many,new]
//                              [--warmup 20] [--duration 6] [--windows 3]
import { parseArgs } from 'node:util'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
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
    many: { type: 'string', default: '10000' }
  }
})

if (spawnSync('valgrind', ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error('valgrind is not installed (Debian: apt-get install valgrind)')
  process.exit(2)
}

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

/** The instructions in a callgrind output file: its `totals:` line (`summary:` may read 0 in a dump on request). */
function instructionsIn (file) {
  const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith('totals:'))
  if (line === undefined) throw new Error(`${file}: no totals line`)
  return Number(line.split(/\s+/)[1])
}

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
      timeoutMs: 300_000,
      wrapper: ['valgrind', '--tool=callgrind', '--instr-atstart=no', '--smc-check=all-non-file', `--callgrind-out-file=${outFile}`]
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
          windows.push(instructionsIn(latestDump(impl.id, pid)) / res.responses)
        }
        const perRequest = median(windows)
        results.push({ impl: impl.id, label: impl.label, route, perRequest, bad })
        console.log(`${impl.id.padEnd(16)} ${route.padEnd(12)} ${Math.round(perRequest).toLocaleString('en').padStart(9)} instructions/req (windows: ${windows.map((w) => Math.round(w).toLocaleString('en')).join(', ')})${bad.length > 0 ? ' FAILED ' + bad.join('; ') : ''}`)
      }
    } finally {
      await server.stop(20_000)
    }
  }
} finally {
  await load.stop()
}

const baseline = new Map(results.filter((r) => r.impl === 'baseline').map((r) => [r.route, r.perRequest]))
console.log('\n| implementation | route | instructions/req | over bare Fastify | ratio |')
console.log('| --- | --- | ---: | ---: | ---: |')
for (const r of results) {
  const b = baseline.get(r.route)
  const cell = r.bad.length > 0 ? 'FAILED' : Math.round(r.perRequest).toLocaleString('en')
  const over = b === undefined || r.bad.length > 0 ? '' : (r.perRequest - b >= 0 ? '+' : '') + Math.round(r.perRequest - b).toLocaleString('en')
  const ratio = b === undefined || r.bad.length > 0 ? '' : (b / r.perRequest).toFixed(2)
  console.log(`| ${r.label} | ${r.route} | ${cell} | ${over} | ${ratio} |`)
}
process.exitCode = results.some((r) => r.bad.length > 0) ? 1 : 0

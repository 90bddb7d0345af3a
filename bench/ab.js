#!/usr/bin/env node
// A/B of builds of fastify-sessions (memory provider unless --provider):
// each variant is a directory holding a build (index.js, lib/, providers/),
// e.g. a copy of dist/ with a change applied. Variants run interleaved,
// round after round, on the same routes, with the bench's server, load
// generator and checks; prints the median server CPU µs per request (the
// steadier figure on a shared machine) and req/s of each.
//
//   node bench/ab.js --variant base=dist --variant cached=/tmp/dist-cached \
//                    [--routes read,write,new,none] [--rounds 5] [--duration 4] [--warmup 1]
//                    [--pool 10000]  (that many more live sessions in the store)
//                    [--rate 5000]   (fixed req/s: compares CPU per request at the same load,
//                                     free of the batching a faster variant gets at saturation)
import { parseArgs } from 'node:util'
import { resolve } from 'node:path'
import { pathToFileURL, fileURLToPath } from 'node:url'
import { SERVERS_DIR } from './lib/impls.js'
import { startChild } from './lib/procs.js'
import { loadSpec, problems, runLoad, seed } from './lib/cells.js'
import { median } from './lib/stats.js'

const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url))

const { values: opts } = parseArgs({
  options: {
    variant: { type: 'string', multiple: true },
    routes: { type: 'string', default: 'read,write,new,none' },
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '1' },
    connections: { type: 'string', default: '10' },
    rate: { type: 'string' },
    pool: { type: 'string', default: '0' },
    provider: { type: 'string', default: 'memory' },
    'provider-options': { type: 'string' }
  }
})
if (opts.variant === undefined || opts.variant.length < 2) {
  console.error('give at least two --variant name=dir')
  process.exit(2)
}
const variants = opts.variant.map((v) => {
  const [name, dir] = v.split('=')
  return { name, module: pathToFileURL(resolve(dir) + '/index.js').href }
})
const routes = opts.routes.split(',')
const connections = Number(opts.connections)
const results = new Map(variants.map((v) => [v.name, new Map(routes.map((r) => [r, []]))]))

const load = startChild(BENCH_DIR + 'lib/load.js', [], { core: 1 })
await load.ready
try {
  for (let round = 1; round <= Number(opts.rounds); round++) {
    const order = variants.map((_, i) => variants[(i + round - 1) % variants.length])
    for (const route of routes) {
      for (const v of order) {
        const config = { provider: opts.provider, module: v.module }
        if (opts['provider-options'] !== undefined) config.providerOptions = JSON.parse(opts['provider-options'])
        const server = startChild(SERVERS_DIR + 'fastify-sessions.js', [JSON.stringify(config)], { core: 0 })
        try {
          const { port } = await server.ready
          const base = `http://127.0.0.1:${port}`
          // --pool N: N more live sessions in the store, as the bench's servers hold.
          const seeds = await seed(base, v.name, { connections, many: route === 'many' ? Math.max(10_000, Number(opts.pool)) : Number(opts.pool) })
          const spec = loadSpec(route, base, seeds, { connections })
          if (opts.rate !== undefined) spec.rate = Number(opts.rate)
          const warm = await runLoad(load, { ...spec, duration: Number(opts.warmup) })
          const cpu0 = await server.request({ type: 'cpu' })
          const res = await runLoad(load, { ...spec, duration: Number(opts.duration) })
          const cpu1 = await server.request({ type: 'cpu' })
          const bad = [...problems(warm, 'warm-up'), ...problems(res, 'measured')]
          const cpuUs = (cpu1.cpu.user - cpu0.cpu.user + cpu1.cpu.system - cpu0.cpu.system) / res.responses
          results.get(v.name).get(route).push({ cpuUs, rps: res.rps, bad })
          console.log(`r${round} ${route.padEnd(6)} ${v.name.padEnd(12)} ${cpuUs.toFixed(2).padStart(7)} µs/req ${res.rps.toFixed(0).padStart(7)} req/s${bad.length > 0 ? ' FAILED ' + bad.join('; ') : ''}`)
        } finally {
          await server.stop()
        }
      }
    }
  }
} finally {
  await load.stop()
}

console.log('\n| route | variant | median CPU µs/req | vs first | median req/s | failed rounds |')
console.log('| --- | --- | ---: | ---: | ---: | ---: |')
for (const route of routes) {
  const first = median(results.get(variants[0].name).get(route).map((r) => r.cpuUs))
  for (const v of variants) {
    const list = results.get(v.name).get(route)
    const cpu = median(list.map((r) => r.cpuUs))
    console.log(`| ${route} | ${v.name} | ${cpu.toFixed(2)} | ${(cpu - first >= 0 ? '+' : '') + (cpu - first).toFixed(2)} | ${median(list.map((r) => r.rps)).toFixed(0)} | ${list.filter((r) => r.bad.length > 0).length} |`)
  }
}

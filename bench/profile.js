#!/usr/bin/env node
// Profiles a bench server under load: one server process per route, run
// with `node --cpu-prof`, loaded by the same load generator as the bench
// (pinned to the other core), then the .cpuprofile is read back.
//
//   node bench/profile.js [--impl ours-memory] [--routes read,write,new,none,none-optout,many]
//                         [--duration 10] [--top 25] [--connections 10] [--pool 10000]
//
// Prints, per route: server CPU µs per request, and the top functions by
// self time and (for our code) inclusive time, each as µs per request
// (its share of the samples × the measured CPU µs per request). Profiles
// and the printed report go to bench/out/profile/.
import { parseArgs } from 'node:util'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { implementations, SERVERS_DIR } from './lib/impls.js'
import { startChild } from './lib/procs.js'
import { loadSpec, problems, runLoad, seed } from './lib/cells.js'

const BENCH_DIR = fileURLToPath(new URL('.', import.meta.url))
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const OUT = BENCH_DIR + 'out/profile/'

const { values: opts } = parseArgs({
  options: {
    impl: { type: 'string', default: 'ours-memory' },
    routes: { type: 'string', default: 'read,write,new,none,none-optout,many' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '10' },
    many: { type: 'string', default: '10000' },
    top: { type: 'string', default: '25' },
    'provider-options': { type: 'string' },
    pool: { type: 'string', default: '0' }
  }
})

const impl = implementations({
  redisUrl: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/9',
  pgUrl: process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  sqliteFile: BENCH_DIR + 'out/profile-sqlite.db'
}).find((i) => i.id === opts.impl)
if (impl === undefined) throw new Error(`unknown implementation ${opts.impl}`)
const routes = opts.routes.split(',')
const connections = Number(opts.connections)
const top = Number(opts.top)

/** Where a call frame lives, shortened: lib/manager (ours), fastify/lib/reply, node:internal/..., or (gc). */
function place (url) {
  if (url === '') return ''
  let p = url.startsWith('file://') ? fileURLToPath(url) : url
  if (p.startsWith(ROOT + 'dist/')) p = p.slice(ROOT.length + 5).replace(/\.js$/, '.ts')
  else if (p.startsWith(ROOT + 'node_modules/')) p = p.slice(ROOT.length + 13)
  else if (p.startsWith(ROOT)) p = p.slice(ROOT.length)
  return p
}

function isOurs (p) {
  return p.startsWith('lib/') || p.startsWith('providers/') || p === 'index.ts'
}

/**
 * A frame through which our callback-style hooks hand control back to
 * Fastify (`done()`): everything below it is the rest of the request, not
 * session work, so our inclusive times stop there. reply.header() is ours
 * to pay, so it is not one.
 */
function isContinuation (p, fn) {
  return p.startsWith('fastify/') && !(p === 'fastify/lib/reply.js' && (fn === 'header' || fn === 'getHeader'))
}

function category (p, fn) {
  if (fn === '(garbage collector)') return 'GC'
  if (fn === '(program)' || fn === '(root)') return 'V8 / native (program)'
  if (isOurs(p)) return 'fastify-sessions (lib/, providers/)'
  if (p.startsWith('node:internal/crypto')) return 'node:crypto'
  if (p.startsWith('@fastify/cookie') || p.startsWith('cookie/')) return '@fastify/cookie'
  if (p.startsWith('fastify/') || p.startsWith('find-my-way') || p.startsWith('light-my-request') || p.startsWith('avvio') || p.startsWith('fast-')) return 'fastify core'
  if (p.startsWith('node:')) return 'node (http, net, streams, events)'
  if (p === '') return 'native: ' + fn
  return 'other: ' + p.split('/')[0]
}

/**
 * Self time per function and per category; inclusive time per function of
 * ours, cut at continuations (a function counts once per stack); and the
 * session work in all: the cut inclusive time of every outermost frame of
 * ours (a hook, or session.get() in a handler).
 */
function analyse (profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const self = new Map()
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  }
  const info = (n) => {
    const p = place(n.callFrame.url)
    const fn = n.callFrame.functionName || '(anonymous)'
    return { p, fn, key: `${fn} ${p}${p === '' ? '' : ':' + (n.callFrame.lineNumber + 1)}` }
  }
  const selfBy = new Map()
  const categories = new Map()
  const inclBy = new Map()
  let total = 0
  let sessionWork = 0
  const onPath = new Map()
  // Answers the node's subtree time without what lies under continuations.
  const visit = (node, inOurs) => {
    const { p, fn, key } = info(node)
    const t = self.get(node.id) ?? 0
    if (fn !== '(idle)') total += t
    selfBy.set(key, (selfBy.get(key) ?? 0) + t)
    const cat = category(p, fn)
    if (fn !== '(idle)') categories.set(cat, (categories.get(cat) ?? 0) + t)
    const ours = isOurs(p)
    onPath.set(key, (onPath.get(key) ?? 0) + 1)
    let cut = t
    for (const id of node.children ?? []) {
      const child = byId.get(id)
      const c = info(child)
      const childCut = visit(child, isContinuation(c.p, c.fn) ? false : inOurs || ours)
      if (!isContinuation(c.p, c.fn)) cut += childCut
    }
    onPath.set(key, onPath.get(key) - 1)
    if (ours && onPath.get(key) === 0) inclBy.set(key, (inclBy.get(key) ?? 0) + cut)
    if (ours && !inOurs) sessionWork += cut
    return cut
  }
  visit(profile.nodes[0], false)
  return { selfBy, inclBy, categories, total, sessionWork }
}

async function profileRoute (load, route) {
  const dir = OUT + impl.id + '/' + route + '/'
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const config = { ...impl.config, ...(opts['provider-options'] === undefined ? {} : { providerOptions: JSON.parse(opts['provider-options']) }) }
  const server = startChild(SERVERS_DIR + impl.script, [JSON.stringify(config)], { core: 0, nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir] })
  const { port } = await server.ready
  const base = `http://127.0.0.1:${port}`
  // --pool N: N more live sessions in the store, as the bench's servers have (its `many` pool).
  const seeds = await seed(base, impl.id, { connections, many: route === 'many' ? Number(opts.many) : Number(opts.pool) })
  const spec = loadSpec(route, base, seeds, { connections, stateless: impl.stateless })
  const warm = await runLoad(load, { ...spec, duration: Number(opts.warmup) })
  const cpu0 = await server.request({ type: 'cpu' })
  const res = await runLoad(load, { ...spec, duration: Number(opts.duration) })
  const cpu1 = await server.request({ type: 'cpu' })
  await server.stop(30_000)
  const bad = [...problems(warm, 'warm-up'), ...problems(res, 'measured')]
  const cpuUs = (cpu1.cpu.user - cpu0.cpu.user + cpu1.cpu.system - cpu0.cpu.system) / res.responses
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
  if (file === undefined) throw new Error('no .cpuprofile written in ' + dir)
  const { selfBy, inclBy, categories, total, sessionWork } = analyse(JSON.parse(readFileSync(dir + file, 'utf8')))
  // The profile spans the process's whole life (startup, seeding, warm-up);
  // shares of its busy samples are applied to the measured µs per request.
  const perReq = (t) => (t / total) * cpuUs
  const lines = []
  lines.push(`### ${impl.id} · ${route}: ${res.rps.toFixed(0)} req/s, ${cpuUs.toFixed(1)} µs server CPU per request${bad.length > 0 ? ' — FAILED: ' + bad.join('; ') : ''}`, '')
  lines.push(`Session work (our frames, cut where they hand control back to Fastify, node:crypto they call included): **${perReq(sessionWork).toFixed(2)} µs/req** (${((sessionWork / total) * 100).toFixed(1)}% of busy samples).`, '')
  lines.push('Self time by category:', '')
  lines.push('| µs/req | share | category |', '| ---: | ---: | --- |')
  for (const [k, t] of [...categories].sort((a, b) => b[1] - a[1]).slice(0, 12)) lines.push(`| ${perReq(t).toFixed(2)} | ${((t / total) * 100).toFixed(1)}% | ${k} |`)
  lines.push('', 'Top self time (µs per request, share of busy samples):', '')
  lines.push('| µs/req | share | function |', '| ---: | ---: | --- |')
  for (const [k, t] of [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    if (k.startsWith('(idle)')) continue
    lines.push(`| ${perReq(t).toFixed(2)} | ${((t / total) * 100).toFixed(1)}% | \`${k}\` |`)
  }
  lines.push('', 'Our code (lib/, providers/) by inclusive time, cut at continuations into Fastify:', '')
  lines.push('| µs/req incl. | µs/req self | function |', '| ---: | ---: | --- |')
  const ours = [...inclBy].filter(([k]) => isOurs(k.split(' ')[1] ?? '')).sort((a, b) => b[1] - a[1]).slice(0, top)
  for (const [k, t] of ours) lines.push(`| ${perReq(t).toFixed(2)} | ${perReq(selfBy.get(k) ?? 0).toFixed(2)} | \`${k}\` |`)
  lines.push('')
  return { text: lines.join('\n'), cpuUs, rps: res.rps, failed: bad.length > 0, sessionWorkUs: perReq(sessionWork) }
}

const load = startChild(BENCH_DIR + 'lib/load.js', [], { core: 1 })
await load.ready
const sections = []
try {
  for (const route of routes) {
    const { text } = await profileRoute(load, route)
    console.log(text)
    sections.push(text)
  }
} finally {
  await load.stop()
}
writeFileSync(OUT + `report-${impl.id}.md`, `# CPU profile: ${impl.id}\n\n${new Date().toISOString()}, node ${process.version}\n\n` + sections.join('\n'))
console.log(`wrote ${OUT}report-${impl.id}.md`)

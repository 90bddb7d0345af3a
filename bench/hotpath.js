#!/usr/bin/env node
// The plugin's own per-request cost, without HTTP or Fastify's request
// handling: registers a build of fastify-sessions (memory provider), takes
// its onRequest and onSend hooks out of the Fastify instance, and calls
// them in a loop on stand-in request/reply objects, as Fastify would, with
// the route's session calls in between. CPU time per simulated request,
// several interleaved repetitions per variant (the minimum is the figure
// least disturbed by other work on the machine).
//
// `many` reads one of 10,000 sessions picked at random, in a store filled to
// its 100,000 sessions, as the bench's `many` route does.
//
//   node --expose-gc bench/hotpath.js --variant base=dist [--variant x=/tmp/dist-x] [--routes read,write,new,none,many] [--n 200000] [--reps 7]
import { parseArgs } from 'node:util'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify from 'fastify'
import { median } from './lib/stats.js'

const { values: opts } = parseArgs({
  options: {
    variant: { type: 'string', multiple: true, default: ['dist=dist'] },
    routes: { type: 'string', default: 'read,write,new,none' },
    n: { type: 'string', default: '200000' },
    reps: { type: 'string', default: '7' }
  }
})
const N = Number(opts.n)
const REPS = Number(opts.reps)
// `new` last: it fills the store, evicting the sessions `many` reads
const routes = opts.routes.split(',').sort((a, b) => (a === 'new') - (b === 'new'))

function hooksOf (app) {
  const sym = Object.getOwnPropertySymbols(app).find((s) => s.description === 'fastify.hooks')
  const hooks = app[sym]
  const pick = (name, fnName) => hooks[name].find((f) => f.name === fnName)
  return { load: pick('onRequest', 'loadSession'), save: pick('onSend', 'saveSession') }
}

async function build (dir) {
  const { default: sessions } = await import(pathToFileURL(resolve(dir) + '/index.js').href)
  const app = Fastify()
  await app.register(sessions, { secret: 'x'.repeat(32) })
  app.get('/', () => 'ok')
  await app.ready()
  const { load, save } = hooksOf(app)
  if (load === undefined || save === undefined) throw new Error(`${dir}: loadSession/saveSession hooks not found`)
  return { app, load, save }
}

const MANY = 10_000
const FILL = 100_000
/** Indexes into the `many` cookies, in an order made once so that every variant reads the same sessions. */
const picks = Uint16Array.from({ length: 65536 }, () => Math.floor(Math.random() * MANY))

/** Answers µs of CPU per simulated request of `route`. */
function run ({ load, save }, route, cookie, n, manyCookies) {
  const headers = route === 'new' ? {} : { cookie }
  const routeOptions = { config: { url: '/', method: 'GET' } }
  const log = { warn () {}, error () {} }
  const reply = {
    headers: {},
    header (k, v) { this.headers[k] = v; return this },
    code () { return this },
    send () { return this }
  }
  const request = { headers, session: null, protocol: 'http', routeOptions, log }
  let failures = 0
  const done = (err) => { if (err) failures++ }
  const c0 = process.cpuUsage()
  for (let i = 0; i < n; i++) {
    request.session = null
    reply.headers = {}
    if (route === 'many') headers.cookie = manyCookies[picks[i & 65535]]
    load(request, reply, done)
    const s = request.session
    if (route === 'read' || route === 'many') {
      if (s.get('v') !== 'hello') failures++
    } else if (route === 'write') {
      s.set('n', s.get('n') + 1)
    } else if (route === 'new') {
      s.set('v', 'new')
    }
    save(request, reply, 'ok', done)
  }
  const c = process.cpuUsage(c0)
  if (failures > 0) throw new Error(`${failures} failures`)
  return (c.user + c.system) / n
}

const variants = []
for (const v of opts.variant) {
  const [name, dir] = v.split('=')
  const built = await build(dir)
  // A session to read, made through the same hooks.
  const request = { headers: {}, session: null, protocol: 'http', routeOptions: { config: {} }, log: { warn () {} } }
  const reply = { headers: {}, header (k, val) { this.headers[k] = val; return this } }
  const seed = () => {
    reply.headers = {}
    request.session = null
    built.load(request, reply, () => {})
    request.session.set('v', 'hello')
    request.session.set('n', 0)
    built.save(request, reply, 'ok', () => {})
    return String(reply.headers['set-cookie']).split(';')[0]
  }
  const cookie = seed()
  const manyCookies = []
  if (routes.includes('many')) {
    for (let i = 0; i < MANY; i++) manyCookies.push(seed())
    for (let i = MANY + 1; i < FILL; i++) seed()
  }
  variants.push({ name, built, cookie, manyCookies })
}

const results = {}
for (const route of routes) {
  for (const v of variants) run(v.built, route, v.cookie, Math.min(N, 20000), v.manyCookies)
  for (let rep = 0; rep < REPS; rep++) {
    for (const v of variants) {
      global.gc?.()
      ;((results[route] ??= {})[v.name] ??= []).push(run(v.built, route, v.cookie, N, v.manyCookies))
    }
  }
}

console.log('| route | variant | min µs/req | median µs/req | min vs first |')
console.log('| --- | --- | ---: | ---: | ---: |')
for (const route of routes) {
  const first = Math.min(...results[route][variants[0].name])
  for (const v of variants) {
    const list = results[route][v.name]
    const lo = Math.min(...list)
    console.log(`| ${route} | ${v.name} | ${lo.toFixed(3)} | ${median(list).toFixed(3)} | ${(lo - first >= 0 ? '+' : '') + (lo - first).toFixed(3)} |`)
  }
}
for (const v of variants) await v.built.app.close()

// Bare Fastify + @fastify/cookie: the same routes without a session library.
// "Sessions" are a plain Map keyed by the raw cookie value (no signing, no
// store abstraction), capped like our memory provider, so every route does
// the least work that still gives the same answers.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { defineRoutes, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()
const MAX = 100_000
const store = new Map()
let seq = 0
// Evicts through one cursor kept between evictions, as our memory provider
// does: a fresh keys() iterator would walk every slot already deleted at the
// front of the table, tens of microseconds per new session once the store is
// full, and make bare Fastify's `new` route look slower than it is.
let evictor = null

const app = Fastify({ logger: false })
await app.register(fastifyCookie)
app.decorateRequest('baselineRecord', null)

function record (request) {
  const id = request.cookies.sessionid
  return id === undefined ? undefined : store.get(id)
}

defineRoutes(app, {
  get (request, key) {
    return record(request)?.[key]
  },
  set (request, reply, key, value) {
    let rec = record(request)
    if (rec === undefined) {
      rec = request.baselineRecord
      if (rec === null) {
        const id = 'b' + (++seq)
        rec = request.baselineRecord = {}
        if (store.size >= MAX) {
          evictor ??= store.keys()
          store.delete(evictor.next().value)
        }
        store.set(id, rec)
        reply.setCookie('sessionid', id, { path: '/', httpOnly: true, sameSite: 'lax' })
      }
    }
    rec[key] = value
  }
}, { optOut: true, faults: config.faults })

await serve(app)

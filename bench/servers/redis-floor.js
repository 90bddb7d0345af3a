// Diagnostic, not a session library: bare Fastify + @fastify/cookie (the
// baseline's routes and in-process counters) plus the Redis round trips a
// server-side store cannot avoid, one before the handler of a request with a
// cookie and one after a handler that set something. `calls: 'ping'` makes
// each a PING, the least a round trip costs; `calls: 'provider'` makes them
// the redis provider's own get() and update() of one stored session, the
// commands and the Redis work fastify-sessions needs without the plugin
// around them. Beside the full plugin they split its cost into round trips,
// store work and plugin work.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { bareSessions } from '../lib/bare-sessions.js'
import { defineRoutes, failStartup, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()

try {
  const dist = config.module ?? new URL('../../dist/', import.meta.url).href
  const { RedisProvider } = await import(new URL('providers/redis.js', dist).href)
  const provider = new RedisProvider({ url: config.url, prefix: config.prefix })
  const connection = provider.client
  const KEY = 'floor'
  const far = Date.now() + 86_400_000
  if (config.calls === 'provider') {
    const data = new Map([['v', '"floor"'], ['n', '0']])
    if (!await provider.create(KEY, { data, createdAt: Date.now(), lastSeenAt: Date.now(), expiresAt: far, user: null })) throw new Error('could not store the floor session')
  }
  let n = 0
  const read = config.calls === 'provider' ? () => provider.get(KEY) : () => connection.send(['PING'])
  const write = config.calls === 'provider'
    ? () => provider.update(KEY, { set: new Map([['n', String(++n)]]), delete: null, lastSeenAt: Date.now(), expiresAt: far, owned: false })
    : () => connection.send(['PING'])

  const app = Fastify({ logger: false })
  await app.register(fastifyCookie)
  app.decorateRequest('floorWrites', false)
  app.addHook('preHandler', async (request) => {
    if (request.headers.cookie !== undefined && request.routeOptions.config.session !== false) await read()
  })
  app.addHook('onSend', async (request) => {
    if (request.floorWrites) await write()
  })
  const bare = bareSessions(app, 'f')
  defineRoutes(app, {
    get: bare.get,
    set (request, reply, key, value) {
      request.floorWrites = true
      bare.set(request, reply, key, value)
    }
  }, { optOut: true, faults: config.faults })

  await serve(app, { close: () => provider.close() })
} catch (err) {
  failStartup(err)
}

// @mgcrea/fastify-session 2 with its in-memory store, or with
// @mgcrea/fastify-session-redis-store (ioredis). Configured as its README's
// quickstart (HMAC-signed id, cookie.maxAge), with our cookie name.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import fastifySession, { MemoryStore } from '@mgcrea/fastify-session'
import { defineRoutes, failStartup, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()
const TTL = 86400

try {
  let store = new MemoryStore()
  let close
  if (config.store === 'redis') {
    const { default: Redis } = await import('ioredis')
    const { RedisStore } = await import('@mgcrea/fastify-session-redis-store')
    const client = new Redis(config.url)
    store = new RedisStore({ client, ttl: TTL, ...(config.prefix === undefined ? {} : { prefix: config.prefix }) })
    close = () => client.quit()
  }

  const app = Fastify({ logger: false })
  await app.register(fastifyCookie)
  await app.register(fastifySession, {
    secret: 'x'.repeat(32),
    cookieName: 'sessionid',
    store,
    cookie: { maxAge: TTL }
  })

  defineRoutes(app, {
    get: (request, key) => request.session.get(key),
    set: (request, _reply, key, value) => request.session.set(key, value)
  }, { faults: config.faults })

  await serve(app, { close })
} catch (err) {
  failStartup(err)
}

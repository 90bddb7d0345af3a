// @fastify/session 11 with its MemoryStore, or with connect-redis 9 (on a
// node-redis client, which connect-redis 9 requires). Library defaults except
// what plain http on a bench needs (cookie.secure: false) and the cookie name;
// note its defaults: rolling: true and saveUninitialized: true.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import fastifySession from '@fastify/session'
import { defineRoutes, failStartup, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()

try {
  let store
  let close
  if (config.store === 'redis') {
    const { createClient } = await import('redis')
    const { RedisStore } = await import('connect-redis')
    const client = createClient({ url: config.url })
    await client.connect()
    store = new RedisStore({ client, ...(config.prefix === undefined ? {} : { prefix: config.prefix }) })
    close = () => client.quit()
  }

  const app = Fastify({ logger: false })
  await app.register(fastifyCookie)
  await app.register(fastifySession, {
    secret: 'x'.repeat(32),
    cookieName: 'sessionid',
    cookie: { secure: false },
    ...(store === undefined ? {} : { store })
  })

  defineRoutes(app, {
    get: (request, key) => request.session.get(key),
    set: (request, _reply, key, value) => request.session.set(key, value)
  }, { faults: config.faults })

  await serve(app, { close })
} catch (err) {
  failStartup(err)
}

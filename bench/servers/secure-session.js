// @fastify/secure-session 8: stateless, the whole session sealed in the
// cookie (libsodium secretbox), so there is no store and nothing to look up.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import fastifySecureSession from '@fastify/secure-session'
import { defineRoutes, failStartup, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()

try {
  const app = Fastify({ logger: false })
  await app.register(fastifyCookie)
  await app.register(fastifySecureSession, {
    key: Buffer.alloc(32, 7),
    cookieName: 'sessionid',
    cookie: { path: '/', httpOnly: true, sameSite: 'lax' }
  })

  defineRoutes(app, {
    get: (request, key) => request.session.get(key),
    set: (request, _reply, key, value) => request.session.set(key, value)
  }, { faults: config.faults })

  await serve(app)
} catch (err) {
  failStartup(err)
}

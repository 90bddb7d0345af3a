// Bare Fastify + @fastify/cookie: the same routes without a session library,
// over the plain capped Map of bench/lib/bare-sessions.js.
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { bareSessions } from '../lib/bare-sessions.js'
import { defineRoutes, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()

const app = Fastify({ logger: false })
await app.register(fastifyCookie)
defineRoutes(app, bareSessions(app, 'b'), { optOut: true, faults: config.faults })

await serve(app)

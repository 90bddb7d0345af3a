// fastify-sessions (this repo, built to dist/) with the provider named in
// the config: memory, redis, postgres or sqlite.
import Fastify from 'fastify'
import { defineRoutes, failStartup, serve, serverConfig } from '../lib/server.js'

const config = serverConfig()
const provider = config.provider ?? 'memory'

try {
  // `module` (bench-only): load the plugin from another build of it, e.g. a
  // patched copy of dist/ for an A/B experiment.
  const { default: sessions } = await import(config.module ?? 'fastify-sessions')
  if (provider !== 'memory') await import(config.module === undefined ? `fastify-sessions/providers/${provider}` : new URL(`providers/${provider}.js`, config.module).href)

  const app = Fastify({ logger: false })
  await app.register(sessions, {
    secret: 'x'.repeat(32),
    provider,
    providerOptions: config.providerOptions,
    ...config.pluginOptions
  })

  defineRoutes(app, {
    get: (request, key) => request.session.get(key),
    set: (request, _reply, key, value) => request.session.set(key, value),
    touch: (request) => request.session.touch()
  }, { optOut: true, faults: config.faults })

  await serve(app)
} catch (err) {
  failStartup(err)
}

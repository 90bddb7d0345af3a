// The implementations under test and the routes every one of them serves.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const here = (p) => fileURLToPath(new URL(p, import.meta.url))

export const SERVERS_DIR = here('../servers/')
export const DIST_DIR = here('../../dist/')

/**
 * id, label, server script, config (handed to the server), optOut (whether
 * `none-optout` applies), stateless (a store that cannot count across
 * requests), needs (a service that must answer), ours (a provider of ours;
 * its compiled module must exist in dist/), diagnostic (run only when asked
 * for by --impls: not a session library, but a floor to read the others by).
 *
 * Store names are per run (`redisPrefix`, `pgTable`, `sqliteFile`) so that
 * runs never touch each other's data, nor anybody else's. `module` is the
 * build of fastify-sessions the servers load (a snapshot of dist/ taken at
 * the start of the run: dist/ may be rebuilt while the bench runs).
 */
export function implementations ({ redisUrl, pgUrl, sqliteFile, redisPrefix = 'bench:', pgTable = 'bench_sessions', module }) {
  const ours = (provider, providerOptions) => ({ provider, ...(providerOptions === undefined ? {} : { providerOptions }), ...(module === undefined ? {} : { module }) })
  return [
    { id: 'baseline', label: 'bare Fastify + @fastify/cookie', script: 'baseline.js', config: {}, optOut: true },
    { id: 'ours-memory', label: 'fastify-sessions (memory)', script: 'fastify-sessions.js', config: ours('memory'), optOut: true, ours: 'memory' },
    { id: 'ours-redis', label: 'fastify-sessions (redis)', script: 'fastify-sessions.js', config: ours('redis', { url: redisUrl, prefix: redisPrefix + 'ours:' }), optOut: true, ours: 'redis', needs: 'redis' },
    { id: 'ours-postgres', label: 'fastify-sessions (postgres)', script: 'fastify-sessions.js', config: ours('postgres', { connectionString: pgUrl, tableName: pgTable }), optOut: true, ours: 'postgres', needs: 'postgres' },
    { id: 'ours-sqlite', label: 'fastify-sessions (sqlite)', script: 'fastify-sessions.js', config: ours('sqlite', { filename: sqliteFile }), optOut: true, ours: 'sqlite' },
    { id: 'fsession-memory', label: '@fastify/session (MemoryStore)', script: 'fastify-session.js', config: { store: 'memory' } },
    { id: 'fsession-redis', label: '@fastify/session + connect-redis', script: 'fastify-session.js', config: { store: 'redis', url: redisUrl, prefix: redisPrefix + 'fsession:' }, needs: 'redis' },
    { id: 'mgcrea-memory', label: '@mgcrea/fastify-session (memory)', script: 'mgcrea-session.js', config: { store: 'memory' } },
    { id: 'mgcrea-redis', label: '@mgcrea/fastify-session (redis)', script: 'mgcrea-session.js', config: { store: 'redis', url: redisUrl, prefix: redisPrefix + 'mgcrea:' }, needs: 'redis' },
    { id: 'redis-floor-ping', label: 'diagnostic: bare Fastify + a Redis PING per store call', script: 'redis-floor.js', config: { url: redisUrl, calls: 'ping', ...(module === undefined ? {} : { module }) }, optOut: true, needs: 'redis', diagnostic: true },
    { id: 'redis-floor-provider', label: 'diagnostic: bare Fastify + the redis provider\'s store calls', script: 'redis-floor.js', config: { url: redisUrl, prefix: redisPrefix + 'floor:', calls: 'provider', ...(module === undefined ? {} : { module }) }, optOut: true, needs: 'redis', diagnostic: true },
    { id: 'secure-session', label: '@fastify/secure-session (stateless)', script: 'secure-session.js', config: {}, stateless: true }
  ]
}

/** Why an implementation cannot run here, or null when it can be tried. */
export function unavailableReason (impl) {
  if (impl.ours !== undefined && impl.ours !== 'memory' && !existsSync(DIST_DIR + `providers/${impl.ours}.js`)) {
    return `dist/providers/${impl.ours}.js does not exist (providers/${impl.ours}.ts missing or not compiled)`
  }
  if (!existsSync(DIST_DIR + 'index.js')) return 'dist/index.js does not exist: run npm run build'
  return null
}

/** Measured routes, in the order each round runs them (`new` last: it fills the stores). */
export const ROUTES = ['read', 'write', 'none', 'none-optout', 'many', 'new']

export const ROUTE_NOTES = {
  read: 'valid cookie, reads one value and returns it',
  write: 'valid cookie, increments a counter and returns it',
  none: 'valid cookie, the handler does not touch the session',
  'none-optout': 'as none, on a route with config: { session: false }',
  many: '10,000 live sessions, each request picks one at random and reads its value',
  new: 'no cookie, sets a value (a new session and a Set-Cookie)'
}

/** Targets (ratio of req/s to bare Fastify) from the issue. */
export const TARGETS = {
  'ours-memory': { read: 0.85, write: 0.70, new: 0.75, 'none-optout': 0.97, none: 0.85, many: 0.80 },
  'ours-redis': { read: 0.50, write: 0.45, new: 0.50, 'none-optout': 0.97, none: 0.50, many: 0.50 }
}

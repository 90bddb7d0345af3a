import type { FastifyContextConfig, FastifyRequest } from 'fastify'

type RouteConfigOf = (request: FastifyRequest) => FastifyContextConfig

/** What Fastify 5 describes the symbol of a request's route context with. */
const CONTEXT_DESCRIPTION = 'fastify.context'

/**
 * A reader of the `config` of a request's route, for the plugin to find
 * `session: false` on every request.
 *
 * `request.routeOptions` builds a twelve-field object, and asks the server
 * whether it has version constraints, on every read: 50 to 220 ns in a
 * micro-benchmark over real requests, where reading the context took 5 to
 * 45 (the more request shapes, the slower both). Fastify keeps the route's context, whose `config` that getter hands out,
 * on the request under a symbol of its own. The reader looks for it on the
 * first request and takes it only when it leads to the very object
 * `routeOptions` gives; otherwise (another Fastify) it keeps to
 * `routeOptions`. The check is made once: Fastify sets that symbol on every
 * request it makes, to the context `routeOptions` reads. The test of this
 * module fails when the shortcut is not taken on the installed Fastify.
 */
export function routeConfigReader (): RouteConfigOf {
  let key: symbol | null | undefined
  return function routeConfigOf (request) {
    if (key === undefined) key = contextKey(request)
    return key === null ? request.routeOptions.config : (request as unknown as Record<symbol, { config: FastifyContextConfig }>)[key].config
  }
}

/** @internal The symbol Fastify keeps the request's route context under, or `null` where there is none that leads to its config. */
export function contextKey (request: FastifyRequest): symbol | null {
  const config = request.routeOptions.config
  for (const key of Object.getOwnPropertySymbols(request)) {
    if (key.description !== CONTEXT_DESCRIPTION) continue
    const context = (request as unknown as Record<symbol, { config?: unknown } | null | undefined>)[key]
    if (context?.config === config) return key
  }
  return null
}

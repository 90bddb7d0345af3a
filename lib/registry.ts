import { FST_SESSION_PROVIDER_CONFLICT, FST_SESSION_UNKNOWN_PROVIDER, FST_SESSION_INVALID_PROVIDER } from './errors.js'
import type { ProviderFactory } from './provider.js'

/**
 * Provider names and the options each takes. Every provider module augments
 * it when imported, so `provider: 'redis'` only type-checks once
 * `fastify-sessions/providers/redis` is imported:
 *
 * ```ts
 * declare module 'fastify-sessions' {
 *   interface SessionProviders { mystore: MyStoreOptions }
 * }
 * ```
 */
export interface SessionProviders {}

const factories = new Map<string, ProviderFactory>()

/** The providers this package ships besides `memory`, each registered by importing its module. */
const BUNDLED = new Set(['redis', 'postgres', 'sqlite', 'connect', 'cookie'])

/**
 * Makes `factory` available under `name`, as Go's `session.Register` does from
 * a provider package's `init`. Registering the same factory twice is a no-op
 * (a module may be loaded twice); another factory under a taken name throws
 * `FST_SESSION_PROVIDER_CONFLICT`.
 */
export function registerProvider<Name extends string> (
  name: Name,
  factory: ProviderFactory<Name extends keyof SessionProviders ? SessionProviders[Name] : any>
): void {
  if (typeof name !== 'string' || name === '') {
    throw new FST_SESSION_INVALID_PROVIDER('a provider name must be a non-empty string')
  }
  if (typeof factory !== 'function') {
    throw new FST_SESSION_INVALID_PROVIDER(`the factory for "${name}" is not a function`)
  }
  const existing = factories.get(name)
  if (existing !== undefined && existing !== factory) {
    throw new FST_SESSION_PROVIDER_CONFLICT(name)
  }
  factories.set(name, factory)
}

/** The factory registered under `name`; throws `FST_SESSION_UNKNOWN_PROVIDER` when there is none. */
export function getProvider (name: string): ProviderFactory {
  const factory = factories.get(name)
  if (factory === undefined) {
    throw new FST_SESSION_UNKNOWN_PROVIDER(name, BUNDLED.has(name)
      ? `Did you forget import 'fastify-sessions/providers/${name}'?`
      : 'Import the module that registers it (registerProvider) before registering the plugin, or check the name.')
  }
  return factory
}

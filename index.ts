import { sessions } from './lib/plugin.js'
import './providers/memory.js'

export { sessions as fastifySessions }
export { registerProvider, getProvider, type SessionProviders } from './lib/registry.js'
export type { SessionProvider, StatelessSessionProvider, SealedSession, ProviderFactory, StoredSession, NewSession, SessionPatch, UserSessionRecord } from './lib/provider.js'
export { Session, type SessionData, type SessionKey, type SessionValue } from './lib/session.js'
export { decodeCookieValue } from './lib/cookie.js'
export { SessionManager, type UserSessionEntry } from './lib/manager.js'
export type { SessionPluginOptions, SessionPluginBaseOptions, SessionCookieOptions } from './lib/options.js'
export * from './lib/errors.js'
export { MemoryProvider, createMemoryProvider, type MemoryProviderOptions } from './providers/memory.js'
export default sessions

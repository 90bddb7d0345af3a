import { FST_SESSION_INVALID_OPTION, FST_SESSION_PROVIDER_OPTION } from './errors.js'
import type { CookieAttributes } from './cookie.js'
import type { SessionProvider, StatelessSessionProvider } from './provider.js'
import type { SessionProviders } from './registry.js'

/** Attributes of the session cookie. */
export interface SessionCookieOptions {
  /** Starts with `/`. @default '/' */
  path?: string | undefined
  /** Absent: a host-only cookie. @default undefined */
  domain?: string | undefined
  /** @default true */
  httpOnly?: boolean | undefined
  /** @default 'lax' */
  sameSite?: 'lax' | 'strict' | 'none' | false | undefined
  /**
   * `'auto'` sets Secure when the request came over https, as Fastify sees it
   * (so `trustProxy` and `X-Forwarded-Proto` count).
   * @default 'auto'
   */
  secure?: boolean | 'auto' | undefined
  /**
   * Lifetime of the cookie in whole seconds (`Max-Age`), sent again whenever
   * the idle deadline is written; at least `maxLifetime` (or
   * `absoluteLifetime`, when shorter). Browsers keep a cookie 400 days at
   * most. Absent: a browser-session cookie, gone when the browser closes
   * (the server-side deadlines apply either way).
   * @default undefined
   */
  maxAge?: number | undefined
  /** CHIPS: the cookie is partitioned by top-level site (needs Secure). @default false */
  partitioned?: boolean | undefined
}

/** Options shared by every way of naming the provider. */
export interface SessionPluginBaseOptions {
  /**
   * One secret or several, each at least 32 characters. The first signs new
   * cookies; every one verifies, and a cookie verified by an older secret is
   * re-signed with the first on that response: deploy `[newSecret, oldSecret]`
   * to rotate without logging anybody out. Required: `undefined` (an unset
   * environment variable) fails registration with `FST_SESSION_INVALID_OPTION`.
   */
  secret: string | readonly string[] | undefined
  /** Name of the session cookie. @default 'sessionid' */
  cookieName?: string | undefined
  /** Session cookie attributes; each has its own default. @default {} */
  cookie?: SessionCookieOptions | undefined
  /** Idle timeout in seconds: from 0.001 to 10¹², rounded to the millisecond. @default 3600 */
  maxLifetime?: number | undefined
  /** Seconds from creation after which a session ends whatever its activity; bounds and rounding as `maxLifetime`. @default 86400 */
  absoluteLifetime?: number | undefined
  /** Seconds between sweeps, for providers that need them; 0 disables the timer. From 0.001, rounded to the millisecond, to 2147483.647 (2³¹ − 1 ms, Node's longest timer). @default 60 */
  gcInterval?: number | undefined
  /**
   * Seconds (0, or from 0.001, rounded to the millisecond): a request that
   * only reads refreshes the idle deadline in the store at most once per
   * this interval, so reads cost no write. Must be
   * shorter than `maxLifetime`, or a session that is only read would expire
   * before it is touched.
   * @default maxLifetime / 10
   */
  touchAfter?: number | undefined
  /** Milliseconds each provider call may take before it counts as a store failure. At most 2147483647 (Node's longest timer). @default 2000 */
  storeTimeout?: number | undefined
  /**
   * What a request gets when the store fails or times out: `'fail'` answers
   * 503 `FST_SESSION_STORE_UNAVAILABLE`; `'continue'` serves the request with
   * an empty session that is not saved.
   * @default 'fail'
   */
  onStoreError?: 'fail' | 'continue' | undefined
  /** Bytes of JSON the session's data may take. @default 65536 */
  maxSessionSize?: number | undefined
  /** The session key whose value names the session's owner, for listing and ending a user's sessions. @default 'userId' */
  userKey?: string | undefined
  /** Session keys whose values `listUserSessions` shows beside each session. @default [] */
  userInfoKeys?: readonly string[] | undefined
}

type NamedProviderOptions = {
  [Name in keyof SessionProviders]: {
    /** A registered provider name. @default 'memory' */
    provider: Name
  } & ({} extends SessionProviders[Name]
    ? {
        /** Options for that provider's factory. @default {} */
        providerOptions?: SessionProviders[Name] | undefined
      }
    : {
        /** Options for that provider's factory: required, since some of them are. */
        providerOptions: SessionProviders[Name]
      })
}[keyof SessionProviders]

type DefaultProviderOptions = SessionProviders extends { memory: infer MemoryOptions }
  ? {
      /** The provider: absent, the embedded `memory` one. @default 'memory' */
      provider?: undefined
      /** Options of the memory provider. @default {} */
      providerOptions?: MemoryOptions | undefined
    }
  : never

/** Options of the session plugin. */
export type SessionPluginOptions = SessionPluginBaseOptions & (
  | NamedProviderOptions
  | DefaultProviderOptions
  | {
    /** A provider instance, e.g. another app's `fastify.sessions.provider`. The plugin does not close it. */
    provider: SessionProvider | StatelessSessionProvider
    /** Not taken with an instance, which is already configured (an empty object is let through). */
    providerOptions?: Record<string, never> | undefined
  }
)

/** The options after validation, with every default filled in. Times are milliseconds. */
export interface ResolvedOptions {
  readonly secrets: readonly string[]
  readonly cookieName: string
  readonly cookie: Readonly<CookieAttributes>
  readonly idleMs: number
  readonly absoluteMs: number
  readonly gcIntervalMs: number
  readonly touchAfterMs: number
  readonly storeTimeout: number
  readonly onStoreError: 'fail' | 'continue'
  readonly maxSessionSize: number
  readonly userKey: string
  readonly userInfoKeys: readonly string[]
}

const MIN_SECRET_LENGTH = 32
/** Node fires a longer timer after 1 ms instead. */
const MAX_TIMER_MS = 2 ** 31 - 1
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const COOKIE_ATTRIBUTE = /^[\u0021-\u003A\u003C-\u007E]+$/

/** What `register` takes: the plugin's own options, and those Fastify reads from every plugin's. */
const PLUGIN_OPTIONS = [
  'secret', 'cookieName', 'cookie', 'maxLifetime', 'absoluteLifetime', 'gcInterval', 'touchAfter', 'storeTimeout',
  'onStoreError', 'maxSessionSize', 'userKey', 'userInfoKeys', 'provider', 'providerOptions',
  'prefix', 'logLevel', 'logSerializers'
]
const COOKIE_OPTIONS = ['path', 'domain', 'httpOnly', 'sameSite', 'secure', 'maxAge', 'partitioned']

/**
 * The first key of `options` outside `known`, and why it is refused, naming
 * the known one it looks like; `null` when every key is known. A misspelt
 * option would otherwise be ignored and its default taken without a word.
 */
function unknownOption (options: object, known: readonly string[]): { name: string, why: string } | null {
  for (const name of Object.keys(options)) {
    if (known.includes(name)) continue
    return { name, why: notAnOption(lookalike(name, known)) }
  }
  return null
}

/**
 * For providers: throws `FST_SESSION_PROVIDER_OPTION` for the first key of
 * their options outside `known`. What is not an object is left to their own
 * checks.
 */
export function checkOptionNames (provider: string, options: unknown, known: readonly string[]): void {
  if (typeof options !== 'object' || options === null) return
  const unknown = unknownOption(options, known)
  if (unknown !== null) throw new FST_SESSION_PROVIDER_OPTION(provider, `"${unknown.name}" is ${unknown.why}`)
}

/** The option among `known` that `name` looks like, if any: probably the one meant. */
function lookalike (name: string, known: readonly string[]): string | undefined {
  return known.find((option) => looksLike(name, option))
}

function notAnOption (like: string | undefined): string {
  return `not an option${like === undefined ? '' : `; did you mean "${like}"?`}`
}

/** The same but for case, or one character added, dropped or changed. */
function looksLike (typed: string, name: string): boolean {
  const a = typed.toLowerCase()
  const b = name.toLowerCase()
  if (a === b) return true
  if (Math.abs(a.length - b.length) > 1) return false
  let i = 0
  while (i < a.length && a[i] === b[i]) i++
  let j = 0
  while (j < a.length - i && j < b.length - i && a[a.length - 1 - j] === b[b.length - 1 - j]) j++
  return a.length - i - j <= 1 && b.length - i - j <= 1
}

function invalid (name: string, why: string): never {
  throw new FST_SESSION_INVALID_OPTION(name, why)
}

/**
 * Deadlines are whole milliseconds since the epoch, kept as integers by the
 * stores (a PostgreSQL bigint, Redis's PEXPIREAT) and as a `Date` by cookies
 * and connect stores: 10¹² seconds from now is still one of each, and far
 * past any lifetime meant as "no limit".
 */
const MAX_LIFETIME = 1e12

/** A duration option in seconds, at most `max`; a positive one is at least a millisecond. */
function seconds (name: string, value: unknown, fallback: number, allowZero = false, max = MAX_LIFETIME): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (value === 0 && !allowZero)) {
    invalid(name, `expected a ${allowZero ? 'non-negative' : 'positive'} number of seconds`)
  }
  if (value > max) invalid(name, `expected at most ${max} seconds`)
  if (value > 0 && value < 0.001) invalid(name, 'expected 0.001 seconds or more: durations are whole milliseconds')
  return value
}

/** Seconds as whole milliseconds, so that every deadline made from them is a whole number too. */
function ms (value: number): number {
  return Math.round(value * 1000)
}

/** Max-Age takes whole seconds; rounding 0.5 down would delete the cookie as it is set. */
function wholeSeconds (name: string, value: unknown): number {
  if (!Number.isSafeInteger(value) || (value as number) < 1) invalid(name, 'expected a whole number of seconds, at least 1')
  return value as number
}

function oneOf<T> (name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback
  if (!allowed.includes(value as T)) invalid(name, `expected one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`)
  return value as T
}

function attribute (name: string, value: unknown, fallback: string | undefined): string | undefined {
  if (value === undefined) return fallback
  if (typeof value !== 'string' || !COOKIE_ATTRIBUTE.test(value)) invalid(name, 'expected a non-empty string without ";" or spaces')
  return value
}

function resolveSecrets (secret: unknown): string[] {
  const secrets = typeof secret === 'string' ? [secret] : secret
  if (!Array.isArray(secrets) || secrets.length === 0) invalid('secret', 'a string or a non-empty array of strings is required')
  for (const s of secrets) {
    if (typeof s !== 'string' || s.length < MIN_SECRET_LENGTH) {
      invalid('secret', `every secret must be a string of at least ${MIN_SECRET_LENGTH} characters`)
    }
  }
  return [...secrets]
}

function resolveCookie (cookieName: string, cookie: SessionCookieOptions = {}): CookieAttributes {
  if (typeof cookie !== 'object' || cookie === null) invalid('cookie', 'expected an object')
  const unknown = unknownOption(cookie, COOKIE_OPTIONS)
  if (unknown !== null) invalid('cookie.' + unknown.name, unknown.why)
  const attributes: CookieAttributes = {
    path: attribute('cookie.path', cookie.path, '/') as string,
    domain: attribute('cookie.domain', cookie.domain, undefined),
    httpOnly: oneOf('cookie.httpOnly', cookie.httpOnly, [true, false], true),
    sameSite: oneOf('cookie.sameSite', cookie.sameSite, ['lax', 'strict', 'none', false] as const, 'lax'),
    secure: oneOf('cookie.secure', cookie.secure, [true, false, 'auto'] as const, 'auto'),
    maxAge: cookie.maxAge === undefined ? undefined : wholeSeconds('cookie.maxAge', cookie.maxAge),
    partitioned: oneOf('cookie.partitioned', cookie.partitioned, [true, false], false)
  }
  // a browser ignores any other Path and uses the request's directory instead
  if (!attributes.path.startsWith('/')) invalid('cookie.path', 'must start with "/"')
  if (attributes.sameSite === 'none' && attributes.secure === false) {
    invalid('cookie.sameSite', 'browsers reject SameSite=None without Secure')
  }
  if (attributes.partitioned && attributes.secure === false) {
    invalid('cookie.partitioned', 'a partitioned cookie must be Secure')
  }
  // browsers match the prefixes without regard to case (RFC 6265bis)
  const prefix = cookieName.slice(0, 9).toLowerCase()
  if (prefix === '__secure-' && attributes.secure !== true) {
    invalid('cookieName', 'a __Secure- cookie needs cookie.secure: true')
  }
  if (prefix.startsWith('__host-') &&
    (attributes.secure !== true || attributes.path !== '/' || attributes.domain !== undefined)) {
    invalid('cookieName', 'a __Host- cookie needs cookie.secure: true, path "/" and no domain')
  }
  return attributes
}

/**
 * The keys given to `register` that are not the plugin's. One that looks like
 * an option of its (`cookiename`) is a typo, refused with
 * `FST_SESSION_INVALID_OPTION`; the others are answered, for the plugin to log:
 * tooling hands plugins keys of its own (fastify-cli's `skipOverride`, or the
 * app's options that @fastify/autoload merges into a plugin's), and they must
 * not stop the app.
 */
export function foreignOptions (options: object): string[] {
  const foreign: string[] = []
  for (const name of Object.keys(options)) {
    if (PLUGIN_OPTIONS.includes(name)) continue
    const like = lookalike(name, PLUGIN_OPTIONS)
    if (like !== undefined) invalid(name, notAnOption(like))
    foreign.push(name)
  }
  return foreign
}

/** Validates the plugin's own options and fills in the defaults; keys it does not know are `foreignOptions`' concern. */
export function resolveOptions (options: SessionPluginBaseOptions): ResolvedOptions {
  const secrets = resolveSecrets(options.secret)
  const cookieName = options.cookieName ?? 'sessionid'
  if (typeof cookieName !== 'string' || !COOKIE_NAME.test(cookieName)) invalid('cookieName', 'expected a cookie name token')
  const maxLifetime = seconds('maxLifetime', options.maxLifetime, 3600)
  const absoluteLifetime = seconds('absoluteLifetime', options.absoluteLifetime, 86400)
  const touchAfter = seconds('touchAfter', options.touchAfter, maxLifetime / 10, true)
  if (ms(touchAfter) >= ms(maxLifetime)) invalid('touchAfter', 'must be shorter than maxLifetime, or a session that is only read expires before it is touched')
  const cookie = resolveCookie(cookieName, options.cookie)
  // a session lives at most the shorter of the two
  if (cookie.maxAge !== undefined && cookie.maxAge * 1000 < Math.min(ms(maxLifetime), ms(absoluteLifetime))) {
    invalid('cookie.maxAge', 'must be at least maxLifetime (or absoluteLifetime, when shorter): the cookie goes out again only when the deadline is written, at most once per touchAfter and no more once absoluteLifetime caps it, so a shorter one would be dropped from a session in use')
  }
  const storeTimeout = options.storeTimeout ?? 2000
  if (typeof storeTimeout !== 'number' || !(storeTimeout > 0) || storeTimeout > MAX_TIMER_MS) invalid('storeTimeout', `expected a positive number of milliseconds, at most ${MAX_TIMER_MS}`)
  const gcInterval = seconds('gcInterval', options.gcInterval, 60, true, MAX_TIMER_MS / 1000)
  const maxSessionSize = options.maxSessionSize ?? 65536
  if (!Number.isSafeInteger(maxSessionSize) || maxSessionSize < 2) invalid('maxSessionSize', 'expected a whole number of bytes, at least 2')
  const userKey = options.userKey ?? 'userId'
  if (typeof userKey !== 'string' || userKey === '') invalid('userKey', 'expected a non-empty string')
  const userInfoKeys = options.userInfoKeys ?? []
  if (!Array.isArray(userInfoKeys) || !userInfoKeys.every((k) => typeof k === 'string')) invalid('userInfoKeys', 'expected an array of strings')
  return Object.freeze({
    secrets,
    cookieName,
    cookie: Object.freeze(cookie),
    idleMs: ms(maxLifetime),
    absoluteMs: ms(absoluteLifetime),
    gcIntervalMs: ms(gcInterval),
    touchAfterMs: ms(touchAfter),
    storeTimeout,
    onStoreError: oneOf('onStoreError', options.onStoreError, ['fail', 'continue'] as const, 'fail'),
    maxSessionSize,
    userKey,
    userInfoKeys: Object.freeze([...userInfoKeys])
  })
}

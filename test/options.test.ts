import t from 'tap'
import Fastify from 'fastify'
import sessions, { registerProvider, getProvider, createMemoryProvider, type SessionPluginOptions } from '../index.js'
import { SECRET } from './fixtures/app.js'
import { RecordingProvider } from './fixtures/providers.js'
import { captureLogs, WARN } from './fixtures/log-capture.js'
import '../providers/sqlite.js'

async function registrationError (options: Record<string, unknown>): Promise<{ code?: string, message: string } | null> {
  const app = Fastify()
  try {
    await app.register(sessions, options as unknown as SessionPluginOptions)
    await app.ready()
    return null
  } catch (err) {
    return err as { code?: string, message: string }
  } finally {
    await app.close()
  }
}

t.test('registration fails with a coded error for each invalid option', async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['no secret', { secret: undefined }],
    ['a short secret', { secret: 'short' }],
    ['an empty secret list', { secret: [] }],
    ['a short secret among good ones', { secret: [SECRET, 'short'] }],
    ['a secret that is not a string', { secret: 42 }],
    ['a cookie name with a space', { cookieName: 'bad name' }],
    ['a zero maxLifetime', { maxLifetime: 0 }],
    ['a maxLifetime under a millisecond', { maxLifetime: 0.0004 }],
    ['a touchAfter under a millisecond', { touchAfter: 0.0004 }],
    ['a maxLifetime past the millisecond deadlines stores keep', { maxLifetime: 1e17, absoluteLifetime: 1e17 }],
    ['an absoluteLifetime over 10¹² seconds', { absoluteLifetime: 1e12 + 1 }],
    ['a gcInterval under a millisecond, which would round to no sweep', { gcInterval: 0.0004 }],
    ['a touchAfter that rounds to maxLifetime', { maxLifetime: 1, touchAfter: 0.9998 }],
    ['a negative absoluteLifetime', { absoluteLifetime: -1 }],
    ['a string touchAfter', { touchAfter: '10' }],
    ['an infinite gcInterval', { gcInterval: Infinity }],
    ['a zero storeTimeout', { storeTimeout: 0 }],
    ['a storeTimeout longer than Node can time', { storeTimeout: 2 ** 31 }],
    ['a gcInterval longer than Node can time', { gcInterval: 30 * 86400 }],
    ['a touchAfter as long as maxLifetime', { maxLifetime: 60, touchAfter: 60 }],
    ['a touchAfter longer than the default maxLifetime', { touchAfter: 7200 }],
    ['a cookie maxAge under a second', { cookie: { maxAge: 0.5 } }],
    ['a fractional cookie maxAge', { cookie: { maxAge: 90.5 } }],
    ['a cookie maxAge under maxLifetime, which would drop the cookie from a session in use', { maxLifetime: 60, cookie: { maxAge: 59 } }],
    ['a cookie maxAge under the default maxLifetime', { cookie: { maxAge: 3599 } }],
    ['a path that does not start with /, which browsers replace', { cookie: { path: 'app' } }],
    ['an unknown onStoreError', { onStoreError: 'ignore' }],
    ['a fractional maxSessionSize', { maxSessionSize: 1.5 }],
    ['a maxSessionSize of 0', { maxSessionSize: 0 }],
    ['a maxSessionSize of 1, under the 2 bytes of an empty session', { maxSessionSize: 1 }],
    ['a secret of 31 characters', { secret: 'x'.repeat(31) }],
    ['an empty userKey', { userKey: '' }],
    ['userInfoKeys that are not strings', { userInfoKeys: [1] }],
    ['a cookie that is not an object', { cookie: 'x' }],
    ['a path with a semicolon', { cookie: { path: '/;x' } }],
    ['an unknown sameSite', { cookie: { sameSite: 'loose' } }],
    ['SameSite=None without Secure', { cookie: { sameSite: 'none', secure: false } }],
    ['a partitioned cookie without Secure', { cookie: { partitioned: true, secure: false } }],
    ['a __Secure- name without secure: true', { cookieName: '__Secure-sid' }],
    ["a __Host- name with secure: 'auto'", { cookieName: '__Host-sid' }],
    ['a __Host- name with a domain', { cookieName: '__Host-sid', cookie: { secure: true, domain: 'example.com' } }],
    ['a __Host- name with a path', { cookieName: '__Host-sid', cookie: { secure: true, path: '/app' } }],
    ['a __host- name, in any case, with a domain', { cookieName: '__host-sid', cookie: { secure: true, domain: 'example.com' } }],
    ['a __SECURE- name, in any case, without secure: true', { cookieName: '__SECURE-sid' }]
  ]
  for (const [name, options] of cases) {
    const err = await registrationError({ secret: SECRET, ...options })
    t.equal(err?.code, 'FST_SESSION_INVALID_OPTION', name)
  }
})

t.test('a misspelt option fails registration, naming the option it looks like', async (t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ cookiename: 'sid' }, 'Invalid session option "cookiename": not an option; did you mean "cookieName"?'],
    [{ maxLifetme: 60 }, 'Invalid session option "maxLifetme": not an option; did you mean "maxLifetime"?'],
    [{ secrets: [SECRET] }, 'Invalid session option "secrets": not an option; did you mean "secret"?'],
    [{ useKey: 'u' }, 'Invalid session option "useKey": not an option; did you mean "userKey"?'],
    [{ onStoreErrors: 'fail' }, 'Invalid session option "onStoreErrors": not an option; did you mean "onStoreError"?'],
    [{ cookie: { samesite: 'strict' } }, 'Invalid session option "cookie.samesite": not an option; did you mean "sameSite"?'],
    [{ cookie: { expires: new Date() } }, 'Invalid session option "cookie.expires": not an option'],
    [{ providerOptions: { maxSession: 5 } }, 'Invalid option for the memory session provider: "maxSession" is not an option; did you mean "maxSessions"?']
  ]
  for (const [options, message] of cases) {
    const err = await registrationError({ secret: SECRET, ...options })
    t.equal(err?.message, message)
    t.match(err?.code, /^FST_SESSION_(INVALID|PROVIDER)_OPTION$/)
  }
  t.equal(await registrationError({ secret: SECRET, prefix: '/app', logLevel: 'warn', logSerializers: {} }), null, "Fastify's own register options are let through")
})

t.test('a key like no option, as tooling adds (fastify-cli, @fastify/autoload), is logged at warn and ignored', async (t) => {
  const logs = captureLogs('info')
  const app = Fastify({ logger: logs.logger })
  t.teardown(() => app.close())
  await app.register(sessions, { secret: SECRET, skipOverride: true, ttl: 60 } as unknown as SessionPluginOptions)
  app.get('/', async (request) => {
    request.session.set('n', 1)
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  const warned = logs.lines.filter((line) => line.level === WARN).map((line) => [line.option, line.msg])
  t.same(warned, [
    ['skipOverride', 'fastify-sessions: "skipOverride" is not one of its options and is ignored'],
    ['ttl', 'fastify-sessions: "ttl" is not one of its options and is ignored']
  ])
})

t.test('valid edge options register', async (t) => {
  t.equal(await registrationError({ secret: SECRET, cookieName: '__Host-sid', cookie: { secure: true } }), null)
  t.equal(await registrationError({ secret: SECRET, cookieName: '__Secure-sid', cookie: { secure: true, sameSite: 'none' } }), null)
  t.equal(await registrationError({ secret: [SECRET], touchAfter: 0, gcInterval: 0, maxLifetime: 0.5, absoluteLifetime: 0.25 }), null)
  t.equal(await registrationError({ secret: SECRET, storeTimeout: 2 ** 31 - 1, gcInterval: 2147483, maxLifetime: 1, cookie: { maxAge: 1 } }), null)
  t.equal(await registrationError({ secret: SECRET, maxLifetime: 60.5, touchAfter: 60, cookie: { maxAge: 61, path: '/app' } }), null)
  t.equal(await registrationError({ secret: SECRET, maxLifetime: 7200, absoluteLifetime: 600, cookie: { maxAge: 600 } }), null, 'a cookie as long as the absolute lifetime, when that is the shorter')
  t.equal(await registrationError({ secret: SECRET, maxLifetime: 60, touchAfter: 59.9 }), null)
  t.equal(await registrationError({ secret: SECRET, maxLifetime: 1e10 }), null, 'a lifetime meant as no limit')
  t.equal(await registrationError({ secret: 'x'.repeat(32), maxSessionSize: 2 }), null, 'the shortest secret and the smallest session size')
})

t.test('lifetimes in fractions of a millisecond give whole-millisecond deadlines', async (t) => {
  const provider = new RecordingProvider()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(sessions, { secret: SECRET, provider, maxLifetime: 2.5005, absoluteLifetime: 1e12 })
  app.get('/', async (request) => {
    request.session.set('n', 1)
    return 'ok'
  })
  t.equal((await app.inject('/')).statusCode, 200)
  const created = provider.calls.find((call) => call.method === 'create')?.session
  t.ok(created !== undefined && Number.isInteger(created.expiresAt), 'a whole number of milliseconds, as a bigint column or PEXPIREAT needs')
  t.equal((created?.expiresAt ?? 0) - (created?.lastSeenAt ?? 0), 2501, 'the idle timeout rounded to the millisecond')
})

t.test('an unknown provider name fails registration with the import that fixes it', async (t) => {
  const bundled = await registrationError({ secret: SECRET, provider: 'postgres' })
  t.equal(bundled?.code, 'FST_SESSION_UNKNOWN_PROVIDER')
  t.equal(bundled?.message, 'Unknown session provider "postgres". Did you forget import \'fastify-sessions/providers/postgres\'?')
  const err = await registrationError({ secret: SECRET, provider: 'nosuchstore' })
  t.equal(err?.code, 'FST_SESSION_UNKNOWN_PROVIDER')
  t.equal(err?.message, 'Unknown session provider "nosuchstore". Import the module that registers it (registerProvider) before registering the plugin, or check the name.', 'no import is suggested for a module this package does not have')
})

t.test('a provider instance missing a method fails registration', async (t) => {
  t.equal((await registrationError({ secret: SECRET, provider: { get () {} } }))?.code, 'FST_SESSION_INVALID_PROVIDER')
  t.equal((await registrationError({ secret: SECRET, provider: 42 }))?.code, 'FST_SESSION_INVALID_PROVIDER')
  t.equal((await registrationError({ secret: SECRET, provider: { stateless: true, seal () {} } }))?.code, 'FST_SESSION_INVALID_PROVIDER')
})

t.test('providerOptions beside a provider instance fail registration instead of being ignored', async (t) => {
  const err = await registrationError({ secret: SECRET, provider: createMemoryProvider(), providerOptions: { maxSessions: 10 } })
  t.equal(err?.code, 'FST_SESSION_INVALID_OPTION')
  t.match(err?.message, /providerOptions/)
  t.equal(await registrationError({ secret: SECRET, provider: createMemoryProvider() }), null)
  t.equal(await registrationError({ secret: SECRET, provider: createMemoryProvider(), providerOptions: {} }), null, 'an empty object, as a merged config may hold, ignores nothing')
})

t.test('a factory that answers something else than a provider fails registration', async (t) => {
  registerProvider('broken-factory', () => null as never)
  t.equal((await registrationError({ secret: SECRET, provider: 'broken-factory' }))?.code, 'FST_SESSION_INVALID_PROVIDER')
  // what the factory opened is closed again, as the registration that owned it failed
  let closed = 0
  registerProvider('half-provider', () => ({ get () {}, close () { closed++ } }) as never)
  t.equal((await registrationError({ secret: SECRET, provider: 'half-provider' }))?.code, 'FST_SESSION_INVALID_PROVIDER')
  t.equal(closed, 1)
  registerProvider('half-provider-failing-close', () => ({ get () {}, close () { throw new Error('close failed') } }) as never)
  t.equal((await registrationError({ secret: SECRET, provider: 'half-provider-failing-close' }))?.code, 'FST_SESSION_INVALID_PROVIDER', 'a close that fails too does not hide why')
})

t.test('registerProvider: same factory again is a no-op, another factory under a taken name is a coded error', async (t) => {
  const factory = (): ReturnType<typeof createMemoryProvider> => createMemoryProvider()
  registerProvider('twice', factory)
  registerProvider('twice', factory)
  t.equal(getProvider('twice'), factory)
  t.throws(() => registerProvider('twice', () => createMemoryProvider()), { code: 'FST_SESSION_PROVIDER_CONFLICT' })
  t.throws(() => registerProvider('memory', () => createMemoryProvider()), { code: 'FST_SESSION_PROVIDER_CONFLICT' })
  t.throws(() => registerProvider('', factory), { code: 'FST_SESSION_INVALID_PROVIDER' })
  t.throws(() => registerProvider('nofactory', 'x' as never), { code: 'FST_SESSION_INVALID_PROVIDER' })
  t.throws(() => getProvider('nope'), { code: 'FST_SESSION_UNKNOWN_PROVIDER' })
})

t.test('a provider registered by name gets providerOptions and may be async', async (t) => {
  let seen: unknown
  registerProvider('async-memory', async (options: unknown) => {
    seen = options
    return createMemoryProvider()
  })
  const app = Fastify()
  await app.register(sessions, { secret: SECRET, provider: 'async-memory' as 'memory', providerOptions: { maxSessions: 3 } })
  t.teardown(() => app.close())
  t.same(seen, { maxSessions: 3 })
})

t.test('a factory given no providerOptions gets {}', async (t) => {
  let seen: unknown
  registerProvider('options-probe', (options: unknown) => {
    seen = options
    return createMemoryProvider()
  })
  t.equal(await registrationError({ secret: SECRET, provider: 'options-probe' }), null)
  t.same(seen, {})
})

t.test('a provider that cannot start fails registration with a coded error carrying the cause', async (t) => {
  const refused = new Error('connect ECONNREFUSED 127.0.0.1:1')
  registerProvider('refusing', () => { throw refused })
  const err = await registrationError({ secret: SECRET, provider: 'refusing' }) as { code?: string, message: string, cause?: unknown }
  t.equal(err.code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.equal(err.message, 'The session store is unavailable: the refusing provider could not start: connect ECONNREFUSED 127.0.0.1:1')
  t.equal(err.cause, refused)
  // a factory may throw anything; what it throws that is not an Error is what this checks
  // eslint-disable-next-line no-throw-literal
  registerProvider('throwing-a-string', async () => { throw 'no store' as unknown as Error })
  t.match(await registrationError({ secret: SECRET, provider: 'throwing-a-string' }), { code: 'FST_SESSION_STORE_UNAVAILABLE', message: /could not start: no store$/ })
  t.equal((await registrationError({ secret: SECRET, provider: 'sqlite', providerOptions: { filename: '/nonexistent-directory/sessions.db' } }))?.code, 'FST_SESSION_STORE_UNAVAILABLE', 'a SQLite file that cannot be opened')
})

t.test('a registration that fails after making its provider closes it; a provider handed in stays open', async (t) => {
  const closed: string[] = []
  registerProvider('closing-probe', (options: { name: string }) => {
    const provider = createMemoryProvider()
    provider.close = () => { closed.push(options.name) }
    return provider
  })
  const twice = Fastify()
  t.teardown(() => twice.close())
  await twice.register(sessions, { secret: SECRET, provider: 'closing-probe', providerOptions: { name: 'first' } } as unknown as SessionPluginOptions)
  await t.rejects(async () => { await twice.register(sessions, { secret: SECRET, provider: 'closing-probe', providerOptions: { name: 'second' } } as unknown as SessionPluginOptions) }, { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  t.same(closed, ['second'], 'the second provider was closed, the first one is in use')

  // another session plugin decorates request.session already
  const other = Fastify()
  other.decorateRequest('session', null as never)
  await t.rejects(async () => { await other.register(sessions, { secret: SECRET, provider: 'closing-probe', providerOptions: { name: 'beside another plugin' } } as unknown as SessionPluginOptions) }, { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  t.same(closed, ['second', 'beside another plugin'])

  // @fastify/cookie, which the plugin registers, cannot decorate request.cookies
  const noCookies = Fastify()
  noCookies.decorateRequest('cookies', null as never)
  await t.rejects(async () => { await noCookies.register(sessions, { secret: SECRET, provider: 'closing-probe', providerOptions: { name: 'cookie plugin refused' } } as unknown as SessionPluginOptions) }, { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  t.same(closed, ['second', 'beside another plugin', 'cookie plugin refused'])

  const handedIn = createMemoryProvider()
  handedIn.close = () => { closed.push('handed in') }
  const third = Fastify()
  third.decorateRequest('session', null as never)
  await t.rejects(async () => { await third.register(sessions, { secret: SECRET, provider: handedIn }) }, { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  t.same(closed, ['second', 'beside another plugin', 'cookie plugin refused'], 'a provider the app handed in is the app\'s to close')
})

t.test('the memory provider rejects a bad maxSessions at registration', async (t) => {
  const err = await registrationError({ secret: SECRET, providerOptions: { maxSessions: 0 } })
  t.equal(err?.code, 'FST_SESSION_PROVIDER_OPTION')
})

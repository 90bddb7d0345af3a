import { createCipheriv, hkdfSync, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { Test } from 'tap'
import Fastify, { type FastifyRequest, type LightMyRequestResponse } from 'fastify'
import sessions from '../../index.js'
import { COOKIE_PROVIDER, CookieProvider, createCookieProvider } from '../../providers/cookie.js'
import type { CookieProviderOptions } from '../../providers/cookie.js'
import { getProvider } from '../../lib/registry.js'
import { generateId } from '../../lib/id.js'
import type { SealedSession } from '../../lib/provider.js'

const MINUTE = 60_000
const SECRET = 'a-secret-of-at-least-32-characters!'
/** version | nonce | tag */
const OVERHEAD = 1 + 12 + 16
const BASE64URL_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

function randomKey (): Buffer {
  return randomBytes(32)
}

function sealedSession (data: Array<[string, string]> = [['userId', '"alice"']], extra: Partial<SealedSession> = {}): SealedSession {
  const now = Date.now()
  return { id: generateId(), data: new Map(data), createdAt: now - 5003, lastSeenAt: now - 17, expiresAt: now + MINUTE, ...extra }
}

/** Seals any plaintext in the provider's format, to reach what only a ring key could have sealed. */
function craft (key: Buffer, plaintext: string, version = 1): string {
  const nonce = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 })
  cipher.setAAD(Buffer.from([version]))
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
  return Buffer.concat([Buffer.from([version]), nonce, body, cipher.getAuthTag()]).toString('base64url')
}

function payload (fields: Record<string, unknown> = {}): string {
  return JSON.stringify({ id: generateId(), data: { a: '1' }, createdAt: Date.now(), lastSeenAt: Date.now(), expiresAt: Date.now() + MINUTE, ...fields })
}

t.test('registers itself as "cookie"', async function (t) {
  t.equal(COOKIE_PROVIDER, 'cookie')
  t.equal(getProvider('cookie'), createCookieProvider)
  const provider = createCookieProvider({ keys: randomKey() })
  t.ok(provider instanceof CookieProvider)
  t.equal(provider.stateless, true, 'a stateless provider')
})

t.test('key validation', async function (t) {
  const bad: Array<[unknown, RegExp]> = [
    [undefined, /keys is required/],
    [{}, /keys is required/],
    [{ keys: [] }, /at least one key/],
    [{ keys: 'x'.repeat(31) }, /keys\[0\] is a string of 31 characters; at least 32/],
    [{ keys: '' }, /string of 0 characters/],
    [{ keys: randomBytes(31) }, /keys\[0\] is 31 bytes; a Buffer key must be exactly 32/],
    [{ keys: randomBytes(33) }, /33 bytes/],
    [{ keys: Buffer.alloc(0) }, /0 bytes/],
    [{ keys: [randomKey(), 'short'] }, /keys\[1\] is a string of 5 characters/],
    [{ keys: 42 }, /keys\[0\] must be a string or a Buffer/],
    [{ keys: null }, /keys\[0\] must be a string or a Buffer/],
    [{ keys: [randomKey(), { length: 32 }] }, /keys\[1\] must be a string or a Buffer/],
    [{ keys: randomKey(), key: randomKey() }, /"key" is not an option; did you mean "keys"\?/]
  ]
  for (const [options, message] of bad) {
    t.throws(() => createCookieProvider(options as CookieProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message }, String(message))
  }
  t.ok(createCookieProvider({ keys: 'x'.repeat(32) }), 'a string of 32 characters')
  t.ok(createCookieProvider({ keys: randomKey() }), 'a Buffer of 32 bytes')
  t.ok(createCookieProvider({ keys: new Uint8Array(32) }), 'a Uint8Array of 32 bytes')
  t.ok(createCookieProvider({ keys: ['y'.repeat(40), randomKey()] }), 'a ring of both')
})

t.test('a sealed session opens exactly as it was sealed', async function (t) {
  const provider = createCookieProvider({ keys: randomKey() })
  const session = sealedSession([
    ['userId', '"alice"'],
    ['spaced', '{ "b": 2,  "a": [1, 2.50] }'],
    ['unicode', '"ключ 键 🔑 e\u0301 \\u2028"'],
    ['nothing', 'null'],
    ['', '"empty key"'],
    ['constructor', '{"prototype":{"polluted":true}}'],
    ['__proto__', '{"polluted":true}']
  ])
  const value = provider.seal(session)
  t.match(value, /^[A-Za-z0-9_-]+$/, 'the value is base64url, safe in a cookie')
  const opened = provider.open(value)
  t.equal(opened?.renew, false, 'the sealing key needs no renewal')
  t.equal(opened?.session.id, session.id, 'id')
  t.same(opened?.session.data, session.data, 'every key and JSON text, verbatim')
  t.equal(opened?.session.createdAt, session.createdAt, 'createdAt')
  t.equal(opened?.session.lastSeenAt, session.lastSeenAt, 'lastSeenAt')
  t.equal(opened?.session.expiresAt, session.expiresAt, 'expiresAt')
  t.equal(Object.hasOwn(Object.prototype, 'polluted'), false, 'Object.prototype is not polluted')
})

t.test('an empty session round-trips', async function (t) {
  const provider = createCookieProvider({ keys: randomKey() })
  const session = sealedSession([])
  t.same(provider.open(provider.seal(session))?.session.data, new Map())
})

t.test('every seal takes a fresh nonce', async function (t) {
  const provider = createCookieProvider({ keys: randomKey() })
  const session = sealedSession()
  const values = new Set<string>()
  const nonces = new Set<string>()
  for (let i = 0; i < 100; i++) {
    const value = provider.seal(session)
    values.add(value)
    nonces.add(Buffer.from(value, 'base64url').subarray(1, 13).toString('hex'))
  }
  t.equal(values.size, 100, '100 seals of one session give 100 values')
  t.equal(nonces.size, 100, 'with 100 nonces')
  const [a, b] = values
  t.same(provider.open(a)?.session, provider.open(b)?.session, 'and all open to the same session')
})

t.test('what does not authenticate does not open', async function (t) {
  const key = randomKey()
  const provider = createCookieProvider({ keys: key })
  const value = provider.seal(sealedSession())
  const bytes = Buffer.from(value, 'base64url')

  t.test('flipping any bit of any byte', async function (t) {
    let opened = 0
    for (let i = 0; i < bytes.length; i++) {
      for (let bit = 0; bit < 8; bit++) {
        const tampered = Buffer.from(bytes)
        tampered[i] ^= 1 << bit
        if (provider.open(tampered.toString('base64url')) !== null) opened++
      }
    }
    t.equal(opened, 0, `none of ${bytes.length * 8} tampered values opens`)
  })

  t.test('changing any character, including to another spelling of the same bytes', async function (t) {
    let opened = 0
    let tries = 0
    for (let i = 0; i < value.length; i++) {
      for (const char of BASE64URL_CHARS) {
        if (char === value[i]) continue
        tries++
        if (provider.open(value.slice(0, i) + char + value.slice(i + 1)) !== null) opened++
      }
    }
    t.equal(opened, 0, `none of ${tries} changed values opens`)
  })

  t.test('truncating or extending', async function (t) {
    let opened = 0
    for (let length = 0; length < bytes.length; length++) {
      if (provider.open(bytes.subarray(0, length).toString('base64url')) !== null) opened++
      if (provider.open(bytes.subarray(bytes.length - length).toString('base64url')) !== null) opened++
    }
    for (let length = 0; length < value.length; length++) {
      if (provider.open(value.slice(0, length)) !== null) opened++
    }
    t.equal(opened, 0, 'no prefix or suffix opens')
    t.equal(provider.open(value + 'A'), null, 'a character more')
    t.equal(provider.open(Buffer.concat([bytes, Buffer.from([0])]).toString('base64url')), null, 'a byte more')
  })

  t.test('a value sealed under a foreign key', async function (t) {
    const foreign = createCookieProvider({ keys: randomKey() })
    t.equal(provider.open(foreign.seal(sealedSession())), null)
    t.equal(foreign.open(value), null, 'either way')
  })

  t.test('another format version, even sealed with the right key', async function (t) {
    t.equal(provider.open(craft(key, payload(), 2)), null)
  })
})

t.test('garbage opens to null without throwing', async function (t) {
  const provider = createCookieProvider({ keys: [randomKey(), randomKey(), randomKey()] })
  const garbage: unknown[] = [
    '',
    'x',
    'AA',
    '!!!!',
    'not base64',
    'padded==',
    'plus+slash/',
    'é',
    '\u0000'.repeat(64),
    'A'.repeat(40),
    'A'.repeat(4096),
    'A'.repeat(4097),
    'A'.repeat(1_000_000),
    randomBytes(OVERHEAD - 1).toString('base64url'),
    randomBytes(OVERHEAD).toString('base64url'),
    randomBytes(OVERHEAD + 1).toString('base64url'),
    randomBytes(3000).toString('base64url'),
    Buffer.concat([Buffer.from([1]), randomBytes(200)]).toString('base64url'),
    null,
    undefined,
    42,
    {},
    ['value']
  ]
  for (const value of garbage) {
    const label = typeof value === 'string' && value.length > 40 ? `${JSON.stringify(value.slice(0, 20))}… (${value.length} characters)` : JSON.stringify(value) ?? 'undefined'
    t.doesNotThrow(() => t.equal(provider.open(value as string), null, label), label)
  }
})

t.test('authentic payloads that are not sessions open to null', async function (t) {
  const key = randomKey()
  const provider = createCookieProvider({ keys: key })
  t.not(provider.open(craft(key, payload())), null, 'the crafted format itself opens')
  const bad: Array<[string, string]> = [
    ['not JSON', 'not json'],
    ['truncated JSON', payload().slice(0, -1)],
    ['empty', ''],
    ['null', 'null'],
    ['a number', '42'],
    ['a string', '"session"'],
    ['an array', '[]'],
    ['no id', payload({ id: undefined })],
    ['a numeric id', payload({ id: 42 })],
    ['no data', payload({ data: undefined })],
    ['null data', payload({ data: null })],
    ['array data', payload({ data: [['a', '1']] })],
    ['string data', payload({ data: 'a=1' })],
    ['a value that is not a JSON text', payload({ data: { a: 1 } })],
    ['a nested value', payload({ data: { a: { b: '1' } } })],
    ['no createdAt', payload({ createdAt: undefined })],
    ['a string lastSeenAt', payload({ lastSeenAt: String(Date.now()) })],
    ['a string expiresAt', payload({ expiresAt: String(Date.now() + MINUTE) })],
    ['a null expiresAt', payload({ expiresAt: null })]
  ]
  for (const [label, plaintext] of bad) {
    t.equal(provider.open(craft(key, plaintext)), null, label)
  }
})

t.test('__proto__ in a payload stays data and pollutes nothing', async function (t) {
  const key = randomKey()
  const provider = createCookieProvider({ keys: key })
  const text = '{"__proto__":{"polluted":true},"id":"abc","data":{"__proto__":"{\\"polluted\\":true}","constructor":"{\\"prototype\\":{\\"polluted\\":true}}"},' +
    `"createdAt":1,"lastSeenAt":2,"expiresAt":${Date.now() + MINUTE}}`
  const opened = provider.open(craft(key, text))
  t.same(opened?.session.data, new Map([['__proto__', '{"polluted":true}'], ['constructor', '{"prototype":{"polluted":true}}']]), 'the keys are ordinary keys')
  t.equal(opened?.session.id, 'abc')
  t.equal(Object.hasOwn(Object.prototype, 'polluted'), false, 'Object.prototype is not polluted')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'a new object sees nothing')
})

t.test('rotation: the first key seals, every key opens, older keys ask for renewal', async function (t) {
  const [oldKey, newKey, olderKey] = [randomKey(), randomKey(), randomKey()]
  const before = createCookieProvider({ keys: oldKey })
  const during = createCookieProvider({ keys: [newKey, oldKey, olderKey] })
  const after = createCookieProvider({ keys: newKey })
  const session = sealedSession()

  const old = before.seal(session)
  t.same(during.open(old), { session, renew: true }, 'a value sealed with the old key opens, to be renewed')
  t.same(during.open(createCookieProvider({ keys: olderKey }).seal(session)), { session, renew: true }, 'as does one sealed with any ring key')
  const renewed = during.seal(session)
  t.same(after.open(renewed), { session, renew: false }, 'a new seal uses the first key')
  t.equal(before.open(renewed), null, 'which the old ring cannot open')
  t.equal(after.open(old), null, 'once the old key is dropped, its values no longer open')
})

t.test('a string key is the documented HKDF-SHA-256 derivation of it', async function (t) {
  const secret = randomBytes(30).toString('base64')
  const derived = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'fastify-sessions cookie provider', 32))
  const session = sealedSession()
  t.same(createCookieProvider({ keys: derived }).open(createCookieProvider({ keys: secret }).seal(session))?.session, session)
  t.equal(createCookieProvider({ keys: Buffer.from(secret).subarray(0, 32) }).open(createCookieProvider({ keys: secret }).seal(session)), null, 'the string is not used as the key itself')
})

t.test('a key Buffer changed after construction does not change the key', async function (t) {
  const key = randomKey()
  const provider = createCookieProvider({ keys: key })
  const value = provider.seal(sealedSession())
  key.fill(0)
  t.not(provider.open(value), null)
})

t.test('an expired session does not open', async function (t) {
  const provider = createCookieProvider({ keys: randomKey() })
  t.equal(provider.open(provider.seal(sealedSession(undefined, { expiresAt: Date.now() - 1 }))), null, 'past its deadline')
  const soon = sealedSession(undefined, { expiresAt: Date.now() + 100 })
  const value = provider.seal(soon)
  t.not(provider.open(value), null, 'live before its deadline')
  await sleep(soon.expiresAt - Date.now() + 10)
  t.equal(provider.open(value), null, 'null once it passes')
})

/** The `sessionid` cookie a response sets. */
function sessionCookie (res: LightMyRequestResponse): { name: string, value: string, maxAge?: number } | undefined {
  return res.cookies.find(function named (cookie) {
    return cookie.name === 'sessionid'
  }) as { name: string, value: string, maxAge?: number } | undefined
}

function cookieHeader (cookie: { value: string }): { cookie: string } {
  return { cookie: `sessionid=${cookie.value}` }
}

async function appOn (t: Test, options: Record<string, unknown>): Promise<ReturnType<typeof Fastify>> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(sessions, { secret: SECRET, ...options } as Parameters<typeof sessions>[1])
  app.post('/login', async function login (request) {
    request.session.set('userId', 'alice')
    request.session.set('cart', [1, { sku: 'x' }])
    return {}
  })
  app.get('/me', async function me (request) {
    return { userId: request.session.get('userId') ?? null, cart: request.session.get('cart') ?? null }
  })
  app.post('/stuff', async function stuff (request) {
    request.session.set('stuff', (request.body as { stuff: string }).stuff)
    return { stored: true }
  })
  app.post('/logout', async function logout (request) {
    await request.session.destroy()
    return {}
  })
  return app
}

t.test('a cookie that opens but has ended by the lifetimes configured now gives way to a later live one', async function (t) {
  const keys = [randomKey()]
  const before = await appOn(t, { provider: 'cookie', providerOptions: { keys } })
  const stale = sessionCookie(await before.inject({ method: 'POST', url: '/login' })) as { value: string }
  await sleep(150)
  const now = await appOn(t, { provider: 'cookie', providerOptions: { keys }, maxLifetime: 0.1, touchAfter: 0 })
  now.get('/stuff', async function stuff (request: FastifyRequest) {
    return { stuff: request.session.get('stuff') ?? null }
  })
  const live = sessionCookie(await now.inject({ method: 'POST', url: '/stuff', payload: { stuff: 'new' } })) as { value: string }
  const both = { cookie: `sessionid=${stale.value}; sessionid=${live.value}` }
  t.same((await now.inject({ url: '/stuff', headers: both })).json(), { stuff: 'new' }, 'the live one is opened')
  t.same((await now.inject({ url: '/me', headers: both })).json(), { userId: null, cart: null }, 'not the stale one')
})

t.test('through the plugin', async function (t) {
  t.test('login seals the session into the cookie and a reload opens it', async function (t) {
    const keys = [randomKey()]
    const app = await appOn(t, { provider: 'cookie', providerOptions: { keys } })
    t.ok(app.sessions.provider instanceof CookieProvider, 'the plugin made a CookieProvider from the name')

    const login = await app.inject({ method: 'POST', url: '/login' })
    t.equal(login.statusCode, 200)
    const cookie = sessionCookie(login)
    if (cookie === undefined) throw new Error('login set no session cookie')
    const opened = createCookieProvider({ keys }).open(cookie.value)
    t.same(opened?.session.data, new Map([['userId', '"alice"'], ['cart', '[1,{"sku":"x"}]']]), 'the cookie carries the sealed session')

    for (const text of [cookie.value, Buffer.from(cookie.value, 'base64url').toString('latin1')]) {
      t.notMatch(text, /alice|userId|cart|sku/, 'neither the value nor its decoded bytes show the data')
      t.notMatch(text, opened?.session.id as string, 'nor the session id')
    }

    const me = await app.inject({ url: '/me', headers: cookieHeader(cookie) })
    t.same(me.json(), { userId: 'alice', cart: [1, { sku: 'x' }] }, 'a reload sees the data')
    t.same((await app.inject({ url: '/me' })).json(), { userId: null, cart: null }, 'no cookie, no session')
  })

  t.test('logout clears the cookie; a copy taken before stays valid until it expires', async function (t) {
    const app = await appOn(t, { provider: createCookieProvider({ keys: randomKey() }) })
    const cookie = sessionCookie(await app.inject({ method: 'POST', url: '/login' }))
    if (cookie === undefined) throw new Error('login set no session cookie')
    const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
    t.equal(logout.statusCode, 200)
    t.match(sessionCookie(logout), { value: '', maxAge: 0 }, 'the cookie is cleared with Max-Age=0')
    t.match(logout.headers['set-cookie'], /Max-Age=0/)
    // Nothing on the server remembers the logout: that is what stateless means
    t.same((await app.inject({ url: '/me', headers: cookieHeader(cookie) })).json(), { userId: 'alice', cart: [1, { sku: 'x' }] },
      'a replayed copy still opens (documented: sealed sessions cannot be revoked)')
  })

  t.test('a session that would make the cookie over 4096 bytes fails that response', async function (t) {
    const app = await appOn(t, { provider: createCookieProvider({ keys: randomKey() }) })
    const fits = await app.inject({ method: 'POST', url: '/stuff', payload: { stuff: 'x'.repeat(2000) } })
    t.equal(fits.statusCode, 200, '2000 characters fit')
    t.ok(sessionCookie(fits), 'and set the cookie')

    const big = await app.inject({ method: 'POST', url: '/stuff', payload: { stuff: randomBytes(2400).toString('hex') } })
    t.equal(big.statusCode, 500, 'the response fails')
    const body = big.json()
    t.equal(body.code, 'FST_SESSION_COOKIE_TOO_LARGE', 'with the coded error')
    t.match(body.message, /\b\d{4,} bytes\b.*\b4096 bytes\b/, `naming the size and the limit: ${body.message}`)
    t.equal(big.headers['set-cookie'], undefined, 'and no Set-Cookie')
  })

  t.test('a cookie of exactly 4096 bytes goes out, and one of 4097 fails the response', async function (t) {
    const app = await appOn(t, { provider: createCookieProvider({ keys: randomKey() }) })
    const cookieLength = (res: LightMyRequestResponse): number => 'sessionid='.length + (sessionCookie(res)?.value ?? '').length
    // base64url gives 4 characters for each 3 bytes: find the body that seals to 4086 characters
    const probe = await app.inject({ method: 'POST', url: '/stuff', payload: { stuff: 'x'.repeat(2000) } })
    const sealedBytes = Math.floor((cookieLength(probe) - 'sessionid='.length) * 3 / 4)
    const fitting = 2000 + Math.floor((4096 - 'sessionid='.length) * 3 / 4) - sealedBytes
    const edge = await app.inject({ method: 'POST', url: '/stuff', payload: { stuff: 'x'.repeat(fitting) } })
    t.equal(edge.statusCode, 200)
    t.equal(cookieLength(edge), 4096)
    const over = await app.inject({ method: 'POST', url: '/stuff', payload: { stuff: 'x'.repeat(fitting + 1) } })
    t.equal(over.statusCode, 500)
    t.equal(over.json().code, 'FST_SESSION_COOKIE_TOO_LARGE')
    t.match(over.json().message, /\b4097 bytes\b/)
    t.equal(over.headers['set-cookie'], undefined)
  })

  t.test('a validly sealed cookie of more than 4096 characters from a client is not opened', async function (t) {
    const provider = createCookieProvider({ keys: randomKey() })
    const app = await appOn(t, { provider })
    const base = sealedSession([['userId', '"alice"'], ['pad', '""']])
    const baseBytes = Buffer.from(provider.seal(base), 'base64url').length
    // each padding character is one more plaintext byte; 3072 bytes are 4096 base64url characters, 3073 are 4098
    const sealedOf = (bytes: number): string => provider.seal({ ...base, data: new Map([['userId', '"alice"'], ['pad', JSON.stringify('x'.repeat(bytes - baseBytes))]]) })
    const [fits, over] = [sealedOf(3072), sealedOf(3073)]
    t.equal(fits.length, 4096)
    t.equal(over.length, 4098)
    t.equal(provider.open(fits)?.session.data.get('userId'), '"alice"', 'the provider opens 4096 characters')
    t.equal(provider.open(over), null, 'but not 4098')

    t.same((await app.inject({ url: '/me', headers: cookieHeader({ value: fits }) })).json(), { userId: 'alice', cart: null }, 'a route sees the session of 4096 characters')
    const none = await app.inject({ url: '/me' })
    const refused = await app.inject({ url: '/me', headers: cookieHeader({ value: over }) })
    t.equal(refused.statusCode, none.statusCode, 'the longer one answers as no cookie does')
    t.same(refused.json(), { userId: null, cart: null }, 'with no session data')
    t.equal(refused.headers['set-cookie'], none.headers['set-cookie'], 'and sets no cookie')
  })

  t.test('a cookie sealed with an older key is sealed again with the first', async function (t) {
    const [oldKey, newKey] = [randomKey(), randomKey()]
    const before = await appOn(t, { provider: createCookieProvider({ keys: oldKey }) })
    const old = sessionCookie(await before.inject({ method: 'POST', url: '/login' }))
    if (old === undefined) throw new Error('login set no session cookie')

    const during = await appOn(t, { provider: createCookieProvider({ keys: [newKey, oldKey] }) })
    const me = await during.inject({ url: '/me', headers: cookieHeader(old) })
    t.same(me.json(), { userId: 'alice', cart: [1, { sku: 'x' }] }, 'the old cookie still opens')
    const renewed = sessionCookie(me)
    if (renewed === undefined) throw new Error('the read did not renew the cookie')
    t.same(createCookieProvider({ keys: newKey }).open(renewed.value)?.renew, false, 'the response re-seals it with the new key')
    t.equal(createCookieProvider({ keys: oldKey }).open(renewed.value), null, 'not with the old one')
    t.same(createCookieProvider({ keys: newKey }).open(renewed.value)?.session.id, createCookieProvider({ keys: oldKey }).open(old.value)?.session.id, 'the session keeps its id')

    const again = await during.inject({ url: '/me', headers: cookieHeader(renewed) })
    t.same(again.json(), { userId: 'alice', cart: [1, { sku: 'x' }] }, 'the renewed cookie opens')
    t.equal(sessionCookie(again), undefined, 'and needs no renewal')
  })

  t.test('a new session that is regenerated but holds nothing sets no cookie', async function (t) {
    const app = await appOn(t, { provider: 'cookie', providerOptions: { keys: [randomKey()] } })
    app.post('/fresh', async function fresh (request: FastifyRequest) {
      await request.session.regenerate()
      return {}
    })
    t.equal(sessionCookie(await app.inject({ method: 'POST', url: '/fresh' })), undefined)
  })
})

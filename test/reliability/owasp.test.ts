// The OWASP session management checklist items that other test files do not
// already prove (the README table maps every item to its test).
import t from 'tap'
import * as crypto from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import fc from 'fast-check'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { build, cookieHeader, OLD_SECRET, SECRET, sessionCookie, setCookies } from '../fixtures/app.js'
import { check } from '../fixtures/fuzz.js'
import { captureLogs } from '../fixtures/log-capture.js'
import { storeKinds } from '../fixtures/stores.js'
import { CookieSigner } from '../../lib/cookie.js'
import { generateId, storeKey } from '../../lib/id.js'
import { MemoryProvider } from '../../providers/memory.js'
import type { NewSession, SessionPatch } from '../../lib/provider.js'

const json = { 'content-type': 'application/json' }
const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))

/** The Set-Cookie header for the session cookie `name`, if the response has one. */
function sessionSetCookie (res: LightMyRequestResponse, name = 'sessionid'): string | undefined {
  return setCookies(res).find((header) => header.startsWith(name + '='))
}

t.test('session ids are 43 base64url characters decoding to 32 bytes, and 10,000 of them are distinct with balanced bits', async (t) => {
  const ids = Array.from({ length: 10_000 }, generateId)
  t.equal(new Set(ids).size, 10_000, 'all distinct')
  const malformed = ids.filter((id) => !/^[A-Za-z0-9_-]{43}$/.test(id) || Buffer.from(id, 'base64url').length !== 32 ||
    Buffer.from(id, 'base64url').toString('base64url') !== id)
  t.same(malformed, [], 'each is the canonical base64url of 32 bytes')
  // Every one of the 256 bit positions is set in about half the ids: a
  // constant or short-cycled source would leave some positions at 0 or 1.
  // Expected 5,000 per position, sigma 50: a 600 margin is 12 sigma.
  const ones = new Array<number>(256).fill(0)
  for (const id of ids) {
    const bytes = Buffer.from(id, 'base64url')
    for (let bit = 0; bit < 256; bit++) if ((bytes[bit >> 3] >> (bit & 7)) & 1) ones[bit]++
  }
  t.same(ones.filter((count) => Math.abs(count - 5000) > 600), [], 'every bit position is set in 50% ± 6% of the ids')
  t.comment(`bit balance: min ${Math.min(...ones)}, max ${Math.max(...ones)} of 10,000`)

  const app = await build(t)
  const issued = await Promise.all(Array.from({ length: 200 }, () => app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })))
  const cookieIds = issued.map((res) => idOf(sessionCookie(res) as string))
  t.equal(new Set(cookieIds).size, 200)
  t.same(cookieIds.filter((id) => Buffer.from(id, 'base64url').length !== 32), [], 'ids the plugin issues are 32 bytes too')
})

t.test('session ids are drawn from crypto.randomBytes, the CSPRNG', async (t) => {
  const calls: number[] = []
  const { generateId: mocked } = await t.mockImport<typeof import('../../lib/id.js')>('../../lib/id.js', {
    'node:crypto': {
      ...crypto,
      randomBytes (size: number): Buffer {
        calls.push(size)
        return Buffer.alloc(size, 0xab)
      }
    }
  })
  const id = mocked()
  t.ok(calls.length > 0, 'randomBytes was called')
  t.equal(calls[0] % 32, 0, 'for whole 32-byte ids')
  t.equal(id, Buffer.alloc(32, 0xab).toString('base64url'), 'the id is exactly the bytes the CSPRNG gave')
})

t.test('strict mode on every provider: a validly signed id the store never issued, or one logged out, is never adopted', async (t) => {
  const signer = new CookieSigner([SECRET])
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, store.options)
      app.get('/state', async (request) => ({ isNew: request.session.isNew, id: request.session.id }))

      const planted = generateId()
      const cookie = signer.sign(planted)
      const state = (await app.inject({ url: '/state', headers: cookieHeader(cookie) })).json()
      t.equal(state.isNew, true)
      t.not(state.id, planted, 'a request with the planted cookie gets another id')
      const write = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, ...cookieHeader(cookie) } })
      t.not(write.json().id, planted)
      t.equal(idOf(sessionCookie(write) as string), write.json().id)
      t.notOk((await store.dump(app)).some((held) => held.includes(storeKey(planted))), 'nothing is stored under the planted id')

      const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
      const real = sessionCookie(login) as string
      await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(real) })
      const replay = await app.inject({ method: 'POST', url: '/set/a', payload: '2', headers: { ...json, ...cookieHeader(real) } })
      t.not(replay.json().id, idOf(real), 'a logged-out id presented again is not revived')
      t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(real) })).json(), { value: null })
    })
  }
})

t.test('by default every session Set-Cookie is HttpOnly, SameSite=Lax, Path=/ and host-only: new, regenerated, re-signed, refreshed and cleared', async (t) => {
  const provider = new MemoryProvider()
  const old = await build(t, { provider, secret: OLD_SECRET })
  const app = await build(t, { provider, secret: [SECRET, OLD_SECRET] })
  const refreshing = await build(t, { provider, cookie: { maxAge: 3600 }, touchAfter: 0 })
  const created = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(created) as string
  const regenerated = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: cookieHeader(cookie) })
  const oldCookie = sessionCookie(await old.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })) as string
  const resigned = await app.inject({ url: '/get/a', headers: cookieHeader(oldCookie) })
  await sleep(5)
  const refreshed = await refreshing.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(regenerated) as string) })
  const cleared = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(sessionCookie(regenerated) as string) })
  for (const [name, res] of Object.entries({ created, regenerated, resigned, refreshed, cleared })) {
    const header = sessionSetCookie(res)
    t.ok(header, `${name}: sets the session cookie`)
    t.match(header, /; HttpOnly(;|$)/, `${name}: HttpOnly`)
    t.match(header, /; SameSite=Lax(;|$)/, `${name}: SameSite=Lax`)
    t.match(header, /; Path=\/(;|$)/, `${name}: Path=/`)
    t.notMatch(header, /Domain=/i, `${name}: host-only`)
  }
})

t.test("secure 'auto' behind a trusted proxy saying https: every session Set-Cookie is Secure, re-signed and cleared ones included", async (t) => {
  const provider = new MemoryProvider()
  const old = await build(t, { provider, secret: OLD_SECRET })
  const app = await build(t, { provider, secret: [SECRET, OLD_SECRET] }, { trustProxy: true })
  const https = { 'x-forwarded-proto': 'https' }
  const created = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: { ...json, ...https } })
  const oldCookie = sessionCookie(await old.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })) as string
  const resigned = await app.inject({ url: '/get/a', headers: { ...https, ...cookieHeader(oldCookie) } })
  const cleared = await app.inject({ method: 'POST', url: '/logout', headers: { ...https, ...cookieHeader(sessionCookie(created) as string) } })
  for (const [name, res] of Object.entries({ created, resigned, cleared })) {
    t.match(sessionSetCookie(res), /; Secure(;|$)/, `${name}: Secure`)
  }
  const plain = await app.inject({ method: 'POST', url: '/login', payload: { user: 'bo' }, headers: json })
  t.notMatch(sessionSetCookie(plain), /Secure/, 'over plain http the proxy says nothing: not Secure')
})

t.test('a __Host- cookie is served Secure, with Path=/ and no Domain, and is read back', async (t) => {
  const app = await build(t, { cookieName: '__Host-sid', cookie: { secure: true } })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
  const header = sessionSetCookie(login, '__Host-sid') as string
  t.match(header, /^__Host-sid=[^;]+; Path=\/; HttpOnly; SameSite=Lax; Secure$/)
  const cookie = sessionCookie(login, '__Host-sid') as string
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie, '__Host-sid') })).json(), { value: 'ada' })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null }, 'the same value under another name is no session')
})

/**
 * A store that keeps every record for a day whatever deadline it is given,
 * like a store whose sweep has not run: only the plugin can end sessions.
 */
class LaxStore extends MemoryProvider {
  override create (key: string, session: NewSession, replaces?: string): boolean {
    return super.create(key, { ...session, expiresAt: Date.now() + 86_400_000 }, replaces)
  }

  override update (key: string, patch: SessionPatch): boolean {
    return super.update(key, { ...patch, expiresAt: Date.now() + 86_400_000 })
  }
}

t.test('the idle timeout is enforced by the server even while the store still returns the record', async (t) => {
  const provider = new LaxStore()
  const app = await build(t, { provider, maxLifetime: 0.5, touchAfter: 0 })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
  const cookie = sessionCookie(login) as string
  await sleep(200)
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: 'ada' }, 'alive while used')
  await sleep(700)
  t.equal(provider.get(storeKey(idOf(cookie))) !== null, true, 'the store still returns the record')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null }, 'idle too long: no session')
  const write = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, ...cookieHeader(cookie) } })
  t.not(write.json().id, idOf(cookie), 'and a write starts a new one')
})

t.test('the absolute timeout is enforced by the server however active the session and whatever the store says', async (t) => {
  const provider = new LaxStore()
  const app = await build(t, { provider, maxLifetime: 0.5, absoluteLifetime: 1, touchAfter: 0 })
  const started = Date.now()
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
  const cookie = sessionCookie(login) as string
  for (let i = 0; i < 4; i++) {
    await sleep(200)
    t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: 'ada' }, `alive at ${Date.now() - started} ms`)
  }
  // idle for about 300 ms (under the 500 ms idle timeout), yet past the absolute lifetime
  await sleep(Math.max(0, 1100 - (Date.now() - started)))
  t.equal(provider.get(storeKey(idOf(cookie))) !== null, true, 'the store still returns the record')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null }, 'past the absolute lifetime: no session')
})

t.test('on every provider: login regenerates the id, the pre-login id is dead and the store holds nothing under it', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, store.options)
      const before = await app.inject({ method: 'POST', url: '/set/cart', payload: '["book"]', headers: json })
      const anonymous = sessionCookie(before) as string
      const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: cookieHeader(anonymous) })
      const authenticated = sessionCookie(login) as string
      t.not(idOf(authenticated), idOf(anonymous))
      t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(authenticated) })).json(), { value: ['book'] }, 'the data moved')
      t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(anonymous) })).json(), { value: null }, 'the old id is dead')
      const held = await store.dump(app)
      t.notOk(held.some((value) => value.includes(storeKey(idOf(anonymous)))), 'nothing under the old key')
      t.ok(held.some((value) => value.includes(storeKey(idOf(authenticated)))), 'the new key is there')
    })
  }
})

t.test('on every provider: logout deletes the session server-side and clears the cookie', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, store.options)
      const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
      const cookie = sessionCookie(login) as string
      const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
      t.equal(logout.statusCode, 200)
      t.match(sessionSetCookie(logout), /^sessionid=; Path=\/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax$/)
      t.equal(logout.headers['cache-control'], 'no-store')
      t.same(await store.dump(app), [], 'the store holds nothing at all')
      t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null })
    })
  }
})

t.test('Cache-Control: no-store is on every response carrying a session Set-Cookie, whatever the route set, and only there', async (t) => {
  const provider = new MemoryProvider()
  const old = await build(t, { provider, secret: OLD_SECRET })
  const app = await build(t, { provider, secret: [SECRET, OLD_SECRET] })
  const refreshing = await build(t, { provider, cookie: { maxAge: 3600 }, touchAfter: 0 })
  for (const instance of [app, refreshing]) {
    instance.post('/cached', async (request, reply) => {
      reply.header('cache-control', 'public, max-age=600')
      request.session.set('a', 2)
      return {}
    })
    instance.get('/cached-read', async (request, reply) => {
      reply.header('cache-control', 'public, max-age=600')
      return { value: request.session.get('a') ?? null }
    })
  }
  const created = await app.inject({ method: 'POST', url: '/cached' })
  t.equal(created.headers['cache-control'], 'no-store', 'a new session on a route that asked for public caching')
  const cookie = sessionCookie(created) as string
  const oldCookie = sessionCookie(await old.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })) as string
  const resigned = await app.inject({ url: '/cached-read', headers: cookieHeader(oldCookie) })
  t.ok(sessionSetCookie(resigned), 'a cookie signed by the old secret is re-signed...')
  t.equal(resigned.headers['cache-control'], 'no-store', '...with no-store, over the route\'s own header')
  await sleep(5)
  const refreshed = await refreshing.inject({ url: '/cached-read', headers: cookieHeader(cookie) })
  t.ok(sessionSetCookie(refreshed), 'a persistent cookie refreshed on a touch...')
  t.equal(refreshed.headers['cache-control'], 'no-store', '...with no-store')
  const cleared = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.equal(cleared.headers['cache-control'], 'no-store', 'the clearing cookie at logout')
  const untouched = await app.inject({ url: '/cached-read' })
  t.same(setCookies(untouched), [])
  t.equal(untouched.headers['cache-control'], 'public, max-age=600', 'a response without a session cookie keeps the route\'s caching')
})

t.test('Cache-Control: no-store holds when the handler returns a web Response with caching headers of its own', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, store.options)
      const cached = { 'cache-control': 'public, max-age=3600', 'set-cookie': 'theme=dark', 'x-kept': 'yes' }
      app.post('/login-response', async (request) => {
        request.session.set('userId', 'ada')
        return new Response('welcome', { status: 201, headers: cached })
      })
      app.post('/logout-response', async (request) => {
        await request.session.destroy()
        return new Response('bye', { headers: cached })
      })
      app.get('/read-response', async (request) => new Response(String(request.session.get('userId')), { headers: cached }))
      app.get('/plain-response', async (request) => {
        request.session.set('seen', true)
        return new Response(null, { status: 204 })
      })

      const login = await app.inject({ method: 'POST', url: '/login-response' })
      t.equal(login.statusCode, 201)
      t.equal(login.body, 'welcome')
      t.equal(login.headers['cache-control'], 'no-store', 'a new session, over the Response\'s public caching')
      t.equal(login.headers['x-kept'], 'yes', 'the Response\'s other headers go out')
      t.same(setCookies(login).map((c) => c.split('=')[0]).sort(), ['sessionid', 'theme'])
      const cookie = sessionCookie(login) as string

      const read = await app.inject({ url: '/read-response', headers: cookieHeader(cookie) })
      t.equal(read.body, 'ada')
      t.notOk(sessionSetCookie(read))
      t.equal(read.headers['cache-control'], 'public, max-age=3600', 'no session cookie: the Response\'s caching stands')

      const logout = await app.inject({ method: 'POST', url: '/logout-response', headers: cookieHeader(cookie) })
      t.equal(logout.body, 'bye')
      t.match(sessionSetCookie(logout), /^sessionid=; /)
      t.equal(logout.headers['cache-control'], 'no-store', 'the clearing cookie, over the Response\'s public caching')

      const plain = await app.inject({ url: '/plain-response' })
      t.equal(plain.statusCode, 204)
      t.ok(sessionSetCookie(plain))
      t.equal(plain.headers['cache-control'], 'no-store', 'a Response without caching headers keeps ours')
    })
  }
})

t.test('property: over any sequence of requests, each response carrying a session Set-Cookie has no-store and the default attributes', async (t) => {
  const provider = new MemoryProvider()
  const apps: Record<string, FastifyInstance> = {
    old: await build(t, { provider, secret: OLD_SECRET }),
    current: await build(t, { provider, secret: [SECRET, OLD_SECRET] }),
    persistent: await build(t, { provider, secret: [SECRET, OLD_SECRET], cookie: { maxAge: 3600 }, touchAfter: 0 })
  }
  for (const app of Object.values(apps)) {
    app.post('/cached', async (request, reply) => {
      reply.header('cache-control', 'public, max-age=600')
      request.session.set('c', Date.now())
      return {}
    })
  }
  const op = fc.record({
    app: fc.constantFrom('old', 'current', 'persistent'),
    request: fc.constantFrom(
      { method: 'GET' as const, url: '/get/a' },
      { method: 'POST' as const, url: '/set/a', payload: '1', headers: json },
      { method: 'POST' as const, url: '/delete/a' },
      { method: 'POST' as const, url: '/login', payload: { user: 'ada' }, headers: json },
      { method: 'POST' as const, url: '/logout' },
      { method: 'GET' as const, url: '/none' },
      { method: 'POST' as const, url: '/cached' }
    )
  })
  let withCookie = 0
  await check(t, 'response headers over request sequences', fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
    let cookie: string | undefined
    for (const { app, request } of ops) {
      const res = await apps[app].inject({ ...request, headers: { ...request.headers, ...(cookie === undefined ? {} : cookieHeader(cookie)) } })
      if (res.statusCode !== 200) throw new Error(`${request.url} answered ${res.statusCode}`)
      const header = sessionSetCookie(res)
      if (header === undefined) continue
      withCookie++
      if (res.headers['cache-control'] !== 'no-store') throw new Error(`${request.url} set the cookie with cache-control ${res.headers['cache-control']}`)
      if (!/; Path=\/; /.test(header) || !/; HttpOnly/.test(header) || !/; SameSite=Lax/.test(header) || /Domain=/.test(header)) {
        throw new Error(`${request.url} set ${header}`)
      }
      cookie = /Max-Age=0/.test(header) ? undefined : sessionCookie(res)
    }
  }), 150)
  t.comment(`${withCookie} responses carried a session Set-Cookie`)
})

t.test('on every provider: the store holds no session id or cookie in any key or value, only their SHA-256', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, { ...store.options, userInfoKeys: ['name'] })
      const issued: string[] = []
      for (const user of ['ada', 'bo']) {
        const first = await app.inject({ method: 'POST', url: '/set/name', payload: JSON.stringify(user), headers: json })
        issued.push(sessionCookie(first) as string)
        const login = await app.inject({ method: 'POST', url: '/login', payload: { user }, headers: cookieHeader(issued.at(-1) as string) })
        issued.push(sessionCookie(login) as string)
        await app.inject({ method: 'POST', url: '/set/more', payload: '{"x":[1,2,3]}', headers: { ...json, ...cookieHeader(issued.at(-1) as string) } })
      }
      const held = await store.dump(app)
      t.ok(held.length > 0)
      const ids = issued.map(idOf)
      const signatures = issued.map((cookie) => cookie.slice(cookie.lastIndexOf('.') + 1))
      t.same(held.filter((value) => ids.some((id) => value.includes(id))), [], 'no id anywhere in the store')
      t.same(held.filter((value) => signatures.some((sig) => value.includes(sig))), [], 'no cookie signature either')
      for (const live of [issued[1], issued[3]]) {
        t.ok(held.some((value) => value.includes(storeKey(idOf(live)))), 'the live sessions are there, under the SHA-256 of their ids')
      }
    })
  }
})

t.test('session ids and cookies never reach the logs, even at trace level', async (t) => {
  const { raw, logger } = captureLogs('trace')
  const app = await build(t, {}, { logger })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
  const cookie = sessionCookie(login) as string
  await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })
  await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.ok(raw.length > 0, 'the app did log')
  t.same(raw.filter((line) => line.includes(idOf(cookie))), [])
})

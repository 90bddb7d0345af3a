import t from 'tap'
import { inspect } from 'node:util'
import fc from 'fast-check'
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import sessions from '../index.js'
import { storeKey } from '../lib/id.js'
import { CookieSigner } from '../lib/cookie.js'
import { build, cookieHeader, sessionCookie, setCookies, SECRET, OLD_SECRET } from './fixtures/app.js'
import { RecordingProvider } from './fixtures/providers.js'
import { captureLogs } from './fixtures/log-capture.js'

const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))
const json = { 'content-type': 'application/json' }

t.test('id, isNew, createdAt and expiresAt describe the session', async (t) => {
  const app = await build(t, { maxLifetime: 100, absoluteLifetime: 1000 })
  app.get('/meta', async (request) => {
    const { id, isNew, createdAt, expiresAt } = request.session
    return { id, sameId: id === request.session.id, isNew, createdAt, expiresAt }
  })
  const before = Date.now()
  const fresh = (await app.inject('/meta')).json()
  t.equal(fresh.isNew, true)
  t.ok(fresh.sameId, 'a new session keeps the id it was first given')
  t.ok(fresh.createdAt >= before && fresh.createdAt <= Date.now())
  t.equal(fresh.expiresAt, fresh.createdAt + 100_000)
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const loaded = (await app.inject({ url: '/meta', headers: cookieHeader(sessionCookie(login) as string) })).json()
  t.equal(loaded.isNew, false)
  t.equal(loaded.id, idOf(sessionCookie(login) as string))
  t.ok(loaded.expiresAt > loaded.createdAt)
})

t.test('a new session\'s deadline is its absoluteLifetime when that is the shorter', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 3600, absoluteLifetime: 60 })
  app.post('/meta', async (request) => {
    request.session.set('a', 1)
    return { createdAt: request.session.createdAt, expiresAt: request.session.expiresAt }
  })
  const res = await app.inject({ method: 'POST', url: '/meta' })
  const { createdAt, expiresAt } = res.json()
  t.equal(expiresAt - createdAt, 60_000, 'as the session reports it')
  const stored = provider.get(storeKey(idOf(sessionCookie(res) as string)))
  t.equal(stored?.createdAt, createdAt)
  t.equal(stored?.expiresAt, createdAt + 60_000, 'and as it is stored')
})

t.test('get, set, has, delete, keys and clear work on the session data', async (t) => {
  const app = await build(t)
  app.post('/ops', async (request) => {
    const s = request.session
    s.set('a', 1)
    s.set('b', 'two')
    s.set('gone', true)
    const afterSet = { a: s.get('a'), b: s.get('b'), has: s.has('a'), keys: s.keys() }
    s.delete('gone')
    s.delete('never-there')
    s.set('b', undefined)
    return { afterSet, hasB: s.has('b'), keys: s.keys(), missing: s.get('missing') ?? 'undefined' }
  })
  app.post('/clear', async (request) => {
    const before = request.session.keys()
    request.session.clear()
    return { before, after: request.session.keys() }
  })
  const res = await app.inject({ method: 'POST', url: '/ops' })
  t.same(res.json(), { afterSet: { a: 1, b: 'two', has: true, keys: ['a', 'b', 'gone'] }, hasB: false, keys: ['a'], missing: 'undefined' })
  const cookie = sessionCookie(res) as string
  const cleared = await app.inject({ method: 'POST', url: '/clear', headers: cookieHeader(cookie) })
  t.same(cleared.json(), { before: ['a'], after: [] })
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('clear() forgets an object get() handed out: changed in place afterwards, it is not written back', async (t) => {
  const app = await build(t)
  app.post('/empty-cart', async (request) => {
    const cart = request.session.get('cart') as number[]
    request.session.clear()
    cart.push(2)
    return { keys: request.session.keys() }
  })
  const cookie = sessionCookie(await app.inject({ method: 'POST', url: '/set/cart', payload: '[1]', headers: json })) as string
  t.same((await app.inject({ method: 'POST', url: '/empty-cart', headers: cookieHeader(cookie) })).json(), { keys: [] })
  t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('keys() lists stored keys, keys added on this request, and not deleted ones', async (t) => {
  const app = await build(t)
  app.post('/mix', async (request) => {
    request.session.set('b', 2)
    request.session.set('a', 3)
    request.session.delete('b')
    request.session.set('c', 4)
    return request.session.keys()
  })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.same((await app.inject({ method: 'POST', url: '/mix', headers: cookieHeader(sessionCookie(login) as string) })).json(), ['a', 'c'])
})

t.test('values round-trip as JSON: a Date comes back as its ISO string', async (t) => {
  const app = await build(t)
  const when = new Date('2026-01-02T03:04:05.000Z')
  app.post('/date', async (request) => { request.session.set('when', when); return {} })
  const login = await app.inject({ method: 'POST', url: '/date' })
  const res = await app.inject({ url: '/get/when', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { value: '2026-01-02T03:04:05.000Z' })
})

t.test('a value that is not an object comes back as JSON made it at once; an object set on this request comes back as given', async (t) => {
  const app = await build(t)
  const when = new Date('2026-01-02T03:04:05.000Z')
  app.post('/now', async (request) => {
    const list = [NaN]
    request.session.set('nan', NaN)
    request.session.set('inf', -Infinity)
    request.session.set('zero', -0)
    request.session.set('list', list)
    request.session.set('when', when)
    return {
      nan: request.session.get('nan'),
      inf: request.session.get('inf'),
      negativeZero: Object.is(request.session.get('zero'), -0),
      sameList: request.session.get('list') === list,
      sameDate: request.session.get('when') === when
    }
  })
  const res = await app.inject({ method: 'POST', url: '/now' })
  t.same(res.json(), { nan: null, inf: null, negativeZero: false, sameList: true, sameDate: true })
  const next = await app.inject({ url: '/get/list', headers: cookieHeader(sessionCookie(res) as string) })
  t.same(next.json(), { value: [null] }, 'the object as JSON made it, from the next request on')
})

t.test('set() of a value JSON cannot hold throws a coded TypeError at once', async (t) => {
  const app = await build(t)
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  const bad: Record<string, unknown> = {
    fn: () => 1,
    symbol: Symbol('s'),
    bigint: 10n,
    cyclic,
    nestedFn: { a: { b: () => 1 } },
    nestedBigint: [1, 2n],
    badToJSON: { toJSON: () => undefined }
  }
  app.post<{ Params: { kind: string } }>('/bad/:kind', async (request) => {
    try {
      request.session.set('x', bad[request.params.kind])
    } catch (err) {
      const e = err as Error & { code: string }
      return { code: e.code, type: e instanceof TypeError, message: e.message }
    }
    return { code: null }
  })
  for (const kind of Object.keys(bad)) {
    const res = await app.inject({ method: 'POST', url: `/bad/${kind}` })
    t.equal(res.json().code, 'FST_SESSION_NOT_SERIALIZABLE', kind)
    t.equal(res.json().type, true, `${kind} is a TypeError`)
    t.same(setCookies(res), [], `${kind}: nothing was stored`)
  }
})

t.test('regenerate() issues a new id, keeps the data and destroys the old id before the response', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const first = await app.inject({ method: 'POST', url: '/set/cart', payload: '["book"]', headers: json })
  const oldCookie = sessionCookie(first) as string
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: cookieHeader(oldCookie) })
  const newCookie = sessionCookie(login) as string
  t.not(idOf(newCookie), idOf(oldCookie))
  t.equal(login.json().id, idOf(newCookie))
  t.equal(login.headers['cache-control'], 'no-store')
  t.equal(provider.get(storeKey(idOf(oldCookie))), null, 'the old record is gone')
  t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(newCookie) })).json(), { value: ['book'] })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(newCookie) })).json(), { value: 'ada' })
  t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(oldCookie) })).json(), { value: null })
})

t.test('clear() then regenerate() still ends the old record: an emptied session is moved, not left behind', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.post('/wipe', async (request) => {
    request.session.clear()
    await request.session.regenerate()
    return {}
  })
  const oldCookie = sessionCookie(await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })) as string
  const wiped = await app.inject({ method: 'POST', url: '/wipe', headers: cookieHeader(oldCookie) })
  t.equal(wiped.statusCode, 200)
  t.equal(provider.get(storeKey(idOf(oldCookie))), null, 'the old record is gone')
  const newCookie = sessionCookie(wiped)
  t.ok(newCookie !== undefined && idOf(newCookie) !== idOf(oldCookie), 'the response carries the new id')
  const again = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(oldCookie) } })
  t.not(again.json().id, idOf(oldCookie), 'the old id is not adopted again')
})

t.test('regenerate() on a new session only changes the id', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.post('/fresh', async (request) => {
    const before = request.session.id
    await request.session.regenerate()
    await request.session.regenerate()
    return { changed: before !== request.session.id }
  })
  const res = await app.inject({ method: 'POST', url: '/fresh' })
  t.same(res.json(), { changed: true })
  t.same(setCookies(res), [], 'nothing to store')
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'bo' }, headers: json })
  t.ok(sessionCookie(login))
  t.equal(provider.count('destroy'), 0)
})

t.test('the clearing cookie of a logout carries the Path and Domain the session cookie was set with', async (t) => {
  const app = await build(t, { cookie: { domain: 'example.com', path: '/app' } })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.match(setCookies(login)[0], /; Path=\/app; Domain=example\.com;/)
  const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(setCookies(logout), ['sessionid=; Path=/app; Domain=example.com; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax'],
    'a browser drops a cookie only when both match the one it holds')
})

t.test('destroy() deletes the record and clears the cookie', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.equal(logout.statusCode, 200)
  const [header] = setCookies(logout)
  t.match(header, /^sessionid=; Path=\/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax$/)
  t.equal(logout.headers['cache-control'], 'no-store')
  t.equal(provider.size, 0)
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('a destroyed session refuses changes with a coded error, and destroying twice is harmless', async (t) => {
  const app = await build(t)
  app.post('/twice', async (request) => {
    request.session.set('a', 1)
    await request.session.destroy()
    await request.session.destroy()
    try {
      request.session.set('a', 2)
    } catch (err) {
      return { code: (err as { code: string }).code }
    }
    return {}
  })
  const res = await app.inject({ method: 'POST', url: '/twice' })
  t.same(res.json(), { code: 'FST_SESSION_DESTROYED' })
  t.match(setCookies(res)[0], /Max-Age=0/)
})

t.test('keys and user ids holding a lone surrogate are refused at set, since no UTF-8 store keeps them apart', async (t) => {
  const app = await build(t)
  app.post('/odd', async (request) => {
    const codes: string[] = []
    for (const [key, value] of [['\ud800', 1], ['a\udc00b', 1], ['userId', 'al\ud800ice']] as const) {
      try {
        request.session.set(key, value)
        codes.push('stored')
      } catch (err) {
        codes.push((err as { code: string }).code)
      }
    }
    request.session.set('\ud83d\ude00', 'a pair is fine')
    return { codes, keys: request.session.keys() }
  })
  const res = await app.inject({ method: 'POST', url: '/odd' })
  t.same(res.json(), { codes: ['FST_SESSION_NOT_SERIALIZABLE', 'FST_SESSION_NOT_SERIALIZABLE', 'FST_SESSION_INVALID_USER'], keys: ['\ud83d\ude00'] })
  const read = await app.inject({ url: '/get/%F0%9F%98%80', headers: cookieHeader(sessionCookie(res) as string) })
  t.same(read.json(), { value: 'a pair is fine' })
})

t.test('after destroy() the rest of the request reads an empty session', async (t) => {
  const app = await build(t)
  app.post('/after', async (request) => {
    request.session.set('pending', true)
    await request.session.destroy()
    const { session } = request
    return { userId: session.get('userId') ?? null, has: session.has('userId'), keys: session.keys(), isNew: session.isNew }
  })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'alice' } })
  const res = await app.inject({ method: 'POST', url: '/after', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { userId: null, has: false, keys: [], isNew: true })
  t.match(setCookies(res)[0], /Max-Age=0/)
})

t.test('destroyOtherSessions() after destroy() still ends the user\'s other sessions', async (t) => {
  const app = await build(t)
  app.post('/everywhere', async (request) => {
    await request.session.destroy()
    return { ended: await request.session.destroyOtherSessions() }
  })
  const phone = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' } })
  const laptop = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' } })
  const res = await app.inject({ method: 'POST', url: '/everywhere', headers: cookieHeader(sessionCookie(laptop) as string) })
  t.same(res.json(), { ended: 1 })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(sessionCookie(phone) as string) })).json(), { value: null })
})

t.test('regenerate() then destroy() in one request ends the old record', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.post('/both', async (request) => {
    await request.session.regenerate()
    await request.session.destroy()
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  await app.inject({ method: 'POST', url: '/both', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(provider.size, 0)
})

const DROPPED = 'session ended before the save (destroyed, moved or expired meanwhile): the changes of this request were dropped'

t.test('a write racing a destroy answers but never brings the session back', async (t) => {
  const provider = new RecordingProvider()
  const logs = captureLogs('info')
  const app = await build(t, { provider }, { logger: logs.logger })
  app.post('/slow-write', async (request) => {
    request.session.set('late', true)
    await new Promise((resolve) => setTimeout(resolve, 50))
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const [write, logout] = await Promise.all([
    app.inject({ method: 'POST', url: '/slow-write', headers: cookieHeader(cookie) }),
    app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  ])
  t.equal(write.statusCode, 200)
  t.equal(logout.statusCode, 200)
  t.same(setCookies(write), [])
  t.equal(provider.size, 0)
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: null })
  t.equal(logs.lines.filter((line) => line.msg === DROPPED).length, 1, 'the dropped write is logged, at info')
})

t.test('a regenerate racing a logout does not resurrect the session under the new id', async (t) => {
  const provider = new RecordingProvider()
  const logs = captureLogs('info')
  const app = await build(t, { provider }, { logger: logs.logger })
  app.post('/slow-login', async (request) => {
    await request.session.regenerate()
    await new Promise((resolve) => setTimeout(resolve, 50))
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const [slow] = await Promise.all([
    app.inject({ method: 'POST', url: '/slow-login', headers: cookieHeader(cookie) }),
    app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  ])
  t.same(setCookies(slow), [])
  t.equal(provider.size, 0)
  t.same(logs.lines.filter((line) => line.msg === DROPPED).map((line) => line.level), [30], 'the dropped login is logged, at info')
})

t.test('destroy() after the save, in onResponse, ends the record the save created', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.addHook('onResponse', async (request) => {
    if (request.url.startsWith('/set/') || request.url === '/login') await request.session.destroy()
  })
  const created = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const fresh = sessionCookie(created) as string
  t.ok(fresh, 'a new session: its cookie went out')
  t.equal(provider.size, 0, 'and its record is gone')
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(fresh) })).json(), { value: null })

  const other = await build(t, { provider })
  const visit = await other.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: { ...json, ...cookieHeader(sessionCookie(visit) as string) } })
  const moved = sessionCookie(login) as string
  t.ok(moved, 'a regenerated session: its new cookie went out')
  t.equal(provider.size, 0, 'and the record under its new id is gone, as the old one is')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(moved) })).json(), { value: null })
})

t.test('a cookie signed by an older secret is re-signed with the first one on that response', async (t) => {
  const provider = new RecordingProvider()
  const before = await build(t, { provider, secret: OLD_SECRET })
  const login = await before.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const oldCookie = sessionCookie(login) as string
  await before.close()
  const after = await build(t, { provider, secret: [SECRET, OLD_SECRET] })
  const res = await after.inject({ url: '/get/a', headers: cookieHeader(oldCookie) })
  t.same(res.json(), { value: 1 })
  const renewed = sessionCookie(res) as string
  t.equal(renewed, new CookieSigner([SECRET]).sign(idOf(oldCookie)), 'same id, signed with the new secret')
  const again = await after.inject({ url: '/get/a', headers: cookieHeader(renewed) })
  t.same(setCookies(again), [], 'a current cookie is not re-signed')
  const write = await after.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(oldCookie) } })
  t.equal(sessionCookie(write), renewed, 'a write on an old cookie re-signs too')
  const only = await build(t, { provider, secret: SECRET })
  t.same((await only.inject({ url: '/get/a', headers: cookieHeader(oldCookie) })).json(), { value: null }, 'dropping the old secret drops its cookies')
})

t.test('a rotated cookie is re-signed even when the touch is capped', async (t) => {
  const provider = new RecordingProvider()
  const before = await build(t, { provider, secret: OLD_SECRET, maxLifetime: 60, absoluteLifetime: 30, touchAfter: 0 })
  const login = await before.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  await before.close()
  const after = await build(t, { provider, secret: [SECRET, OLD_SECRET], maxLifetime: 60, absoluteLifetime: 30, touchAfter: 0 })
  const res = await after.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(login) as string) })
  t.ok(sessionCookie(res))
})

t.test('with cookie.maxAge the cookie is persistent and refreshed whenever the deadline is written', async (t) => {
  const app = await build(t, { cookie: { maxAge: 3600 }, touchAfter: 0 })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.match(setCookies(login)[0], /; Max-Age=3600;/)
  await new Promise((resolve) => setTimeout(resolve, 5))
  const read = await app.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(login) as string) })
  t.match(setCookies(read)[0], /; Max-Age=3600;/)
})

t.test('cookie attributes follow the options', async (t) => {
  const app = await build(t, { cookieName: 'sid', cookie: { path: '/app', domain: 'example.com', sameSite: 'strict', httpOnly: false, secure: true, partitioned: true } })
  const res = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(setCookies(res)[0].replace(/^sid=[^;]+/, 'sid=X'), 'sid=X; Path=/app; Domain=example.com; SameSite=Strict; Secure; Partitioned')
  const none = await build(t, { cookie: { sameSite: false, secure: false } })
  const plain = await none.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.match(setCookies(plain)[0], /; Path=\/; HttpOnly$/)
})

t.test("secure: 'auto' sets Secure behind a trusted proxy that says https", async (t) => {
  const app = await build(t, {}, { trustProxy: true })
  const https = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, 'x-forwarded-proto': 'https' } })
  t.match(setCookies(https)[0], /; Secure$/)
  const upper = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, 'x-forwarded-proto': 'HTTPS' } })
  t.match(setCookies(upper)[0], /; Secure$/, 'the scheme in any case')
  const http = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.notMatch(setCookies(http)[0], /Secure/)
  const untrusted = await build(t)
  const spoofed = await untrusted.inject({ method: 'POST', url: '/set/a', payload: '1', headers: { ...json, 'x-forwarded-proto': 'https' } })
  t.notMatch(setCookies(spoofed)[0], /Secure/, 'without trustProxy the header is ignored')
  const logout = await app.inject({ method: 'POST', url: '/logout', headers: { ...cookieHeader(sessionCookie(https) as string), 'x-forwarded-proto': 'https' } })
  t.match(setCookies(logout)[0], /Max-Age=0.*; Secure$/)
})

t.test('the plugin reuses an @fastify/cookie the app registered, and other cookies survive', async (t) => {
  const app = Fastify()
  await app.register(fastifyCookie, { secret: 'cookie-plugin-secret' })
  await app.register(sessions, { secret: SECRET })
  app.get('/both', async (request, reply) => {
    reply.setCookie('theme', 'dark')
    request.session.set('a', 1)
    return { parsed: request.cookies.theme ?? null }
  })
  t.teardown(() => app.close())
  const res = await app.inject({ url: '/both', headers: { cookie: 'theme=light' } })
  t.same(res.json(), { parsed: 'light' })
  t.same(res.cookies.map((c) => c.name).sort(), ['sessionid', 'theme'])
})

t.test('without @fastify/cookie the plugin registers it', async (t) => {
  const app = await build(t)
  app.get('/cookies', async (request) => request.cookies)
  const res = await app.inject({ url: '/cookies', headers: { cookie: 'a=1' } })
  t.same(res.json(), { a: '1' })
  // as its parser decodes by default: what decodeURIComponent makes of a value, else the value as sent
  const odd = await app.inject({ url: '/cookies', headers: { cookie: 'b=%41%42; c=%; d=%C3%A9; e=%FF; f=%E2%82' } })
  t.same(odd.json(), { b: 'AB', c: '%', d: 'é', e: '%FF', f: '%E2%82' })
  // without a throw, though: each costs microseconds, and a header can hold thousands
  const original = globalThis.decodeURIComponent
  let throws = 0
  globalThis.decodeURIComponent = (value) => {
    try {
      return original(value)
    } catch (err) {
      throws++
      throw err
    }
  }
  let status = 0
  try {
    status = (await app.inject({ url: '/cookies', headers: { cookie: Array.from({ length: 2000 }, (_, i) => `a${i}=%`).join('; ') } })).statusCode
  } finally {
    globalThis.decodeURIComponent = original
  }
  t.equal(status, 200)
  t.equal(throws, 0)
})

t.test('fastify.sessions exposes the provider, destroy(id) and gc()', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 0.05 })
  t.equal(app.sessions.provider, provider)
  const a = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const b = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(await app.sessions.destroy(idOf(sessionCookie(a) as string)), true)
  t.equal(await app.sessions.destroy(idOf(sessionCookie(a) as string)), false)
  // what is not an id names no session: no store call, no raw TypeError
  const calls = provider.calls.length
  for (const notAnId of [undefined, null, 42, '', 'x'.repeat(43) + '!', sessionCookie(b) as string]) {
    t.equal(await app.sessions.destroy(notAnId as string), false)
  }
  t.equal(provider.calls.length, calls)
  t.equal(provider.size, 1)
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(await app.sessions.gc(), 1)
  t.equal(provider.size, 0)
  t.ok(sessionCookie(b))
})

t.test('fastify.sessions, logged or serialised, shows no secret', async (t) => {
  const app = await build(t, { secret: [SECRET, OLD_SECRET] })
  const shown = [JSON.stringify(app.sessions), inspect(app.sessions, { depth: 20 })]
  for (const text of shown) {
    t.notMatch(text, SECRET)
    t.notMatch(text, OLD_SECRET)
  }
  t.match(shown[0], /"cookieName":"sessionid"/, 'the rest of the options still shows')
})

t.test('the sweep timer runs gc() every gcInterval and stops when Fastify closes', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 0.02, gcInterval: 0.05 })
  await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(provider.size, 1)
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.equal(provider.size, 0, 'swept without anybody asking')
  await app.close()
  provider.create(storeKey('x'), { data: new Map(), createdAt: 0, lastSeenAt: 0, expiresAt: Date.now() + 10, user: null })
  await new Promise((resolve) => setTimeout(resolve, 120))
  t.equal(provider.size, 1, 'no sweep after close')
})

t.test('gcInterval: 0 runs no sweep', async (t) => {
  const provider = new RecordingProvider()
  let sweeps = 0
  provider.gc = () => ++sweeps
  await build(t, { provider, gcInterval: 0 })
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(sweeps, 0)
})

t.test('a provider created from a name is closed with Fastify; one handed in is not', async (t) => {
  const app = await build(t)
  const owned = app.sessions.provider as RecordingProvider
  await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(owned.size, 1)
  await app.close()
  t.equal(owned.size, 0, 'closed: the memory provider empties')
  const shared = new RecordingProvider()
  const other = await build(t, { provider: shared })
  await other.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  await other.close()
  t.equal(shared.size, 1)
})

t.test('one app can hand its live provider to another, which then reads its sessions', async (t) => {
  const first = await build(t, { providerOptions: { maxSessions: 10 } })
  const second = await build(t, { provider: first.sessions.provider })
  const login = await first.inject({ method: 'POST', url: '/set/a', payload: '"shared"', headers: json })
  t.same((await second.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(login) as string) })).json(), { value: 'shared' })
})

t.test('a set() refused for size keeps the value the key had earlier on the same request', async (t) => {
  const app = await build(t, { maxSessionSize: 50 })
  app.post('/twice', async (request) => {
    request.session.set('a', 'small')
    try {
      request.session.set('a', 'x'.repeat(100))
    } catch {}
    return { a: request.session.get('a') }
  })
  const res = await app.inject({ method: 'POST', url: '/twice' })
  t.same(res.json(), { a: 'small' })
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(res) as string) })).json(), { value: 'small' })
})

t.test('deleting a stored key and setting another counts the size of what remains', async (t) => {
  const app = await build(t, { maxSessionSize: 45 })
  app.post('/swap', async (request) => {
    request.session.get('obj')
    const plain = request.session.get('plain')
    request.session.delete('obj')
    request.session.set('next', 'y'.repeat(20))
    return { plain, keys: request.session.keys() }
  })
  app.post('/seed', async (request) => {
    request.session.set('obj', { a: 1 })
    request.session.set('plain', 'p')
    return {}
  })
  const seed = await app.inject({ method: 'POST', url: '/seed' })
  const res = await app.inject({ method: 'POST', url: '/swap', headers: cookieHeader(sessionCookie(seed) as string) })
  t.same(res.json(), { plain: 'p', keys: ['plain', 'next'] }, 'fits only because obj was deleted')
})

t.test('get() hands back the very object set() or an earlier get() gave, so changes to it are not lost', async (t) => {
  const app = await build(t)
  app.post('/same', async (request) => {
    const cart = ['a']
    request.session.set('cart', cart)
    const first = request.session.get('cart')
    first.push('b')
    return { same: first === cart && request.session.get('cart') === cart }
  })
  const res = await app.inject({ method: 'POST', url: '/same' })
  t.same(res.json(), { same: true })
  t.same((await app.inject({ url: '/get/cart', headers: cookieHeader(sessionCookie(res) as string) })).json(), { value: ['a', 'b'] })
})

/** Bytes of the session's JSON as maxSessionSize counts them, the plain way. */
function jsonSize (data: ReadonlyMap<string, unknown>): number {
  return Buffer.byteLength(JSON.stringify(Object.fromEntries(data)))
}

t.test('set() accepts a session of exactly maxSessionSize bytes and refuses one byte more, whatever the text of keys and values', async (t) => {
  const LIMIT = 3000
  // escaped as six characters each, so the cheap bound the size check starts from is nearly exact for it
  const PAD_KEY = '\u0001'.repeat(10)
  const app = await build(t, { maxSessionSize: LIMIT })
  // values with toJSON cannot travel in a request body: the routes read the case from here
  let current: { seed: Array<[string, unknown]>, more: Array<[string, unknown]>, pad: string } = { seed: [], more: [], pad: '' }
  app.post('/seed', async (request) => {
    for (const [key, value] of current.seed) request.session.set(key, value)
    return {}
  })
  app.post('/edge', async (request) => {
    for (const [key, value] of current.more) request.session.set(key, value)
    try {
      request.session.set(PAD_KEY, current.pad)
      return { refused: false }
    } catch (err) {
      if ((err as { code?: string }).code !== 'FST_SESSION_TOO_LARGE') throw err
      return { refused: true }
    }
  })
  const unit = fc.constantFrom('a', '\u0001', '\u2028', '€', '😀', '"', '\\', '\n', '\u007f', 'é', '\u001f')
  const key = fc.string({ unit, maxLength: 8 }).filter((k) => k !== PAD_KEY)
  const text = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 40 }),
    fc.string({ unit: fc.constantFrom('€', '😀', '\ud800', '\udc00', '\u2028', '\u0001', 'x'), maxLength: 40 }))
  const value = fc.oneof(text, fc.jsonValue({ maxDepth: 2 }), fc.double(), text.map((s) => ({ toJSON: () => s })))
  const entries = fc.uniqueArray(fc.tuple(key, value), { selector: ([k]) => k, maxLength: 6 })
  await fc.assert(fc.asyncProperty(entries, entries, fc.boolean(), async (seed, more, over) => {
    // every set() before the last must fit, so that only the last one can be refused
    const model = new Map<string, unknown>()
    for (const [k, v] of [...seed, ...more]) {
      model.set(k, v)
      fc.pre(jsonSize(model) <= LIMIT)
    }
    // a pad of 3-byte characters brings the whole to LIMIT, or one byte over it
    model.set(PAD_KEY, '')
    const rest = LIMIT + (over ? 1 : 0) - jsonSize(model)
    fc.pre(rest >= 0)
    current = { seed, more, pad: '€'.repeat(Math.floor(rest / 3)) + 'x'.repeat(rest % 3) }
    const seeded = await app.inject({ method: 'POST', url: '/seed' })
    const cookie = sessionCookie(seeded)
    const res = await app.inject({ method: 'POST', url: '/edge', headers: cookie === undefined ? {} : cookieHeader(cookie) })
    return seeded.statusCode === 200 && res.statusCode === 200 && res.json().refused === over
  }), { numRuns: 300 })
})

t.test('an object grown in place to exactly maxSessionSize is saved, and one byte more fails the response', async (t) => {
  const LIMIT = 200
  const KEY = '\u2028k'
  const app = await build(t, { maxSessionSize: LIMIT })
  let grow = ''
  app.post('/grow', async (request) => {
    (request.session.get(KEY) as string[]).push(grow)
    return {}
  })
  for (const over of [0, 1]) {
    const first = await app.inject({ method: 'POST', url: '/set/' + encodeURIComponent(KEY), payload: ['\ud800€'], headers: { 'content-type': 'application/json' } })
    const cookie = sessionCookie(first) as string
    const rest = LIMIT + over - jsonSize(new Map([[KEY, ['\ud800€', '']]]))
    grow = '😀'.repeat(Math.floor(rest / 4)) + 'x'.repeat(rest % 4)
    const res = await app.inject({ method: 'POST', url: '/grow', headers: cookieHeader(cookie) })
    t.equal(res.statusCode, over === 0 ? 200 : 500)
    const back = await app.inject({ url: '/get/' + encodeURIComponent(KEY), headers: cookieHeader(cookie) })
    t.equal(back.json().value.length, over === 0 ? 2 : 1, over === 0 ? 'saved at the limit' : 'not saved past it')
  }
})

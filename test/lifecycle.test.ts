import t from 'tap'
import { sign } from '@fastify/cookie'
import Fastify from 'fastify'
import sessions from '../index.js'
import { storeKey } from '../lib/id.js'
import { CookieSigner, MAX_SAME_NAME_COOKIES } from '../lib/cookie.js'
import { build, cookieHeader, sessionCookie, setCookies, SECRET } from './fixtures/app.js'
import { AsyncMemoryProvider, RecordingProvider } from './fixtures/providers.js'

const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))

t.test('a request without a cookie gets an empty new session and no Set-Cookie', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.get('/inspect', async (request) => ({ isNew: request.session.isNew, keys: request.session.keys(), has: request.session.has('x') }))
  const res = await app.inject('/inspect')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { isNew: true, keys: [], has: false })
  t.same(setCookies(res), [])
  t.equal(provider.calls.length, 0, 'the store is not touched')
  t.equal(provider.size, 0)
})

t.test('setting data on a new session stores it under the SHA-256 of the id and sets a signed cookie', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const res = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  t.equal(res.statusCode, 200)
  const cookie = sessionCookie(res) as string
  const id = res.json().id
  t.equal(cookie, new CookieSigner([SECRET]).sign(id))
  t.match(id, /^[A-Za-z0-9_-]{43}$/)
  t.equal(provider.get(id), null, 'the id itself is not a store key')
  t.equal(provider.get(storeKey(id))?.data.get('views'), '1')
  const [header] = setCookies(res)
  t.match(header, /; Path=\/; HttpOnly; SameSite=Lax$/)
  t.notMatch(header, /Max-Age|Secure|Expires/, 'a browser-session cookie, not Secure over http')
  t.equal(res.headers['cache-control'], 'no-store')
})

t.test('a later request with the cookie sees the data and gets no Set-Cookie', async (t) => {
  const app = await build(t)
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '7', headers: { 'content-type': 'application/json' } })
  const res = await app.inject({ url: '/get/views', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { value: 7 })
  t.same(setCookies(res), [])
  t.equal(res.headers['cache-control'], undefined)
})

t.test('a cookie with a bad signature is no session: 200, not adopted, no Set-Cookie on a read', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  const cookie = sessionCookie(login) as string
  const tampered = cookie.slice(0, -2) + (cookie.endsWith('A') ? 'BB' : 'AA')
  const read = await app.inject({ url: '/get/views', headers: cookieHeader(tampered) })
  t.equal(read.statusCode, 200)
  t.same(read.json(), { value: null })
  t.same(setCookies(read), [])
  const write = await app.inject({ method: 'POST', url: '/set/x', payload: '2', headers: { 'content-type': 'application/json', ...cookieHeader(tampered) } })
  t.not(write.json().id, idOf(cookie), 'a fresh id, never the client one')
  t.equal(provider.count('get'), 0, 'the store is not asked about a cookie that fails its signature')
})

t.test('malformed, empty and oversized cookies are no session and never an error', async (t) => {
  const app = await build(t)
  const signer = new CookieSigner([SECRET])
  const values = [
    '', 'garbage', '.', 'a.b.c', '%E0%A4%A', '"quoted"', sign('short-id', SECRET),
    signer.sign('x'.repeat(43)).replace('x', '\u00e9'),
    signer.sign('A'.repeat(43)) + 'A'.repeat(4100)
  ]
  for (const value of values) {
    const res = await app.inject({ url: '/get/views', headers: { cookie: `sessionid=${value}` } })
    t.equal(res.statusCode, 200, JSON.stringify(value.slice(0, 30)))
    t.same(setCookies(res), [])
  }
})

t.test('a validly signed id the store does not know is never adopted', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const planted = 'P'.repeat(43)
  const cookie = new CookieSigner([SECRET]).sign(planted)
  const read = await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.same(setCookies(read), [], 'nothing to clear on a read')
  const res = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json', ...cookieHeader(cookie) } })
  const id = res.json().id
  t.not(id, planted)
  t.equal(idOf(sessionCookie(res) as string), id)
  t.equal(provider.get(storeKey(planted)), null)
})

t.test('the first value of a repeated session cookie that verifies wins', async (t) => {
  const app = await build(t)
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '3', headers: { 'content-type': 'application/json' } })
  const good = sessionCookie(login) as string
  const res = await app.inject({ url: '/get/views', headers: { cookie: `xsessionid=nope; sessionid=forged.sig; other=1; sessionid=${good}; sessionid=later` } })
  t.same(res.json(), { value: 3 })
})

t.test('a repeated session cookie whose session ended gives way to a later live one', async (t) => {
  // a cookie left on another path by earlier settings comes first, and a
  // logout's clearing cookie (on the current path) never reaches it
  const provider = new AsyncMemoryProvider()
  const app = await build(t, { provider })
  const json = { 'content-type': 'application/json' }
  const stale = sessionCookie(await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: json })) as string
  await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(stale) })
  const live = sessionCookie(await app.inject({ method: 'POST', url: '/set/views', payload: '2', headers: json })) as string
  const both = { cookie: `sessionid=${stale}; sessionid=${live}` }
  const read = await app.inject({ url: '/get/views', headers: both })
  t.same(read.json(), { value: 2 }, 'the live session is read')
  t.same(setCookies(read), [], 'and nothing is re-issued')
  const write = await app.inject({ method: 'POST', url: '/set/views', payload: '3', headers: { ...json, ...both } })
  t.same(setCookies(write), [], 'a write goes to it, no new session')
  t.same((await app.inject({ url: '/get/views', headers: cookieHeader(live) })).json(), { value: 3 })

  const recording = new RecordingProvider()
  const sync = await build(t, { provider: recording })
  const ended = sessionCookie(await sync.inject({ method: 'POST', url: '/set/views', payload: '1', headers: json })) as string
  await sync.inject({ method: 'POST', url: '/logout', headers: cookieHeader(ended) })
  const alive = sessionCookie(await sync.inject({ method: 'POST', url: '/set/views', payload: '4', headers: json })) as string
  const reads = async (cookies: string[]): Promise<{ value: unknown, reads: number }> => {
    const before = recording.count('get')
    const res = await sync.inject({ url: '/get/views', headers: { cookie: cookies.map((cookie) => `sessionid=${cookie}`).join('; ') } })
    return { value: res.json().value, reads: recording.count('get') - before }
  }
  t.same(await reads([ended, alive]), { value: 4, reads: 2 }, 'a synchronous store too, one read per session')
  const endedMany: string[] = []
  for (let i = 0; i < MAX_SAME_NAME_COOKIES; i++) {
    const cookie = sessionCookie(await sync.inject({ method: 'POST', url: '/set/views', payload: '1', headers: json })) as string
    await sync.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
    endedMany.push(cookie)
  }
  t.same(await reads([...endedMany.slice(1), alive]), { value: 4, reads: MAX_SAME_NAME_COOKIES }, `the ${MAX_SAME_NAME_COOKIES}th value is still tried`)
  t.same(await reads([...endedMany, alive]), { value: null, reads: MAX_SAME_NAME_COOKIES }, `no more than ${MAX_SAME_NAME_COOKIES} values are tried`)
  t.same(await reads([...Array(MAX_SAME_NAME_COOKIES - 1).fill(ended), alive]), { value: 4, reads: 2 }, 'a value repeated is read once')
  t.same(await reads([endedMany[0], endedMany[1], endedMany[0], endedMany[1], alive]), { value: 4, reads: 3 }, 'even when not in a row')
})

t.test('a percent-encoded cookie, as other cookie writers send it, is read', async (t) => {
  const app = await build(t)
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '4', headers: { 'content-type': 'application/json' } })
  const res = await app.inject({ url: '/get/views', headers: cookieHeader(encodeURIComponent(sessionCookie(login) as string)) })
  t.same(res.json(), { value: 4 })
})

t.test('an idle session expires', async (t) => {
  const app = await build(t, { maxLifetime: 0.1, touchAfter: 0 })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  const cookie = sessionCookie(login) as string
  t.same((await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })).json(), { value: 1 })
  await new Promise((resolve) => setTimeout(resolve, 150))
  t.same((await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('activity keeps a session alive until its absolute lifetime ends it', async (t) => {
  // each pause is well under the idle lifetime, their sum well over it, and the
  // margins leave room for a loaded CI machine
  const app = await build(t, { maxLifetime: 0.6, absoluteLifetime: 1.2, touchAfter: 0 })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  const cookie = sessionCookie(login) as string
  for (let i = 0; i < 4; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200))
    t.same((await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })).json(), { value: 1 }, `alive after ${(i + 1) * 200} ms`)
  }
  await new Promise((resolve) => setTimeout(resolve, 450))
  t.same((await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('an absolute lifetime shorter than the idle one wins', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 3600, absoluteLifetime: 60 })
  const before = Date.now()
  await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  const created = provider.calls.find((call) => call.method === 'create')
  t.ok(created?.session !== undefined)
  const { createdAt, expiresAt } = created?.session as { createdAt: number, expiresAt: number }
  t.equal(expiresAt, createdAt + 60_000)
  t.ok(createdAt >= before)
})

t.test('a session the lifetimes now configured call expired is no session, whatever the store says', async (t) => {
  const provider = new RecordingProvider()
  const first = await build(t, { provider, maxLifetime: 3600 })
  const login = await first.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  await first.close()
  const second = await build(t, { provider, maxLifetime: 0.05 })
  await new Promise((resolve) => setTimeout(resolve, 80))
  const res = await second.inject({ url: '/get/views', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { value: null })
})

t.test('a read-only request refreshes the idle deadline at most once per touchAfter', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 60, touchAfter: 0.1 })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  const cookie = sessionCookie(login) as string
  await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.equal(provider.count('update'), 0, 'no write within touchAfter')
  await new Promise((resolve) => setTimeout(resolve, 120))
  const before = provider.get(storeKey(idOf(cookie)))?.expiresAt as number
  const res = await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.same(setCookies(res), [], 'a touch sends no cookie for a browser-session cookie')
  t.equal(provider.count('update'), 1)
  const touch = provider.calls.find((call) => call.method === 'update')?.patch
  t.equal(touch?.set, null)
  t.equal(touch?.delete, null)
  t.ok((provider.get(storeKey(idOf(cookie)))?.expiresAt as number) > before)
  await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.equal(provider.count('update'), 1, 'the next read is within touchAfter again')
})

t.test('touchAfter defaults to a tenth of maxLifetime', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 2 })
  const cookie = sessionCookie(await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })) as string
  await new Promise((resolve) => setTimeout(resolve, 120))
  await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.equal(provider.count('update'), 0, 'no write 120 ms in, within the 200 ms')
  await new Promise((resolve) => setTimeout(resolve, 130))
  await app.inject({ url: '/get/views', headers: cookieHeader(cookie) })
  t.equal(provider.count('update'), 1, 'a touch once 200 ms have passed')
})

t.test('touch() forces the idle deadline to be written on this response', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.get('/touch', async (request) => { request.session.touch(); return {} })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  await app.inject({ url: '/touch', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(provider.count('update'), 1)
})

t.test('no touch is written once the absolute deadline caps the idle one', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider, maxLifetime: 60, absoluteLifetime: 30, touchAfter: 0 })
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  await app.inject({ url: '/get/views', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(provider.count('update'), 0)
})

t.test('a write sends only the keys that changed', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.post('/seed', async (request) => {
    request.session.set('a', 1)
    request.session.set('b', { deep: [1] })
    request.session.set('c', 'three')
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/seed' })
  const cookie = sessionCookie(login) as string
  await app.inject({ method: 'POST', url: '/set/a', payload: '2', headers: { 'content-type': 'application/json', ...cookieHeader(cookie) } })
  await app.inject({ method: 'POST', url: '/delete/c', headers: cookieHeader(cookie) })
  const updates = provider.calls.filter((call) => call.method === 'update').map((call) => call.patch)
  t.same(updates.map((patch) => [patch?.set === null ? null : [...(patch?.set ?? [])], patch?.delete]), [
    [[['a', '2']], null],
    [null, ['c']]
  ])
  t.same([...(provider.get(storeKey(idOf(cookie)))?.data ?? [])], [['a', '2'], ['b', '{"deep":[1]}']])
})

t.test('changes made in place to an object from get() are saved, and unchanged objects are not rewritten', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.post('/cart', async (request) => {
    request.session.set('cart', [])
    request.session.set('prefs', { theme: 'dark' })
    return {}
  })
  app.post('/add', async (request) => {
    request.session.get('cart').push('apple')
    request.session.get('prefs')
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/cart' })
  const cookie = sessionCookie(login) as string
  await app.inject({ method: 'POST', url: '/add', headers: cookieHeader(cookie) })
  const patch = provider.calls.find((call) => call.method === 'update')?.patch
  t.same([...(patch?.set ?? [])], [['cart', '["apple"]']])
  const res = await app.inject({ url: '/get/cart', headers: cookieHeader(cookie) })
  t.same(res.json(), { value: ['apple'] })
})

t.test('an object mutated after set() is saved as it is at the end of the request', async (t) => {
  const app = await build(t)
  app.post('/late', async (request) => {
    const list: string[] = []
    request.session.set('list', list)
    list.push('late')
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/late' })
  const res = await app.inject({ url: '/get/list', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { value: ['late'] })
})

t.test('50 concurrent requests setting different keys of one session keep all 50 keys', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  const login = await app.inject({ method: 'POST', url: '/set/start', payload: '0', headers: { 'content-type': 'application/json' } })
  const cookie = sessionCookie(login) as string
  const responses = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    app.inject({ method: 'POST', url: `/set/k${i}`, payload: String(i), headers: { 'content-type': 'application/json', ...cookieHeader(cookie) } })))
  t.ok(responses.every((res) => res.statusCode === 200))
  const data = provider.get(storeKey(idOf(cookie)))?.data
  t.equal(data?.size, 51)
  for (let i = 0; i < 50; i++) t.equal(data?.get(`k${i}`), String(i))
})

t.test('routes with config.session false neither load nor save', async (t) => {
  const provider = new RecordingProvider()
  const app = await build(t, { provider })
  app.get('/health', { config: { session: false } }, async (request) => ({ session: request.session }))
  const login = await app.inject({ method: 'POST', url: '/set/views', payload: '1', headers: { 'content-type': 'application/json' } })
  provider.calls.length = 0
  const res = await app.inject({ url: '/health', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { session: null })
  t.same(setCookies(res), [])
  t.equal(provider.calls.length, 0)
  const other = await app.inject({ url: '/get/views', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(other.json(), { value: 1 }, 'other routes still load')
})

t.test('config.session false also holds for a route declared before the plugin is registered', async (t) => {
  const provider = new RecordingProvider()
  const app = Fastify()
  app.get('/health', { config: { session: false } }, async (request) => ({ session: request.session }))
  await app.register(sessions, { secret: SECRET, provider })
  app.post('/set', async (request) => {
    request.session.set('views', 1)
    return {}
  })
  t.teardown(() => app.close())
  const login = await app.inject({ method: 'POST', url: '/set' })
  provider.calls.length = 0
  const res = await app.inject({ url: '/health', headers: cookieHeader(sessionCookie(login) as string) })
  t.same(res.json(), { session: null })
  t.same(setCookies(res), [])
  t.equal(provider.calls.length, 0, 'the store is not asked')
})

t.test('changes are persisted before the response leaves, so the request after a redirect sees them', async (t) => {
  const app = await build(t)
  app.post('/go', async (request, reply) => {
    request.session.set('flash', 'saved')
    return reply.redirect('/get/flash', 303)
  })
  const go = await app.inject({ method: 'POST', url: '/go' })
  t.equal(go.statusCode, 303)
  const res = await app.inject({ url: go.headers.location as string, headers: cookieHeader(sessionCookie(go) as string) })
  t.same(res.json(), { value: 'saved' })
})

t.test('a response Node refuses to write after an asynchronous save is a 500, not a crash', async (t) => {
  const rejections: unknown[] = []
  const onRejection = (reason: unknown): void => { rejections.push(reason) }
  process.on('unhandledRejection', onRejection)
  t.teardown(() => process.off('unhandledRejection', onRejection))
  for (const provider of ['memory', new AsyncMemoryProvider()] as const) {
    const app = await build(t, { provider })
    app.get<{ Querystring: { next: string } }>('/login', async (request, reply) => {
      request.session.set('userId', 'ada')
      return reply.redirect(request.query.next)
    })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
    const res = await fetch(`${base}/login?next=/home%0d%0aX:1`, { redirect: 'manual' })
    t.equal(res.status, 500, `a header holding CR LF is Fastify's 500 (${typeof provider === 'string' ? provider : 'asynchronous store'})`)
    t.equal((await fetch(`${base}/none`)).status, 200, 'and the server goes on')
  }
  await new Promise((resolve) => setImmediate(resolve))
  t.same(rejections, [], 'no unhandled rejection')
})

// Concurrent requests on every provider: writes to one session never lose
// each other, a logout beats any write racing it, and simultaneous new
// visitors each get a session of their own.
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { LightMyRequestResponse } from 'fastify'
import { build, cookieHeader, sessionCookie } from '../fixtures/app.js'
import { storeKinds } from '../fixtures/stores.js'
import { storeKey } from '../../lib/id.js'

const json = { 'content-type': 'application/json' }
const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))

t.test('on every provider', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      t.test('100 concurrent requests each setting a different key on one session leave all 100 keys', async (t) => {
        const store = await kind.open(t)
        const app = await build(t, store.options)
        app.get('/all', async (request) => Object.fromEntries(request.session.keys().map((key) => [key, request.session.get(key)])))
        const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
        const cookie = sessionCookie(login) as string
        const writes = await Promise.all(Array.from({ length: 100 }, (_, i) =>
          app.inject({ method: 'POST', url: `/set/k${i}`, payload: JSON.stringify({ i }), headers: { ...json, ...cookieHeader(cookie) } })))
        t.same(writes.map((res) => res.statusCode).filter((code) => code !== 200), [], 'every write answered 200')
        const all = (await app.inject({ url: '/all', headers: cookieHeader(cookie) })).json()
        const expected: Record<string, unknown> = { userId: 'ada' }
        for (let i = 0; i < 100; i++) expected[`k${i}`] = { i }
        t.same(all, expected, 'all 100 keys, each with its own value')
        t.equal(Object.keys(all).length, 101)
      })

      t.test('a logout racing 50 writes leaves the session dead: no data through the cookie, nothing in the store', async (t) => {
        const store = await kind.open(t)
        const app = await build(t, store.options)
        app.get('/all', async (request) => ({ isNew: request.session.isNew, keys: request.session.keys() }))
        // Each write waits a little between loading and saving, so that loads
        // before the logout are saved after it, and later loads find nothing.
        app.post<{ Params: { key: string }, Body: unknown }>('/jitter/:key', async (request) => {
          await sleep((Number(request.params.key.slice(1)) % 7) * 3)
          request.session.set(request.params.key, request.body)
          return {}
        })
        const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: json })
        const cookie = sessionCookie(login) as string
        const key = storeKey(idOf(cookie))
        t.ok((await store.dump(app)).some((held) => held.includes(key)), 'the session is in the store before the race')

        const write = (i: number): Promise<LightMyRequestResponse> =>
          app.inject({ method: 'POST', url: `/jitter/w${i}`, payload: String(i), headers: { ...json, ...cookieHeader(cookie) } })
        const racing = [
          ...Array.from({ length: 25 }, (_, i) => write(i)),
          app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) }),
          ...Array.from({ length: 25 }, (_, i) => write(25 + i))
        ]
        const responses = await Promise.all(racing)
        const logout = responses[25]
        t.equal(logout.statusCode, 200, 'the logout succeeded')
        t.match(String(logout.headers['set-cookie']), /^sessionid=; .*Max-Age=0/, 'and cleared the cookie')
        t.same(responses.map((res) => res.statusCode).filter((code) => code !== 200), [], 'every write answered 200')
        const fresh = responses.filter((res, i) => i !== 25 && sessionCookie(res) !== undefined).length
        t.comment(`${kind.name}: ${50 - fresh} writes landed on the live or dead session, ${fresh} came after the logout and started new sessions`)
        const reissued = responses.map((res) => sessionCookie(res)).filter((value) => value !== undefined && value !== '' && idOf(value) === idOf(cookie))
        t.same(reissued, [], 'no write handed the old id back')

        await sleep(20)
        const after = await app.inject({ url: '/all', headers: cookieHeader(cookie) })
        t.same(after.json(), { isNew: true, keys: [] }, 'the old cookie reads no data')
        for (const i of [0, 24, 25, 49]) {
          t.same((await app.inject({ url: `/get/w${i}`, headers: cookieHeader(cookie) })).json(), { value: null })
        }
        const held = await store.dump(app)
        t.same(held.filter((value) => value.includes(key)), [], 'the store holds nothing under the session\'s key')
        t.same(held.filter((value) => value === 'ada'), [], 'nor its owner in the user index')
      })

      t.test('100 concurrent first requests without a cookie get 100 distinct session ids, each reading its own data', async (t) => {
        const store = await kind.open(t)
        const app = await build(t, store.options)
        const responses = await Promise.all(Array.from({ length: 100 }, (_, i) =>
          app.inject({ method: 'POST', url: '/set/mine', payload: JSON.stringify(`visitor-${i}`), headers: json })))
        t.same(responses.map((res) => res.statusCode).filter((code) => code !== 200), [])
        const cookies = responses.map((res) => sessionCookie(res) as string)
        t.equal(new Set(cookies.map(idOf)).size, 100, '100 distinct ids')
        t.same(responses.map((res, i) => res.json().id === idOf(cookies[i])).filter((same) => !same), [], 'each cookie carries the id its request saw')
        const reads = await Promise.all(cookies.map((cookie) => app.inject({ url: '/get/mine', headers: cookieHeader(cookie) })))
        t.same(reads.map((res) => res.json().value), Array.from({ length: 100 }, (_, i) => `visitor-${i}`), 'each reads its own data')
      })
    })
  }
})

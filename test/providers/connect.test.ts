import { randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { setImmediate, setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import type { Test } from 'tap'
import Fastify, { type LightMyRequestResponse } from 'fastify'
import session from 'express-session'
import { RedisStore } from 'connect-redis'
import { Redis } from 'ioredis'
import pg from 'pg'
import sessions from '../../index.js'
import { DATABASE_URL, REDIS_URL, requirePostgres, requireRedis } from '../fixtures/services.js'
import { CONNECT_PROVIDER, ConnectProvider, createConnectProvider } from '../../providers/connect.js'
import type { ConnectCallback, ConnectProviderOptions, ConnectRecord, ConnectStore } from '../../providers/connect.js'
import { getProvider } from '../../lib/registry.js'
import { generateId, storeKey } from '../../lib/id.js'
import type { NewSession, SessionPatch } from '../../lib/provider.js'
import { testProvider } from '../../lib/testing.js'

const MINUTE = 60_000
const SECRET = 'a-secret-of-at-least-32-characters!'

function newKey (): string {
  return storeKey(generateId())
}

function newSession (data: Array<[string, string]> = [['a', '1']], extra: Partial<NewSession> = {}): NewSession {
  const now = Date.now()
  return { data: new Map(data), createdAt: now - 1234, lastSeenAt: now - 56, expiresAt: now + MINUTE, user: null, ...extra }
}

function patch (fields: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + MINUTE, ...fields }
}

/** The store's own answer to `get`, as the bridge wrote it. */
function rawGet (store: ConnectStore, sid: string): Promise<ConnectRecord | null | undefined> {
  return new Promise(function raw (resolve, reject) {
    store.get(sid, function got (err, value) {
      if (err) reject(err)
      else resolve(value)
    })
  })
}

/**
 * connect-redis 8 and later speak the node-redis v4/v5 client API; this
 * maps the four calls it makes onto ioredis.
 */
function nodeRedisApi (redis: Redis): object {
  return {
    get (key: string) {
      return redis.get(key)
    },
    set (key: string, value: string, options?: { expiration?: { type: 'EX', value: number } }) {
      if (options?.expiration === undefined) return redis.set(key, value)
      return redis.set(key, value, 'EX', options.expiration.value)
    },
    expire (key: string, seconds: number) {
      return redis.expire(key, seconds)
    },
    del (keys: string[]) {
      return redis.del(...keys)
    }
  }
}

interface Backend {
  store: ConnectStore
  /** Milliseconds the store itself will keep `sid` for; `null` when it holds nothing. */
  ttl (sid: string): Promise<number | null>
}

type MakeBackend = (t: Test) => Promise<Backend>

/** The `sessionid` cookie a response sets. */
function sessionCookie (res: LightMyRequestResponse): { name: string, value: string, maxAge?: number } | undefined {
  return res.cookies.find(function named (cookie) {
    return cookie.name === 'sessionid'
  }) as { name: string, value: string, maxAge?: number } | undefined
}

function cookieHeader (cookie: { value: string }): { cookie: string } {
  return { cookie: `sessionid=${cookie.value}` }
}

/** The id a signed cookie value carries. */
function idOf (cookie: { value: string }): string {
  return cookie.value.slice(0, cookie.value.lastIndexOf('.'))
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
  app.post('/regenerate', async function regenerate (request) {
    await request.session.regenerate()
    return {}
  })
  app.post('/logout', async function logout (request) {
    await request.session.destroy()
    return {}
  })
  return app
}

/** The behaviour every backend must show through the bridge. */
function behaviour (t: Test, name: string, make: MakeBackend): void {
  t.test(`on ${name}`, async function (t) {
    async function open (t: Test): Promise<{ provider: ConnectProvider, backend: Backend }> {
      const backend = await make(t)
      return { provider: createConnectProvider({ store: backend.store }), backend }
    }

    t.test('a record round-trips with its texts verbatim and its times exact', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      const session = newSession([
        ['userId', '"u1"'],
        ['spaced', '{ "b": 2,  "a": [1, 2.50] }'],
        ['unicode', '"ключ 键 🔑 e\u0301"'],
        ['cookie', '{"expires":"never"}'],
        ['fastifySessions', '"not the envelope"'],
        ['__proto__', '{"polluted":true}'],
        ['', '"empty key"']
      ])
      t.equal(await provider.create(key, session), true, 'create answers true')
      const stored = await provider.get(key)
      t.same(stored?.data, session.data, 'every key and JSON text comes back as written')
      t.equal(stored?.createdAt, session.createdAt, 'createdAt')
      t.equal(stored?.lastSeenAt, session.lastSeenAt, 'lastSeenAt')
      t.equal(stored?.expiresAt, session.expiresAt, 'expiresAt')
      t.equal(Object.hasOwn(Object.prototype, 'polluted'), false, 'Object.prototype is not polluted')
    })

    t.test('the store gets an express-session shaped record', async function (t) {
      const { provider, backend } = await open(t)
      const key = newKey()
      const session = newSession([['cookie', '"mine"'], ['userId', '"u1"']], { user: 'u1' })
      await provider.create(key, session)
      const raw = await rawGet(backend.store, key) as ConnectRecord
      t.equal(new Date(raw.cookie.expires).getTime(), session.expiresAt, 'cookie.expires is the deadline')
      t.ok(raw.cookie.originalMaxAge > MINUTE - 5000 && raw.cookie.originalMaxAge <= MINUTE, `cookie.originalMaxAge is the time left (${raw.cookie.originalMaxAge})`)
      t.same(raw.fastifySessions.data, [['cookie', '"mine"'], ['userId', '"u1"']], 'the data sits under fastifySessions')
      t.equal(raw.fastifySessions.user, 'u1', 'with the owner')
    })

    t.test('the store keeps the record as long as its deadline says', async function (t) {
      const { provider, backend } = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      const first = await backend.ttl(key) as number
      t.ok(first > MINUTE - 5000 && first <= MINUTE + 1000, `about a minute at create (${first} ms)`)
      await provider.update(key, patch({ expiresAt: Date.now() + 10 * MINUTE }))
      const extended = await backend.ttl(key) as number
      t.ok(extended > 10 * MINUTE - 5000 && extended <= 10 * MINUTE + 1000, `about ten minutes after a touch (${extended} ms)`)
      await provider.update(key, patch({ expiresAt: Date.now() + 2 * MINUTE }))
      const capped = await backend.ttl(key) as number
      t.ok(capped > 2 * MINUTE - 5000 && capped <= 2 * MINUTE + 1000, `about two minutes after an earlier deadline (${capped} ms)`)
      await provider.destroy(key)
      t.equal(await backend.ttl(key), null, 'nothing after destroy')
    })

    t.test('misses: get answers null, update and destroy answer false', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      t.equal(await provider.get(key), null, 'get')
      t.equal(await provider.update(key, patch({ set: new Map([['a', '1']]) })), false, 'update')
      t.equal(await provider.get(key), null, 'and update created nothing')
      t.equal(await provider.destroy(key), false, 'destroy')
    })

    t.test('an expired record reads as null and cannot be updated or destroyed', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      const session = newSession([['a', '1']], { expiresAt: Date.now() + 200 })
      await provider.create(key, session)
      t.not(await provider.get(key), null, 'live before its deadline')
      await sleep(session.expiresAt - Date.now() + 20)
      t.equal(await provider.get(key), null, 'null after it, though the store rounds its TTL up to a second')
      t.equal(await provider.update(key, patch({ set: new Map([['late', '1']]) })), false, 'update answers false')
      t.equal(await provider.get(key), null, 'and did not revive it')
      t.equal(await provider.destroy(key), false, 'destroy answers false')
    })

    t.test('destroy of an expired record answers false and still deletes what the store kept of it', async function (t) {
      const { provider, backend } = await open(t)
      const key = newKey()
      const session = newSession([['a', '1']], { expiresAt: Date.now() + 200 })
      await provider.create(key, session)
      await sleep(session.expiresAt - Date.now() + 20)
      t.equal(await provider.destroy(key), false, 'destroy answers false')
      t.equal(await backend.ttl(key), null, 'and the store holds nothing, though it rounds its TTL up to a second')
    })

    t.test('a record written already expired reads as null', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['a', '1']], { expiresAt: Date.now() - 1 }))
      t.equal(await provider.get(key), null)
    })

    t.test('destroy answers true once, and a late update false without bringing the record back', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      t.equal(await provider.destroy(key), true, 'destroy answers true')
      t.equal(await provider.destroy(key), false, 'a second destroy answers false')
      t.equal(await provider.update(key, patch({ set: new Map([['late', '1']]) })), false, 'a late write answers false')
      t.equal(await provider.update(key, patch()), false, 'a late touch answers false')
      t.equal(await provider.get(key), null, 'still gone')
    })

    t.test('create with replaces moves the session and deletes the old record', async function (t) {
      const { provider } = await open(t)
      const [oldKey, key] = [newKey(), newKey()]
      await provider.create(oldKey, newSession([['who', '"old"']]))
      const moved = newSession([['who', '"moved"']])
      t.equal(await provider.create(key, moved, oldKey), true, 'create answers true')
      t.equal(await provider.get(oldKey), null, 'the old key is gone')
      t.same((await provider.get(key))?.data, moved.data, 'the new key holds the new record')
    })

    t.test('create with a missing or expired replaces creates nothing', async function (t) {
      const { provider } = await open(t)
      const [key, expiredKey] = [newKey(), newKey()]
      t.equal(await provider.create(key, newSession(), newKey()), false, 'missing: create answers false')
      const old = newSession([['a', '1']], { expiresAt: Date.now() + 150 })
      await provider.create(expiredKey, old)
      await sleep(old.expiresAt - Date.now() + 20)
      t.equal(await provider.create(key, newSession(), expiredKey), false, 'expired: create answers false')
      t.equal(await provider.get(key), null, 'nothing stored')
    })

    t.test('update sets and deletes the keys it names and keeps the rest', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      const session = newSession([['keep', '"k"'], ['change', '1'], ['drop', 'true']])
      await provider.create(key, session)
      const change = patch({ set: new Map([['change', '2'], ['add', '{"x":[1]}']]), delete: ['drop', 'never-there'] })
      t.equal(await provider.update(key, change), true, 'update answers true')
      const stored = await provider.get(key)
      t.same(stored?.data, new Map([['keep', '"k"'], ['change', '2'], ['add', '{"x":[1]}']]))
      t.equal(stored?.createdAt, session.createdAt, 'createdAt stays')
      t.equal(stored?.lastSeenAt, change.lastSeenAt, 'lastSeenAt is the patch\'s')
      t.equal(stored?.expiresAt, change.expiresAt, 'expiresAt is the patch\'s')
      t.equal(await provider.update(key, patch({ delete: ['keep'] })), true, 'a delete-only update')
      t.same((await provider.get(key))?.data, new Map([['change', '2'], ['add', '{"x":[1]}']]))
    })

    t.test('a touch moves only the times', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      const session = newSession([['a', '1'], ['b', '"two"']])
      await provider.create(key, session)
      const touch = patch({ lastSeenAt: session.lastSeenAt + 1000, expiresAt: session.expiresAt + 1000 })
      t.equal(await provider.update(key, touch), true, 'touch answers true')
      const stored = await provider.get(key)
      t.same(stored?.data, session.data, 'data unchanged')
      t.equal(stored?.createdAt, session.createdAt, 'createdAt unchanged')
      t.equal(stored?.lastSeenAt, touch.lastSeenAt, 'lastSeenAt moved')
      t.equal(stored?.expiresAt, touch.expiresAt, 'expiresAt moved')
    })

    t.test('the owner is kept unless an update names one', async function (t) {
      const { provider, backend } = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['userId', '"alice"']], { user: 'alice' }))
      await provider.update(key, patch({ set: new Map([['a', '2']]) }))
      t.equal((await rawGet(backend.store, key))?.fastifySessions.user, 'alice', 'kept')
      await provider.update(key, patch({ set: new Map([['userId', '"bob"']]), user: 'bob' }))
      t.equal((await rawGet(backend.store, key))?.fastifySessions.user, 'bob', 'changed')
      await provider.update(key, patch({ delete: ['userId'], user: null }))
      t.equal((await rawGet(backend.store, key))?.fastifySessions.user, null, 'removed')
    })

    t.test('sequential updates of different keys all survive', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['base', '0']]))
      for (let i = 0; i < 10; i++) {
        t.equal(await provider.update(key, patch({ set: new Map([[`k${i}`, String(i)]]) })), true)
      }
      const expected = new Map([['base', '0'], ...Array.from({ length: 10 }, (_, i): [string, string] => [`k${i}`, String(i)])])
      t.same((await provider.get(key))?.data, expected)
    })

    t.test('concurrent updates through one provider run one after another: every change survives', async function (t) {
      const { provider } = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['base', '0']]))
      const answers = await Promise.all(Array.from({ length: 10 }, function write (_, i) {
        return provider.update(key, patch({ set: new Map([[`k${i}`, String(i)]]) }))
      }))
      t.same(answers, answers.map(() => true), 'every update answers true')
      const expected = new Map([['base', '0'], ...Array.from({ length: 10 }, (_, i): [string, string] => [`k${i}`, String(i)])])
      t.same((await provider.get(key))?.data, expected)
    })

    t.test('two regenerate() of one session at once leave it under one id', async function (t) {
      const { provider } = await open(t)
      const app = await appOn(t, { provider })
      const cookie = sessionCookie(await app.inject({ method: 'POST', url: '/login' }))
      if (cookie === undefined) throw new Error('login set no session cookie')
      const both = await Promise.all([1, 2].map(() => app.inject({ method: 'POST', url: '/regenerate', headers: cookieHeader(cookie) })))
      const renewed = both.map(sessionCookie).filter((c): c is NonNullable<typeof c> => c !== undefined && c.value !== '')
      t.equal(renewed.length, 1, 'one of them moved the session')
      const live = await Promise.all(renewed.map((c) => provider.get(storeKey(idOf(c)))))
      t.equal(live.filter((record) => record !== null).length, 1, 'and the store holds it once')
      t.equal(await provider.get(storeKey(idOf(cookie))), null, 'not under the old id')
    })

    t.test('the conformance kit', async function (t) {
      const backend = await make(t)
      testProvider(t, { name: `connect over ${name}`, create: () => createConnectProvider({ store: backend.store }) })
    })

    t.test('close leaves the store to the application', async function (t) {
      const { provider, backend } = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      provider.close()
      provider.close()
      t.not(await createConnectProvider({ store: backend.store }).get(key), null, 'the store still answers')
    })

    t.test('the plugin logs in, regenerates and logs out through the bridge', async function (t) {
      const { provider } = await open(t)
      const app = await appOn(t, { provider })

      const login = await app.inject({ method: 'POST', url: '/login' })
      t.equal(login.statusCode, 200, 'login answers 200')
      const cookie = sessionCookie(login)
      if (cookie === undefined) throw new Error('login set no session cookie')
      t.not(await provider.get(storeKey(idOf(cookie))), null, 'the store holds the session under the key of its id')

      const me = await app.inject({ url: '/me', headers: cookieHeader(cookie) })
      t.same(me.json(), { userId: 'alice', cart: [1, { sku: 'x' }] }, 'a reload sees the data')

      const regenerated = await app.inject({ method: 'POST', url: '/regenerate', headers: cookieHeader(cookie) })
      t.equal(regenerated.statusCode, 200, 'regenerate answers 200')
      const renewed = sessionCookie(regenerated)
      if (renewed === undefined) throw new Error('regenerate set no session cookie')
      t.not(idOf(renewed), idOf(cookie), 'regenerate sets a cookie with a new id')
      t.equal(await provider.get(storeKey(idOf(cookie))), null, 'the old record is gone from the store')

      const stale = await app.inject({ url: '/me', headers: cookieHeader(cookie) })
      t.equal(stale.statusCode, 200, 'the old cookie is no error')
      t.same(stale.json(), { userId: null, cart: null }, 'but gives no access')
      t.same((await app.inject({ url: '/me', headers: cookieHeader(renewed) })).json(), { userId: 'alice', cart: [1, { sku: 'x' }] }, 'the new cookie does')

      const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(renewed) })
      t.equal(logout.statusCode, 200, 'logout answers 200')
      t.match(sessionCookie(logout), { value: '', maxAge: 0 }, 'logout clears the cookie with Max-Age=0')
      t.match(logout.headers['set-cookie'], /Max-Age=0/)
      t.equal(await provider.get(storeKey(idOf(renewed))), null, 'the record is gone')
      t.same((await app.inject({ url: '/me', headers: cookieHeader(renewed) })).json(), { userId: null, cart: null }, 'the cookie no longer gives access')
    })
  })
}

t.test('registers itself as "connect"', async function (t) {
  t.equal(CONNECT_PROVIDER, 'connect')
  t.equal(getProvider('connect'), createConnectProvider)
})

t.test('option errors', async function (t) {
  const store: ConnectStore = {
    get (_sid, callback) {
      callback()
    },
    set (_sid, _record, callback) {
      callback()
    },
    destroy (_sid, callback) {
      callback()
    }
  }
  const { get, set, destroy } = store
  const bad: unknown[] = [
    undefined,
    {},
    { store: null },
    { store: 'redis' },
    { store: {} },
    { store: { get, set } },
    { store: { get, destroy } },
    { store: { set, destroy } },
    { store: { get, set, destroy: 'no' } }
  ]
  for (const options of bad) {
    t.throws(() => createConnectProvider(options as ConnectProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message: /connect/ }, JSON.stringify(options) ?? 'undefined')
  }
  t.ok(createConnectProvider({ store: { get, set, destroy } }), 'a store with get, set and destroy is enough')
  t.throws(() => createConnectProvider({ store, timeout: 500 } as ConnectProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message: /"timeout" is not an option$/ })
  for (const callTimeout of [0, -1, NaN, '500', 2 ** 31]) {
    t.throws(() => createConnectProvider({ store, callTimeout } as ConnectProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message: /callTimeout/ }, String(callTimeout))
  }
  t.equal(createConnectProvider({ store }).callTimeout, 1500, 'callTimeout defaults to 1500 ms')
  t.equal(createConnectProvider({ store, callTimeout: 0.5 }).callTimeout, 0.5)
})

t.test('store answers and failures', async function (t) {
  /** A store that answers every get with `answer`, and records what set receives. */
  function answering (answer: (callback: ConnectCallback) => unknown): ConnectStore & { sets: number } {
    return {
      sets: 0,
      get (_sid, callback) {
        return answer(callback)
      },
      set (_sid, _record, callback) {
        this.sets++
        callback(null)
      },
      destroy (_sid, callback) {
        callback(null)
      }
    }
  }

  t.test('what is not a record of the bridge reads as missing', async function (t) {
    const times = { createdAt: Date.now(), lastSeenAt: Date.now(), expiresAt: Date.now() + MINUTE }
    const foreign: unknown[] = [
      null,
      undefined,
      'text',
      { cookie: { expires: new Date(Date.now() + MINUTE) }, userId: 'an express-session record' },
      { fastifySessions: null },
      { fastifySessions: 'x' },
      { fastifySessions: { ...times, data: 'x' } },
      { fastifySessions: { ...times, data: [], createdAt: '0' } },
      { fastifySessions: { ...times, data: [], lastSeenAt: null } },
      { fastifySessions: { ...times, data: [], expiresAt: String(Date.now() + MINUTE) } },
      { fastifySessions: { data: [] } }
    ]
    for (const value of foreign) {
      const store = answering((callback) => callback(null, value))
      const provider = createConnectProvider({ store })
      t.equal(await provider.get(newKey()), null, `get of ${JSON.stringify(value)}`)
      t.equal(await provider.update(newKey(), patch()), false, 'update')
      t.equal(await provider.create(newKey(), newSession()), true, 'create writes over it')
      t.equal(store.sets, 1, 'once')
    }
  })

  t.test('an ENOENT error is a miss, as express-session counts it', async function (t) {
    const provider = createConnectProvider({
      store: answering((callback) => callback(Object.assign(new Error('no such file'), { code: 'ENOENT' })))
    })
    t.equal(await provider.get(newKey()), null)
    t.equal(await provider.destroy(newKey()), false)
  })

  t.test('a get error rejects every call with it', async function (t) {
    const failure = new Error('connection lost')
    const provider = createConnectProvider({ store: answering((callback) => callback(failure)) })
    await t.rejects(provider.get(newKey()), failure, 'get')
    await t.rejects(provider.create(newKey(), newSession()), failure, 'create')
    await t.rejects(provider.update(newKey(), patch()), failure, 'update')
    await t.rejects(provider.destroy(newKey()), failure, 'destroy')
  })

  t.test('a store that throws rejects the call', async function (t) {
    const provider = createConnectProvider({
      store: answering(() => { throw new TypeError('bad client') })
    })
    await t.rejects(provider.get(newKey()), { message: 'bad client' })
  })

  t.test('a rejected promise fails the call even without a callback', async function (t) {
    const provider = createConnectProvider({
      store: answering(() => Promise.reject(new Error('rejected only')))
    })
    await t.rejects(provider.get(newKey()), { message: 'rejected only' })
  })

  t.test('a promise the store also returns is not an answer of its own', async function (t) {
    const provider = createConnectProvider({
      store: answering(async (callback) => {
        await sleep(5)
        callback(null, null)
      })
    })
    t.equal(await provider.get(newKey()), null)
  })

  t.test('a read answered after callTimeout fails the call, and its write is never sent', async function (t) {
    const memory = new session.MemoryStore()
    const key = newKey()
    await createConnectProvider({ store: memory }).create(key, newSession([['a', '1']]))
    let gets = 0
    const late = answering((callback) => {
      gets++
      memory.get(key, (err, value) => setTimeout(() => callback(err, value), 150))
    })
    const provider = createConnectProvider({ store: late, callTimeout: 50 })
    const first = provider.update(key, patch({ set: new Map([['a', '2']]) }))
    // queued behind the first on the same key, with a deadline that passes while it waits
    const queued = provider.update(key, patch({ set: new Map([['a', '3']]) }))
    await t.rejects(first, { message: /did not answer get\(\) within the connect callTimeout/ })
    await t.rejects(queued, { message: /callTimeout passed before the store's get\(\) was sent/ })
    await sleep(200)
    t.equal(gets, 1, 'the queued call never reached the store')
    t.equal(late.sets, 0, 'nothing was written once the read came back late')
    t.same((await createConnectProvider({ store: memory }).get(key))?.data, new Map([['a', '1']]))
  })

  t.test('the queue of a key is let go once its last call settles, answered, failed or timed out', async function (t) {
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    const failure = new Error('connection lost')
    const providers = [
      createConnectProvider({ store: answering((callback) => callback(null, null)) }),
      createConnectProvider({ store: answering((callback) => callback(failure)) }),
      createConnectProvider({ store: answering(() => undefined), callTimeout: 5 })
    ]
    // each call on a key never used again: a queue entry left behind keeps the key and a promise
    async function destroyAll (calls: number): Promise<string[]> {
      const outcomes = await Promise.allSettled(Array.from({ length: calls }, (_, i) => providers[i % providers.length].destroy(newKey())))
      // the entry goes a few microtasks after the call's own answer
      await setImmediate()
      return [...new Set(outcomes.map((outcome) => outcome.status === 'fulfilled' ? String(outcome.value) : (outcome.reason as Error).message))]
    }
    /** Full collections a turn apart: what tap's async hooks keep for a collected promise only goes on a later turn. */
    async function collect (): Promise<void> {
      for (let round = 0; round < 3; round++) {
        gc()
        await setImmediate()
      }
    }
    // a first round compiles what the measured one runs, and shows each provider takes its path
    t.same(await destroyAll(300), ['false', 'connection lost', 'the store did not answer get() within the connect callTimeout'], 'answered, failed and timed out')
    const calls = 30_000
    await collect()
    const before = process.memoryUsage().heapUsed
    await destroyAll(calls)
    await collect()
    const perCall = (process.memoryUsage().heapUsed - before) / calls
    t.ok(perCall < 50, `${perCall.toFixed(1)} bytes kept per settled call`)
  })

  t.test('destroy of an expired record answers false and deletes it from a store that would keep it', async function (t) {
    const records = new Map<string, ConnectRecord>()
    // expires nothing itself, as a store whose TTL outlasts the session's deadline
    const keeping: ConnectStore = {
      get (sid, callback) {
        callback(null, records.get(sid))
      },
      set (sid, record, callback) {
        records.set(sid, record)
        callback(null)
      },
      destroy (sid, callback) {
        records.delete(sid)
        callback(null)
      }
    }
    const provider = createConnectProvider({ store: keeping })
    const key = newKey()
    const session = newSession([['a', '1']], { expiresAt: Date.now() + 50 })
    await provider.create(key, session)
    await sleep(session.expiresAt - Date.now() + 5)
    t.ok(records.has(key), 'the store still holds the record past its deadline')
    t.equal(await provider.destroy(key), false, 'destroy answers false')
    t.notOk(records.has(key), 'and the store no longer holds it')
  })

  t.test('calls on different keys do not wait for each other', async function (t) {
    const memory = new session.MemoryStore()
    const slow = newKey()
    const fast = newKey()
    const store: ConnectStore = {
      get: (sid, callback) => sid === slow ? undefined : memory.get(sid, callback),
      set: (sid, record, callback) => memory.set(sid, record as never, callback),
      destroy: (sid, callback) => memory.destroy(sid, callback)
    }
    const provider = createConnectProvider({ store, callTimeout: 300 })
    const hanging = provider.destroy(slow)
    t.equal(await provider.create(fast, newSession()), true, 'another key goes ahead')
    await t.rejects(hanging, { message: /callTimeout/ })
  })

  t.test('a set or destroy error rejects the write', async function (t) {
    const memory = new session.MemoryStore()
    const failing: ConnectStore = {
      get: (sid, callback) => memory.get(sid, callback),
      set (_sid, _record, callback) {
        callback(new Error('read-only replica'))
      },
      destroy (_sid, callback) {
        callback(new Error('read-only replica'))
      }
    }
    const provider = createConnectProvider({ store: failing })
    await t.rejects(provider.create(newKey(), newSession()), { message: 'read-only replica' }, 'create')
    const key = newKey()
    await createConnectProvider({ store: memory }).create(key, newSession())
    await t.rejects(provider.update(key, patch()), { message: 'read-only replica' }, 'update')
    await t.rejects(provider.destroy(key), { message: 'read-only replica' }, 'destroy')
  })

  t.test('the plugin answers 503 when the store fails', async function (t) {
    const failure = new Error('connection lost')
    const app = await appOn(t, { provider: createConnectProvider({ store: answering((callback) => callback(failure)) }) })
    const login = await app.inject({ method: 'POST', url: '/login' })
    t.equal(login.statusCode, 503)
    t.equal(login.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  })
})

t.test('the plugin makes the provider from its name and leaves the store open', async function (t) {
  const store = new session.MemoryStore()
  const app = Fastify()
  await app.register(sessions, { secret: SECRET, provider: 'connect', providerOptions: { store } })
  app.post('/login', async function login (request) {
    request.session.set('userId', 'alice')
    return {}
  })
  const cookie = sessionCookie(await app.inject({ method: 'POST', url: '/login' }))
  if (cookie === undefined) throw new Error('login set no session cookie')
  t.ok(app.sessions.provider instanceof ConnectProvider, 'a ConnectProvider')
  await app.close()
  const stored = await createConnectProvider({ store }).get(storeKey(idOf(cookie)))
  t.same(stored?.data, new Map([['userId', '"alice"']]), 'after app.close() the store still holds and serves the session')
})

behaviour(t, 'express-session MemoryStore', async function memoryBackend () {
  const store = new session.MemoryStore()
  return {
    store,
    async ttl (sid) {
      const raw = await rawGet(store, sid)
      return raw == null ? null : new Date(raw.cookie.expires).getTime() - Date.now()
    }
  }
})

t.test('with Redis', async function (t) {
  if (!(await requireRedis(t))) return
  const redis = new Redis(REDIS_URL)
  const prefix = `fastify-sessions-test:${randomBytes(6).toString('hex')}:`
  t.teardown(async function cleanUp () {
    const keys = await redis.keys(prefix + '*')
    if (keys.length > 0) await redis.del(...keys)
    redis.disconnect()
  })

  t.test('connect-redis 9 does not take an ioredis client as it is', async function (t) {
    const store = new RedisStore({ client: redis, prefix })
    const provider = createConnectProvider({ store })
    await t.rejects(provider.create(newKey(), newSession()), { message: /syntax error/ }, 'it calls SET with node-redis options')
  })

  behaviour(t, 'connect-redis with ioredis', async function redisBackend () {
    const store = new RedisStore({ client: nodeRedisApi(redis), prefix })
    return {
      store,
      async ttl (sid) {
        const ms = await redis.pttl(prefix + sid)
        return ms < 0 ? null : ms
      }
    }
  })
})

t.test('with PostgreSQL', async function (t) {
  if (!(await requirePostgres(t))) return
  type PGStoreClass = new (options: Record<string, unknown>) => ConnectStore & { close (): Promise<void> }
  const connectPgSimple = createRequire(import.meta.url)('connect-pg-simple') as (expressSession: unknown) => PGStoreClass
  const PGStore = connectPgSimple(session)
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 })
  const tableName = 'connect_test_' + randomBytes(6).toString('hex')
  const store = new PGStore({ pool, tableName, createTableIfMissing: true, pruneSessionInterval: false })
  t.teardown(async function cleanUp () {
    await store.close()
    await pool.query(`DROP TABLE IF EXISTS "${tableName}"`)
    await pool.end()
  })

  t.test('the store created its table', async function (t) {
    await rawGet(store, newKey())
    const { rows } = await pool.query('SELECT to_regclass($1) IS NOT NULL AS present', [`"${tableName}"`])
    t.equal(rows[0].present, true)
  })

  behaviour(t, 'connect-pg-simple', async function postgresBackend () {
    return {
      store,
      async ttl (sid) {
        // timestamp -> timestamptz undoes the session time zone that to_timestamp() -> timestamp applied
        const { rows } = await pool.query(`SELECT extract(epoch FROM expire::timestamptz) * 1000 AS at FROM "${tableName}" WHERE sid = $1`, [sid])
        return rows.length === 0 ? null : Number(rows[0].at) - Date.now()
      }
    }
  })
})

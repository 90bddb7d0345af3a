// Property-based tests of what a client or an application can throw at the
// plugin: arbitrary Cookie headers, arbitrary session values, and keys that
// mean something to JavaScript objects. Bounded runs, fixed seed (FC_SEED).
import t, { type Test } from 'tap'
import assert from 'node:assert/strict'
import { isDeepStrictEqual } from 'node:util'
import type { AddressInfo } from 'node:net'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import { build, cookieHeader, sessionCookie, setCookies, SECRET } from '../fixtures/app.js'
import { captureLogs, DEBUG } from '../fixtures/log-capture.js'
import { anyString, check, polluted, PROTOTYPE_KEYS, prototypeKeyedObject, SEED } from '../fixtures/fuzz.js'
import { storeKinds } from '../fixtures/stores.js'
import { CookieSigner } from '../../lib/cookie.js'
import { generateId } from '../../lib/id.js'

const json = { 'content-type': 'application/json' }
const FOREIGN_SECRET = 'somebody else\'s secret, at least 32 characters'
const idOf = (cookie: string): string => cookie.slice(0, cookie.lastIndexOf('.'))

t.comment(`fast-check seed ${SEED}; set FC_SEED to replay another`)

t.test('arbitrary Cookie headers never cause a 5xx, a log line above debug, or an adopted session id', async (t) => {
  const { lines, logger } = captureLogs('debug')
  const app = await build(t, {}, { logger, disableRequestLogging: true })
  const signer = new CookieSigner([SECRET])
  const foreign = new CookieSigner([FOREIGN_SECRET])

  // A victim with a live session holding a secret.
  const victimLogin = await app.inject({ method: 'POST', url: '/set/secret', payload: '"the victim\'s"', headers: json })
  const victim = sessionCookie(victimLogin) as string
  const victimId = idOf(victim)

  interface Forged { value: string, ids: string[] }
  const wellFormedId = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => Buffer.from(bytes).toString('base64url'))
  // Garbage that neither trimming, quoting nor a ';' can take off again.
  const garbage = fc.string({ unit: fc.oneof(fc.constantFrom(...'Aa0-_+/=.%,:'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })), minLength: 1, maxLength: 12 })
    .filter((g) => !/[\s;"]/.test(g) && g.trim() === g)
  const percentEncodeAll = (value: string): string => [...Buffer.from(value)].map((byte) => '%' + byte.toString(16).padStart(2, '0')).join('')
  const forged: fc.Arbitrary<Forged> = fc.oneof(
    // strict mode: a validly signed id the store never issued
    wellFormedId.map((id) => ({ value: signer.sign(id), ids: [id] })),
    // signed by another secret, the victim's id included
    wellFormedId.map((id) => ({ value: foreign.sign(id), ids: [id] })),
    fc.constant<Forged>({ value: foreign.sign(victimId), ids: [victimId] }),
    // the victim's cookie with its signature truncated
    fc.integer({ min: 1, max: 43 }).map((cut) => ({ value: victim.slice(0, -cut), ids: [victimId] })),
    // the victim's cookie with garbage before or after it
    fc.tuple(garbage, fc.boolean()).map(([junk, before]) => ({ value: before ? junk + victim : victim + junk, ids: [victimId] })),
    // the victim's id with a signature in base64url, padded, or off by one character
    fc.constantFrom<Forged>(
      { value: victimId + '.' + victim.slice(victimId.length + 1).replaceAll('+', '-').replaceAll('/', '_') + 'x', ids: [victimId] },
      { value: victim + '=', ids: [victimId] },
      { value: victimId + '.' + victim.slice(victimId.length + 1).toLowerCase(), ids: [victimId] },
      { value: victimId, ids: [victimId] },
      { value: victimId + '.', ids: [victimId] }
    ),
    // percent-encoding tricks on forged values: every byte encoded, double encoded, broken escapes, overlong '.'
    wellFormedId.map((id) => ({ value: percentEncodeAll(signer.sign(id)), ids: [id] })),
    wellFormedId.map((id) => ({ value: encodeURIComponent(encodeURIComponent(foreign.sign(id))).replaceAll('.', '%252E'), ids: [id] })),
    wellFormedId.map((id) => ({ value: signer.sign(id).replace('.', '%C0%AE'), ids: [id] })),
    wellFormedId.map((id) => ({ value: signer.sign(id) + '%', ids: [id] })),
    fc.constantFrom<Forged>({ value: '%E0%A4%A', ids: [] }, { value: '%00', ids: [] }, { value: '%ZZ', ids: [] }),
    // unicode lookalikes in the id or for the dot
    wellFormedId.map((id) => ({ value: signer.sign(id).replace('.', '\u3002'), ids: [id] })),
    wellFormedId.map((id) => ({ value: signer.sign(id).replace(/[A-Z]/, (c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0)), ids: [id] })),
    // quoted, half-quoted
    wellFormedId.map((id) => ({ value: `"${foreign.sign(id)}"`, ids: [id] })),
    fc.constant<Forged>({ value: `"${victim}`, ids: [victimId] }),
    // anything at all
    anyString(200).map((value) => ({ value, ids: [] }))
  )
  const name = fc.oneof(
    { weight: 4, arbitrary: fc.constant('sessionid') },
    fc.constantFrom('SESSIONID', 'Sessionid', ' sessionid', 'sessionid ', 'xsessionid', 'sessionid2', '__Host-sessionid', 'session', 'sessionid\u0000'),
    fc.string({ maxLength: 10 })
  )
  const separator = fc.constantFrom('; ', ';', ' ; ', ';;', '; ;', ', ', '\t; ', ';\u00a0')
  const pair = fc.tuple(name, forged).map(([n, f]) => ({ text: `${n}=${f.value}`, ids: f.ids }))
  const join = (pairs: Array<{ text: string, ids: string[] }>, sep: string): Forged =>
    ({ value: pairs.map((p) => p.text).join(sep), ids: pairs.flatMap((p) => p.ids) })
  const header: fc.Arbitrary<Forged> = fc.oneof(
    // random bytes and strings as the whole header
    anyString(500).map((value) => ({ value, ids: [] })),
    // a few cookies
    fc.tuple(fc.array(pair, { minLength: 1, maxLength: 8 }), separator).map(([pairs, sep]) => join(pairs, sep)),
    // hundreds of cookies
    fc.tuple(fc.array(pair, { minLength: 200, maxLength: 400 }), separator).map(([pairs, sep]) => join(pairs, sep)),
    // the session cookie repeated with different values
    fc.tuple(fc.array(forged, { minLength: 2, maxLength: 30 }), separator).map(([values, sep]) =>
      join(values.map((f) => ({ text: `sessionid=${f.value}`, ids: f.ids })), sep)),
    // about 100 KB of cookies
    fc.tuple(fc.array(pair, { minLength: 1, maxLength: 6 }), separator).map(([pairs, sep]) => {
      const unit = join(pairs, sep)
      const copies = Math.ceil(100_000 / Math.max(unit.value.length + sep.length, 1))
      return { value: Array.from({ length: copies }, () => unit.value).join(sep).slice(0, 100_000), ids: unit.ids }
    })
  )

  /** Whether the header carries the victim's cookie intact, as a browser of the victim would send it. */
  const carriesVictim = (value: string): boolean =>
    value.split(';').map((part) => part.trim()).some((part) => part === `sessionid=${victim}` || part === `sessionid="${victim}"`)

  let sizes = 0
  let longest = 0
  await check(t, 'arbitrary Cookie headers', fc.asyncProperty(header, async (cookie) => {
    fc.pre(!carriesVictim(cookie.value))
    sizes += cookie.value.length
    longest = Math.max(longest, cookie.value.length)
    const read = await app.inject({ url: '/get/secret', headers: { cookie: cookie.value } })
    assert.ok(read.statusCode < 500, `read answered ${read.statusCode}`)
    assert.equal(read.statusCode, 200)
    assert.deepEqual(read.json(), { value: null }, 'the victim\'s data is not visible')

    const write = await app.inject({ method: 'POST', url: '/set/x', payload: '1', headers: { ...json, cookie: cookie.value } })
    assert.equal(write.statusCode, 200, `write answered ${write.statusCode}`)
    const id = write.json().id as string
    assert.match(id, /^[A-Za-z0-9_-]{43}$/)
    assert.notEqual(id, victimId, 'the victim\'s id is not adopted')
    assert.ok(!cookie.ids.includes(id), 'no id the attacker sent is adopted')
    assert.ok(!cookie.value.includes(id), 'the new id appears nowhere in what the attacker sent')
    assert.equal(idOf(sessionCookie(write) as string), id, 'the cookie set carries the fresh id')
  }), 400)
  t.comment(`Cookie headers: ${Math.round(sizes / 400)} characters on average, longest ${longest}`)

  t.same(lines.filter((line) => line.level > DEBUG), [], 'nothing logged above debug')
  const still = await app.inject({ url: '/get/secret', headers: cookieHeader(victim) })
  t.same(still.json(), { value: 'the victim\'s' }, 'the victim\'s session is untouched')
})

t.test('a 100 KB Cookie header to a listening server is refused with 431, not a 5xx', async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const cookie = Array.from({ length: 2000 }, (_, i) => `sessionid=${generateId()}.${i}`).join('; ')
  t.ok(cookie.length > 100_000)
  const res = await fetch(`http://127.0.0.1:${port}/get/a`, { headers: { cookie }, signal: AbortSignal.timeout(5000) })
  t.equal(res.status, 431)
  await res.arrayBuffer()
})

/** Values JSON holds exactly, values it changes, and values it cannot hold at all. */
function sessionValues (): fc.Arbitrary<unknown> {
  const cyclic = fc.object({ maxDepth: 1 }).map((o) => {
    (o as Record<string, unknown>).self = o
    return o
  })
  return fc.oneof(
    { weight: 4, arbitrary: fc.jsonValue() },
    { weight: 2, arbitrary: prototypeKeyedObject() },
    {
      weight: 4,
      arbitrary: fc.anything({
        key: fc.oneof(fc.string(), fc.constantFrom(...PROTOTYPE_KEYS, 'toJSON')),
        withBigInt: true,
        withBoxedValues: true,
        withDate: true,
        withMap: true,
        withSet: true,
        withNullPrototype: true,
        withObjectString: true,
        withSparseArray: true,
        withTypedArray: true,
        stringUnit: 'binary'
      })
    },
    fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 20 }),
    fc.constantFrom(NaN, Infinity, -Infinity, -0, 1e308, Number.MIN_VALUE, '\u0000', '\ud800', '\udfff\ud800', [undefined], { a: undefined }, new Error('x'), /re/g),
    fc.func(fc.jsonValue()),
    fc.bigInt(),
    fc.constant(Symbol('s')),
    fc.array(fc.func(fc.integer()), { minLength: 1, maxLength: 2 }).map((fns) => ({ nested: [fns] })),
    fc.jsonValue().map((value) => ({ toJSON: () => value })),
    fc.constant({ toJSON: () => undefined }),
    fc.constant({ toJSON: () => 1n }),
    cyclic
  )
}

/** What the value becomes through JSON, or `null` when JSON cannot hold it. */
function throughJson (value: unknown): { value: unknown } | null {
  let text: string | undefined
  try {
    text = JSON.stringify(value)
  } catch {
    return null
  }
  return text === undefined ? null : { value: JSON.parse(text) }
}

/** An app whose routes take a value from the test itself, bypassing the body parser, which refuses `__proto__`. */
async function valueApp (t: Test, options: object): Promise<{ app: FastifyInstance, slot: { key: string, value: unknown, read?: unknown, keys?: string[] } }> {
  const app = await build(t, { ...options, maxSessionSize: 4_000_000 })
  const slot: { key: string, value: unknown, read?: unknown, keys?: string[] } = { key: 'v', value: null }
  app.post('/put', async (request) => {
    try {
      request.session.set(slot.key, slot.value)
    } catch (err) {
      return { code: (err as { code?: string }).code ?? String(err) }
    }
    return { code: null }
  })
  app.get('/take', async (request) => {
    slot.read = request.session.get(slot.key)
    slot.keys = request.session.keys()
    return {}
  })
  return { app, slot }
}

t.test('through every provider, a session value round-trips exactly as JSON would carry it, or set() throws FST_SESSION_NOT_SERIALIZABLE', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const { app, slot } = await valueApp(t, store.options)
      const keys = fc.constantFrom('v', ...PROTOTYPE_KEYS, 'toString', 'hasOwnProperty', 'valueOf')
      let stored = 0
      let refused = 0
      await check(t, `${kind.name}: session values`, fc.asyncProperty(keys, sessionValues(), async (key, value) => {
        fc.pre(value !== undefined)
        slot.key = key
        slot.value = value
        slot.read = undefined
        const expected = throughJson(value)
        const put = await app.inject({ method: 'POST', url: '/put' })
        assert.equal(put.statusCode, 200)
        const { code } = put.json()
        if (code !== null) {
          assert.equal(code, 'FST_SESSION_NOT_SERIALIZABLE')
          assert.deepEqual(setCookies(put), [], 'nothing was stored')
          refused++
          return
        }
        assert.ok(expected !== null, 'set() accepted a value JSON cannot hold')
        const cookie = sessionCookie(put)
        assert.ok(cookie !== undefined, 'the session was saved')
        const take = await app.inject({ url: '/take', headers: cookieHeader(cookie) })
        assert.equal(take.statusCode, 200)
        assert.ok(isDeepStrictEqual(slot.read, expected.value), `read back ${JSON.stringify(slot.read)}, expected ${JSON.stringify(expected.value)}`)
        assert.deepEqual(slot.keys, [key])
        assert.deepEqual(polluted(), [])
        stored++
      }), kind.name === 'memory' ? 500 : 300)
      t.comment(`${kind.name}: ${stored} values round-tripped, ${refused} refused as not serialisable`)
      t.ok(stored > 0 && refused > 0, 'both outcomes were exercised')
    })
  }
})

t.test('through every provider, keys named __proto__, constructor and prototype round-trip exactly, and stored data never pollutes Object.prototype', async (t) => {
  for (const kind of await storeKinds(t)) {
    t.test(kind.name, async (t) => {
      const store = await kind.open(t)
      const app = await build(t, { ...store.options, userInfoKeys: [...PROTOTYPE_KEYS] })
      // Maps, not object literals: `{ __proto__: x }` would set a prototype, not a key.
      const values = new Map<string, unknown>([
        ['__proto__', JSON.parse('{"__proto__":{"polluted":"yes"},"isAdmin":true}')],
        ['constructor', JSON.parse('{"prototype":{"polluted":"yes"}}')],
        ['prototype', JSON.parse('[{"__proto__":{"polluted":"yes"}}]')]
      ])
      app.post('/seed', async (request) => {
        request.session.set('userId', 'mallory')
        for (const key of PROTOTYPE_KEYS) request.session.set(key, values.get(key))
        return {}
      })
      const reads = new Map<string, unknown>()
      app.get('/read', async (request) => {
        for (const key of PROTOTYPE_KEYS) reads.set(key, request.session.get(key))
        return { keys: request.session.keys().sort() }
      })
      const seed = await app.inject({ method: 'POST', url: '/seed' })
      const cookie = sessionCookie(seed) as string
      const read = await app.inject({ url: '/read', headers: cookieHeader(cookie) })
      t.same(read.json().keys, ['__proto__', 'constructor', 'prototype', 'userId'].sort())
      for (const key of PROTOTYPE_KEYS) {
        t.ok(isDeepStrictEqual(reads.get(key), values.get(key)), `${key} round-trips exactly`)
        t.equal(Object.getPrototypeOf(reads.get(key)), Object.getPrototypeOf(values.get(key)), `${key}: the value keeps its prototype`)
      }
      t.ok(Object.hasOwn(reads.get('__proto__') as object, '__proto__'), '__proto__ inside a value stays an own property')
      t.equal((reads.get('__proto__') as { isAdmin?: boolean }).isAdmin, true)
      t.same(polluted(), [], 'no prototype was written to')

      let property = 0
      await check(t, `${kind.name}: prototype keys`, fc.asyncProperty(fc.constantFrom(...PROTOTYPE_KEYS), prototypeKeyedObject(), async (key, value) => {
        const put = await app.inject({ method: 'POST', url: `/set/${key}`, payload: JSON.stringify({ wrapped: value }), headers: { ...json, ...cookieHeader(cookie) } })
        // Fastify's body parser refuses __proto__ in a body: that is a 400 before the session, never a 5xx.
        assert.ok(put.statusCode === 200 || put.statusCode === 400, `answered ${put.statusCode}`)
        if (put.statusCode === 400) return
        const back = await app.inject({ url: '/read', headers: cookieHeader(cookie) })
        assert.equal(back.statusCode, 200)
        assert.ok(isDeepStrictEqual(reads.get(key), { wrapped: value }))
        assert.deepEqual(polluted(), [])
        property++
      }), 200)
      t.comment(`${kind.name}: ${property} prototype-keyed values went through the body parser and round-tripped`)

      const provider = app.sessions.provider as { listByUser?: unknown }
      if (typeof provider.listByUser === 'function') {
        const [entry] = await app.sessions.listUserSessions('mallory')
        t.same(Object.keys(entry.info).sort(), [...PROTOTYPE_KEYS].sort(), 'the info keys come back as own properties')
        t.equal(Object.getPrototypeOf(entry.info), Object.prototype)
        t.same(polluted(), [])
      }
    })
  }
})

import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type LightMyRequestResponse } from 'fastify'
import type { Test } from 'tap'
import { generateId, isWellFormedId, storeKey } from './id.js'
import { sessions } from './plugin.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from './provider.js'

/** How `testProvider` is told about the provider under test. */
export interface ConformanceOptions<P extends SessionProvider = SessionProvider> {
  /** Names the provider in the test output. */
  name: string

  /**
   * Makes a fresh provider. Every case calls it once and closes what it
   * made when the case ends; the suite also calls it once up front to see
   * which methods the provider has. Cases look only at keys they made themselves,
   * so providers may share one store, but the sweep case counts what `gc()`
   * removes: a store that other tests use at the same time can make it fail.
   */
  create: () => P | Promise<P>

  /**
   * Whether expired records are removed by `gc()` (a sweep) rather than by
   * the store itself; when `true` the sweep cases run and `gc()` must exist.
   * @default whether the provider has `gc`
   */
  sweeps?: boolean

  /**
   * Whether the provider indexes sessions by user; when `true` the user
   * cases run and `listByUser` and `destroyByUser` must both exist.
   * @default whether the provider has `listByUser` or `destroyByUser`
   */
  userIndex?: boolean

  /**
   * Milliseconds the cases wait past a deadline before they expect the
   * record to be gone. A store that keeps deadlines to the millisecond needs
   * next to nothing; one that rounds them to whole seconds needs over 1000.
   * The short lifetimes used by the expiry cases are never below this either,
   * so a store that rounds a deadline down still sees the record live first.
   * @default 50
   */
  expiryGraceMs?: number

  /**
   * Adds provider-specific cases to the suite: `t` is the suite's test, and
   * `create(t)` makes a fresh provider that is closed when `t` ends.
   * @default undefined
   */
  extra?: (t: Test, create: (t: Test) => Promise<P>) => void
}

const HOUR = 3_600_000
const SHORTEST_LIFETIME = 150
const MEBIBYTE = 1_048_576

type Data = Iterable<readonly [string, string]>

function newKey (): string {
  return storeKey(generateId())
}

function newSession (data: Data = [['userId', '"u1"']], expiresAt = Date.now() + HOUR, user: string | null = null): NewSession {
  const now = Date.now()
  return { data: new Map(data), createdAt: now, lastSeenAt: now, expiresAt, user }
}

function patch (fields: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + HOUR, ...fields }
}

type SessionCookie = LightMyRequestResponse['cookies'][number] & { id: string }

/** The session cookie a response sets, and the id its value carries. */
function sessionCookie (res: LightMyRequestResponse): SessionCookie | undefined {
  const cookie = res.cookies.find((c) => c.name === 'sessionid')
  return cookie && { ...cookie, id: cookie.value.slice(0, cookie.value.lastIndexOf('.')) }
}

/** A key no record holds. */
const ABSENT = 'fastify-sessions kit: absent'

/**
 * A record's data as a `Map`, to compare: the contract asks for a
 * `ReadonlyMap`, of whatever class, so its `size`, `get` and `has` are
 * checked against what it iterates. A missing record fails the test here.
 */
function dataOf (t: Test, record: StoredSession | null | undefined): Map<string, string> {
  const data = (record as StoredSession).data
  const copy = new Map(data)
  const consistent = data.size === copy.size && !data.has(ABSENT) && data.get(ABSENT) === undefined &&
    [...copy].every(([name, json]) => data.has(name) && data.get(name) === json)
  t.ok(consistent, 'the data answers size, get and has as it iterates')
  return copy
}

function keysOf (records: readonly UserSessionRecord[]): string[] {
  return records.map((record) => record.key).sort()
}

/**
 * Runs the provider contract of `lib/provider.ts` against a provider, one
 * subtest per guarantee, and finally the plugin's cookie flow on top of it.
 *
 * ```ts
 * import t from 'tap'
 * import { testProvider } from 'fastify-sessions/testing'
 * testProvider(t, { name: 'mystore', create: () => new MyStoreProvider() })
 * ```
 */
export function testProvider<P extends SessionProvider> (t: Test, options: ConformanceOptions<P>): void {
  t.test(`the ${options.name} provider keeps the session provider contract`, async (t) => {
    const grace = options.expiryGraceMs ?? 50
    const lifetime = Math.max(SHORTEST_LIFETIME, grace)

    const open = async (t: Test): Promise<P> => {
      const provider = await options.create()
      t.teardown(() => provider.close?.())
      return provider
    }

    /** A record that expires soon: created live, so that the cases see it go. */
    const shortLived = (user: string | null = null, data?: Data): NewSession => newSession(data, Date.now() + lifetime, user)

    const waitPast = (deadline: number): Promise<void> => sleep(Math.max(0, deadline - Date.now()) + grace)

    /** Checks that `user` neither lists a session nor can end one. */
    const reachesNothing = async (t: Test, provider: P, user: string, unlisted: string, unreached: string): Promise<void> => {
      t.same(await provider.listByUser!(user, []), [], unlisted)
      t.equal(await provider.destroyByUser!(user), 0, unreached)
    }

    const probe = await options.create()
    const sweeps = options.sweeps ?? typeof probe.gc === 'function'
    const userIndex = options.userIndex ?? (typeof probe.listByUser === 'function' || typeof probe.destroyByUser === 'function')
    await probe.close?.()
    const noSweep = { skip: !sweeps && 'expired records are not swept by gc()' }
    const noUsers = { skip: !userIndex && 'the provider has no user index' }

    t.test('a created record reads back with its data and times exactly', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const now = Date.now()
      const session: NewSession = {
        data: new Map([
          ['userId', '"u1"'],
          ['count', '42'],
          ['ratio', '0.1'],
          ['flag', 'false'],
          ['nothing', 'null'],
          ['list', '[1,"two",{"three":3}]'],
          ['order', '{"zeta":1,"alpha":{"b":2,"a":1}}'],
          ['text', '"line\\nbreak \\"quoted\\" \\\\ back"']
        ]),
        createdAt: now - 5003,
        lastSeenAt: now - 1201,
        expiresAt: now + HOUR + 7,
        user: null
      }
      t.equal(await provider.create(key, session), true, 'create answers true')
      const stored = await provider.get(key)
      t.strictSame(dataOf(t, stored), session.data, 'every JSON text comes back verbatim, as a string')
      t.equal(stored?.createdAt, session.createdAt, 'createdAt')
      t.equal(stored?.lastSeenAt, session.lastSeenAt, 'lastSeenAt')
      t.equal(stored?.expiresAt, session.expiresAt, 'expiresAt')
    })

    t.test('a record with no data reads back with an empty map', async (t) => {
      const provider = await open(t)
      const key = newKey()
      t.equal(await provider.create(key, newSession([])), true, 'create answers true')
      t.same(dataOf(t, await provider.get(key)), new Map())
    })

    t.test('an update that deletes every key leaves a live record with no data', async (t) => {
      const provider = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['a', '1'], ['b', '2']]))
      t.equal(await provider.update(key, patch({ delete: ['a', 'b'] })), true, 'update answers true')
      t.same(dataOf(t, await provider.get(key)), new Map(), 'the record stays, empty')
      t.equal(await provider.update(key, patch({ set: new Map([['c', '3']]) })), true, 'and takes new keys')
    })

    t.test('get of an unknown key answers null', async (t) => {
      const provider = await open(t)
      t.equal(await provider.get(newKey()), null)
    })

    t.test('update of an unknown key answers false and creates nothing', async (t) => {
      const provider = await open(t)
      const key = newKey()
      t.equal(await provider.update(key, patch({ set: new Map([['a', '1']]) })), false)
      t.equal(await provider.get(key), null)
    })

    t.test('destroy of an unknown key answers false', async (t) => {
      const provider = await open(t)
      t.equal(await provider.destroy(newKey()), false)
    })

    t.test('destroy deletes a live record and answers true only the first time', async (t) => {
      const provider = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      t.equal(await provider.destroy(key), true, 'first destroy')
      t.equal(await provider.get(key), null, 'gone')
      t.equal(await provider.destroy(key), false, 'second destroy')
    })

    t.test('an expired record reads as null', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = shortLived()
      await provider.create(key, session)
      t.not(await provider.get(key), null, 'live before its deadline')
      await waitPast(session.expiresAt)
      t.equal(await provider.get(key), null, 'null after it')
    })

    t.test('update of an expired record answers false and does not revive it', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = shortLived()
      await provider.create(key, session)
      await waitPast(session.expiresAt)
      t.equal(await provider.update(key, patch({ set: new Map([['a', '1']]) })), false, 'update answers false')
      t.equal(await provider.get(key), null, 'still null')
    })

    t.test('destroy of an expired record answers false', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = shortLived()
      await provider.create(key, session)
      await waitPast(session.expiresAt)
      t.equal(await provider.destroy(key), false)
    })

    t.test('update changes only the keys it names', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = newSession([['keep', '"k"'], ['change', '1'], ['drop', 'true']])
      await provider.create(key, session)
      const change = patch({ set: new Map([['change', '2'], ['add', '{"x":[1]}']]), delete: ['drop', 'never-there'] })
      t.equal(await provider.update(key, change), true, 'update answers true')
      const stored = await provider.get(key)
      t.same(dataOf(t, stored), new Map([['keep', '"k"'], ['change', '2'], ['add', '{"x":[1]}']]), 'set and deleted keys change, the rest stay')
      t.equal(stored?.data.get('keep'), '"k"', 'an untouched text stays exactly as it was')
      t.equal(stored?.data.get('change'), '2', 'a changed one is the text given')
      t.equal(stored?.createdAt, session.createdAt, 'createdAt stays')
      t.equal(stored?.lastSeenAt, change.lastSeenAt, 'lastSeenAt is the patch\'s')
      t.equal(stored?.expiresAt, change.expiresAt, 'expiresAt is the patch\'s')
    })

    t.test('50 concurrent updates of different keys of one session all survive', async (t) => {
      const provider = await open(t)
      const key = newKey()
      await provider.create(key, newSession([['base', '0']]))
      const names = Array.from({ length: 50 }, (_, i) => `k${i}`)
      const answers = await Promise.all(names.map((name, i) => provider.update(key, patch({ set: new Map([[name, String(i)]]) }))))
      t.same(answers, names.map(() => true), 'every update answers true')
      const stored = await provider.get(key)
      t.same(dataOf(t, stored), new Map([['base', '0'], ...names.map((name, i): [string, string] => [name, String(i)])]))
    })

    t.test('an update after destroy answers false and does not resurrect the record', async (t) => {
      const provider = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      await provider.destroy(key)
      t.equal(await provider.update(key, patch({ set: new Map([['late', '1']]) })), false, 'late write answers false')
      t.equal(await provider.update(key, patch()), false, 'late touch answers false')
      t.equal(await provider.get(key), null, 'still gone')
    })

    t.test('an update racing a destroy never brings the record back', async (t) => {
      const provider = await open(t)
      for (let round = 0; round < 10; round++) {
        const key = newKey()
        await provider.create(key, newSession())
        await Promise.all([provider.update(key, patch({ set: new Map([['late', '1']]) })), provider.destroy(key)])
        t.equal(await provider.get(key), null, `round ${round}: gone, whichever ran first`)
      }
    })

    t.test('a delete of one key racing a set of another keeps both changes', async (t) => {
      const provider = await open(t)
      for (let round = 0; round < 10; round++) {
        const key = newKey()
        await provider.create(key, newSession([['a', '1'], ['b', '2']]))
        await Promise.all([provider.update(key, patch({ delete: ['a'] })), provider.update(key, patch({ set: new Map([['c', '3']]) }))])
        t.same(dataOf(t, await provider.get(key)), new Map([['b', '2'], ['c', '3']]), `round ${round}`)
      }
    })

    t.test('two creates replacing one record at once: exactly one succeeds', async (t) => {
      const provider = await open(t)
      for (let round = 0; round < 10; round++) {
        const oldKey = newKey()
        const keys = [newKey(), newKey()]
        await provider.create(oldKey, newSession())
        const answers = await Promise.all(keys.map((key) => provider.create(key, newSession([['who', `"${key}"`]]), oldKey)))
        t.same(answers.filter(Boolean), [true], `round ${round}: one answers true`)
        const live = (await Promise.all(keys.map((key) => provider.get(key)))).filter((record) => record !== null)
        t.equal(live.length, 1, `round ${round}: one record holds the session`)
      }
    })

    t.test('create never overwrites a live record', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const first = newSession([['who', '"first"']])
      t.equal(await provider.create(key, first), true, 'first create answers true')
      // a later deadline of its own, so that a store taking the second's shows
      t.equal(await provider.create(key, newSession([['who', '"second"']], first.expiresAt + HOUR)), false, 'second create answers false')
      const stored = await provider.get(key)
      t.same(dataOf(t, stored), first.data, 'the original data is intact')
      t.equal(stored?.expiresAt, first.expiresAt, 'the original deadline is intact')
    })

    t.test('create succeeds over an expired record', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const now = Date.now()
      const old = { ...shortLived(null, [['who', '"old"']]), createdAt: now - 5000, lastSeenAt: now - 4000 }
      await provider.create(key, old)
      await waitPast(old.expiresAt)
      // times of their own, so that a store keeping any of the old row's shows
      const fresh = { ...newSession([['who', '"new"']]), createdAt: now - 3000, lastSeenAt: now - 1000, expiresAt: now + 2 * HOUR }
      t.equal(await provider.create(key, fresh), true, 'create answers true')
      const stored = await provider.get(key)
      t.same(dataOf(t, stored), fresh.data, 'the new record is stored')
      t.equal(stored?.createdAt, fresh.createdAt, 'createdAt is the new record\'s')
      t.equal(stored?.lastSeenAt, fresh.lastSeenAt, 'lastSeenAt is the new record\'s')
      t.equal(stored?.expiresAt, fresh.expiresAt, 'expiresAt is the new record\'s')
    })

    t.test('create with replaces moves the session to the new key', async (t) => {
      const provider = await open(t)
      const oldKey = newKey()
      const key = newKey()
      await provider.create(oldKey, newSession([['who', '"old"']]))
      const moved = newSession([['who', '"moved"']])
      t.equal(await provider.create(key, moved, oldKey), true, 'create answers true')
      t.equal(await provider.get(oldKey), null, 'the old key is gone')
      t.same(dataOf(t, await provider.get(key)), moved.data, 'the new key holds the new record')
    })

    t.test('create with replaces stores the new record\'s times, not the old one\'s', async (t) => {
      const provider = await open(t)
      const oldKey = newKey()
      const key = newKey()
      const now = Date.now()
      await provider.create(oldKey, { ...newSession(), createdAt: now - 5000, lastSeenAt: now - 4000, expiresAt: now + HOUR })
      const moved = { ...newSession(), createdAt: now - 3000, lastSeenAt: now - 1000, expiresAt: now + 2 * HOUR }
      await provider.create(key, moved, oldKey)
      const stored = await provider.get(key)
      t.equal(stored?.createdAt, moved.createdAt)
      t.equal(stored?.lastSeenAt, moved.lastSeenAt)
      t.equal(stored?.expiresAt, moved.expiresAt)
    })

    t.test('create with a missing replaces creates nothing', async (t) => {
      const provider = await open(t)
      const key = newKey()
      t.equal(await provider.create(key, newSession(), newKey()), false, 'create answers false')
      t.equal(await provider.get(key), null, 'nothing stored')
    })

    t.test('create with an expired replaces creates nothing', async (t) => {
      const provider = await open(t)
      const oldKey = newKey()
      const key = newKey()
      const old = shortLived()
      await provider.create(oldKey, old)
      await waitPast(old.expiresAt)
      t.equal(await provider.create(key, newSession(), oldKey), false, 'create answers false')
      t.equal(await provider.get(key), null, 'nothing stored')
    })

    t.test('create with replaces onto a taken key changes nothing', async (t) => {
      const provider = await open(t)
      const oldKey = newKey()
      const key = newKey()
      const old = newSession([['who', '"old"']])
      const taken = newSession([['who', '"taken"']])
      await provider.create(oldKey, old)
      await provider.create(key, taken)
      t.equal(await provider.create(key, newSession([['who', '"moved"']]), oldKey), false, 'create answers false')
      t.same(dataOf(t, await provider.get(oldKey)), old.data, 'the record to replace stays')
      t.same(dataOf(t, await provider.get(key)), taken.data, 'the taken key keeps its record')
    })

    t.test('a touch extends the deadline and the record expires once the new one passes', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = shortLived()
      await provider.create(key, session)
      const touch = patch({ expiresAt: session.expiresAt + 2 * lifetime })
      t.equal(await provider.update(key, touch), true, 'touch answers true')
      await waitPast(session.expiresAt)
      t.not(await provider.get(key), null, 'live past the first deadline')
      await waitPast(touch.expiresAt)
      t.equal(await provider.get(key), null, 'gone past the new one')
    })

    t.test('the expiresAt of an update wins even when it is earlier', async (t) => {
      const provider = await open(t)
      const key = newKey()
      await provider.create(key, newSession())
      const capped = patch({ expiresAt: Date.now() + lifetime })
      t.equal(await provider.update(key, capped), true, 'update answers true')
      t.equal((await provider.get(key))?.expiresAt, capped.expiresAt, 'the earlier deadline is stored')
      await waitPast(capped.expiresAt)
      t.equal(await provider.get(key), null, 'gone past it')
    })

    t.test('a touch changes only lastSeenAt and expiresAt', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = newSession([['a', '1'], ['b', '"two"']], Date.now() + HOUR, null)
      await provider.create(key, session)
      const touch = patch({ lastSeenAt: session.lastSeenAt + 1000, expiresAt: session.expiresAt + 1000 })
      t.equal(await provider.update(key, touch), true, 'touch answers true')
      const stored = await provider.get(key)
      t.same(dataOf(t, stored), session.data, 'data unchanged')
      t.equal(stored?.createdAt, session.createdAt, 'createdAt unchanged')
      t.equal(stored?.lastSeenAt, touch.lastSeenAt, 'lastSeenAt moved')
      t.equal(stored?.expiresAt, touch.expiresAt, 'expiresAt moved')
    })

    t.test('changing the data map get returned does not change the store', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = newSession([['a', '1'], ['b', '2']])
      await provider.create(key, session)
      const data = (await provider.get(key) as StoredSession).data as Map<string, string>
      // A provider may hand out read-only views that throw; only what it answers next matters
      await Promise.allSettled([
        (async () => data.set('a', '"changed"'))(),
        (async () => data.set('injected', 'true'))(),
        (async () => data.delete('b'))()
      ])
      t.same(dataOf(t, await provider.get(key)), session.data)
    })

    t.test('changing the times on what get returned does not change the store', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = newSession()
      await provider.create(key, session)
      const stored = await provider.get(key) as { lastSeenAt: number, expiresAt: number }
      // As above: a frozen record throws, which is as good as ignoring the change
      await Promise.allSettled([
        (async () => { stored.lastSeenAt = 0 })(),
        (async () => { stored.expiresAt = 0 })()
      ])
      const again = await provider.get(key)
      t.equal(again?.lastSeenAt, session.lastSeenAt, 'lastSeenAt as created')
      t.equal(again?.expiresAt, session.expiresAt, 'expiresAt as created')
    })

    t.test('what get returned stays as it was when the record is updated later', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const session = newSession([['a', '1']])
      await provider.create(key, session)
      const stored = await provider.get(key) as StoredSession
      await provider.update(key, patch({ set: new Map([['a', '2']]), lastSeenAt: session.lastSeenAt + 1000, expiresAt: session.expiresAt + 1000 }))
      t.same(dataOf(t, stored), session.data, 'data')
      t.equal(stored.lastSeenAt, session.lastSeenAt, 'lastSeenAt')
      t.equal(stored.expiresAt, session.expiresAt, 'expiresAt')
    })

    t.test('changing the maps given to create and update afterwards does not change the store', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const data = new Map([['a', '1']])
      await provider.create(key, { ...newSession(), data })
      data.set('a', '"changed"')
      const set = new Map([['b', '2']])
      await provider.update(key, patch({ set }))
      set.set('b', '"changed"')
      t.same(dataOf(t, await provider.get(key)), new Map([['a', '1'], ['b', '2']]))
    })

    t.test('a value of over a mebibyte of JSON round-trips', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const json = JSON.stringify({ blob: 'xé€😀'.repeat(Math.ceil(MEBIBYTE / 10)) })
      t.ok(Buffer.byteLength(json) >= MEBIBYTE, `the value is ${Buffer.byteLength(json)} bytes`)
      await provider.create(key, newSession([['small', '1']]))
      t.equal(await provider.update(key, patch({ set: new Map([['large', json]]) })), true, 'update answers true')
      const stored = (await provider.get(key))?.data.get('large')
      t.equal(stored?.length, json.length, 'same length')
      // Compared without t.equal, so that a mismatch does not print two mebibytes
      t.ok(stored === json, 'same text')
    })

    t.test('unicode and unusual keys and values round-trip', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const data = new Map([
        ['ключ', '"значение"'],
        ['键', '"值"'],
        ['🔑', '"🗝️ 👨‍👩‍👧"'],
        ['e\u0301', '"decomposed e\u0301"'],
        ['\u00e9', '"composed \u00e9"'],
        ['שלום', '"עולם"'],
        ['', '"empty key"'],
        [' spaced key ', '" "'],
        ['a.b:c/d?e=f&g#h', '"punctuation"'],
        ['escapes', JSON.stringify('nul \u0000 tab \t line sep \u2028 lone \ud800')]
      ])
      await provider.create(key, newSession(data))
      t.same(dataOf(t, await provider.get(key)), data)
    })

    t.test('empty values, long keys and keys differing only in case or normalisation stay apart and verbatim', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const long = 'k'.repeat(1000)
      const data = new Map([
        ['empty', '""'],
        ['object', '{}'],
        ['array', '[]'],
        ['zero', '0'],
        ['padded', '"  inner  "'],
        [long, '"long key"'],
        [long + 'x', '"longer key"'],
        ['Key', '"upper"'],
        ['key', '"lower"'],
        ['KEY', '"caps"']
      ])
      await provider.create(key, newSession(data))
      t.same(dataOf(t, await provider.get(key)), data, 'as created')
      await provider.update(key, patch({ set: new Map([['key', '"changed"'], ['empty', '""']]), delete: ['Key'] }))
      const after = new Map(data)
      after.set('key', '"changed"')
      after.delete('Key')
      t.same(dataOf(t, await provider.get(key)), after, 'after an update naming one of the look-alikes')
    })

    t.test('keys that name object internals are ordinary keys', async (t) => {
      const provider = await open(t)
      const key = newKey()
      const data = new Map([
        ['__proto__', '{"polluted":true}'],
        ['constructor', '{"prototype":{"polluted":true}}'],
        ['prototype', '{"polluted":true}']
      ])
      await provider.create(key, newSession(data))
      await provider.update(key, patch({ set: new Map([['toString', '"shadow"'], ['hasOwnProperty', '"shadow"']]) }))
      t.same(dataOf(t, await provider.get(key)), new Map([...data, ['toString', '"shadow"'], ['hasOwnProperty', '"shadow"']]), 'all keys round-trip')
      t.equal(Object.hasOwn(Object.prototype, 'polluted'), false, 'Object.prototype is not polluted')
      t.equal(Object.prototype.toString, {}.toString, 'Object.prototype.toString is intact')
    })

    t.test('gc removes only expired records and answers their count', noSweep, async (t) => {
      const provider = await open(t)
      t.type(provider.gc, 'function', 'gc() exists')
      // Records an earlier case left behind would otherwise be counted too
      await provider.gc!()
      const expired = [newKey(), newKey(), newKey()]
      const live = [newKey(), newKey()]
      // The expired ones come first: a sweep may stop at the first live record (as memory's does)
      const sessions = expired.map(() => shortLived())
      for (const [i, k] of expired.entries()) await provider.create(k, sessions[i])
      for (const k of live) await provider.create(k, newSession())
      await waitPast(sessions[2].expiresAt)
      t.equal(await provider.gc!(), expired.length, 'gc answers how many expired')
      t.equal(await provider.gc!(), 0, 'a second gc finds nothing left')
      for (const k of live) t.not(await provider.get(k), null, 'a live record stays')
    })

    t.test('gc leaves a record that expires soon but has not', noSweep, async (t) => {
      const provider = await open(t)
      await provider.gc!()
      const expiring = shortLived()
      const soon = newSession(undefined, expiring.expiresAt + 60_000)
      const [gone, kept] = [newKey(), newKey()]
      await provider.create(gone, expiring)
      await provider.create(kept, soon)
      await waitPast(expiring.expiresAt)
      t.equal(await provider.gc!(), 1, 'only the expired one is counted')
      t.not(await provider.get(kept), null, 'the one a minute from its deadline stays')
    })

    t.test('close may be called twice', async (t) => {
      const provider = await open(t)
      await provider.create(newKey(), newSession())
      await provider.close?.()
      await provider.close?.()
      t.pass('closed twice without an error')
    })

    t.test('listByUser and destroyByUser both exist', noUsers, async (t) => {
      const provider = await open(t)
      t.type(provider.listByUser, 'function', 'listByUser')
      t.type(provider.destroyByUser, 'function', 'destroyByUser')
    })

    t.test('listByUser lists a user\'s session with its times and only the requested info keys', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      const session = newSession([['userId', JSON.stringify(user)], ['device', '"phone"'], ['ip', '"10.0.0.1"'], ['secret', '"s"']], Date.now() + HOUR, user)
      await provider.create(key, session)
      const list = await provider.listByUser!(user, ['device', 'ip', 'missing'])
      t.equal(list.length, 1, 'one session')
      t.equal(list[0].key, key, 'its key')
      t.equal(list[0].createdAt, session.createdAt, 'createdAt')
      t.equal(list[0].lastSeenAt, session.lastSeenAt, 'lastSeenAt')
      t.equal(list[0].expiresAt, session.expiresAt, 'expiresAt')
      t.same(list[0].info, new Map([['device', '"phone"'], ['ip', '"10.0.0.1"']]), 'only the requested keys it holds')
    })

    t.test('listByUser of an unknown user answers an empty list', noUsers, async (t) => {
      const provider = await open(t)
      t.same(await provider.listByUser!(generateId(), []), [])
    })

    t.test('an update that changes the user moves the session between users', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const [alice, bob] = [generateId(), generateId()]
      await provider.create(key, newSession(undefined, undefined, alice))
      t.equal(await provider.update(key, patch({ user: bob })), true, 'update answers true')
      t.same(await provider.listByUser!(alice, []), [], 'gone from the old user')
      t.same(keysOf(await provider.listByUser!(bob, [])), [key], 'listed under the new user')
    })

    t.test('an update that names no user keeps the owner', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      await provider.create(key, newSession(undefined, undefined, user))
      await provider.update(key, patch({ set: new Map([['a', '1']]) }))
      t.same(keysOf(await provider.listByUser!(user, [])), [key])
    })

    t.test('an owner change made along with data changes moves the session, and user null along with them unlists it', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const [alice, bob] = [generateId(), generateId()]
      await provider.create(key, newSession([['a', '1'], ['b', '2']], undefined, alice))
      t.equal(await provider.update(key, patch({ set: new Map([['a', '3']]), delete: ['b'], user: bob })), true, 'update answers true')
      t.same(await provider.listByUser!(alice, []), [], 'gone from the old user')
      t.same(keysOf(await provider.listByUser!(bob, [])), [key], 'listed under the new user')
      t.same(dataOf(t, await provider.get(key)), new Map([['a', '3']]), 'and the data changed too')
      t.equal(await provider.update(key, patch({ set: new Map([['c', '4']]), user: null })), true, 'update answers true')
      await reachesNothing(t, provider, bob, 'no longer listed', 'destroyByUser does not reach it')
      t.same(dataOf(t, await provider.get(key)), new Map([['a', '3'], ['c', '4']]), 'the session itself stays, changed')
    })

    t.test('a refused create changes nothing, its owner included', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const [alice, bob] = [generateId(), generateId()]
      await provider.create(key, newSession(undefined, undefined, alice))
      t.equal(await provider.create(key, newSession(undefined, undefined, bob)), false, 'refused')
      await reachesNothing(t, provider, bob, 'the refused owner lists nothing', 'and cannot end it')
      t.same(keysOf(await provider.listByUser!(alice, [])), [key], 'the owner still lists it')
    })

    t.test('create over an expired owned record leaves its former owner nothing', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const [alice, bob] = [generateId(), generateId()]
      const expiring = shortLived(alice)
      await provider.create(key, expiring)
      await waitPast(expiring.expiresAt)
      t.equal(await provider.create(key, newSession(undefined, undefined, bob)), true, 'created over it')
      await reachesNothing(t, provider, alice, 'the former owner lists nothing', 'and cannot end it')
      t.same(keysOf(await provider.listByUser!(bob, [])), [key], 'the new owner lists it')
    })

    t.test('create with replaces and no owner leaves the former owner nothing', noUsers, async (t) => {
      const provider = await open(t)
      const [oldKey, key] = [newKey(), newKey()]
      const user = generateId()
      await provider.create(oldKey, newSession(undefined, undefined, user))
      t.equal(await provider.create(key, newSession([['anonymous', 'true']]), oldKey), true)
      await reachesNothing(t, provider, user, 'not listed', 'not reached')
      t.not(await provider.get(key), null, 'the new record stays')
    })

    t.test('an update gives an owner to a session that had none', noUsers, async (t) => {
      const provider = await open(t)
      const [key, hinted] = [newKey(), newKey()]
      const user = generateId()
      await provider.create(key, newSession([]))
      await provider.create(hinted, newSession([]))
      t.equal(await provider.update(key, patch({ set: new Map([['userId', JSON.stringify(user)]]), user })), true, 'a login without regenerate')
      t.equal(await provider.update(hinted, patch({ set: new Map([['userId', JSON.stringify(user)]]), user, owned: false })), true, 'the same, hinted unowned')
      t.same(keysOf(await provider.listByUser!(user, [])), [key, hinted].sort(), 'both listed')
      t.equal(await provider.destroyByUser!(user), 2, 'both reached')
    })

    t.test('an owner change under a wrong owned hint still moves the session', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const [alice, bob] = [generateId(), generateId()]
      await provider.create(key, newSession(undefined, undefined, alice))
      t.equal(await provider.update(key, patch({ set: new Map([['userId', JSON.stringify(bob)]]), user: bob, owned: false })), true)
      await reachesNothing(t, provider, alice, 'the former owner lists nothing', 'and cannot end it')
      t.same(keysOf(await provider.listByUser!(bob, [])), [key], 'the new owner lists it')
    })

    t.test('destroy with an owner racing a change of hands ends the session only while that owner has it', noUsers, async (t) => {
      const provider = await open(t)
      const [alice, bob] = [generateId(), generateId()]
      for (let round = 0; round < 10; round++) {
        const key = newKey()
        await provider.create(key, newSession(undefined, undefined, alice))
        const [destroyed, updated] = await Promise.all([provider.destroy(key, alice), provider.update(key, patch({ user: bob }))])
        const record = await provider.get(key)
        t.ok(destroyed !== updated, `one of them acted, not both (round ${round})`)
        t.equal(record === null, destroyed, 'the record is gone exactly when destroy answered true')
      }
    })

    t.test('destroy with an owner answers false for an expired record', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      const expiring = shortLived(user)
      await provider.create(key, expiring)
      await waitPast(expiring.expiresAt)
      t.equal(await provider.destroy(key, user), false)
    })

    t.test('listByUser shows the info values of the latest write', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      await provider.create(key, newSession([['device', '"phone"'], ['ip', '"10.0.0.1"']], undefined, user))
      await provider.update(key, patch({ set: new Map([['device', '"laptop"']]), delete: ['ip'] }))
      const [listed] = await provider.listByUser!(user, ['device', 'ip'])
      t.same(listed?.info, new Map([['device', '"laptop"']]))
    })

    t.test('user ids are compared exactly: no two of these share a session', noUsers, async (t) => {
      const provider = await open(t)
      const users = ['', '0', '__proto__', 'constructor', 'Alice', 'alice', 'e\u0301', '\u00e9', 'a', 'ab', '*', '%', '_', 'a:b', '🔑', 'u'.repeat(1000)]
      const keys = users.map(() => newKey())
      for (const [i, user] of users.entries()) await provider.create(keys[i], newSession(undefined, undefined, user))
      for (const [i, user] of users.entries()) {
        t.same(keysOf(await provider.listByUser!(user, [])), [keys[i]], `${JSON.stringify(user.slice(0, 20))} lists its own session only`)
      }
      for (const [i, user] of users.entries()) {
        t.equal(await provider.destroyByUser!(user), 1, `${JSON.stringify(user.slice(0, 20))} ends one`)
        t.equal(await provider.get(keys[i]), null, 'its own')
        for (const later of keys.slice(i + 1)) t.not(await provider.get(later), null, 'and none of the others')
      }
    })

    t.test('destroy with an owner deletes only a record that user owns', noUsers, async (t) => {
      const provider = await open(t)
      const [theirs, others, nobodys] = [newKey(), newKey(), newKey()]
      const [alice, bob] = [generateId(), generateId()]
      await provider.create(theirs, newSession(undefined, undefined, alice))
      await provider.create(others, newSession(undefined, undefined, bob))
      await provider.create(nobodys, newSession())
      t.equal(await provider.destroy(others, alice), false, 'another user\'s: false')
      t.equal(await provider.destroy(nobodys, alice), false, 'nobody\'s: false')
      t.not(await provider.get(others), null, 'and both stay')
      t.not(await provider.get(nobodys), null)
      t.same(keysOf(await provider.listByUser!(bob, [])), [others], 'still listed under their owner')
      t.equal(await provider.destroy(theirs, alice), true, 'the owner\'s own: true')
      t.equal(await provider.get(theirs), null, 'and gone')
      t.same(await provider.listByUser!(alice, []), [], 'and unlisted')
      t.equal(await provider.destroy(newKey(), alice), false, 'a missing one: false')
    })

    t.test('a touch keeps the owner: still listed, and destroyByUser reaches it', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      await provider.create(key, newSession(undefined, undefined, user))
      t.equal(await provider.update(key, patch()), true, 'the touch answers true')
      t.same(keysOf(await provider.listByUser!(user, [])), [key], 'listed')
      t.equal(await provider.destroyByUser!(user), 1, 'reached')
      t.equal(await provider.get(key), null, 'and gone')
    })

    t.test('listByUser answers the times of the latest write', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      const session = newSession(undefined, undefined, user)
      await provider.create(key, session)
      const touch = patch({ lastSeenAt: session.lastSeenAt + 1000, expiresAt: session.expiresAt + 2000 })
      await provider.update(key, touch)
      let [listed] = await provider.listByUser!(user, [])
      t.equal(listed?.lastSeenAt, touch.lastSeenAt, 'lastSeenAt of the touch')
      t.equal(listed?.expiresAt, touch.expiresAt, 'expiresAt of the touch')
      const change = patch({ set: new Map([['a', '1']]), lastSeenAt: touch.lastSeenAt + 1000, expiresAt: touch.expiresAt + 2000 })
      await provider.update(key, change)
      ;[listed] = await provider.listByUser!(user, [])
      t.equal(listed?.lastSeenAt, change.lastSeenAt, 'lastSeenAt of the change')
      t.equal(listed?.expiresAt, change.expiresAt, 'expiresAt of the change')
      t.equal(listed?.createdAt, session.createdAt, 'createdAt as created')
    })

    t.test('a wrong owned hint changes nothing: the owner stays listed past the old deadline', noUsers, async (t) => {
      const provider = await open(t)
      const [owned, unowned] = [newKey(), newKey()]
      const user = generateId()
      const session = shortLived(user)
      await provider.create(owned, session)
      await provider.create(unowned, newSession([]))
      t.equal(await provider.update(owned, patch({ set: new Map([['a', '1']]), owned: false })), true, 'an owned record hinted unowned')
      t.equal(await provider.update(unowned, patch({ set: new Map([['a', '1']]), owned: true })), true, 'an unowned record hinted owned')
      await waitPast(session.expiresAt)
      t.same(keysOf(await provider.listByUser!(user, [])), [owned], 'listed with its new deadline')
      t.equal(await provider.destroyByUser!(user), 1, 'and destroyByUser reaches it')
      t.same(dataOf(t, await provider.get(unowned)), new Map([['a', '1']]))
    })

    t.test('an update with user null removes the session from the index only', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      await provider.create(key, newSession(undefined, undefined, user))
      t.equal(await provider.update(key, patch({ user: null })), true, 'update answers true')
      t.same(await provider.listByUser!(user, []), [], 'no longer listed')
      t.not(await provider.get(key), null, 'the session itself stays')
      t.equal(await provider.destroyByUser!(user), 0, 'destroyByUser does not reach it')
    })

    t.test('destroy removes the session from its user\'s list', noUsers, async (t) => {
      const provider = await open(t)
      const key = newKey()
      const user = generateId()
      await provider.create(key, newSession(undefined, undefined, user))
      await provider.destroy(key)
      t.same(await provider.listByUser!(user, []), [])
    })

    t.test('create with replaces under another owner moves the session between users', noUsers, async (t) => {
      const provider = await open(t)
      const [oldKey, key] = [newKey(), newKey()]
      const [before, after] = [generateId(), generateId()]
      await provider.create(oldKey, newSession(undefined, undefined, before))
      await provider.create(key, newSession(undefined, undefined, after), oldKey)
      t.same(await provider.listByUser!(before, []), [], 'the former owner lists nothing')
      t.same(keysOf(await provider.listByUser!(after, [])), [key], 'the new owner lists it')
      t.equal(await provider.destroyByUser!(before), 0, 'the former owner cannot end it')
      t.not(await provider.get(key), null)
    })

    t.test('create with replaces moves the user\'s entry to the new key', noUsers, async (t) => {
      const provider = await open(t)
      const [oldKey, key] = [newKey(), newKey()]
      const user = generateId()
      await provider.create(oldKey, newSession(undefined, undefined, user))
      await provider.create(key, newSession(undefined, undefined, user), oldKey)
      t.same(keysOf(await provider.listByUser!(user, [])), [key])
    })

    t.test('expired sessions drop out of listByUser without a sweep', noUsers, async (t) => {
      const provider = await open(t)
      const [expiring, live] = [newKey(), newKey()]
      const user = generateId()
      const session = shortLived(user)
      await provider.create(expiring, session)
      await provider.create(live, newSession(undefined, undefined, user))
      t.same(keysOf(await provider.listByUser!(user, [])), [expiring, live].sort(), 'both listed before the deadline')
      await waitPast(session.expiresAt)
      t.same(keysOf(await provider.listByUser!(user, [])), [live], 'only the live one after it')
    })

    t.test('20 concurrent creates for one user are all listed', noUsers, async (t) => {
      const provider = await open(t)
      const user = generateId()
      const keys = Array.from({ length: 20 }, newKey)
      const answers = await Promise.all(keys.map((key) => provider.create(key, newSession(undefined, undefined, user))))
      t.same(answers, keys.map(() => true), 'every create answers true')
      t.same(keysOf(await provider.listByUser!(user, [])), keys.sort())
    })

    t.test('destroyByUser ends every session of the user but exceptKey and answers the count', noUsers, async (t) => {
      const provider = await open(t)
      const [keep, a, b, other] = [newKey(), newKey(), newKey(), newKey()]
      const [user, someoneElse] = [generateId(), generateId()]
      for (const key of [keep, a, b]) await provider.create(key, newSession(undefined, undefined, user))
      await provider.create(other, newSession(undefined, undefined, someoneElse))
      t.equal(await provider.destroyByUser!(user, keep), 2, 'answers 2')
      t.not(await provider.get(keep), null, 'exceptKey stays')
      t.equal(await provider.get(a), null, 'another session ends')
      t.equal(await provider.get(b), null, 'and another')
      t.not(await provider.get(other), null, 'another user\'s session stays')
      t.same(keysOf(await provider.listByUser!(user, [])), [keep], 'the list holds exceptKey only')
    })

    t.test('destroyByUser without exceptKey ends every session of the user', noUsers, async (t) => {
      const provider = await open(t)
      const keys = [newKey(), newKey()]
      const user = generateId()
      for (const key of keys) await provider.create(key, newSession(undefined, undefined, user))
      t.equal(await provider.destroyByUser!(user), 2, 'answers 2')
      t.same(await provider.listByUser!(user, []), [], 'nothing listed')
      for (const key of keys) t.equal(await provider.get(key), null, 'ended')
    })

    t.test('destroyByUser does not count expired sessions', noUsers, async (t) => {
      const provider = await open(t)
      const [expiring, live] = [newKey(), newKey()]
      const user = generateId()
      const session = shortLived(user)
      await provider.create(expiring, session)
      await provider.create(live, newSession(undefined, undefined, user))
      await waitPast(session.expiresAt)
      t.equal(await provider.destroyByUser!(user), 1)
    })

    t.test('destroyByUser of an unknown user answers 0', noUsers, async (t) => {
      const provider = await open(t)
      t.equal(await provider.destroyByUser!(generateId()), 0)
    })

    t.test('the session plugin logs in, regenerates and logs out on this provider', async (t) => {
      const provider = await open(t)
      const app = Fastify()
      // Teardowns run last-in first-out: the app goes before the provider, which it must leave open
      t.teardown(() => app.close())
      await app.register(sessions, { secret: 'x'.repeat(32), provider })
      app.post('/login', async (request) => {
        request.session.set('userId', 'alice')
        return {}
      })
      app.get('/me', async (request) => ({ userId: request.session.get('userId') ?? null }))
      app.post('/regenerate', async (request) => {
        await request.session.regenerate()
        return {}
      })
      app.post('/logout', async (request) => {
        await request.session.destroy()
        return {}
      })
      const as = (cookie: { value: string }) => ({ cookie: `sessionid=${cookie.value}` })

      const login = await app.inject({ method: 'POST', url: '/login' })
      t.equal(login.statusCode, 200, 'login answers 200')
      const first = sessionCookie(login)
      t.ok(first, 'login sets the session cookie')
      const cookie = first as NonNullable<typeof first>
      t.ok(isWellFormedId(cookie.id), 'its value is <id>.<signature>')
      t.match(cookie, { httpOnly: true, sameSite: 'Lax', path: '/' }, 'HttpOnly, SameSite=Lax, Path=/')
      t.not(await provider.get(storeKey(cookie.id)), null, 'the provider holds the session under the key of its id')

      const me = await app.inject({ url: '/me', headers: as(cookie) })
      t.same(me.json(), { userId: 'alice' }, 'the cookie brings the session back')

      const regenerated = await app.inject({ method: 'POST', url: '/regenerate', headers: as(cookie) })
      const second = sessionCookie(regenerated)
      t.ok(second, 'regenerate sets a new cookie')
      const renewed = second as NonNullable<typeof second>
      t.not(renewed.id, cookie.id, 'with a new id')
      t.equal(await provider.get(storeKey(cookie.id)), null, 'the old record is gone from the provider')

      const stale = await app.inject({ url: '/me', headers: as(cookie) })
      t.ok(stale.statusCode < 500, `the old cookie is no error (status ${stale.statusCode})`)
      t.same(stale.json(), { userId: null }, 'the old cookie is no session')
      t.same((await app.inject({ url: '/me', headers: as(renewed) })).json(), { userId: 'alice' }, 'the new cookie is')

      const logout = await app.inject({ method: 'POST', url: '/logout', headers: as(renewed) })
      t.match(sessionCookie(logout), { maxAge: 0 }, 'logout clears the cookie with Max-Age=0')
      t.equal(await provider.get(storeKey(renewed.id)), null, 'and the record')
      t.same((await app.inject({ url: '/me', headers: as(renewed) })).json(), { userId: null }, 'the cookie no longer gives access')
    })

    options.extra?.(t, open)
  })
}

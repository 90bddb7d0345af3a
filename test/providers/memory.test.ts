import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { MemoryProvider, type MemoryProviderOptions } from '../../providers/memory.js'
import { getProvider } from '../../lib/registry.js'
import { generateId, storeKey } from '../../lib/id.js'
import { testProvider } from '../../lib/testing.js'
import type { NewSession, SessionPatch, SessionProvider } from '../../lib/provider.js'

const HOUR = 3_600_000

function session (user: string | null = null, expiresAt = Date.now() + HOUR): NewSession {
  const now = Date.now()
  return { data: new Map([['a', '1']]), createdAt: now, lastSeenAt: now, expiresAt, user }
}

/** A patch that only moves the times, or also changes what `fields` name. */
function touch (fields: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + HOUR, ...fields }
}

function newKey (): string {
  return storeKey(generateId())
}

/**
 * Only the required methods, each answering a promise: the kit must skip its
 * sweep and user cases for such a provider, cope with a missing close, and
 * await every answer.
 */
class BareProvider implements SessionProvider {
  private readonly inner = new MemoryProvider()

  async get (key: string) { return this.inner.get(key) }
  async create (key: string, session: NewSession, replaces?: string) { return this.inner.create(key, session, replaces) }
  async update (key: string, patch: SessionPatch) { return this.inner.update(key, patch) }
  async destroy (key: string) { return this.inner.destroy(key) }
}

testProvider(t, {
  name: 'memory',
  create: () => new MemoryProvider(),
  extra (t, create) {
    t.test('maxSessions evicts the least recently used session, a read counting as use', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 3 })
      const [a, b, c, d] = [newKey(), newKey(), newKey(), newKey()]
      for (const key of [a, b, c]) provider.create(key, session())
      provider.get(a)
      t.equal(provider.create(d, session()), true, 'a fourth create succeeds')
      t.equal(provider.size, 3, 'still 3 records')
      t.equal(provider.get(b), null, 'b, used least recently, is evicted')
      for (const key of [a, c, d]) t.not(provider.get(key), null, 'the others stay')
    })

    t.test('maxSessions evicts the least recently used session, a write or a touch counting as use', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 3 })
      const [a, b, c, d, e] = Array.from({ length: 5 }, newKey)
      for (const key of [a, b, c]) provider.create(key, session())
      t.ok(provider.update(a, touch({ set: new Map([['a', '2']]) })), 'a is written')
      provider.create(d, session())
      // only a read moves an entry, so the checks below read nothing that is still held
      t.equal(provider.get(b), null, 'b, the oldest untouched, is evicted, not a, the oldest created')
      t.ok(provider.update(c, touch()), 'c is touched')
      provider.create(e, session())
      t.equal(provider.get(a), null, 'a is evicted, not c')
      for (const key of [c, d, e]) t.ok(provider.get(key), 'the others stay')
      t.equal(provider.get(c)?.data.get('a'), '1', 'the touch left the data as it was')
    })

    t.test('in a store bounded at two, the session used after the other is the one kept', async (t) => {
      const uses: Array<[string, (provider: MemoryProvider, key: string) => unknown]> = [
        ['read', (provider, key) => provider.get(key)],
        ['write', (provider, key) => provider.update(key, touch({ set: new Map([['a', '2']]) }))],
        ['touch', (provider, key) => provider.update(key, touch())]
      ]
      for (const [name, use] of uses) {
        const provider = new MemoryProvider({ maxSessions: 2 })
        const [a, b, c] = [newKey(), newKey(), newKey()]
        provider.create(a, session())
        provider.create(b, session())
        t.ok(use(provider, a), `a ${name} of a`)
        provider.create(c, session())
        t.equal(provider.get(b), null, `after a ${name}: b is evicted`)
        t.ok(provider.get(a), 'a stays')
        t.ok(provider.get(c), 'c stays')
        t.equal(provider.size, 2)
      }
    })

    t.test('get answers the data as a Map would, and what a reader got stays as it was through later writes', async (t) => {
      const provider = new MemoryProvider()
      const key = newKey()
      const now = Date.now()
      provider.create(key, { data: new Map([['a', '1'], ['b', '"x"']]), createdAt: now, lastSeenAt: now, expiresAt: now + HOUR, user: null })
      const data = provider.get(key)?.data as ReadonlyMap<string, string>
      t.equal(data.size, 2)
      t.equal(data.get('b'), '"x"')
      t.equal(data.get('c'), undefined)
      t.ok(data.has('a'))
      t.notOk(data.has('c'))
      t.same([...data], [['a', '1'], ['b', '"x"']], 'iterates its entries in order')
      t.same([...data.entries()], [['a', '1'], ['b', '"x"']])
      t.same([...data.keys()], ['a', 'b'])
      t.same([...data.values()], ['1', '"x"'])
      const seen: unknown[] = []
      const thisArg = {}
      data.forEach(function (this: unknown, json, name, map) { seen.push([json, name, map === data, this === thisArg]) }, thisArg)
      t.same(seen, [['1', 'a', true, true], ['"x"', 'b', true, true]])
      provider.update(key, { set: new Map([['a', '2'], ['c', '3']]), delete: ['b'], lastSeenAt: now, expiresAt: now + HOUR })
      t.same(new Map(data), new Map([['a', '1'], ['b', '"x"']]), 'the earlier read is unchanged')
      t.same(new Map(provider.get(key)?.data), new Map([['a', '2'], ['c', '3']]), 'a new read sees the write')
    })

    t.test('a record of more than 16 keys is read as a Map, whose lookups do not walk every key; the array behind a view is frozen', async (t) => {
      const provider = new MemoryProvider()
      const now = Date.now()
      const record = (keys: number): NewSession => ({ data: new Map(Array.from({ length: keys }, (_, i): [string, string] => ['k' + i, String(i)])), createdAt: now, lastSeenAt: now, expiresAt: now + HOUR, user: null })
      const [small, large] = [newKey(), newKey()]
      provider.create(small, record(16))
      provider.create(large, record(17))
      const view = provider.get(small)?.data as ReadonlyMap<string, string> & { pairs: readonly string[] }
      t.notOk(view instanceof Map, '16 keys: a view')
      t.ok(Object.isFrozen(view.pairs), 'over an array nobody can change')
      t.throws(() => { (view.pairs as string[])[1] = '"changed"' }, TypeError)
      t.equal(provider.get(small)?.data.get('k0'), '0', 'the store is intact')
      const map = provider.get(large)?.data
      t.ok(map instanceof Map, '17 keys: a Map')
      t.equal(map?.get('k16'), '16')
    })

    t.test('eviction also drops the user index entry', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 2 })
      const [a, b, c] = [newKey(), newKey(), newKey()]
      const [alice, bob] = [generateId(), generateId()]
      provider.create(a, session(alice))
      provider.create(b, session())
      provider.create(c, session())
      // A stale alice → a entry would list bob's new record under a as alice's
      provider.create(a, session(bob))
      t.same(provider.listByUser(alice, []), [], 'alice has no session')
      t.same(provider.listByUser(bob, []).map((r) => r.key), [a], 'bob has a')
    })

    t.test('a user leaves the index with their last session, however it goes', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 2 })
      // nothing public tells an empty entry from none: listByUser answers [] either way
      const users = (provider as unknown as { users: Map<string, Set<string>> }).users
      const gone = (user: string, how: string): void => {
        t.equal(users.has(user), false, how)
      }
      const alice = generateId()
      const [a1, a2] = [newKey(), newKey()]
      provider.create(a1, session(alice))
      provider.create(a2, session(alice))
      provider.destroy(a1)
      t.same([...users.get(alice) ?? []], [a2], 'one of two destroyed: the entry keeps the other')
      provider.destroy(a2)
      gone(alice, 'destroy')

      const bob = generateId()
      provider.create(newKey(), session(bob))
      provider.create(newKey(), session(bob))
      provider.destroyByUser(bob)
      gone(bob, 'destroyByUser')

      const carol = generateId()
      const [c1, c2] = [newKey(), newKey()]
      provider.create(c1, session(carol))
      provider.update(c1, touch({ user: alice }))
      gone(carol, 'update to another owner')
      provider.update(c1, touch({ user: null }))
      gone(alice, 'update to no owner')
      provider.update(c1, touch({ user: carol }))
      provider.create(c2, session(), c1)
      gone(carol, 'create replacing it')

      const dave = generateId()
      provider.create(newKey(), session(dave))
      provider.create(newKey(), session())
      provider.create(newKey(), session())
      gone(dave, 'eviction')
      provider.close()

      const [erin, frank] = [generateId(), generateId()]
      const expiresAt = Date.now() + 50
      const read = newKey()
      provider.create(newKey(), session(erin, expiresAt))
      provider.create(read, session(frank, expiresAt))
      await sleep(expiresAt - Date.now() + 5)
      t.equal(provider.get(read), null, 'a read of an expired session answers null')
      gone(frank, 'and drops it')
      t.equal(provider.gc(), 1)
      gone(erin, 'sweep')
      t.equal(users.size, 0, 'the index is empty')
    })

    t.test('gc stops at the first live entry', async (t) => {
      const provider = await create(t)
      const [front, behind] = [newKey(), newKey()]
      const expiring = session(null, Date.now() + 50)
      provider.create(front, session())
      provider.create(behind, expiring)
      await sleep(expiring.expiresAt - Date.now() + 5)
      t.equal(provider.gc(), 0, 'the live front shields the expired entry')
      t.equal(provider.size, 2, 'both are held')
      provider.destroy(front)
      t.equal(provider.gc(), 1, 'once the front is gone, the next gc removes it')
      t.equal(provider.size, 0, 'nothing is held')
    })

    t.test('gc costs what expired: 10 expired in front of 10,000 live', async (t) => {
      const provider = await create(t)
      const expiresAt = Date.now() + 50
      for (let i = 0; i < 10; i++) provider.create(newKey(), session(null, expiresAt))
      for (let i = 0; i < 10_000; i++) provider.create(newKey(), session())
      await sleep(expiresAt - Date.now() + 5)
      t.equal(provider.gc(), 10, 'removes the 10')
      t.equal(provider.size, 10_000, 'the live ones stay')
    })

    t.test('a session used again soon after it moved keeps its place, and eviction still takes the oldest', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 4 })
      const [a, b, c, d, e, f] = Array.from({ length: 6 }, newKey)
      for (const key of [a, b, c, d]) provider.create(key, session())
      provider.get(a)
      provider.get(a)
      provider.get(a)
      provider.create(e, session())
      t.equal(provider.get(b), null, 'b, the oldest, went first')
      provider.create(f, session())
      t.equal(provider.get(c), null, 'then c')
      t.ok(provider.get(a), 'a, used after them, stays')
      t.equal(provider.size, 4)
    })

    t.test('in a store of one, two or three sessions, the one that last joined the back is not moved again on each access', async (t) => {
      for (const count of [1, 2, 3]) {
        const provider = new MemoryProvider()
        const keys = Array.from({ length: count }, newKey)
        for (const key of keys) provider.create(key, session())
        // a move is a delete and a set on the provider's Map
        const sessions = (provider as unknown as { sessions: Map<string, unknown> }).sessions
        let deletes = 0
        const remove = sessions.delete.bind(sessions)
        sessions.delete = (key) => {
          deletes++
          return remove(key)
        }
        const last = keys[count - 1]
        for (let i = 0; i < 5; i++) t.ok(provider.get(last))
        t.ok(provider.update(last, { set: new Map([['a', '2']]), delete: null, lastSeenAt: Date.now(), expiresAt: Date.now() + HOUR, owned: false }))
        t.equal(deletes, 0, `${count} stored`)
        t.same([...sessions.keys()], keys, 'the order stays as it was')
      }
    })

    t.test('eviction still takes the oldest after sessions came and went under the bound for longer than the store holds', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 3 })
      const keys = Array.from({ length: 4 }, newKey)
      for (const key of keys) provider.create(key, session())
      t.equal(provider.get(keys[0]), null, 'one eviction')
      // below the bound: more entries join than the store holds, none evicted
      provider.destroy(keys[1])
      let last = keys[3]
      for (let i = 0; i < 5; i++) {
        provider.destroy(last)
        last = newKey()
        provider.create(last, session())
      }
      const [x, y] = [newKey(), newKey()]
      provider.create(x, session())
      t.equal(provider.size, 3)
      provider.create(y, session())
      t.equal(provider.get(keys[2]), null, 'the oldest goes first, with a fresh cursor')
      for (const key of [last, x, y]) t.ok(provider.get(key))
    })

    t.test('eviction keeps working after close() empties the store', async (t) => {
      const provider = new MemoryProvider({ maxSessions: 1 })
      provider.create(newKey(), session())
      provider.create(newKey(), session())
      provider.close()
      const [x, y] = [newKey(), newKey()]
      provider.create(x, session())
      provider.create(y, session())
      t.equal(provider.get(x), null)
      t.ok(provider.get(y))
    })

    t.test('size counts records, expired ones not yet swept included', async (t) => {
      const provider = await create(t)
      const [expiring, a, b] = [newKey(), newKey(), newKey()]
      const short = session(null, Date.now() + 50)
      t.equal(provider.size, 0, 'empty at first')
      provider.create(expiring, short)
      provider.create(a, session())
      provider.create(b, session())
      t.equal(provider.size, 3, 'three created')
      await sleep(short.expiresAt - Date.now() + 5)
      t.equal(provider.size, 3, 'the expired one still counts')
      provider.gc()
      t.equal(provider.size, 2, 'until a sweep')
      provider.destroy(a)
      t.equal(provider.size, 1, 'destroy removes one')
    })

    t.test('maxSessions must be a positive integer', async (t) => {
      for (const maxSessions of [0, 1.5, -1, Number.NaN, Infinity]) {
        t.throws(() => new MemoryProvider({ maxSessions }), { code: 'FST_SESSION_PROVIDER_OPTION' }, `rejects ${maxSessions}`)
      }
      t.equal(new MemoryProvider({ maxSessions: 1 }).maxSessions, 1, 'accepts 1')
      t.throws(() => new MemoryProvider({ maxSession: 5 } as MemoryProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message: /"maxSession" is not an option; did you mean "maxSessions"\?/ })
    })

    t.test('maxSessions defaults to 100,000', async (t) => {
      t.equal(new MemoryProvider().maxSessions, 100_000)
    })

    t.test('importing the module registers it as "memory"', async (t) => {
      const provider = await getProvider('memory')({ maxSessions: 7 })
      t.ok(provider instanceof MemoryProvider, 'the factory makes a MemoryProvider')
      t.equal((provider as MemoryProvider).maxSessions, 7, 'with the options given')
    })
  }
})

testProvider(t, { name: 'bare asynchronous', create: () => new BareProvider() })

import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { REDIS_URL, requireRedis } from '../fixtures/services.js'
import { freePort, requireRedisServer, startRedisCluster, startRedisServer } from '../fixtures/redis-server.js'
import { createRedisProvider, REDIS_PROVIDER, RedisProvider, type RedisProviderOptions } from '../../providers/redis.js'
import { getProvider } from '../../lib/registry.js'
import { build, cookieHeader, sessionCookie } from '../fixtures/app.js'
import { startProxy } from '../fixtures/tcp-proxy.js'
import { testProvider } from '../../lib/testing.js'
import type { NewSession, SessionPatch } from '../../lib/provider.js'

const HOUR = 3_600_000
/** How long a call may take to fail while Redis is unreachable. */
const FAIL_FAST_MS = 2500

type Client = Redis | Cluster

function newKey (): string {
  return randomBytes(32).toString('base64url')
}

function newPrefix (): string {
  return `test-${randomBytes(6).toString('hex')}:`
}

function newSession (data: Iterable<readonly [string, string]> = [['n', '1']], fields: Partial<NewSession> = {}): NewSession {
  const now = Date.now()
  return { data: new Map(data), createdAt: now - 1000, lastSeenAt: now, expiresAt: now + HOUR, user: null, ...fields }
}

function patch (fields: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + HOUR, ...fields }
}

/** A provider with a fresh prefix, on the shared Redis unless `options` says otherwise, closed when `t` ends. */
function open (t: Test, options: RedisProviderOptions = {}): RedisProvider {
  const provider = createRedisProvider({
    prefix: newPrefix(),
    ...(options.client === undefined ? { url: REDIS_URL } : {}),
    ...options
  })
  t.teardown(() => provider.close())
  return provider
}

/** Two sharded providers on one prefix, as two app instances on one Cluster, and a raw view of it. */
function twoSharded (t: Test): [RedisProvider, RedisProvider, Raw] {
  const one = open(t, { sharded: true })
  return [one, open(t, { sharded: true, prefix: one.prefix }), new Raw(client(t), one.prefix)]
}

/** A plain client of our own, to look at what Redis really holds. */
function client (t: Test, url = REDIS_URL, options: RedisOptions = {}): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 0, ...options })
  t.teardown(() => redis.disconnect())
  return redis
}

/**
 * Where a provider's keys really are, for a client without `keyPrefix`:
 * `space` is the client's keyPrefix (if any) and the provider's prefix.
 */
class Raw {
  constructor (readonly admin: Client, readonly space: string) {}

  hashKey (key: string): string {
    return `${this.space}{${key}}`
  }

  indexKey (user: string): string {
    return `${this.space}user:{${user}}`
  }

  async hash (key: string): Promise<Map<string, string>> {
    const flat = await this.admin.call('HGETALL', this.hashKey(key)) as string[]
    const fields = new Map<string, string>()
    for (let i = 0; i < flat.length; i += 2) fields.set(flat[i], flat[i + 1])
    return fields
  }

  async exists (key: string): Promise<boolean> {
    return await this.admin.exists(this.hashKey(key)) === 1
  }

  async expireTime (redisKey: string): Promise<number> {
    return Number(await this.admin.call('PEXPIRETIME', redisKey))
  }

  /** A user's index as member => score. */
  async index (user: string): Promise<Map<string, number>> {
    const flat = await this.admin.zrange(this.indexKey(user), 0, '-1', 'WITHSCORES')
    const scores = new Map<string, number>()
    for (let i = 0; i < flat.length; i += 2) scores.set(flat[i], Number(flat[i + 1]))
    return scores
  }

  /**
   * The entries of a user's index whose record is that user's: a sharded
   * provider leaves the entry of a former owner as a stray while the record
   * lives, which reads skip.
   */
  async ownedIndex (user: string): Promise<Map<string, number>> {
    const scores = await this.index(user)
    for (const member of scores.keys()) {
      if ((await this.hash(member)).get('u') !== user) scores.delete(member)
    }
    return scores
  }

  /** Writes a record the way the provider would, but already past its `e`, as a lagging server clock leaves it. */
  async plantExpired (key: string, user: string | null): Promise<void> {
    const now = Date.now()
    const fields = ['c', now - 5000, 's', now - 2000, 'e', now - 1000, 'dn', '1']
    if (user !== null) {
      fields.push('u', user)
      await this.admin.zadd(this.indexKey(user), now + HOUR, key)
    }
    await this.admin.hset(this.hashKey(key), ...fields)
    await this.admin.pexpire(this.hashKey(key), HOUR)
  }
}

/**
 * The provider with every patch saying the record had no owner, as the
 * plugin says of most records: updates try the lean script first, and the
 * general one decides wherever the record is not live and unowned.
 */
function hintingUnowned (provider: RedisProvider): RedisProvider {
  const hinting = Object.create(provider) as RedisProvider
  hinting.update = (key, fields) => provider.update(key, { owned: false, ...fields })
  return hinting
}

/** Round trip, layout and write semantics, for any client and mode. */
async function recordScenario (t: Test, provider: RedisProvider, raw: Raw): Promise<void> {
  await t.test('a record round-trips and is one hash with native expiry', async (t) => {
    const key = newKey()
    const session = newSession([['cart', '{"items":[1,2]}'], ['name', '"Zoë ✓ 🍕"'], ['ключ', '"значение"']], { user: 'alice', expiresAt: Date.now() + HOUR + 7 })
    t.equal(await provider.create(key, session), true)
    t.strictSame(await provider.get(key), {
      data: session.data, createdAt: session.createdAt, lastSeenAt: session.lastSeenAt, expiresAt: session.expiresAt
    })
    t.strictSame(await raw.hash(key), new Map([
      ['c', String(session.createdAt)], ['s', String(session.lastSeenAt)], ['e', String(session.expiresAt)], ['u', 'alice'],
      ['dcart', '{"items":[1,2]}'], ['dname', '"Zoë ✓ 🍕"'], ['dключ', '"значение"']
    ]))
    t.equal(await raw.expireTime(raw.hashKey(key)), session.expiresAt, 'PEXPIREAT is expiresAt')
  })

  await t.test('a miss is null, false, false, and leaves nothing', async (t) => {
    const key = newKey()
    t.equal(await provider.get(key), null)
    t.equal(await provider.update(key, patch({ set: new Map([['a', '1']]), user: 'alice' })), false)
    t.equal(await provider.destroy(key), false)
    t.equal(await raw.exists(key), false)
    t.notOk((await raw.index('alice')).has(key))
  })

  await t.test('create never overwrites a live record', async (t) => {
    const key = newKey()
    t.equal(await provider.create(key, newSession([['who', '"first"']])), true)
    t.equal(await provider.create(key, newSession([['who', '"second"']], { user: 'mallory' })), false)
    t.strictSame((await provider.get(key))?.data, new Map([['who', '"first"']]))
    t.notOk((await raw.index('mallory')).has(key), 'the refused owner is not indexed')
  })

  await t.test('update sets, deletes and moves the deadline atomically', async (t) => {
    const key = newKey()
    await provider.create(key, newSession([['a', '1'], ['b', '2'], ['c', '3']]))
    const later = Date.now() + 2 * HOUR
    t.equal(await provider.update(key, patch({ set: new Map([['a', '10'], ['d', '4']]), delete: ['b'], lastSeenAt: later - HOUR, expiresAt: later })), true)
    const stored = await provider.get(key)
    t.strictSame(stored?.data, new Map([['a', '10'], ['c', '3'], ['d', '4']]))
    t.equal(stored?.lastSeenAt, later - HOUR)
    t.equal(stored?.expiresAt, later)
    t.equal(await raw.expireTime(raw.hashKey(key)), later)

    const touched = Date.now() + 3 * HOUR
    t.equal(await provider.update(key, patch({ expiresAt: touched })), true, 'an empty patch is a touch')
    t.equal((await provider.get(key))?.expiresAt, touched)
    t.equal(await raw.expireTime(raw.hashKey(key)), touched)
    t.equal(await provider.update(key, patch({ set: new Map() })), true, 'an empty set is a touch too')
  })

  await t.test('a fractional deadline expires on the next whole millisecond', async (t) => {
    const key = newKey()
    const expiresAt = Date.now() + HOUR + 0.25
    await provider.create(key, newSession([], { expiresAt }))
    t.equal((await provider.get(key))?.expiresAt, expiresAt, 'stored as given')
    t.equal(await raw.expireTime(raw.hashKey(key)), Math.ceil(expiresAt))
  })

  await t.test('update after destroy does not resurrect and leaves no key', async (t) => {
    const key = newKey()
    await provider.create(key, newSession([], { user: 'alice' }))
    t.equal(await provider.destroy(key), true)
    t.equal(await provider.destroy(key), false, 'only the first destroy deletes')
    t.equal(await provider.update(key, patch({ set: new Map([['late', 'true']]) })), false)
    t.equal(await raw.exists(key), false)
    t.equal(await provider.get(key), null)
    t.notOk((await raw.index('alice')).has(key))
  })

  await t.test('a record past its own expiresAt is missing to every call, and goes', async (t) => {
    const key = newKey()
    await raw.plantExpired(key, 'alice')
    t.equal(await provider.get(key), null, 'get')
    t.equal(await provider.update(key, patch()), false, 'update')
    t.equal(await raw.exists(key), false, 'update dropped it')
    t.notOk((await raw.index('alice')).has(key), 'and its index entry')

    await raw.plantExpired(key, 'alice')
    t.equal(await provider.destroy(key), false, 'destroy answers false')
    t.equal(await raw.exists(key), false, 'but deletes it')

    await raw.plantExpired(key, 'alice')
    t.equal(await provider.create(key, newSession([['fresh', 'true']], { user: 'bob' })), true, 'create takes its place')
    t.strictSame((await provider.get(key))?.data, new Map([['fresh', 'true']]))
    t.notOk((await raw.index('alice')).has(key), 'the former owner lost it')
    t.ok((await raw.index('bob')).has(key), 'the new one has it')

    // unowned, the lean update script is the one that meets it first, and
    // the server's expiry alone would let it write the record live again
    const unowned = newKey()
    await raw.plantExpired(unowned, null)
    t.equal(await provider.update(unowned, patch({ owned: false, set: new Map([['late', 'true']]) })), false, 'an update of an unowned one answers false')
    t.equal(await raw.exists(unowned), false, 'and drops it rather than revive it')
    t.equal(await provider.get(unowned), null)

    const other = newKey()
    const expired = newKey()
    await raw.plantExpired(expired, null)
    t.equal(await provider.create(other, newSession(), expired), false, 'create replacing it refuses')
    t.equal(await raw.exists(expired), false, 'the expired one is dropped')
    t.equal(await raw.exists(other), false, 'nothing is created')
  })

  await t.test('a key that is not a hash fails a write with the Redis error', async (t) => {
    const key = newKey()
    await raw.admin.set(raw.hashKey(key), 'not a hash', 'PX', HOUR)
    await t.rejects(provider.update(key, patch({ owned: false })), /WRONGTYPE/)
    await t.rejects(provider.update(key, patch({ owned: true })), /WRONGTYPE/)
  })

  await t.test('any session key round-trips, metadata names and __proto__ included', async (t) => {
    const key = newKey()
    const names = ['c', 's', 'e', 'u', 'd', 'dd', 'dc', '', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '🔑', 'ключ', 'a b\nc', '{x}', 'user:{y}']
    const data = new Map(names.map((name, i) => [name, JSON.stringify({ name, i, text: 'ünïcødé ✓ 🍕' })]))
    await provider.create(key, newSession(data))
    t.strictSame((await provider.get(key))?.data, data)
    t.equal(await provider.update(key, patch({ set: new Map([['__proto__', '"polluted?"'], ['c', '"not createdAt"']]), delete: ['e', 'constructor'] })), true)
    const stored = await provider.get(key)
    t.equal(stored?.data.get('__proto__'), '"polluted?"')
    t.equal(stored?.data.get('c'), '"not createdAt"')
    t.notOk(stored?.data.has('e'))
    t.notOk(stored?.data.has('constructor'))
    t.equal(stored?.data.size, names.length - 2)
    t.equal(stored?.createdAt, Number((await raw.hash(key)).get('c')), 'metadata untouched')
    t.equal(Object.getPrototypeOf({}).polluted, undefined)
  })

  await t.test('values over 1 MiB and many keys round-trip', async (t) => {
    const key = newKey()
    const big = JSON.stringify('é🍕'.repeat(400_000))
    t.ok(Buffer.byteLength(big) > 1_048_576)
    const many = Array.from({ length: 1000 }, (_, i): [string, string] => [`k${i}`, String(i)])
    await provider.create(key, newSession([['big', big], ...many]))
    const stored = await provider.get(key)
    t.equal(stored?.data.get('big'), big)
    t.equal(stored?.data.size, 1001)
    const bigger = JSON.stringify({ blob: 'x'.repeat(1_200_000) })
    t.equal(await provider.update(key, patch({ set: new Map([['big', bigger], ...many.map(([name]): [string, string] => [name, '0'])]), delete: many.slice(0, 500).map(([name]) => name) })), true)
    const updated = await provider.get(key)
    t.equal(updated?.data.get('big'), bigger)
    t.equal(updated?.data.size, 501)
  })
}

/** The user index: kept in step by every write, read and pruned by the user calls. */
async function userScenario (t: Test, provider: RedisProvider, raw: Raw): Promise<void> {
  const alice = `alice-${randomBytes(4).toString('hex')}`
  const bob = `bob ✓ {${randomBytes(4).toString('hex')}}`

  await t.test('the index follows create, touch, owner changes, destroy and replaces', async (t) => {
    // unsharded the index is exact; sharded, a former owner's entry stays while the record lives
    const index = (user: string): Promise<Map<string, number>> => provider.sharded ? raw.ownedIndex(user) : raw.index(user)
    const [k1, k2, k3, k4, k5] = [newKey(), newKey(), newKey(), newKey(), newKey()]
    const now = Date.now()
    await provider.create(k1, newSession([], { user: alice, expiresAt: now + HOUR }))
    await provider.create(k2, newSession([], { user: alice, expiresAt: now + 2 * HOUR }))
    await provider.create(k3, newSession([], { user: bob, expiresAt: now + HOUR }))
    await provider.create(k4, newSession())
    t.strictSame(await index(alice), new Map([[k1, now + HOUR], [k2, now + 2 * HOUR]]))
    t.strictSame(await index(bob), new Map([[k3, now + HOUR]]))
    t.equal(await raw.expireTime(raw.indexKey(alice)), now + 2 * HOUR, 'the index expires with its last session')

    await provider.update(k1, patch({ expiresAt: now + 3 * HOUR }))
    t.equal((await index(alice)).get(k1), now + 3 * HOUR, 'a touch moves the score')
    t.equal(await raw.expireTime(raw.indexKey(alice)), now + 3 * HOUR, 'and the index deadline')

    await provider.update(k2, patch({ user: bob, expiresAt: now + HOUR }))
    t.notOk((await index(alice)).has(k2), 'the former owner loses it')
    t.equal((await index(bob)).get(k2), now + HOUR, 'the new owner has it')
    t.equal((await raw.hash(k2)).get('u'), bob)

    await provider.update(k2, patch({ user: null }))
    t.notOk((await index(bob)).has(k2), 'no owner: unindexed')
    t.notOk((await raw.hash(k2)).has('u'), 'and the owner field is gone')

    await provider.update(k2, patch({ user: null }))
    t.notOk((await raw.hash(k2)).has('u'), 'clearing no owner is harmless')

    await provider.update(k4, patch({ user: alice, expiresAt: now + HOUR }))
    t.ok((await index(alice)).has(k4), 'a first owner indexes it')

    await provider.update(k4, patch({ user: alice, expiresAt: now + HOUR }))
    t.equal((await index(alice)).get(k4), now + HOUR, 'the same owner again keeps one entry')

    t.equal(await provider.destroy(k1), true)
    t.notOk((await index(alice)).has(k1), 'destroy unindexes')

    t.equal(await provider.create(k5, newSession([['moved', 'true']], { user: alice, expiresAt: now + HOUR }), k4), true, 'replaces')
    t.equal(await raw.exists(k4), false, 'the replaced record is gone')
    t.strictSame(await index(alice), new Map([[k5, now + HOUR]]), 'and so is its index entry')

    const k7 = newKey()
    t.equal(await provider.create(k7, newSession([], { user: alice }), k4), false, 'replacing a gone record refuses')
    t.equal(await raw.exists(k7), false, 'and creates nothing')
    t.strictSame(await index(alice), new Map([[k5, now + HOUR]]), 'and indexes nothing')

    const k6 = newKey()
    await provider.create(k6, newSession([], { user: bob }))
    t.equal(await provider.create(k5, newSession(), k6), false, 'replacing into a live key refuses')
    t.equal(await raw.exists(k5), true, 'the live record stays')

    t.equal(await provider.destroyByUser(alice), 1)
    t.equal(await provider.destroyByUser(bob), 2, 'the record to replace stayed')
    if (provider.sharded) {
      t.strictSame(await index(alice), new Map(), 'nothing of theirs is left listed')
      t.strictSame(await index(bob), new Map())
    } else {
      t.equal(await raw.admin.exists(raw.indexKey(alice)), 0, 'an emptied index is deleted')
      t.equal(await raw.admin.exists(raw.indexKey(bob)), 0)
    }
  })

  await t.test('every write to an index trims its entries past their deadline, and the index expires with its latest one', async (t) => {
    const user = `${alice}-settle`
    const stale = newKey()
    // an entry left behind past its deadline, by a crash between steps or a record that expired
    const plantStale = (): Promise<number> => raw.admin.zadd(raw.indexKey(user), Date.now() - 1000, stale)
    const [k1, k2, k3] = [newKey(), newKey(), newKey()]
    const now = Date.now()
    await provider.create(k1, newSession([], { user, expiresAt: now + HOUR }))
    await plantStale()
    await provider.create(k2, newSession([], { user, expiresAt: now + 3 * HOUR }))
    t.strictSame(await raw.index(user), new Map([[k1, now + HOUR], [k2, now + 3 * HOUR]]), 'create trims')

    await plantStale()
    await provider.update(k1, patch({ expiresAt: now + 2 * HOUR }))
    t.strictSame(await raw.index(user), new Map([[k1, now + 2 * HOUR], [k2, now + 3 * HOUR]]), 'update trims')

    await plantStale()
    t.equal(await provider.destroy(k2), true)
    t.strictSame(await raw.index(user), new Map([[k1, now + 2 * HOUR]]), 'destroy trims')
    t.equal(await raw.expireTime(raw.indexKey(user)), now + 2 * HOUR, 'the index deadline comes down to the latest entry left')

    await provider.create(k3, newSession([], { user, expiresAt: now + HOUR }))
    t.equal(await raw.expireTime(raw.indexKey(user)), now + 2 * HOUR, 'an earlier entry leaves it where it is')

    await plantStale()
    await provider.destroy(k1)
    await provider.destroy(k3)
    t.equal(await raw.admin.exists(raw.indexKey(user)), 0, 'an index left with only entries past their deadline is gone')
  })

  await t.test('listByUser answers live records with the requested info', async (t) => {
    const user = `${alice}-list`
    const [a, b, c] = [newKey(), newKey(), newKey()]
    const now = Date.now()
    await provider.create(a, newSession([['ip', '"10.0.0.1"'], ['agent', '"Firefox"'], ['secret', '"x"']], { user, createdAt: now - 10, lastSeenAt: now - 5, expiresAt: now + HOUR }))
    await provider.create(b, newSession([['ip', '"::1"']], { user, createdAt: now - 20, lastSeenAt: now - 15, expiresAt: now + 2 * HOUR }))
    await provider.create(c, newSession([['ip', '"other"']], { user: `${user}-other` }))
    const list = await provider.listByUser(user, ['ip', 'agent', '__proto__'])
    t.strictSame(list.sort((x, y) => x.expiresAt - y.expiresAt), [
      { key: a, createdAt: now - 10, lastSeenAt: now - 5, expiresAt: now + HOUR, info: new Map([['ip', '"10.0.0.1"'], ['agent', '"Firefox"']]) },
      { key: b, createdAt: now - 20, lastSeenAt: now - 15, expiresAt: now + 2 * HOUR, info: new Map([['ip', '"::1"']]) }
    ])
    t.strictSame((await provider.listByUser(user, []))[0].info, new Map(), 'no info keys, no info')
    t.strictSame(await provider.listByUser(`${user}-nobody`, ['ip']), [])
  })

  await t.test('list and destroy trim expired entries and skip stale ones', async (t) => {
    const user = `${alice}-stale`
    const now = Date.now()
    const live = newKey()
    await provider.create(live, newSession([['ip', '"1"']], { user }))
    const dead = newKey()
    await raw.admin.zadd(raw.indexKey(user), now - 1000, dead)
    const foreign = newKey()
    await provider.create(foreign, newSession([], { user: `${user}-someone-else` }))
    await raw.admin.zadd(raw.indexKey(user), now + HOUR, foreign)
    const vanished = newKey()
    await raw.admin.zadd(raw.indexKey(user), now + HOUR, vanished)
    const lagging = newKey()
    await raw.plantExpired(lagging, user)

    t.strictSame((await provider.listByUser(user, ['ip'])).map((record) => record.key), [live], 'only the live, owned one')
    t.equal(await raw.admin.zscore(raw.indexKey(user), dead), null, 'an entry past its score is trimmed')

    t.equal(await provider.destroyByUser(user), 1, 'counts only the live, owned one')
    t.equal(await raw.exists(live), false)
    t.equal(await raw.exists(foreign), true, 'another user\'s record is left alone')
    t.equal(await raw.exists(lagging), false, 'a record past its expiresAt is dropped, uncounted')
    if (provider.sharded) {
      // outside a script, that entry may be an owner change under way, written before its record
      t.strictSame(await raw.index(user), new Map([[foreign, now + HOUR]]), 'only the entry of a record someone else owns stays, until its score')
    } else {
      t.equal(await raw.admin.exists(raw.indexKey(user)), 0, 'the index is empty and gone')
    }
  })

  await t.test('destroyByUser spares the except key and other users', async (t) => {
    const user = `${alice}-except`
    const [keep, x, y, theirs] = [newKey(), newKey(), newKey(), newKey()]
    for (const key of [keep, x, y]) await provider.create(key, newSession([], { user }))
    await provider.create(theirs, newSession([], { user: `${user}-2` }))
    t.equal(await provider.destroyByUser(user, keep), 2)
    t.strictSame((await provider.listByUser(user, [])).map((record) => record.key), [keep])
    t.strictSame(await raw.index(user), new Map([[keep, (await provider.get(keep))?.expiresAt]]))
    t.equal(await provider.destroyByUser(user, keep), 0, 'only the except key left')
    t.equal(await raw.exists(theirs), true)
    t.equal(await provider.destroyByUser(`${user}-nobody`), 0, 'an unknown user')
    t.equal(await provider.destroyByUser(user), 1)
    t.strictSame(await provider.listByUser(user, []), [])
  })
}

t.test('registers as "redis"', async (t) => {
  t.equal(REDIS_PROVIDER, 'redis')
  t.equal(getProvider('redis'), createRedisProvider)
})

t.test('invalid options throw FST_SESSION_PROVIDER_OPTION', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [undefined, /options must be an object/],
    [null, /options must be an object/],
    [{}, /give url or client/],
    [{ prefix: 'x:' }, /give url or client/],
    [{ url: REDIS_URL, client: {} }, /either url or client, not both/],
    [{ url: 'http://127.0.0.1:6379' }, /url must be a redis:\/\/ or rediss:\/\/ URL/],
    [{ url: 'redis://' }, /url must be/],
    [{ url: 6379 }, /url must be/],
    [{ url: 'redis://[' }, /url must be/],
    [{ url: 'redis://127.0.0.1/sessions' }, /the path of url must be a database number/],
    [{ url: 'redis://127.0.0.1/00' }, /the path of url must be a database number/],
    [{ url: 'redis://127.0.0.1/1', tls: {} }, /tls goes with a rediss:\/\/ URL/],
    [{ url: 'redis://:%zz@127.0.0.1' }, /not valid percent-encoding/],
    [{ url: 'redis://u%C3:%A9@127.0.0.1' }, /not valid percent-encoding/],
    [{ url: REDIS_URL, tls: 'yes' }, /tls must be an object/],
    [{ url: REDIS_URL, tls: null }, /tls must be an object/],
    [{ client: {} }, /client must be an ioredis Redis or Cluster/],
    [{ client: null }, /client must be/],
    [{ client: { call () {} } }, /client must be/],
    [{ url: REDIS_URL, prefix: 1 }, /prefix must be a string/],
    [{ url: REDIS_URL, sharded: 'yes' }, /sharded must be a boolean/],
    [{ url: REDIS_URL, keyPrefix: 'x:' }, /"keyPrefix" is not an option$/],
    [{ url: REDIS_URL, Prefix: 'x:' }, /"Prefix" is not an option; did you mean "prefix"\?/]
  ]
  for (const [options, message] of cases) {
    t.throws(() => createRedisProvider(options as RedisProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION', message }, JSON.stringify(options))
  }
  const unused = new Redis({ lazyConnect: true })
  t.throws(() => createRedisProvider({ client: unused, tls: {} }), { code: 'FST_SESSION_PROVIDER_OPTION', message: /tls goes with url/ })
  unused.disconnect()
})

t.test('defaults', async (t) => {
  const provider = createRedisProvider({ url: REDIS_URL })
  t.equal(provider.prefix, 'sess:')
  t.equal(provider.sharded, false)
  t.equal(provider.client.status, 'wait', 'it does not connect before the first call')
  t.equal('gc' in provider, false, 'no sweep: Redis expires records itself')
  provider.close()
  provider.close()
  t.equal(provider.client.status, 'end')
})

t.test('on the shared Redis', async (t) => {
  if (!await requireRedis(t)) return

  testProvider(t, { name: 'redis', create: () => createRedisProvider({ url: REDIS_URL, prefix: newPrefix() }) })
  testProvider(t, { name: 'redis, sharded', create: () => createRedisProvider({ url: REDIS_URL, prefix: newPrefix(), sharded: true }) })
  testProvider(t, { name: 'redis, patches hinting no owner', create: () => hintingUnowned(createRedisProvider({ url: REDIS_URL, prefix: newPrefix() })) })

  t.test('unsharded (every write one atomic script)', async (t) => {
    const provider = open(t)
    const raw = new Raw(client(t), provider.prefix)
    await recordScenario(t, provider, raw)
    await userScenario(t, provider, raw)
  })

  t.test('unsharded, patches hinting no owner (the lean script, the general one where wrong)', async (t) => {
    const provider = open(t)
    const raw = new Raw(client(t), provider.prefix)
    await recordScenario(t, hintingUnowned(provider), raw)
    await userScenario(t, hintingUnowned(provider), raw)
  })

  t.test('sharded on a standalone server (index kept beside the scripts)', async (t) => {
    const provider = open(t, { sharded: true })
    t.equal(provider.sharded, true)
    const raw = new Raw(client(t), provider.prefix)
    await recordScenario(t, provider, raw)
    await userScenario(t, provider, raw)
  })

  t.test('sharded, patches hinting no owner', async (t) => {
    const provider = open(t, { sharded: true })
    const raw = new Raw(client(t), provider.prefix)
    await recordScenario(t, hintingUnowned(provider), raw)
    await userScenario(t, hintingUnowned(provider), raw)
  })

  t.test('sharded, steps across slots ordered so that a failure or a race leaves no session unlisted', async (t) => {
    await t.test('log out everywhere ends a session that a regenerate moves while it runs', async (t) => {
      const [ending, moving] = twoSharded(t)
      const [old, moved] = [newKey(), newKey()]
      await moving.create(old, newSession([], { user: 'erin' }))
      // hold the log out between its read of the index and its deletes
      const internals = ending as unknown as { destroyRecord: (key: string, owner: string | null) => Promise<unknown> }
      const destroyRecord = internals.destroyRecord.bind(ending)
      let reached!: () => void
      const atDeletes = new Promise<void>((resolve) => { reached = resolve })
      let release!: () => void
      const held = new Promise<void>((resolve) => { release = resolve })
      internals.destroyRecord = async (key, owner) => {
        reached()
        await held
        return destroyRecord(key, owner)
      }
      const destroyed = ending.destroyByUser('erin')
      await atDeletes
      t.equal(await moving.create(moved, newSession([], { user: 'erin' }), old), true, 'the move lands in between')
      release()
      t.equal(await destroyed, 1, 'the moved session is counted')
      t.equal(await ending.get(moved), null, 'and ended')
      t.strictSame(await ending.listByUser('erin', []), [])
    })

    await t.test('an owner\'s index entry is written before the record', async (t) => {
      const proxy = await startProxy(t, REDIS_URL, 6379)
      const provider = open(t, { sharded: true, url: proxy.url(REDIS_URL) })
      const raw = new Raw(client(t), provider.prefix)
      const login = newKey()
      await provider.create(login, newSession([['n', '1']]))
      proxy.cutOn = raw.indexKey('fay')
      await t.rejects(provider.update(login, patch({ set: new Map([['userId', '"fay"']]), user: 'fay', owned: false })), 'the index write fails')
      const fields = await raw.hash(login)
      t.equal(fields.has('u'), false, 'the record did not become fay\'s')
      t.equal(fields.has('duserId'), false, 'nor changed at all')

      proxy.cutOn = null
      const kept = newKey()
      const soon = Date.now() + 60_000
      await provider.create(kept, newSession([], { user: 'gus', expiresAt: soon }))
      proxy.cutOn = raw.indexKey('gus')
      await t.rejects(provider.update(kept, patch({ set: new Map([['n', '2']]), owned: true })), 'the index refresh fails')
      proxy.cutOn = null
      t.equal(Number((await raw.hash(kept)).get('e')), soon, 'the record keeps the deadline its index entry has')
      t.equal((await raw.index('gus')).get(kept), soon)
    })

    await t.test('a landed write whose clean-up of the index fails is reported done', async (t) => {
      const proxy = await startProxy(t, REDIS_URL, 6379)
      const provider = open(t, { sharded: true, url: proxy.url(REDIS_URL) })
      const raw = new Raw(client(t), provider.prefix)
      const key = newKey()
      await provider.create(key, newSession([], { user: 'lee' }))
      proxy.cutOn = raw.indexKey('lee')
      t.equal(await provider.update(key, patch({ set: new Map([['userId', '"max"']]), user: 'max' })), true, 'the owner change')
      proxy.cutOn = null
      t.equal((await raw.hash(key)).get('u'), 'max', 'landed')
      t.strictSame((await provider.listByUser('max', [])).map((record) => record.key), [key], 'listed under its new owner')
      t.strictSame(await provider.listByUser('lee', []), [], 'the stray entry it left is never listed')
      proxy.cutOn = raw.indexKey('max')
      t.equal(await provider.destroy(key), true, 'the logout')
      proxy.cutOn = null
      t.equal(await raw.exists(key), false, 'landed')
      t.strictSame(await provider.listByUser('max', []), [], 'the stray entry it left is never listed')
    })

    await t.test('a logout racing a login back to the same owner leaves the entry the login wrote', async (t) => {
      const [out, back, raw] = twoSharded(t)
      const key = newKey()
      await out.create(key, newSession([['userId', '"pat"']], { user: 'pat' }))
      // should the logout drop pat's entry after its script, hold that until the login is done
      const internals = out as unknown as { index: (user: string, key: string, until: string) => Promise<unknown> }
      const index = internals.index.bind(out)
      let reached!: () => void
      const atRemoval = new Promise<void>((resolve) => { reached = resolve })
      let release!: () => void
      const held = new Promise<void>((resolve) => { release = resolve })
      internals.index = async (user, member, until) => {
        if (until === '') {
          reached()
          await held
        }
        return index(user, member, until)
      }
      const logout = out.update(key, patch({ delete: ['userId'], user: null, owned: true }))
      await Promise.race([atRemoval, logout])
      t.equal(await back.update(key, patch({ set: new Map([['userId', '"pat"']]), user: 'pat', owned: false })), true, 'the login')
      release()
      t.equal(await logout, true, 'the logout')
      t.equal((await raw.hash(key)).get('u'), 'pat', 'the session is pat\'s again')
      t.strictSame((await out.listByUser('pat', [])).map((record) => record.key), [key], 'and listed')
      t.equal(await out.destroyByUser('pat'), 1, 'so log out everywhere reaches it')
    })

    await t.test('log out everywhere gives up, rejecting, while new sessions of the user keep appearing', async (t) => {
      const provider = open(t, { sharded: true })
      const internals = provider as unknown as { members: (user: string, now: number) => Promise<string[]> }
      const members = internals.members.bind(provider)
      let reads = 0
      internals.members = async (user, now) => {
        reads++
        await provider.create(newKey(), newSession([], { user }))
        return members(user, now)
      }
      await t.rejects(provider.destroyByUser('quinn'), /kept appearing through 20 rounds/)
      t.equal(reads, 21, 'every round read the index again')
    })

    for (const first of ['sam', null]) {
      await t.test(`an owner change between the read of the owner (${first ?? 'none'}) and the script: the owner at the script gets the deadline`, async (t) => {
        const [touching, changing, raw] = twoSharded(t)
        const key = newKey()
        await touching.create(key, newSession([['n', '1']], { user: first }))
        const internals = touching as unknown as { ownerOf: (key: string) => Promise<string | null> }
        const ownerOf = internals.ownerOf.bind(touching)
        internals.ownerOf = async (member) => {
          const owner = await ownerOf(member)
          await changing.update(member, patch({ user: 'tess' }))
          return owner
        }
        const later = Date.now() + 2 * HOUR
        t.equal(await touching.update(key, patch({ set: new Map([['n', '2']]), expiresAt: later, owned: true })), true)
        t.equal((await raw.index('tess')).get(key), later, 'tess, who owns it now, has it to its new deadline')
        t.equal((await raw.hash(key)).get('dn'), '2', 'and the write landed')
        t.strictSame(await touching.listByUser('sam', []), [], 'a former owner\'s stray entry is not listed')
      })
    }

    await t.test('an update gives up, rejecting, while the owner keeps changing under it', async (t) => {
      const [touching, changing, raw] = twoSharded(t)
      const key = newKey()
      await touching.create(key, newSession([['n', '1']], { user: 'vic' }))
      const internals = touching as unknown as { index: (user: string, key: string, until: string) => Promise<unknown> }
      const index = internals.index.bind(touching)
      let writes = 0
      internals.index = async (user, member, until) => {
        writes++
        await index(user, member, until)
        await changing.update(member, patch({ user: user === 'vic' ? 'wes' : 'vic' }))
      }
      await t.rejects(touching.update(key, patch({ set: new Map([['n', '2']]), owned: true })), /kept changing through 5 attempts/)
      t.equal(writes, 5, 'each attempt wrote the entry of the owner it had found')
      t.equal((await raw.hash(key)).get('dn'), '1', 'and the script never applied')
    })

    await t.test('a create over an expired record unlists that record\'s owner', async (t) => {
      const provider = open(t, { sharded: true })
      const raw = new Raw(client(t), provider.prefix)
      const key = newKey()
      await raw.plantExpired(key, 'uma')
      t.equal(await provider.create(key, newSession([['n', '1']])), true, 'the lean create hands over to the general one')
      t.equal(await raw.admin.exists(raw.indexKey('uma')), 0, 'uma\'s entry is gone')
      t.same((await provider.get(key))?.data, new Map([['n', '1']]))
    })

    await t.test('a write that does not apply takes back the entry it wrote first', async (t) => {
      const provider = open(t, { sharded: true })
      const raw = new Raw(client(t), provider.prefix)
      const gone = newKey()
      t.equal(await provider.update(gone, patch({ user: 'hal' })), false)
      t.equal(await raw.admin.exists(raw.indexKey('hal')), 0, 'no entry for a record that is not there')
    })

    await t.test('an entry never moves to an earlier deadline than a write gave it', async (t) => {
      const provider = open(t, { sharded: true })
      const raw = new Raw(client(t), provider.prefix)
      const key = newKey()
      const late = Date.now() + 2 * HOUR
      await provider.create(key, newSession([], { user: 'ivy', expiresAt: late }))
      await provider.update(key, patch({ owned: true }))
      t.equal((await raw.index('ivy')).get(key), late, 'a racing write with an earlier deadline may have run its script first')
    })

    await t.test('a move whose delete of the old record fails leaves no new record', async (t) => {
      const proxy = await startProxy(t, REDIS_URL, 6379)
      const provider = open(t, { sharded: true, url: proxy.url(REDIS_URL) })
      const raw = new Raw(client(t), provider.prefix)
      const [old, moved] = [newKey(), newKey()]
      await provider.create(old, newSession([], { user: 'jo' }))
      proxy.cutOn = raw.hashKey(old)
      await t.rejects(provider.create(moved, newSession([], { user: 'jo' }), old))
      proxy.cutOn = null
      t.equal(await raw.exists(moved), false, 'no record that no cookie names')
      t.equal(await raw.exists(old), true, 'the session stays where it was')
      t.strictSame((await provider.listByUser('jo', [])).map((record) => record.key), [old])
    })

    await t.test('a create whose index write fails leaves no record', async (t) => {
      const proxy = await startProxy(t, REDIS_URL, 6379)
      const provider = open(t, { sharded: true, url: proxy.url(REDIS_URL) })
      const raw = new Raw(client(t), provider.prefix)
      const key = newKey()
      proxy.cutOn = raw.indexKey('kim')
      await t.rejects(provider.create(key, newSession([], { user: 'kim' })))
      proxy.cutOn = null
      t.equal(await raw.exists(key), false)
    })
  })

  t.test('an injected client with keyPrefix and db is used as it is', async (t) => {
    const injected = client(t, REDIS_URL, { keyPrefix: 'kp:', db: 3 })
    const provider = open(t, { client: injected })
    const raw = new Raw(client(t, REDIS_URL, { db: 3 }), `kp:${provider.prefix}`)
    await recordScenario(t, provider, raw)
    await userScenario(t, provider, raw)
    await recordScenario(t, hintingUnowned(provider), raw)
    await userScenario(t, hintingUnowned(provider), raw)

    const key = newKey()
    await provider.create(key, newSession([], { user: 'carol' }))
    const db0 = client(t)
    t.equal(await db0.exists(raw.hashKey(key), `${provider.prefix}{${key}}`, raw.indexKey('carol')), 0, 'nothing in db 0')
    t.equal(await raw.exists(key), true, 'the record is in db 3 under the keyPrefix')
    t.equal(provider.client, injected, 'the very client handed in, no connection of its own')
  })

  t.test('a client with RESP3 maps, RESP2, or string numbers', async (t) => {
    const variants: Array<[string, RedisOptions]> = [
      ['replyMapping resp3', { protocol: 3, replyMapping: 'resp3' }],
      ['protocol 2', { protocol: 2 }],
      ['stringNumbers', { stringNumbers: true }]
    ]
    for (const [name, options] of variants) {
      await t.test(name, async (t) => {
        const provider = open(t, { client: client(t, REDIS_URL, options) })
        const raw = new Raw(client(t), provider.prefix)
        await recordScenario(t, provider, raw)
        await userScenario(t, provider, raw)
        await recordScenario(t, hintingUnowned(provider), raw)
      })
    }
  })

  t.test('scripts survive SCRIPT FLUSH (EVALSHA falls back to EVAL)', async (t) => {
    const provider = open(t)
    const admin = client(t)
    const flush = (): Promise<unknown> => admin.script('FLUSH')
    const [a, b, c] = [newKey(), newKey(), newKey()]
    await flush()
    t.equal(await provider.create(a, newSession([], { user: 'dave' })), true)
    await flush()
    t.equal(await provider.update(a, patch({ set: new Map([['x', '1']]) })), true)
    const visitor = newKey()
    await flush()
    t.equal(await provider.create(visitor, newSession()), true, 'a first visit')
    await flush()
    t.equal(await provider.update(visitor, patch({ set: new Map([['x', '1']]), owned: false })), true, 'an unowned update')
    t.strictSame((await provider.get(visitor))?.data, new Map([['n', '1'], ['x', '1']]))
    await flush()
    t.equal(await provider.create(b, newSession([], { user: 'dave' }), a), true)
    await flush()
    t.equal(await provider.create(c, newSession([], { user: 'dave' })), true)
    await flush()
    t.equal(await provider.destroyByUser('dave', c), 1)
    await flush()
    t.equal(await provider.destroy(c), true)
    t.strictSame(await provider.listByUser('dave', []), [])
  })

  t.test('an injected client stays open; the provider\'s own is closed', async (t) => {
    const injected = client(t)
    const borrowed = open(t, { client: injected })
    await borrowed.get(newKey())
    borrowed.close()
    borrowed.close()
    t.equal(injected.status, 'ready')
    t.equal(await injected.ping(), 'PONG')

    const own = createRedisProvider({ url: REDIS_URL })
    t.equal(await own.get(newKey()), null)
    t.equal(own.client.status, 'ready')
    own.close()
    own.close()
    await t.rejects(own.get(newKey()), /Connection is closed/)
    for (let i = 0; i < 100 && own.client.status !== 'end'; i++) await sleep(10)
    t.equal(own.client.status, 'end', 'its connection ends')
  })
})

/** Calls `fn` until it resolves, at most `ms` long. */
async function eventually<T> (fn: () => Promise<T>, ms: number): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    try {
      return await fn()
    } catch (error) {
      if (Date.now() > deadline) throw error
      await sleep(100)
    }
  }
}

/** How long `promise` takes to reject (it must). */
async function timeToFail (t: Test, promise: Promise<unknown>): Promise<number> {
  const started = Date.now()
  await t.rejects(promise)
  return Date.now() - started
}

t.test('on a private redis-server', async (t) => {
  t.test('each call is one command: get one HGETALL, a write one EVALSHA', async (t) => {
    if (!requireRedisServer(t)) return
    const server = await startRedisServer(t)
    const provider = open(t, { url: server.url })
    const admin = client(t, server.url)
    const monitor = await admin.monitor()
    t.teardown(() => monitor.disconnect())
    const seen: string[][] = []
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      // MONITOR lines arrive late: the admin's INFO from just before a
      // measurement may show up after it began
      if (source !== 'lua' && args[0].toLowerCase() !== 'info') seen.push(args)
    })

    const stats = async (): Promise<Map<string, number>> => {
      const calls = new Map<string, number>()
      for (const match of (await admin.info('commandstats')).matchAll(/^cmdstat_(\S+?):calls=(\d+)/gm)) {
        calls.set(match[1], Number(match[2]))
      }
      return calls
    }

    /** The commands `fn` sends (MONITOR) and the commandstats it adds, the admin's own INFO and ECHO aside. */
    const measure = async (fn: () => Promise<unknown>): Promise<{ sent: string[], counted: Map<string, number> }> => {
      const before = await stats()
      seen.length = 0
      await fn()
      const marker = randomBytes(4).toString('hex')
      await admin.echo(marker)
      for (let i = 0; i < 50 && !seen.some((args) => args[1] === marker); i++) await sleep(20)
      const sent = seen.slice(0, seen.findIndex((args) => args[1] === marker)).map((args) => args[0].toLowerCase())
      const after = await stats()
      const counted = new Map<string, number>()
      for (const [name, calls] of after) {
        const added = calls - (before.get(name) ?? 0)
        if (added > 0 && name !== 'info' && name !== 'echo') counted.set(name, added)
      }
      return { sent, counted }
    }

    const [a, b, c] = [newKey(), newKey(), newKey()]
    // the first script call on a connection sends its source (EVAL); measure after that
    await provider.create(a, newSession([], { user: 'erin' }))
    await provider.create(newKey(), newSession())
    await provider.update(a, patch())
    await provider.update(a, patch({ owned: false }))
    await provider.destroy(newKey())
    await provider.destroyByUser('nobody')

    const get = await measure(() => provider.get(a))
    t.strictSame(get.sent, ['hgetall'], 'get sends one command')
    t.strictSame(get.counted, new Map([['hgetall', 1]]), 'and Redis runs exactly that')

    for (const [name, fn] of [
      ['create, first visit', () => provider.create(newKey(), newSession([['k', '1']]))],
      ['create', () => provider.create(b, newSession([['k', '1']], { user: 'erin' }))],
      ['create replacing', () => provider.create(c, newSession([], { user: 'erin' }), b)],
      ['update', () => provider.update(a, patch({ set: new Map([['k', '2']]), delete: ['n'], user: 'frank' }))],
      ['touch', () => provider.update(a, patch())],
      ['destroy', () => provider.destroy(a)],
      ['destroyByUser', () => provider.destroyByUser('erin')]
    ] as Array<[string, () => Promise<unknown>]>) {
      const { sent, counted } = await measure(fn)
      t.strictSame(sent, ['evalsha'], `${name} sends one EVALSHA`)
      t.equal(counted.get('evalsha'), 1, `${name}: Redis ran one script`)
      t.notOk(counted.has('eval'), `${name}: no fallback to EVAL`)
      t.comment(`${name}: script ran ${[...counted].filter(([command]) => command !== 'evalsha').map(([command, n]) => `${command}×${n}`).join(' ')}`)
    }

    const unowned = newKey()
    await provider.create(unowned, newSession([['n', '1'], ['m', '2']]))
    // the lean script runs one HSET; the general one a second for the times
    const lean = await measure(() => provider.update(unowned, patch({ set: new Map([['n', '2']]), delete: ['m'], owned: false })))
    t.strictSame(lean.sent, ['evalsha'], 'an update hinted unowned is one EVALSHA')
    t.strictSame(lean.counted, new Map([['evalsha', 1], ['hmget', 1], ['hset', 1], ['hdel', 1], ['pexpireat', 1]]), 'of the lean script')
    t.strictSame((await provider.get(unowned))?.data, new Map([['n', '2']]))
    const owned = newKey()
    await provider.create(owned, newSession([], { user: 'ike' }))
    const owner = await measure(() => provider.update(owned, patch({ set: new Map([['n', '2']]), owned: false })))
    t.strictSame(owner.sent, ['evalsha', 'evalsha'], 'a wrong hint: the lean script refuses, the general one writes')
    t.equal(owner.counted.get('zadd'), 1, 'and keeps the index')

    // the plugin's hint: an unowned session gets the lean script, an owned one the general script
    const app = await build(t, { provider: 'redis', providerOptions: { url: server.url } })
    const visitor = sessionCookie(await app.inject({ method: 'POST', url: '/set/n', payload: '1', headers: { 'content-type': 'application/json' } })) as string
    const visit = await measure(() => app.inject({ method: 'POST', url: '/set/n', payload: '2', headers: { 'content-type': 'application/json', ...cookieHeader(visitor) } }))
    t.strictSame(visit.sent, ['hgetall', 'evalsha'], 'a visitor\'s write')
    t.equal(visit.counted.get('hset'), 1, 'by the lean script')
    const user = sessionCookie(await app.inject({ method: 'POST', url: '/login', payload: { user: 'hal' }, headers: cookieHeader(visitor) })) as string
    const login = await measure(() => app.inject({ method: 'POST', url: '/set/n', payload: '3', headers: { 'content-type': 'application/json', ...cookieHeader(user) } }))
    t.strictSame(login.sent, ['hgetall', 'evalsha'], 'a logged-in user\'s write')
    t.equal(login.counted.get('zadd'), 1, 'by the general script, which keeps the index')
    t.same((await app.inject({ url: '/get/n', headers: cookieHeader(user) })).json(), { value: 3 })

    await provider.create(a, newSession([], { user: 'gina' }))
    await provider.create(b, newSession([], { user: 'gina' }))
    const list = await measure(() => provider.listByUser('gina', ['n']))
    t.strictSame(list.sent.sort(), ['hmget', 'hmget', 'zrange', 'zremrangebyscore'], 'listByUser: trim and read the index, one HMGET per session, two round trips')
  })

  t.test('an outage fails calls fast and the same provider recovers', async (t) => {
    if (!requireRedisServer(t)) return
    const server = await startRedisServer(t)
    const provider = open(t, { url: server.url })
    const key = newKey()
    t.equal(await provider.create(key, newSession()), true)

    await server.stop()
    const times = [
      await timeToFail(t, provider.get(key)),
      await timeToFail(t, provider.update(key, patch())),
      await timeToFail(t, provider.create(newKey(), newSession())),
      await timeToFail(t, provider.destroy(key)),
      await timeToFail(t, provider.listByUser('x', []))
    ]
    // the reconnection delay grows to its cap of one second: keep failing past it
    for (let i = 0; i < 8; i++) times.push(await timeToFail(t, provider.get(key)))
    t.comment(`time to fail while down: ${times.join(', ')} ms`)
    for (const ms of times) t.ok(ms < FAIL_FAST_MS, `failed in ${ms} ms`)

    await server.start()
    t.equal(await eventually(() => provider.get(key), 5000), null, 'answers again (the data died with the server)')
    t.equal(await provider.create(key, newSession([], { user: 'hal' })), true, 'scripts load again on the new connection')
    t.equal(await provider.update(key, patch()), true)
    t.equal(await provider.destroyByUser('hal'), 1)
  })
})

t.test('the app boots while Redis is down, and it connects once Redis is up', async (t) => {
  const port = await freePort()
  const provider = open(t, { url: `redis://127.0.0.1:${port}` })
  const ms = await timeToFail(t, provider.get(newKey()))
  t.comment(`time to fail with nothing listening: ${ms} ms`)
  t.ok(ms < FAIL_FAST_MS, `failed in ${ms} ms`)
  const again = await timeToFail(t, provider.get(newKey()))
  t.ok(again < FAIL_FAST_MS, `failed again in ${again} ms while it keeps reconnecting`)
  if (!requireRedisServer(t)) return
  await startRedisServer(t, port)
  t.equal(await eventually(() => provider.get(newKey()), 5000), null)
  t.equal(await provider.create(newKey(), newSession()), true)
})

t.test('a server that accepts but never answers fails calls by commandTimeout', async (t) => {
  const sockets = new Set<net.Socket>()
  const silent = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.resume()
  })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    silent.close()
  })
  const { port } = silent.address() as net.AddressInfo
  const provider = open(t, { url: `redis://127.0.0.1:${port}` })
  const started = Date.now()
  await t.rejects(provider.get(newKey()), /timed out/)
  const ms = Date.now() - started
  t.comment(`time to fail against a silent server: ${ms} ms`)
  t.ok(ms < FAIL_FAST_MS, `failed in ${ms} ms`)
})

t.test('on a local Redis Cluster', async (t) => {
  if (!requireRedisServer(t)) return
  let nodes: Array<{ host: string, port: number }>
  try {
    ({ nodes } = await startRedisCluster(t))
  } catch (error) {
    t.comment(`SKIPPED: could not start a local cluster: ${(error as Error).message}`)
    return
  }
  const connect = (options: ClusterOptions = {}): Cluster => {
    const cluster = new Cluster(nodes, options)
    t.teardown(() => cluster.disconnect())
    return cluster
  }
  const admin = connect()

  await t.test('sharded by default: scripts touch one slot, the index follows', async (t) => {
    const provider = open(t, { client: connect() })
    t.equal(provider.sharded, true)
    const raw = new Raw(admin, provider.prefix)
    await recordScenario(t, provider, raw)
    await userScenario(t, provider, raw)
    await recordScenario(t, hintingUnowned(provider), raw)
    await userScenario(t, hintingUnowned(provider), raw)
    const slots = new Set(await Promise.all([newKey(), newKey(), newKey(), newKey()].map((key) => admin.cluster('KEYSLOT', raw.hashKey(key)))))
    t.ok(slots.size > 1, 'sessions are spread over slots')
  })

  await t.test('unsharded on a Cluster fails across slots, which is why sharded is the default', async (t) => {
    const provider = open(t, { client: connect(), sharded: false })
    const raw = new Raw(admin, provider.prefix)
    // the fixture splits the slots evenly, so a slot tells its node
    const node = async (redisKey: string): Promise<number> => Math.floor(await admin.cluster('KEYSLOT', redisKey) / Math.ceil(16384 / nodes.length))
    const key = newKey()
    let user = ''
    for (let i = 0; i < 100 && user === ''; i++) {
      if (await node(raw.indexKey(`ivy${i}`)) !== await node(raw.hashKey(key))) user = `ivy${i}`
    }
    t.not(user, '', 'found a user whose index is on another node')
    await t.rejects(provider.create(key, newSession([], { user })), /non local key|CROSSSLOT|same slot/)
  })

  await t.test('unsharded is atomic again when keyPrefix puts every key in one slot', async (t) => {
    const provider = open(t, { client: connect({ keyPrefix: '{sessions}:' }), sharded: false })
    const raw = new Raw(admin, `{sessions}:${provider.prefix}`)
    await recordScenario(t, provider, raw)
    await userScenario(t, provider, raw)
  })
})

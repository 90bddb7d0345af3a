import t from 'tap'
import type { Test } from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import fc from 'fast-check'
import Fastify from 'fastify'
import sessions from '../../index.js'
import { SqliteProvider, createSqliteProvider, SQLITE_PROVIDER } from '../../providers/sqlite.js'
import type { SqliteProviderOptions } from '../../providers/sqlite.js'
import { MemoryProvider } from '../../providers/memory.js'
import { getProvider } from '../../lib/registry.js'
import { generateId, storeKey } from '../../lib/id.js'
import { testProvider } from '../../lib/testing.js'
import type { NewSession, SessionPatch, StoredSession } from '../../lib/provider.js'

const HOUR = 3_600_000
const MEBIBYTE = 1_048_576

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fastify-sessions-sqlite-'))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))

let files = 0
function newFile (): string {
  return path.join(dir, `sessions-${++files}.db`)
}

function newKey (): string {
  return storeKey(generateId())
}

type Data = Iterable<readonly [string, string]>

function session (data: Data = [['a', '1']], expiresAt = Date.now() + HOUR, user: string | null = null): NewSession {
  const now = Date.now()
  return { data: new Map(data), createdAt: now - 1000, lastSeenAt: now, expiresAt, user }
}

/** A record whose deadline has already passed: the provider stores it, and it reads as gone. */
function expired (data?: Data, user: string | null = null): NewSession {
  return session(data, Date.now() - 1000, user)
}

function patch (fields: Partial<SessionPatch> = {}): SessionPatch {
  const now = Date.now()
  return { set: null, delete: null, lastSeenAt: now, expiresAt: now + HOUR, ...fields }
}

/** A map's entries in a stable order, to compare maps whatever order their keys came in. */
function entries (map: ReadonlyMap<string, string> | undefined): Array<[string, string]> {
  return [...(map ?? [])].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

/** A provider on a fresh file, closed when `t` ends. */
function open (t: Test, options: Partial<SqliteProviderOptions> = {}): SqliteProvider {
  const provider = new SqliteProvider(options.database === undefined ? { filename: newFile(), ...options } : options)
  t.teardown(() => provider.close())
  return provider
}

/** A connection of the test's own, closed when `t` ends. */
function connect (t: Test, filename: string = newFile(), options?: Database.Options): Database.Database {
  const db = new Database(filename, options)
  t.teardown(() => db.close())
  return db
}

function rowCount (db: Database.Database, table = 'sessions'): number {
  return db.prepare(`SELECT count(*) FROM "${table}"`).pluck().get() as number
}

function rawData (db: Database.Database, key: string): string | undefined {
  return db.prepare('SELECT data FROM sessions WHERE key = ?').pluck().get(key) as string | undefined
}

testProvider(t, {
  name: 'sqlite',
  create: () => new SqliteProvider({ filename: newFile() })
})

t.test('importing the module registers it as "sqlite"', async (t) => {
  t.equal(SQLITE_PROVIDER, 'sqlite')
  t.equal(getProvider('sqlite'), createSqliteProvider, 'the registered factory')
  const filename = newFile()
  const provider = await getProvider('sqlite')({ filename, gcBatchSize: 5 })
  t.teardown(() => provider.close?.())
  t.ok(provider instanceof SqliteProvider, 'makes a SqliteProvider')
  t.equal((provider as SqliteProvider).gcBatchSize, 5, 'with the options given')
  t.ok(fs.existsSync(filename), 'on the file named')
})

t.test('defaults', async (t) => {
  const provider = open(t)
  t.equal(provider.tableName, 'sessions')
  t.equal(provider.createTable, true)
  t.equal(provider.gcBatchSize, 1000)
})

t.test('a record round-trips, with plain answers rather than promises', async (t) => {
  const provider = open(t)
  const key = newKey()
  const stored = session([['userId', '"u1"'], ['n', '42'], ['list', '[1,{"b":null}]'], ['nothing', 'null']])
  t.equal(provider.create(key, stored), true, 'create answers true')
  const read = provider.get(key) as StoredSession
  t.strictSame(entries(read.data), entries(stored.data), 'the data')
  t.equal(read.createdAt, stored.createdAt, 'createdAt')
  t.equal(read.lastSeenAt, stored.lastSeenAt, 'lastSeenAt')
  t.equal(read.expiresAt, stored.expiresAt, 'expiresAt')
  t.not(provider.get(key), read, 'each get answers a new record')
})

t.test('a miss', async (t) => {
  const provider = open(t)
  const key = newKey()
  t.equal(provider.get(key), null, 'get answers null')
  t.equal(provider.update(key, patch({ set: new Map([['a', '1']]) })), false, 'update answers false')
  t.equal(provider.update(key, patch()), false, 'a touch answers false')
  t.equal(provider.destroy(key), false, 'destroy answers false')
  t.equal(provider.get(key), null, 'and nothing was created')
})

t.test('an expired record is invisible but stays in the table until gc', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  t.equal(provider.create(key, expired()), true, 'a record past its deadline is stored')
  t.equal(provider.get(key), null, 'get answers null')
  t.equal(rowCount(db), 1, 'the row is still there')
  t.equal(provider.update(key, patch({ set: new Map([['a', '2']]) })), false, 'update answers false')
  t.equal(provider.update(key, patch()), false, 'a touch answers false')
  t.equal(rowCount(db), 1, 'get and update did not delete it')
  t.equal(provider.gc(), 1, 'gc removes it')
  t.equal(rowCount(db), 0, 'the table is empty')
})

t.test('destroy of an expired record answers false and drops the row', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  provider.create(key, expired())
  t.equal(provider.destroy(key), false, 'answers false')
  t.equal(rowCount(db), 0, 'the row is gone without a sweep')
})

t.test('create never overwrites a live record and replaces an expired one', async (t) => {
  const provider = open(t)
  const live = newKey()
  provider.create(live, session([['who', '"first"']]))
  t.equal(provider.create(live, session([['who', '"second"']])), false, 'over a live record: false')
  t.strictSame(entries(provider.get(live)?.data), [['who', '"first"']], 'the live record is intact')

  const stale = newKey()
  provider.create(stale, expired([['who', '"old"']], 'alice'))
  const fresh = session([['who', '"new"']], Date.now() + HOUR, 'bob')
  t.equal(provider.create(stale, fresh), true, 'over an expired record: true')
  const read = provider.get(stale)
  t.strictSame(entries(read?.data), [['who', '"new"']], 'the new data')
  t.equal(read?.createdAt, fresh.createdAt, 'the new createdAt')
  t.equal(read?.expiresAt, fresh.expiresAt, 'the new deadline')
  t.strictSame(provider.listByUser('alice', []), [], 'the old owner is gone')
  t.strictSame(provider.listByUser('bob', []).map((r) => r.key), [stale], 'the new owner is indexed')
})

t.test('an update after destroy does not resurrect the record', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  provider.create(key, session())
  t.equal(provider.destroy(key), true, 'destroy answers true')
  t.equal(provider.update(key, patch({ set: new Map([['late', '1']]) })), false, 'a late patch answers false')
  t.equal(provider.update(key, patch({ user: 'u' })), false, 'a late touch answers false')
  t.equal(provider.get(key), null, 'still gone')
  t.equal(rowCount(db), 0, 'no row')
})

t.test('a patch changes only the keys it names and keeps the text of the rest', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  // Texts the plugin would not write, to see that untouched values are not rewritten
  provider.create(key, session([['keep', '{"n":1.50,"s":"\\u00e9"}'], ['change', '1'], ['drop', 'true'], ['tail', '[1e2,-0]']]))
  const change = patch({
    set: new Map([['change', '{"deep":{"gone":null},"n":null}'], ['add', 'null'], ['list', '[null]']]),
    delete: ['drop', 'never-there']
  })
  t.equal(provider.update(key, change), true, 'update answers true')
  t.equal(rawData(db, key), '{"keep":{"n":1.50,"s":"\\u00e9"},"change":{"deep":{"gone":null},"n":null},"tail":[1e2,-0],"add":null,"list":[null]}',
    'untouched values keep their text and place, nulls are stored rather than read as deletes')
  const read = provider.get(key)
  t.strictSame(entries(read?.data), entries(new Map([
    ['keep', '{"n":1.5,"s":"é"}'],
    ['change', '{"deep":{"gone":null},"n":null}'],
    ['tail', '[100,0]'],
    ['add', 'null'],
    ['list', '[null]']
  ])), 'get answers the same values')
  t.equal(read?.lastSeenAt, change.lastSeenAt, 'lastSeenAt is the patch\'s')
  t.equal(read?.expiresAt, change.expiresAt, 'expiresAt is the patch\'s')
})

t.test('a patch with only deletes, or with empty sets, works as well', async (t) => {
  const provider = open(t)
  const key = newKey()
  provider.create(key, session([['a', '1'], ['b', '2']]))
  t.equal(provider.update(key, patch({ delete: ['a'] })), true, 'deletes only')
  t.strictSame(entries(provider.get(key)?.data), [['b', '2']])
  t.equal(provider.update(key, patch({ set: new Map(), delete: [] })), true, 'empty set and delete are a touch')
  t.strictSame(entries(provider.get(key)?.data), [['b', '2']])
})

t.test('a touch moves only the deadlines, and the owner when it names one', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  const created = session([['a', '1.50']], Date.now() + HOUR, 'alice')
  provider.create(key, created)
  const before = rawData(db, key)
  const touch = patch({ lastSeenAt: created.lastSeenAt + 10, expiresAt: created.expiresAt + 10 })
  t.equal(provider.update(key, touch), true, 'a touch answers true')
  t.equal(rawData(db, key), before, 'the data is not rewritten')
  const read = provider.get(key)
  t.equal(read?.lastSeenAt, touch.lastSeenAt, 'lastSeenAt')
  t.equal(read?.expiresAt, touch.expiresAt, 'expiresAt')
  t.equal(read?.createdAt, created.createdAt, 'createdAt stays')
  t.strictSame(provider.listByUser('alice', []).map((r) => r.key), [key], 'the owner stays')
  t.equal(provider.update(key, patch({ user: 'bob' })), true, 'a touch naming an owner')
  t.strictSame(provider.listByUser('alice', []), [], 'leaves the old owner')
  t.strictSame(provider.listByUser('bob', []).map((r) => r.key), [key], 'for the new one')
  t.equal(provider.update(key, patch({ set: new Map([['b', '2']]), user: null })), true, 'a patch removing the owner')
  t.strictSame(provider.listByUser('bob', []), [], 'leaves the index')
  t.equal(db.prepare('SELECT user_id FROM sessions WHERE key = ?').pluck().get(key), null, 'user_id is NULL')
})

const AWKWARD_KEYS = [
  'plain', 'a"b', 'a\\"b', '"', '\\', 'a.b', '.', '$', '$.a', '$."a"', '$[0]', '[0]', 'a[0]', ']', '[', 'a]b[',
  '', ' ', 'tab\there', 'new\nline', '\u0001', 'bell\u0007', 'lone \ud800', 'lone \udfff end', '\u2028',
  'é', 'e\u0301', 'ключ', '键', '🔑', '👨‍👩‍👧', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty',
  '1', '0', '-1', '01', 'null', 'true', '*', "'", '\'; DROP TABLE sessions; --', '%', '_', '\\u0041', 'A'
]

t.test('keys with quotes, dots, $, brackets, unicode and object internals are ordinary keys', async (t) => {
  const provider = open(t)
  const key = newKey()
  const expected = new Map(AWKWARD_KEYS.map((name, i) => [name, JSON.stringify({ name, i })]))
  t.equal(provider.create(key, session(expected)), true, 'create answers true')
  t.strictSame(entries(provider.get(key)?.data), entries(expected), 'all keys read back')

  const set = new Map(AWKWARD_KEYS.filter((_, i) => i % 2 === 0).map((name) => [name, JSON.stringify(['changed', name])]))
  const removed = AWKWARD_KEYS.filter((_, i) => i % 4 === 1)
  t.equal(provider.update(key, patch({ set, delete: removed })), true, 'a patch of every other key answers true')
  for (const [name, json] of set) expected.set(name, json)
  for (const name of removed) expected.delete(name)
  t.strictSame(entries(provider.get(key)?.data), entries(expected), 'each key was set or deleted as named, no other')

  const info = provider.listByUser('nobody', AWKWARD_KEYS)
  t.strictSame(info, [], 'nobody owns it')
  provider.update(key, patch({ user: 'owner' }))
  const [record] = provider.listByUser('owner', AWKWARD_KEYS)
  t.strictSame(entries(record.info), entries(expected), 'listByUser finds every key it holds as info')

  t.equal(Object.hasOwn(Object.prototype, 'name'), false, 'Object.prototype is not polluted')
  t.equal(({} as Record<string, unknown>).i, undefined, 'plain objects are not polluted')
  t.equal(Object.prototype.toString, {}.toString, 'Object.prototype.toString is intact')
})

t.test('a value nested deeper than SQLite\'s JSON functions parse is refused, so the session stays changeable', async (t) => {
  const provider = open(t)
  // brackets and escaped quotes inside strings do not count as nesting
  const nested = (levels: number): string => '["[{\\"",'.repeat(levels) + '1' + ']'.repeat(levels)
  const key = newKey()
  t.equal(provider.create(key, session([['deep', nested(999)]])), true, '999 levels are stored')
  t.equal(provider.update(key, patch({ set: new Map([['other', nested(999)]]) })), true, 'and changed alongside')
  t.equal(provider.update(key, patch({ set: new Map([['n', '2']]) })), true)
  t.equal(provider.get(key)?.data.get('other'), nested(999))
  t.throws(() => provider.create(newKey(), session([['deep', nested(1000)]])), { code: 'FST_SESSION_UNSUPPORTED' }, '1000 levels are refused by create')
  t.throws(() => provider.update(key, patch({ set: new Map([['deep', nested(1000)]]) })), { code: 'FST_SESSION_UNSUPPORTED' }, 'and by update')
  t.equal(provider.update(key, patch({ set: new Map([['n', '3']]) })), true, 'the session still takes changes')
  t.equal(provider.get(key)?.data.get('n'), '3')
})

t.test('keys holding NUL are refused rather than confused with others', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const key = newKey()
  t.throws(() => provider.create(key, session([['a', '1'], ['a\u0000', '2']])), { code: 'FST_SESSION_UNSUPPORTED' }, 'by create')
  t.equal(rowCount(db), 0, 'which stores nothing')
  provider.create(key, session([['a', '1']]))
  t.throws(() => provider.create(newKey(), session([['\u0000', '1']]), key), { code: 'FST_SESSION_UNSUPPORTED' }, 'by a replacing create')
  t.not(provider.get(key), null, 'which leaves the old record')
  t.throws(() => provider.update(key, patch({ set: new Map([['b', '2'], ['a\u0000', '2']]) })), { code: 'FST_SESSION_UNSUPPORTED' }, 'by a patch setting one')
  t.strictSame(entries(provider.get(key)?.data), [['a', '1']], 'which changes nothing')
  t.equal(provider.update(key, patch({ delete: ['a\u0000', '\u0000'] })), true, 'deleting one is a touch, since none is stored')
  t.strictSame(entries(provider.get(key)?.data), [['a', '1']], 'and leaves "a" alone')
})

t.test('through the plugin a NUL key answers 500 FST_SESSION_UNSUPPORTED, not a store outage, whatever onStoreError says', async (t) => {
  for (const onStoreError of ['fail', 'continue'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(sessions, { secret: 'a secret of at least thirty-two characters', provider: 'sqlite', providerOptions: { filename: ':memory:' }, onStoreError })
    app.post('/nul', async (request) => {
      request.session.set('a\u0000b', 1)
      return {}
    })
    const res = await app.inject({ method: 'POST', url: '/nul' })
    t.equal(res.statusCode, 500, onStoreError)
    t.equal(res.json().code, 'FST_SESSION_UNSUPPORTED', onStoreError)
  }
})

t.test('random keys and values behave as in the memory provider', async (t) => {
  const provider = open(t)
  const oracle = new MemoryProvider()
  const name = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 6 }).map((name) => name.replaceAll('\u0000', '')),
    // NUL is left out: such keys are refused, see below
    fc.string({ unit: fc.integer({ min: 1, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength: 4 }),
    fc.constantFrom('__proto__', 'a.b', '$', '"', '[0]', '')
  )
  const json = fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value))
  const change = fc.record({
    set: fc.option(fc.array(fc.tuple(name, json), { maxLength: 5 }).map((pairs) => new Map(pairs))),
    delete: fc.option(fc.array(name, { maxLength: 4 }))
  })
  const property = fc.property(fc.array(fc.tuple(name, json), { maxLength: 8 }), fc.array(change, { maxLength: 4 }), (initial, changes) => {
    const key = newKey()
    provider.create(key, session(initial))
    oracle.create(key, session(initial))
    for (const fields of changes) {
      const change = patch(fields)
      provider.update(key, change)
      oracle.update(key, change)
    }
    const got = entries(provider.get(key)?.data)
    const want = entries(oracle.get(key)?.data)
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
  })
  t.doesNotThrow(() => fc.assert(property, { numRuns: 300, seed: 20250801 }), '300 random sessions and patches')
})

t.test('a value of over a mebibyte round-trips through create and update', async (t) => {
  const provider = open(t)
  const key = newKey()
  const big = JSON.stringify({ blob: 'xé€😀'.repeat(Math.ceil(1.5 * MEBIBYTE / 10)) })
  t.ok(Buffer.byteLength(big) > MEBIBYTE, `${Buffer.byteLength(big)} bytes`)
  provider.create(key, session([['first', big], ['small', '1']]))
  t.ok(provider.get(key)?.data.get('first') === big, 'created')
  t.equal(provider.update(key, patch({ set: new Map([['second', big]]), delete: ['small'] })), true, 'updated')
  const data = provider.get(key)?.data
  t.ok(data?.get('first') === big && data?.get('second') === big, 'both read back')
  t.equal(data?.size, 2, 'and nothing else')
})

t.test('create with replaces', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)

  t.test('moves a live record to the new key in one step', async (t) => {
    const [oldKey, key] = [newKey(), newKey()]
    provider.create(oldKey, session([['who', '"old"']], Date.now() + HOUR, 'alice'))
    t.equal(provider.create(key, session([['who', '"moved"']], Date.now() + HOUR, 'alice'), oldKey), true, 'answers true')
    t.equal(provider.get(oldKey), null, 'the old key is gone')
    t.strictSame(entries(provider.get(key)?.data), [['who', '"moved"']], 'the new key holds the new record')
    t.strictSame(provider.listByUser('alice', []).map((r) => r.key), [key], 'the user index follows')
    t.equal(db.inTransaction, false, 'no transaction is left open')
  })

  t.test('creates nothing when the old record is missing', async (t) => {
    const key = newKey()
    t.equal(provider.create(key, session(), newKey()), false, 'answers false')
    t.equal(provider.get(key), null, 'nothing stored')
  })

  t.test('creates nothing when the old record has expired, and leaves it for gc', async (t) => {
    const [oldKey, key] = [newKey(), newKey()]
    provider.create(oldKey, expired())
    t.equal(provider.create(key, session(), oldKey), false, 'answers false')
    t.equal(provider.get(key), null, 'nothing stored')
    t.equal(db.prepare('SELECT count(*) FROM sessions WHERE key = ?').pluck().get(oldKey), 1, 'the expired row is untouched')
  })

  t.test('changes nothing when the new key is taken', async (t) => {
    const [oldKey, key] = [newKey(), newKey()]
    provider.create(oldKey, session([['who', '"old"']]))
    provider.create(key, session([['who', '"taken"']]))
    t.equal(provider.create(key, session([['who', '"moved"']]), oldKey), false, 'answers false')
    t.strictSame(entries(provider.get(oldKey)?.data), [['who', '"old"']], 'the old record stays')
    t.strictSame(entries(provider.get(key)?.data), [['who', '"taken"']], 'the taken key keeps its record')
  })

  t.test('onto an expired record under the new key', async (t) => {
    const [oldKey, key] = [newKey(), newKey()]
    provider.create(oldKey, session())
    provider.create(key, expired([['who', '"stale"']]))
    t.equal(provider.create(key, session([['who', '"moved"']]), oldKey), true, 'answers true')
    t.strictSame(entries(provider.get(key)?.data), [['who', '"moved"']], 'the new record replaced the expired one')
    t.equal(provider.get(oldKey), null, 'the old key is gone')
  })

  t.test('inside a transaction of the application, as a savepoint', async (t) => {
    const shared = connect(t)
    const inner = open(t, { database: shared })
    const [oldKey, key] = [newKey(), newKey()]
    inner.create(oldKey, session())
    const outer = shared.transaction(() => inner.create(key, session(), oldKey))
    t.equal(outer(), true, 'answers true')
    t.not(inner.get(key), null, 'the new record is committed with the outer transaction')
  })
})

t.test('the user index', async (t) => {
  const filename = newFile()
  const provider = open(t, { filename })
  const db = connect(t, filename)
  const [a, b, c, stale, other] = [newKey(), newKey(), newKey(), newKey(), newKey()]
  const info: Data = [['device', '"phone"'], ['ip', '"10.0.0.1"'], ['secret', '"s"'], ['__proto__', '{"x":1}']]
  provider.create(a, session(info, Date.now() + HOUR, 'alice'))
  provider.create(b, session([['device', '"laptop"']], Date.now() + 2 * HOUR, 'alice'))
  provider.create(c, session([], Date.now() + 3 * HOUR, 'alice'))
  provider.create(stale, expired(info, 'alice'))
  provider.create(other, session(info, Date.now() + HOUR, 'bob'))

  const list = provider.listByUser('alice', ['device', 'ip', '__proto__', 'missing', 'constructor'])
  t.strictSame(list.map((r) => r.key).sort(), [a, b, c].sort(), 'the live sessions of the user, not the expired one')
  const byKey = new Map(list.map((r) => [r.key, r]))
  t.strictSame(entries(byKey.get(a)?.info), entries(new Map([['device', '"phone"'], ['ip', '"10.0.0.1"'], ['__proto__', '{"x":1}']])), 'the requested keys it holds')
  t.strictSame(entries(byKey.get(b)?.info), [['device', '"laptop"']], 'only those present')
  t.strictSame(entries(byKey.get(c)?.info), [], 'none for a session without them')
  const read = provider.get(a) as StoredSession
  t.match(byKey.get(a), { createdAt: read.createdAt, lastSeenAt: read.lastSeenAt, expiresAt: read.expiresAt }, 'with its times')
  t.strictSame(provider.listByUser('alice', []).map((r) => r.info.size), [0, 0, 0], 'no info keys, no info')
  t.strictSame(provider.listByUser('carol', ['device']), [], 'an unknown user has none')

  t.equal(provider.destroyByUser('alice', a), 2, 'destroyByUser counts the live sessions it ended')
  t.not(provider.get(a), null, 'exceptKey stays')
  t.equal(provider.get(b), null, 'b ended')
  t.equal(provider.get(c), null, 'c ended')
  t.not(provider.get(other), null, 'another user\'s session stays')
  t.equal(db.prepare('SELECT count(*) FROM sessions WHERE key = ?').pluck().get(stale), 1, 'the expired one is left for gc')
  t.equal(provider.destroyByUser('alice'), 1, 'without exceptKey, the last one')
  t.equal(provider.destroyByUser('alice'), 0, 'then none')
  t.equal(provider.destroyByUser('carol'), 0, 'an unknown user has none')
})

/** A database of the test's own that records every statement SQLite runs on it. */
function traced (t: Test): { db: Database.Database, statements: string[] } {
  const statements: string[] = []
  const db = connect(t, newFile(), { verbose: (sql) => statements.push(String(sql)) })
  return { db, statements }
}

t.test('gc deletes in batches through the deadline index and keeps live rows', async (t) => {
  const { db, statements } = traced(t)
  const provider = open(t, { database: db, gcBatchSize: 7 })
  const live = Array.from({ length: 10 }, newKey)
  const gone = Array.from({ length: 20 }, newKey)
  // Interleaved, so that rowid order alone would not find them
  for (let i = 0; i < 30; i++) {
    if (i % 3 === 0) provider.create(live[i / 3], session())
    else provider.create(gone[i - Math.ceil(i / 3)], expired())
  }
  statements.length = 0
  t.equal(provider.gc(), 20, 'gc answers how many it removed')
  const sweeps = statements.filter((sql) => sql.startsWith('DELETE'))
  t.equal(sweeps.length, 3, 'in three statements: 7, 7 and 6')
  t.equal(rowCount(db), 10, 'the live rows stay')
  for (const key of live) t.not(provider.get(key), null, 'live')
  t.equal(provider.gc(), 0, 'a second gc finds nothing')

  const plan = db.prepare(`EXPLAIN QUERY PLAN ${sweeps[0]}`).all() as Array<{ detail: string }>
  t.ok(plan.some((step) => step.detail.includes('INDEX sessions_expires_at_idx')),
    `the sweep walks the deadline index: ${plan.map((step) => step.detail).join('; ')}`)
  t.notOk(plan.some((step) => /^SCAN sessions\b/.test(step.detail)), 'and never scans the table')
})

t.test('gc with exactly a batch expired, and with nothing expired', async (t) => {
  const provider = open(t, { gcBatchSize: 3 })
  t.equal(provider.gc(), 0, 'an empty table')
  for (let i = 0; i < 3; i++) provider.create(newKey(), expired())
  t.equal(provider.gc(), 3, 'one full batch, then an empty one')
})

t.test('listByUser and destroyByUser go through the user index', async (t) => {
  const { db, statements } = traced(t)
  const provider = open(t, { database: db })
  const key = newKey()
  provider.create(key, session([['device', '"phone"']], Date.now() + HOUR, 'alice'))
  statements.length = 0
  provider.listByUser('alice', ['device'])
  provider.destroyByUser('alice', key)
  t.equal(statements.length, 2, 'one statement each')
  for (const sql of statements.splice(0)) {
    const plan = db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as Array<{ detail: string }>
    t.ok(plan.some((step) => step.detail.includes('INDEX sessions_user_id_idx')), `${sql.slice(0, 30)}…: ${plan.map((step) => step.detail).join('; ')}`)
  }
})

t.test('each call runs one statement, prepared once', async (t) => {
  const { db, statements } = traced(t)
  const provider = open(t, { database: db })
  const key = newKey()
  statements.length = 0
  provider.create(key, session())
  provider.get(key)
  provider.update(key, patch({ set: new Map([['b', '2']]) }))
  provider.update(key, patch())
  provider.destroy(key)
  t.equal(statements.length, 5, statements.join('\n'))
  // Preparing a statement runs nothing, so the hot path is seen from the prepare side instead
  const prepare = db.prepare
  let prepared = 0
  db.prepare = function countingPrepare (this: Database.Database, source: string) {
    prepared++
    return prepare.call(this, source)
  } as typeof db.prepare
  t.teardown(() => { db.prepare = prepare })
  provider.create(key, session())
  provider.get(key)
  provider.update(key, patch({ set: new Map([['b', '2']]), delete: ['a'] }))
  provider.create(newKey(), session(), key)
  provider.listByUser('u', ['a'])
  provider.destroyByUser('u')
  provider.gc()
  t.equal(prepared, 0, 'no statement is prepared after the constructor')
})

t.test('tableName', async (t) => {
  for (const tableName of ['bad-name', 'main.sessions', '1sessions', 'a'.repeat(64), '', 'sessions;', 'sessions"', 'séssions', 42, null, 'sqlite_sessions', 'SQLite_Sessions']) {
    t.throws(() => new SqliteProvider({ filename: ':memory:', tableName: tableName as string }), { code: 'FST_SESSION_INVALID_TABLE' }, `rejects ${JSON.stringify(tableName)}`)
  }

  const db = connect(t)
  const provider = open(t, { database: db, tableName: 'My_Sessions_2' })
  t.equal(provider.tableName, 'My_Sessions_2')
  const objects = db.prepare("SELECT type, name FROM sqlite_schema WHERE tbl_name = 'My_Sessions_2' ORDER BY name").all()
  t.strictSame(objects, [
    { type: 'table', name: 'My_Sessions_2' },
    { type: 'index', name: 'My_Sessions_2_expires_at_idx' },
    { type: 'index', name: 'My_Sessions_2_user_id_idx' },
    { type: 'index', name: 'sqlite_autoindex_My_Sessions_2_1' }
  ].sort((a, b) => (a.name < b.name ? -1 : 1)), 'the table and its indexes, named after it')
  const key = newKey()
  provider.create(key, session())
  t.not(provider.get(key), null, 'works in it')
  t.equal(rowCount(db, 'My_Sessions_2'), 1, 'the row is there')
  t.equal(open(t, { database: db, tableName: 'a'.repeat(63) }).tableName, 'a'.repeat(63), '63 characters are fine')
})

t.test('the schema', async (t) => {
  const db = connect(t)
  open(t, { database: db })
  const columns = db.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info('sessions')").all()
  t.strictSame(columns, [
    { name: 'key', type: 'TEXT', notnull: 1, pk: 1 },
    { name: 'data', type: 'TEXT', notnull: 1, pk: 0 },
    { name: 'user_id', type: 'TEXT', notnull: 0, pk: 0 },
    { name: 'created_at', type: 'INTEGER', notnull: 1, pk: 0 },
    { name: 'last_seen_at', type: 'INTEGER', notnull: 1, pk: 0 },
    { name: 'expires_at', type: 'INTEGER', notnull: 1, pk: 0 }
  ])
  const key = newKey()
  const created = session([['a', '1'], ['b', '"x"']], Date.now() + HOUR, 'alice')
  open(t, { database: db }).create(key, created)
  t.strictSame(db.prepare('SELECT * FROM sessions').get(), {
    key,
    data: '{"a":1,"b":"x"}',
    user_id: 'alice',
    created_at: created.createdAt,
    last_seen_at: created.lastSeenAt,
    expires_at: created.expiresAt
  }, 'a row, its data one JSON object')
  t.equal(db.prepare("SELECT typeof(expires_at) || ' ' || (data ->> '$.b') FROM sessions").pluck().get(), 'integer x', 'deadlines are integers, data is queryable JSON')
})

t.test('createTable', async (t) => {
  t.test('is idempotent', async (t) => {
    const db = connect(t)
    const key = newKey()
    open(t, { database: db }).create(key, session())
    t.not(open(t, { database: db }).get(key), null, 'a second provider keeps the table and its rows')
  })

  t.test('false uses an existing table', async (t) => {
    const db = connect(t)
    open(t, { database: db, tableName: 'Existing' })
    const provider = open(t, { database: db, tableName: 'existing', createTable: false })
    t.equal(provider.createTable, false)
    const key = newKey()
    provider.create(key, session())
    t.not(provider.get(key), null, 'whatever the case of its name')
  })

  t.test('false with a missing table fails at creation', async (t) => {
    const db = connect(t)
    t.throws(() => new SqliteProvider({ database: db, createTable: false }), { code: 'FST_SESSION_MISSING_TABLE' }, 'on a database given')
    t.equal(db.open, true, 'which stays open')
    t.equal(db.prepare("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'sessions%'").pluck().get(), 0, 'and gets no table')
    const filename = newFile()
    t.throws(() => new SqliteProvider({ filename, createTable: false }), { code: 'FST_SESSION_MISSING_TABLE' }, 'on a file it opens')
    t.equal(connect(t, filename).prepare('SELECT count(*) FROM sqlite_schema').pluck().get(), 0, 'which gets no table either')
  })

  t.test('a table of another shape fails creation with FST_SESSION_INVALID_TABLE, and is left as it was', async (t) => {
    const filename = newFile()
    connect(t, filename).exec('CREATE TABLE sessions (id INTEGER PRIMARY KEY); INSERT INTO sessions VALUES (7)')
    for (const createTable of [false, true]) {
      t.throws(() => new SqliteProvider({ filename, createTable }), { code: 'FST_SESSION_INVALID_TABLE', message: /no such column/ }, `createTable: ${createTable}`)
    }
    t.same(connect(t, filename).prepare('SELECT id FROM sessions').pluck().all(), [7])
    t.equal(connect(t, filename).prepare("SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name LIKE 'sessions%'").pluck().get(), 0, 'no index added')
  })
})

t.test('persistence: records outlive the provider and the connection', async (t) => {
  const filename = newFile()
  const key = newKey()
  const first = new SqliteProvider({ filename })
  first.create(key, session([['kept', '"yes"']], Date.now() + HOUR, 'alice'))
  first.update(key, patch({ set: new Map([['later', '2']]) }))
  first.close()
  const second = open(t, { filename })
  t.strictSame(entries(second.get(key)?.data), [['kept', '"yes"'], ['later', '2']], 'read back by a new provider')
  t.strictSame(second.listByUser('alice', []).map((r) => r.key), [key], 'with its owner')
})

t.test('WAL mode', async (t) => {
  const filename = newFile()
  open(t, { filename })
  t.equal(connect(t, filename).pragma('journal_mode', { simple: true }), 'wal', 'is on for a file it opens')
  const mine = connect(t)
  open(t, { database: mine })
  t.equal(mine.pragma('journal_mode', { simple: true }), 'delete', 'and left as it is on a database given')
  const memory = open(t, { filename: ':memory:' })
  const key = newKey()
  memory.create(key, session())
  t.not(memory.get(key), null, ':memory: works too')
})

t.test('ownership', async (t) => {
  t.test('a database given stays open', async (t) => {
    const db = connect(t)
    const provider = new SqliteProvider({ database: db })
    const key = newKey()
    provider.create(key, session())
    provider.close()
    provider.close()
    t.equal(db.open, true, 'open after close, twice')
    t.equal(rowCount(db), 1, 'and usable')
  })

  t.test('a database it opened is closed, once', async (t) => {
    const filename = newFile()
    const provider = new SqliteProvider({ filename })
    const key = newKey()
    provider.create(key, session())
    t.ok(fs.existsSync(`${filename}-wal`), 'the write-ahead log is in use')
    provider.close()
    t.doesNotThrow(() => provider.close(), 'a second close is harmless')
    t.notOk(fs.existsSync(`${filename}-wal`), 'the last connection checkpointed and removed the log')
    t.throws(() => provider.get(key), { name: 'TypeError', message: /not open/ }, 'the connection is closed')
    t.not(open(t, { filename }).get(key), null, 'the record was written through')
  })
})

t.test('options', async (t) => {
  const db = connect(t)
  const bad: Array<[string, unknown]> = [
    ['no options', undefined],
    ['neither database nor filename', {}],
    ['both database and filename', { database: db, filename: ':memory:' }],
    ['a database that is not one', { database: {} }],
    ['a null database', { database: null }],
    ['an empty filename', { filename: '' }],
    ['a filename that is not a string', { filename: 42 }],
    ['createTable not a boolean', { filename: ':memory:', createTable: 'yes' }],
    ['gcBatchSize 0', { filename: ':memory:', gcBatchSize: 0 }],
    ['gcBatchSize negative', { filename: ':memory:', gcBatchSize: -5 }],
    ['gcBatchSize fractional', { filename: ':memory:', gcBatchSize: 1.5 }],
    ['gcBatchSize a string', { filename: ':memory:', gcBatchSize: '10' }],
    ['gcBatchSize infinite', { filename: ':memory:', gcBatchSize: Infinity }],
    ['a misspelt option', { filename: ':memory:', tablename: 'sessions' }]
  ]
  for (const [what, options] of bad) {
    let error: unknown
    try {
      new SqliteProvider(options as SqliteProviderOptions) // eslint-disable-line no-new
    } catch (err) {
      error = err
    }
    t.ok(error instanceof TypeError, `${what}: a TypeError`)
    t.throws(() => new SqliteProvider(options as SqliteProviderOptions), { code: 'FST_SESSION_PROVIDER_OPTION' }, `${what}: coded`)
  }
  t.equal(db.open, true, 'a rejected database is left alone')
  t.throws(() => new SqliteProvider({ filename: path.join(dir, 'missing-directory', 'x.db') }), /directory does not exist|unable to open/, 'an unopenable file throws')
  t.equal(open(t, { filename: ':memory:', gcBatchSize: 1 }).gcBatchSize, 1, 'gcBatchSize 1 is fine')
  const garbage = newFile()
  fs.writeFileSync(garbage, 'this is not a database, but it is long enough to have a header. '.repeat(10))
  t.throws(() => new SqliteProvider({ filename: garbage }), { code: 'SQLITE_NOTADB' }, 'a file that is no database throws')
})

t.test('two providers on one file see each other\'s writes', async (t) => {
  const filename = newFile()
  const one = open(t, { filename })
  const two = open(t, { filename })
  const key = newKey()
  one.create(key, session([['a', '1']], Date.now() + HOUR, 'alice'))
  t.strictSame(entries(two.get(key)?.data), [['a', '1']], 'a create')
  t.equal(two.create(key, session()), false, 'the other cannot create over it')
  two.update(key, patch({ set: new Map([['b', '2']]) }))
  t.strictSame(entries(one.get(key)?.data), [['a', '1'], ['b', '2']], 'an update')
  t.strictSame(two.listByUser('alice', []).map((r) => r.key), [key], 'the user index')
  const moved = newKey()
  t.equal(two.create(moved, session(), key), true, 'a replacing create')
  t.equal(one.get(key), null, 'moves the record away')
  t.equal(one.destroy(moved), true, 'a destroy')
  t.equal(two.get(moved), null, 'is seen')
  two.create(newKey(), expired())
  t.equal(one.gc(), 1, 'a sweep removes what the other wrote')
})

t.test('a database that hands out BigInts still gets numbers', async (t) => {
  const db = connect(t)
  db.defaultSafeIntegers(true)
  const provider = open(t, { database: db })
  const key = newKey()
  const created = session([['n', '1']], Date.now() + HOUR, 'alice')
  provider.create(key, created)
  const read = provider.get(key)
  t.equal(read?.expiresAt, created.expiresAt, 'get')
  t.equal(typeof read?.createdAt, 'number')
  t.equal(provider.listByUser('alice', [])[0].lastSeenAt, created.lastSeenAt, 'listByUser')
  t.equal(provider.destroy(key), true, 'destroy')
})

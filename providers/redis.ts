import type { Cluster, Redis } from 'ioredis'
import type { ConnectionOptions } from 'node:tls'
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from '../lib/provider.js'
import { RedisConnection, RedisScript } from './redis-connection.js'

/** Options of the `redis` provider. Give exactly one of `url` and `client`. */
export interface RedisProviderOptions {
  /**
   * A `redis://` or `rediss://` URL (user, password and database number
   * included). The provider then opens its own connection, which is the
   * fast way: it connects on first use, sends the commands of all requests
   * handled in one turn of the event loop in one write, fails a command at
   * once while Redis is unreachable or after two seconds without a reply,
   * connects again on the next command, and is closed by `close()`.
   * @default undefined
   */
  url?: string | undefined

  /**
   * TLS options for a `rediss://` URL, passed to `tls.connect` (a private
   * `ca`, a client `cert` and `key`). Refused with a `redis://` URL, which
   * would ignore them.
   * @default undefined
   */
  tls?: ConnectionOptions | undefined

  /**
   * An ioredis `Redis` or `Cluster` the application already has (for
   * instance from `@fastify/redis`). It is used as it is, with its `db`,
   * `keyPrefix`, timeouts and retry policy, and stays open after `close()`.
   * A Cluster needs it; otherwise `url` is faster.
   * @default undefined
   */
  client?: Redis | Cluster | undefined

  /**
   * Put before every key the provider writes.
   * @default 'sess:'
   */
  prefix?: string | undefined

  /**
   * Whether sessions may live on different shards, so that no script may
   * touch two sessions or a session and its user's index. A sharded provider
   * keeps the user index with separate commands after each script instead of
   * inside it, which is not atomic. Set it for a sharding proxy in front of
   * plain `Redis` clients, or clear it for a `Cluster` whose `keyPrefix` holds
   * a hash tag (every key in one slot).
   * @default true for a `Cluster` client, false otherwise
   */
  sharded?: boolean | undefined
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    redis: RedisProviderOptions
  }
}

export const REDIS_PROVIDER = 'redis'

type RedisClient = Redis | Cluster

/*
 * Storage layout. A session is one hash `<prefix>{<key>}`: the braces make
 * the key its own hash tag, so whatever a script touches for one session is
 * in one Cluster slot. Metadata fields are single letters (`c` createdAt,
 * `s` lastSeenAt, `e` expiresAt, `u` user) and every data field is its name
 * behind `d`, so no session key can collide with metadata, whatever it is
 * called. The hash expires natively at `expiresAt` (rounded up to the
 * millisecond); reads still compare `e` with the clock, as the server's
 * expiry may lag ours.
 *
 * A user's sessions are a sorted set `<prefix>user:{<user>}`: member = the
 * session key, score = its deadline. Expired members are trimmed whenever the
 * set is written or read, and the set itself expires with its last session,
 * so an index nobody reads does not grow without bound.
 *
 * Every script takes the same first arguments: the client's clock, the full
 * key prefix (the client's `keyPrefix` included, as ioredis adds it to
 * declared keys only), and whether to keep the user index inline.
 *
 * Unsharded, a script reaches the user indexes and the record under
 * `replaces` through keys it builds from that prefix instead of receiving
 * them in KEYS: the former owner of a record is only known inside the script,
 * and this keeps every write atomic in one script call (a lean script that
 * finds its condition unmet hands over to a second). A standalone server
 * allows it; a Cluster refuses keys of another node, hence `sharded`, where
 * each script touches nothing but KEYS[1].
 */
const PRELUDE = `
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local inline = ARGV[3] == '1'

local function sessionKey (member)
  return prefix .. '{' .. member .. '}'
end

local function indexKey (user)
  return prefix .. 'user:{' .. user .. '}'
end

local function settle (index)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[1])
  local last = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', index, last[2]) end
end

local function unindex (user, member)
  if inline and user then
    local index = indexKey(user)
    redis.call('ZREM', index, member)
    settle(index)
  end
end

local function index (user, member, deadline)
  if inline and user then
    local index = indexKey(user)
    redis.call('ZADD', index, deadline, member)
    settle(index)
  end
end

-- unpack() has a stack limit, so long argument runs go in slices
local function each (command, key, first, last)
  for i = first, last, 100 do
    redis.call(command, key, unpack(ARGV, i, math.min(i + 99, last)))
  end
end
`

/*
 * Every write script answers {1 or 0, the owner of the record it found under
 * KEYS[1] and changed or deleted, or false}, so that a sharded caller can move
 * the index entry.
 *
 * ARGV 4 key, 5 has replaces, 6 replaces, 7 createdAt, 8 lastSeenAt,
 * 9 expiresAt, 10 deadline, 11 has user, 12 user, 13... field, value.
 * An expired record under the key or under `replaces` counts as missing and
 * is dropped on the way.
 */
const CREATE = new RedisScript(PRELUDE + `
local key = KEYS[1]
local current = redis.call('HMGET', key, 'e', 'u')
if current[1] and tonumber(current[1]) > now then return {0, false} end
if ARGV[5] == '1' then
  local old = sessionKey(ARGV[6])
  local previous = redis.call('HMGET', old, 'e', 'u')
  if not previous[1] then return {0, false} end
  redis.call('DEL', old)
  unindex(previous[2], ARGV[6])
  if tonumber(previous[1]) <= now then return {0, false} end
end
if current[1] then
  redis.call('DEL', key)
  unindex(current[2], ARGV[4])
end
redis.call('HSET', key, 'c', ARGV[7], 's', ARGV[8], 'e', ARGV[9])
local user = false
if ARGV[11] == '1' then
  user = ARGV[12]
  redis.call('HSET', key, 'u', user)
end
each('HSET', key, 13, #ARGV)
redis.call('PEXPIREAT', key, ARGV[10])
index(user, ARGV[4], ARGV[10])
return {1, current[2]}
`)

/*
 * A first visit's session: nobody to index, nothing replaced. Writes only
 * when nothing at all is under the key and answers 1; otherwise answers 0
 * and CREATE decides (a live record refuses, an expired one is replaced).
 * No prelude: this runs on every new visitor, and every redis.call and
 * local function costs Redis time. ARGV 1 createdAt, 2 lastSeenAt,
 * 3 expiresAt, 4 deadline, 5... field, value.
 */
const CREATE_FRESH = new RedisScript(`
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return 0 end
local direct = math.min(#ARGV, 104)
redis.call('HSET', key, 'c', ARGV[1], 's', ARGV[2], 'e', ARGV[3], unpack(ARGV, 5, direct))
for i = direct + 1, #ARGV, 100 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 99, #ARGV)))
end
redis.call('PEXPIREAT', key, ARGV[4])
return 1
`)

/*
 * ARGV 4 key, 5 lastSeenAt, 6 expiresAt, 7 deadline, 8 owner change
 * ('=' keep, 's' set, '-' clear; sharded, 'k' keep if the owner is ARGV 9 and
 * 'n' keep if there is none, else answer 2 and the owner), 9 user, 10 how
 * many ARGV hold fields to set, then field, value pairs, then fields to
 * delete.
 */
const UPDATE = new RedisScript(PRELUDE + `
local key = KEYS[1]
local current = redis.call('HMGET', key, 'e', 'u')
if not current[1] then return {0, false} end
if tonumber(current[1]) <= now then
  redis.call('DEL', key)
  unindex(current[2], ARGV[4])
  return {0, current[2]}
end
if (ARGV[8] == 'k' and current[2] ~= ARGV[9]) or (ARGV[8] == 'n' and current[2]) then return {2, current[2]} end
local setEnd = 10 + tonumber(ARGV[10])
each('HSET', key, 11, setEnd)
each('HDEL', key, setEnd + 1, #ARGV)
redis.call('HSET', key, 's', ARGV[5], 'e', ARGV[6])
local user = current[2]
if ARGV[8] == 's' then
  user = ARGV[9]
  redis.call('HSET', key, 'u', user)
elseif ARGV[8] == '-' then
  user = false
  redis.call('HDEL', key, 'u')
end
redis.call('PEXPIREAT', key, ARGV[7])
if current[2] and current[2] ~= user then unindex(current[2], ARGV[4]) end
index(user, ARGV[4], ARGV[7])
return {1, current[2]}
`)

/*
 * ARGV 4 key, 5 only if owned, 6 owner. Answers 1 when a live record was
 * deleted; a third value 1 when a record was there but spared, not the owner's.
 */
const DESTROY = new RedisScript(PRELUDE + `
local key = KEYS[1]
local current = redis.call('HMGET', key, 'e', 'u')
if not current[1] then return {0, false} end
if ARGV[5] == '1' and current[2] ~= ARGV[6] then return {0, false, 1} end
redis.call('DEL', key)
unindex(current[2], ARGV[4])
if tonumber(current[1]) > now then return {1, current[2]} end
return {0, current[2]}
`)

/*
 * Unsharded only: KEYS[1] the user's index; ARGV 4 user, 5 has except,
 * 6 except. A member whose hash belongs to someone else is only unlisted.
 */
const DESTROY_BY_USER = new RedisScript(PRELUDE + `
local index = KEYS[1]
redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[1])
local removed = 0
for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if ARGV[5] ~= '1' or member ~= ARGV[6] then
    local key = sessionKey(member)
    local current = redis.call('HMGET', key, 'e', 'u')
    if current[2] == ARGV[4] then
      redis.call('DEL', key)
      if tonumber(current[1]) > now then removed = removed + 1 end
    end
    redis.call('ZREM', index, member)
  end
end
settle(index)
return removed
`)

/*
 * Sharded only: KEYS[1] a user's index; ARGV 4 member, 5 deadline, or '' to
 * remove. A deadline never lowers an entry's: of two writes racing, the
 * later script may have set the later deadline, and an entry that left
 * before its record would hide a live session from its owner's index.
 */
const INDEX = new RedisScript(PRELUDE + `
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[1], ARGV[4])
else
  local score = redis.call('ZSCORE', KEYS[1], ARGV[4])
  if not score or tonumber(score) < tonumber(ARGV[5]) then redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4]) end
end
settle(KEYS[1])
return 1
`)

/*
 * The most common write: a change or touch of a record that had no owner
 * when the request read it and keeps none. Applies it only when the record
 * is live and still has no owner, and answers 1; otherwise answers 0 and
 * UPDATE decides (missing, expired, or an owner whose index must follow).
 * No prelude, for the reason CREATE_FRESH has none. ARGV 1 now,
 * 2 lastSeenAt, 3 expiresAt, 4 deadline, 5 how many ARGV hold fields to
 * set, then field, value pairs, then fields to delete.
 */
const UPDATE_UNOWNED = new RedisScript(`
local key = KEYS[1]
local current = redis.call('HMGET', key, 'e', 'u')
if not current[1] or current[2] or tonumber(current[1]) <= tonumber(ARGV[1]) then return 0 end
local setEnd = 5 + tonumber(ARGV[5])
local direct = math.min(setEnd, 105)
redis.call('HSET', key, 's', ARGV[2], 'e', ARGV[3], unpack(ARGV, 6, direct))
for i = direct + 1, setEnd, 100 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 99, setEnd)))
end
for i = setEnd + 1, #ARGV, 100 do
  redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 99, #ARGV)))
end
redis.call('PEXPIREAT', key, ARGV[4])
return 1
`)

const SCRIPTS = { CREATE_FRESH, CREATE, UPDATE_UNOWNED, UPDATE, DESTROY, DESTROY_BY_USER, INDEX }

/** What the provider needs of a connection: single commands and script runs. */
interface Commands {
  /** One command, `args[0]` its name; resolves with the raw reply. */
  send: (args: string[]) => Promise<unknown>
  /** A script on one key. */
  run: (script: RedisScript, key: string, args: string[]) => Promise<unknown>
}

/**
 * An application's ioredis client as `Commands`. Its `call` keeps replies
 * raw (HGETALL stays a flat list); scripts go through `defineCommand`, which
 * applies the client's `keyPrefix` to the key and falls back from EVALSHA to
 * EVAL on its own.
 */
class IoredisCommands implements Commands {
  readonly #client: RedisClient
  readonly #names = new Map<RedisScript, string>()

  constructor (client: RedisClient) {
    this.#client = client
    for (const [name, script] of Object.entries(SCRIPTS)) {
      const command = `fastifySessions_${name}`
      client.defineCommand(command, { numberOfKeys: 1, lua: script.source })
      this.#names.set(script, command)
    }
  }

  send (args: string[]): Promise<unknown> {
    return this.#client.call(args[0], ...args.slice(1))
  }

  run (script: RedisScript, key: string, args: string[]): Promise<unknown> {
    const command = this.#names.get(script) as string
    return (this.#client as unknown as Record<string, (...args: string[]) => Promise<unknown>>)[command](key, ...args)
  }
}

const DATA = 'd'

function fail (message: string): never {
  throw new FST_SESSION_PROVIDER_OPTION(REDIS_PROVIDER, message)
}

function isClient (value: unknown): value is RedisClient {
  const client = value as Partial<RedisClient> | null
  return typeof client === 'object' && client !== null &&
    typeof client.call === 'function' && typeof client.defineCommand === 'function'
}

function ownConnection (url: unknown, tls: ConnectionOptions | undefined): RedisConnection {
  if (typeof url !== 'string' || !/^rediss?:\/\/./.test(url) || !URL.canParse(url)) {
    fail('url must be a redis:// or rediss:// URL')
  }
  const { username, password, pathname } = new URL(url)
  try {
    // each on its own, as the connection decodes them: two halves of one
    // character would pass together and fail apart
    decodeURIComponent(username)
    decodeURIComponent(password)
  } catch {
    fail('the user or password in url is not valid percent-encoding')
  }
  const db = pathname.slice(1)
  if (db !== '' && !/^(0|[1-9]\d*)$/.test(db)) fail('the path of url must be a database number')
  if (tls !== undefined && (typeof tls !== 'object' || tls === null)) fail('tls must be an object of tls.connect options')
  // with redis:// the options would be ignored, and the password sent in clear
  if (tls !== undefined && !url.startsWith('rediss://')) fail('tls goes with a rediss:// URL')
  return new RedisConnection(url, { tls })
}

/**
 * Appends a patch's changes as the update scripts take them: how many
 * arguments follow that hold fields to set, those field, value pairs, then
 * the fields to delete.
 */
function pushChanges (args: string[], patch: SessionPatch): void {
  const count = args.push('0') - 1
  if (patch.set !== null) {
    for (const [name, json] of patch.set) args.push(DATA + name, json)
    args[count] = String(args.length - count - 1)
  }
  if (patch.delete !== null) for (const name of patch.delete) args.push(DATA + name)
}

/**
 * How many rounds a sharded `destroyByUser` makes at most. Each round ends
 * the sessions its read of the index found; one more is needed only when
 * another request added a session of the user meanwhile.
 */
const MAX_LOGOUT_ROUNDS = 20

/** How many times a sharded update tries again after the owner changed under it. */
const MAX_OWNER_ATTEMPTS = 5

/** For a clean-up whose failure leaves only a harmless stray, or follows another failure, the one to report. */
function ignore (): void {}

/** The PEXPIREAT argument and index score for a deadline: whole milliseconds, never early. */
function deadline (expiresAt: number): string {
  return String(Math.ceil(expiresAt))
}

/**
 * Sessions in Redis hashes with native expiry, written by Lua scripts so that
 * every write is atomic (see the layout above).
 */
export class RedisProvider implements SessionProvider {
  /** The ioredis client handed in, or the provider's own connection made from `url`. */
  readonly client: RedisClient | RedisConnection
  readonly prefix: string
  readonly sharded: boolean
  private readonly owned: boolean
  private readonly keyspace: string
  private readonly commands: Commands
  private closed = false

  constructor (options: RedisProviderOptions) {
    if (typeof options !== 'object' || options === null) fail('options must be an object with url or client')
    checkOptionNames(REDIS_PROVIDER, options, ['url', 'tls', 'client', 'prefix', 'sharded'])
    const { url, client, tls, prefix = 'sess:', sharded } = options
    if (url !== undefined && client !== undefined) fail('give either url or client, not both')
    if (url === undefined && client === undefined) fail('give url or client')
    if (client !== undefined && !isClient(client)) fail('client must be an ioredis Redis or Cluster')
    if (client !== undefined && tls !== undefined) fail('tls goes with url; configure TLS on the client handed in')
    if (typeof prefix !== 'string') fail('prefix must be a string')
    if (sharded !== undefined && typeof sharded !== 'boolean') fail('sharded must be a boolean')

    this.prefix = prefix
    if (client === undefined) {
      const connection = ownConnection(url, tls)
      this.owned = true
      this.client = connection
      this.commands = connection
      this.sharded = sharded ?? false
      this.keyspace = prefix
    } else {
      this.owned = false
      this.client = client
      this.commands = new IoredisCommands(client)
      this.sharded = sharded ?? client.isCluster
      this.keyspace = (client.options.keyPrefix ?? '') + prefix
    }
  }

  async get (key: string): Promise<StoredSession | null> {
    const reply = await this.commands.send(['HGETALL', this.sessionKey(key)]) as string[] | Record<string, string>
    // a client whose replyMapping is 'resp3' answers an object (ioredis keeps
    // `__proto__` as an own property there)
    const fields = Array.isArray(reply) ? reply : Object.entries(reply).flat()
    const data = new Map<string, string>()
    let createdAt = NaN
    let lastSeenAt = NaN
    let expiresAt = NaN
    for (let i = 0; i < fields.length; i += 2) {
      const field = fields[i]
      const value = fields[i + 1]
      if (field === 'c') createdAt = Number(value)
      else if (field === 's') lastSeenAt = Number(value)
      else if (field === 'e') expiresAt = Number(value)
      else if (field.startsWith(DATA)) data.set(field.slice(DATA.length), value)
    }
    // NaN (no hash) fails the comparison too
    if (!(expiresAt > Date.now())) return null
    return { data, createdAt, lastSeenAt, expiresAt }
  }

  async create (key: string, session: NewSession, replaces?: string): Promise<boolean> {
    if (replaces === undefined && session.user === null) {
      const args = [String(session.createdAt), String(session.lastSeenAt), String(session.expiresAt), deadline(session.expiresAt)]
      for (const [name, json] of session.data) args.push(DATA + name, json)
      if (Number(await this.commands.run(CREATE_FRESH, this.sessionKey(key), args)) === 1) return true
    }
    if (this.sharded && replaces !== undefined) return this.moveSharded(key, session, replaces)
    const until = deadline(session.expiresAt)
    const args = this.head(key)
    args.push(
      replaces === undefined ? '0' : '1', replaces ?? '',
      String(session.createdAt), String(session.lastSeenAt), String(session.expiresAt), until,
      session.user === null ? '0' : '1', session.user ?? ''
    )
    for (const [name, json] of session.data) args.push(DATA + name, json)
    const [created, previous] = await this.write(this.commands.run(CREATE, this.sessionKey(key), args))
    if (!this.sharded || !created) return created
    // The key is unknown to anyone until this answers, so nobody else writes
    // its entries meanwhile: the owner of an expired record it replaced can
    // be unlisted, and should the new entry fail, the record goes rather than
    // live on missing from its owner's index.
    try {
      await Promise.all([
        previous !== null && previous !== session.user ? this.unindex(key, previous) : null,
        session.user !== null ? this.index(session.user, key, until) : null
      ])
    } catch (err) {
      await this.destroy(key).catch(ignore)
      throw err
    }
    return true
  }

  /**
   * `create` with `replaces` across two slots, in steps ordered so that a
   * refusal changes nothing and a concurrent `destroyByUser` still ends the
   * session: the new record and its index entry first (refused when the key
   * is taken), then the old record goes, and when it had gone already the
   * new one goes again. A `destroyByUser` that read the index before the new
   * entry came either deleted the old record first, which this then finds
   * gone, or reads the index again after its deletes and finds the new
   * entry. The new key is unknown to anyone until this answers, so nobody
   * sees it come and go.
   */
  private async moveSharded (key: string, session: NewSession, replaces: string): Promise<boolean> {
    if (!await this.create(key, session)) return false
    let moved: boolean
    try {
      moved = await this.destroy(replaces)
    } catch (err) {
      await this.destroy(key).catch(ignore)
      throw err
    }
    if (!moved) await this.destroy(key)
    return moved
  }

  async update (key: string, patch: SessionPatch): Promise<boolean> {
    const until = deadline(patch.expiresAt)
    if (patch.owned === false && patch.user === undefined && await this.updateUnowned(key, patch, until)) return true
    const args = this.head(key)
    const owner = patch.user === undefined ? '=' : patch.user === null ? '-' : 's'
    args.push(String(patch.lastSeenAt), String(patch.expiresAt), until, owner, patch.user ?? '')
    pushChanges(args, patch)
    if (!this.sharded) return (await this.write(this.commands.run(UPDATE, this.sessionKey(key), args)))[0]
    return this.updateSharded(key, patch, until, args)
  }

  /**
   * The owner's index entry goes first, with the new deadline: a failure
   * after it leaves a stray entry, which reads skip, where one after the
   * record's write would leave a live session its owner's index misses, or
   * drops at the old deadline. When the patch keeps the owner, the script
   * applies only while the owner is still the one whose entry was written;
   * should another request have changed it meanwhile, that owner's entry is
   * written in turn and the script tried again.
   *
   * Once the record's write has landed, no entry is removed: a former
   * owner's stays, as a stray that reads skip and that leaves with its
   * deadline. Removing it could remove one that another request has just
   * written for that owner again, before its own write made the record
   * theirs once more.
   */
  private async updateSharded (key: string, patch: SessionPatch, until: string, args: string[]): Promise<boolean> {
    let indexed = patch.user !== undefined ? patch.user : await this.ownerOf(key)
    for (let attempt = 0; attempt < MAX_OWNER_ATTEMPTS; attempt++) {
      if (indexed !== null) await this.index(indexed, key, until)
      if (patch.user === undefined) {
        args[7] = indexed === null ? 'n' : 'k'
        args[8] = indexed ?? ''
      }
      const [done, previous] = await this.commands.run(UPDATE, this.sessionKey(key), args) as [number | string, string | null]
      const outcome = Number(done)
      if (outcome === 1) return true
      if (outcome === 0) {
        // the record is gone for good, so its entries can go: none can be
        // another request's, written for the record coming back; one left
        // behind is a harmless stray
        await Promise.all([this.unindex(key, previous), indexed !== previous ? this.unindex(key, indexed) : null]).catch(ignore)
        return false
      }
      indexed = previous
    }
    throw new Error(`the owner of the session kept changing through ${MAX_OWNER_ATTEMPTS} attempts to write it`)
  }

  /**
   * The lean write for a record the plugin read without an owner; `false`
   * when it did not apply (the record is gone, expired, or has an owner
   * after all) and the general script must decide.
   */
  private async updateUnowned (key: string, patch: SessionPatch, until: string): Promise<boolean> {
    const args = [String(Date.now()), String(patch.lastSeenAt), String(patch.expiresAt), until]
    pushChanges(args, patch)
    return Number(await this.commands.run(UPDATE_UNOWNED, this.sessionKey(key), args)) === 1
  }

  async destroy (key: string, owner?: string): Promise<boolean> {
    const [live, previous] = await this.destroyRecord(key, owner ?? null)
    // a stray entry is harmless; a logout reported failed that happened is not
    if (this.sharded) await this.unindex(key, previous).catch(ignore)
    return live
  }

  async listByUser (user: string, infoKeys: readonly string[]): Promise<UserSessionRecord[]> {
    const now = Date.now()
    const members = await this.members(user, now)
    const fields = ['c', 's', 'e', 'u', ...infoKeys.map((name) => DATA + name)]
    const rows = await Promise.all(members.map((member) => this.commands.send(['HMGET', this.sessionKey(member), ...fields]) as Promise<Array<string | null>>))
    const list: UserSessionRecord[] = []
    for (let i = 0; i < members.length; i++) {
      const [createdAt, lastSeenAt, expiresAt, owner, ...values] = rows[i]
      // a missing record has no owner; a stale entry names someone else
      if (owner !== user || !(Number(expiresAt) > now)) continue
      const info = new Map<string, string>()
      for (let j = 0; j < infoKeys.length; j++) {
        const json = values[j]
        if (json !== null) info.set(infoKeys[j], json)
      }
      list.push({ key: members[i], createdAt: Number(createdAt), lastSeenAt: Number(lastSeenAt), expiresAt: Number(expiresAt), info })
    }
    return list
  }

  async destroyByUser (user: string, exceptKey?: string): Promise<number> {
    if (!this.sharded) {
      const args = this.head(user)
      args.push(exceptKey === undefined ? '0' : '1', exceptKey ?? '')
      return Number(await this.commands.run(DESTROY_BY_USER, this.indexKey(user), args))
    }
    // Not atomic across slots, so it reads the index again after each round
    // of deletes until a read finds nothing new: a session moved by a
    // concurrent regenerate() is indexed under its new key before the old
    // record goes (see moveSharded), so a round that found the old record
    // gone is followed by one that finds the new entry. An entry whose record
    // someone else owns, or nobody, stays: it may be an update's that makes
    // this user the owner, written before its record (see update). Sessions
    // of the user that keep appearing while it runs (logins, moves) keep it
    // going, up to a bound.
    const seen = new Set<string>()
    if (exceptKey !== undefined) seen.add(exceptKey)
    let removed = 0
    for (let round = 0; ; round++) {
      const doomed = (await this.members(user, Date.now())).filter((member) => !seen.has(member))
      if (doomed.length === 0) return removed
      if (round === MAX_LOGOUT_ROUNDS) throw new Error(`new sessions of the user kept appearing through ${round} rounds of deletes; ${removed} ended so far`)
      const outcomes = await Promise.all(doomed.map((member) => this.destroyRecord(member, user)))
      const gone: string[] = []
      for (let i = 0; i < doomed.length; i++) {
        seen.add(doomed[i])
        const [live, , spared] = outcomes[i]
        if (live) removed++
        if (!spared) gone.push(doomed[i])
      }
      if (gone.length > 0) await this.commands.send(['ZREM', this.indexKey(user), ...gone])
    }
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    if (this.owned) (this.client as RedisConnection).close()
  }

  private sessionKey (key: string): string {
    return `${this.prefix}{${key}}`
  }

  private indexKey (user: string): string {
    return `${this.prefix}user:{${user}}`
  }

  /** The arguments every script starts with (see PRELUDE), then the key or user it is about. */
  private head (subject: string): string[] {
    return [String(Date.now()), this.keyspace, this.sharded ? '0' : '1', subject]
  }

  /** Deletes a record, when `owner` is given only if it is theirs (else `spared`). */
  private destroyRecord (key: string, owner: string | null): Promise<[live: boolean, previous: string | null, spared: boolean]> {
    const args = this.head(key)
    args.push(owner === null ? '0' : '1', owner ?? '')
    return this.write(this.commands.run(DESTROY, this.sessionKey(key), args))
  }

  /**
   * A write script's answer: whether it did its work, the owner of the record
   * it found, and whether DESTROY spared a record of another owner.
   */
  private async write (reply: Promise<unknown>): Promise<[boolean, string | null, boolean]> {
    const [done, previous, spared] = await reply as [number | string, string | null, number | string | undefined]
    return [Number(done) === 1, previous, spared !== undefined]
  }

  /**
   * Sharded only: removes the index entry of `key` under `user`, if any.
   * Only for a record gone for good, or under a key nobody else knows yet:
   * while a record lives, another request may write that entry again just
   * before making the record that user's once more. The index is in another
   * slot than the record, so this is a step of its own, after the record's
   * script; a failure or a crash leaves a stray entry, which reads skip (they
   * check the owner in the record) and which leaves with its deadline.
   */
  private async unindex (key: string, user: string | null): Promise<void> {
    if (user !== null) await this.index(user, key, '')
  }

  /** Sharded only: the owner of the record under `key` now, `null` for none. */
  private async ownerOf (key: string): Promise<string | null> {
    return await this.commands.send(['HGET', this.sessionKey(key), 'u']) as string | null
  }

  /** Sharded only: adds (with a deadline) or removes (with '') a user's index entry. */
  private index (user: string, key: string, until: string): Promise<unknown> {
    const args = this.head(key)
    args.push(until)
    return this.commands.run(INDEX, this.indexKey(user), args)
  }

  /** The members of a user's index, after dropping those whose deadline has passed. */
  private async members (user: string, now: number): Promise<string[]> {
    const index = this.indexKey(user)
    // one key, one connection: the trim runs before the read
    const [, members] = await Promise.all([
      this.commands.send(['ZREMRANGEBYSCORE', index, '-inf', String(now)]),
      this.commands.send(['ZRANGE', index, '0', '-1']) as Promise<string[]>
    ])
    return members
  }
}

export function createRedisProvider (options: RedisProviderOptions): RedisProvider {
  return new RedisProvider(options)
}

registerProvider(REDIS_PROVIDER, createRedisProvider)

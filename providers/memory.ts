import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from '../lib/provider.js'

/** Options of the `memory` provider. */
export interface MemoryProviderOptions {
  /**
   * How many sessions it holds at most; creating one more evicts the least
   * recently used.
   * @default 100000
   */
  maxSessions?: number | undefined
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    memory: MemoryProviderOptions
  }
}

export const MEMORY_PROVIDER = 'memory'

/**
 * One stored record, in as few bytes as V8 allows: the data as a flat
 * `[key, json, key, json, …]` array (a third of a small `Map`), and the two
 * later times as offsets from `createdAt`. A session never outlives its
 * absolute lifetime, so the offsets stay small integers that V8 keeps
 * unboxed, where three epoch timestamps would each take a boxed number.
 * The array is never changed once made (a write makes a new one), so a
 * reader gets a read-only view of it (a copy above `VIEW_KEYS` keys): what a
 * request loaded stays as it was, whatever other requests write meanwhile.
 */
class Entry {
  lastSeen: number
  expires: number

  constructor (
    public pairs: readonly string[],
    readonly createdAt: number,
    lastSeenAt: number,
    expiresAt: number,
    public user: string | null,
    /** The provider's move count when the entry last joined the back of the recency list. */
    public movedAt: number
  ) {
    this.lastSeen = lastSeenAt - createdAt
    this.expires = expiresAt - createdAt
  }

  get lastSeenAt (): number {
    return this.createdAt + this.lastSeen
  }

  get expiresAt (): number {
    return this.createdAt + this.expires
  }

  touch (lastSeenAt: number, expiresAt: number): void {
    this.lastSeen = lastSeenAt - this.createdAt
    this.expires = expiresAt - this.createdAt
  }

  toStored (): StoredSession {
    const pairs = this.pairs
    return { data: pairs.length > VIEW_KEYS * 2 ? toMap(pairs) : new PairsView(pairs), createdAt: this.createdAt, lastSeenAt: this.lastSeenAt, expiresAt: this.expiresAt }
  }
}

function jsonOf (pairs: readonly string[], name: string): string | undefined {
  for (let i = 0; i < pairs.length; i += 2) if (pairs[i] === name) return pairs[i + 1]
  return undefined
}

/**
 * Up to how many keys a reader gets the data as a view; a larger record is
 * handed out as a `Map`, whose lookups do not walk every key.
 */
const VIEW_KEYS = 16

/**
 * A record's data as its reader sees it: the entry's frozen pairs array
 * behind the `ReadonlyMap` a provider answers. Building a `Map` instead cost
 * a quarter of a kilobyte and two hash inserts on every read; for the few
 * keys a session mostly holds, a walk of the array finds one as fast. The
 * array is a public field so that inspecting or deep-comparing views shows
 * their data.
 */
class PairsView implements ReadonlyMap<string, string> {
  constructor (readonly pairs: readonly string[]) {}

  get size (): number {
    return this.pairs.length >>> 1
  }

  get (name: string): string | undefined {
    return jsonOf(this.pairs, name)
  }

  has (name: string): boolean {
    return jsonOf(this.pairs, name) !== undefined
  }

  forEach (callback: (json: string, name: string, map: ReadonlyMap<string, string>) => void, thisArg?: unknown): void {
    const pairs = this.pairs
    for (let i = 0; i < pairs.length; i += 2) callback.call(thisArg, pairs[i + 1], pairs[i], this)
  }

  * entries (): MapIterator<[string, string]> {
    const pairs = this.pairs
    for (let i = 0; i < pairs.length; i += 2) yield [pairs[i], pairs[i + 1]]
  }

  * keys (): MapIterator<string> {
    const pairs = this.pairs
    for (let i = 0; i < pairs.length; i += 2) yield pairs[i]
  }

  * values (): MapIterator<string> {
    const pairs = this.pairs
    for (let i = 1; i < pairs.length; i += 2) yield pairs[i]
  }

  [Symbol.iterator] (): MapIterator<[string, string]> {
    return this.entries()
  }
}

/** The pairs as a `Map` of their own, for a large record's reader or a write to build on. */
function toMap (pairs: readonly string[]): Map<string, string> {
  const data = new Map<string, string>()
  for (let i = 0; i < pairs.length; i += 2) data.set(pairs[i], pairs[i + 1])
  return data
}

/**
 * The data as a flat array of exactly its size (`push` would reserve room
 * for growth it never gets), frozen: readers are handed it (see PairsView).
 */
function toPairs (data: ReadonlyMap<string, string>): readonly string[] {
  const pairs = new Array<string>(data.size * 2)
  let i = 0
  for (const [name, json] of data) {
    pairs[i++] = name
    pairs[i++] = json
  }
  return Object.freeze(pairs)
}

/**
 * Sessions in a `Map` whose insertion order is the recency list: a read or a
 * write moves the entry to the back, so the front holds the least recently
 * used. A sweep walks from the front and stops at the first live entry,
 * costing what expired rather than what is stored.
 *
 * An entry still in the newer half of the list, or the last to have joined
 * its back (already there), is not moved again: V8 leaves a deleted `Map`
 * slot in its hash chain until the table is rebuilt, so a busy session
 * moved on every access would lengthen its own lookups without bound.
 * Recency is therefore approximate — an entry used again soon after it
 * moved keeps that place — but the front always holds entries older than
 * every entry in the newer half, which is all eviction and the sweep need.
 *
 * Values stay JSON texts, as in any real store.
 */
export class MemoryProvider implements SessionProvider {
  readonly maxSessions: number
  private readonly sessions = new Map<string, Entry>()
  private readonly users = new Map<string, Set<string>>()
  /** One cursor over the recency list, kept between evictions so each starts where the last stopped. */
  private evictor: Iterator<string> | null = null
  /** Counts entries joining the back of the list; `movedAt` is measured against it. */
  private moves = 0
  /** `moves` when the cursor last moved. */
  private evictedAt = 0

  constructor (options: MemoryProviderOptions = {}) {
    checkOptionNames(MEMORY_PROVIDER, options, ['maxSessions'])
    const { maxSessions = 100_000 } = options
    if (!Number.isSafeInteger(maxSessions) || maxSessions < 1) {
      throw new FST_SESSION_PROVIDER_OPTION(MEMORY_PROVIDER, 'maxSessions must be a positive integer')
    }
    this.maxSessions = maxSessions
  }

  /** How many records it holds, expired ones not yet swept included. */
  get size (): number {
    return this.sessions.size
  }

  get (key: string): StoredSession | null {
    const entry = this.live(key)
    if (entry === undefined) return null
    this.used(key, entry)
    return entry.toStored()
  }

  create (key: string, session: NewSession, replaces?: string): boolean {
    if (this.live(key) !== undefined) return false
    if (replaces !== undefined && !this.destroy(replaces)) return false
    while (this.sessions.size >= this.maxSessions) this.evictOldest()
    const entry = new Entry(toPairs(session.data), session.createdAt, session.lastSeenAt, session.expiresAt, session.user, this.moves++)
    this.sessions.set(key, entry)
    this.index(key, entry.user)
    this.releaseStaleEvictor()
    return true
  }

  update (key: string, patch: SessionPatch): boolean {
    const entry = this.live(key)
    if (entry === undefined) return false
    if (patch.set !== null || patch.delete !== null) {
      // a new array rather than edits in place: a reader may be walking the old one
      const data = toMap(entry.pairs)
      if (patch.set !== null) for (const [name, json] of patch.set) data.set(name, json)
      if (patch.delete !== null) for (const name of patch.delete) data.delete(name)
      entry.pairs = toPairs(data)
    }
    const user = patch.user === undefined ? entry.user : patch.user
    if (user !== entry.user) {
      this.unindex(key, entry.user)
      this.index(key, user)
      entry.user = user
    }
    entry.touch(patch.lastSeenAt, patch.expiresAt)
    this.used(key, entry)
    return true
  }

  destroy (key: string, owner?: string): boolean {
    const entry = this.live(key)
    if (owner !== undefined && entry?.user !== owner) return false
    this.remove(key)
    return entry !== undefined
  }

  gc (): number {
    const now = Date.now()
    let removed = 0
    for (const [key, entry] of this.sessions) {
      if (entry.expiresAt > now) break
      this.remove(key)
      removed++
    }
    return removed
  }

  listByUser (user: string, infoKeys: readonly string[]): UserSessionRecord[] {
    const keys = this.users.get(user)
    if (keys === undefined) return []
    const list: UserSessionRecord[] = []
    for (const key of keys) {
      const entry = this.live(key)
      if (entry === undefined) continue
      const info = new Map<string, string>()
      for (const name of infoKeys) {
        const json = jsonOf(entry.pairs, name)
        if (json !== undefined) info.set(name, json)
      }
      list.push({ key, createdAt: entry.createdAt, lastSeenAt: entry.lastSeenAt, expiresAt: entry.expiresAt, info })
    }
    return list
  }

  destroyByUser (user: string, exceptKey?: string): number {
    const keys = this.users.get(user)
    if (keys === undefined) return 0
    let removed = 0
    for (const key of [...keys]) {
      if (key === exceptKey) continue
      if (this.destroy(key)) removed++
    }
    return removed
  }

  close (): void {
    this.sessions.clear()
    this.users.clear()
    this.evictor = null
  }

  /** Moves the entry to the back of the recency list, unless it is still in the newer half or the last to join it. */
  private used (key: string, entry: Entry): void {
    if (this.moves - entry.movedAt < Math.max(2, this.sessions.size >>> 1)) return
    entry.movedAt = this.moves++
    this.sessions.delete(key)
    this.sessions.set(key, entry)
    this.releaseStaleEvictor()
  }

  /**
   * Removes the least recently used entry. A fresh `keys()` iterator would
   * step over every slot already deleted at the front of the table, so one
   * cursor is kept: everything before it has been evicted, and entries only
   * ever join at the back, so it never runs dry while the store is full.
   */
  private evictOldest (): void {
    if (this.evictor === null) this.evictor = this.sessions.keys()
    this.remove(this.evictor.next().value as string)
    this.evictedAt = this.moves
  }

  /**
   * A Map iterator keeps every table its Map has outgrown since the
   * iterator last moved, so a cursor left alone while sessions keep coming
   * and going (the store no longer full) would keep them all. After as many
   * entries have joined as the store holds, the table has been rebuilt at
   * least once since the cursor moved: it is let go, and the next eviction
   * starts a fresh one.
   */
  private releaseStaleEvictor (): void {
    if (this.evictor !== null && this.moves - this.evictedAt > this.sessions.size) this.evictor = null
  }

  /** The entry under `key` unless it has expired; an expired one is dropped on the way. */
  private live (key: string): Entry | undefined {
    const entry = this.sessions.get(key)
    if (entry === undefined || entry.expiresAt > Date.now()) return entry
    this.remove(key)
    return undefined
  }

  private remove (key: string): void {
    const entry = this.sessions.get(key)
    if (entry === undefined) return
    this.sessions.delete(key)
    this.unindex(key, entry.user)
  }

  private index (key: string, user: string | null): void {
    if (user === null) return
    const keys = this.users.get(user)
    if (keys === undefined) this.users.set(user, new Set([key]))
    else keys.add(key)
  }

  private unindex (key: string, user: string | null): void {
    if (user === null) return
    const keys = this.users.get(user) as Set<string>
    keys.delete(key)
    if (keys.size === 0) this.users.delete(user)
  }
}

export function createMemoryProvider (options?: MemoryProviderOptions): MemoryProvider {
  return new MemoryProvider(options)
}

registerProvider(MEMORY_PROVIDER, createMemoryProvider)

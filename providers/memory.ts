import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from '../lib/provider.js'

/** Options of the `memory` provider. */
export interface MemoryProviderOptions {
  /**
   * How many sessions it holds at most; creating one more evicts the least
   * recently used.
   * @default 100000
   */
  maxSessions?: number
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    memory: MemoryProviderOptions
  }
}

export const MEMORY_PROVIDER = 'memory'

/**
 * The data of one record. It refuses changes once built, so a record handed to
 * a request can be shared with the store without a copy per read.
 */
class RecordData extends Map<string, string> {
  constructor (entries: Iterable<readonly [string, string]>) {
    super()
    for (const [key, json] of entries) super.set(key, json)
  }

  override set (): this {
    throw new TypeError('A stored session record is read-only')
  }

  override delete (): boolean {
    throw new TypeError('A stored session record is read-only')
  }

  override clear (): void {
    throw new TypeError('A stored session record is read-only')
  }
}

/** One stored record, replaced rather than changed by a write. */
class Entry implements StoredSession {
  constructor (
    readonly data: RecordData,
    readonly createdAt: number,
    readonly lastSeenAt: number,
    readonly expiresAt: number,
    readonly user: string | null
  ) {
    Object.freeze(this)
  }
}

/**
 * Sessions in a `Map` whose insertion order is the recency list: every read
 * or write moves the entry to the back, so the front is always the least
 * recently used. A sweep walks from the front and stops at the first live
 * entry, costing what expired rather than what is stored.
 *
 * Values stay JSON texts, and records are immutable: a write replaces the
 * entry, so what a request was handed never changes under it.
 */
export class MemoryProvider implements SessionProvider {
  readonly maxSessions: number
  private readonly sessions = new Map<string, Entry>()
  private readonly users = new Map<string, Set<string>>()

  constructor (options: MemoryProviderOptions = {}) {
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
    this.sessions.delete(key)
    this.sessions.set(key, entry)
    return entry
  }

  create (key: string, session: NewSession, replaces?: string): boolean {
    if (this.live(key) !== undefined) return false
    if (replaces !== undefined && !this.destroy(replaces)) return false
    this.remove(key)
    while (this.sessions.size >= this.maxSessions) {
      this.remove(this.sessions.keys().next().value as string)
    }
    const entry = new Entry(new RecordData(session.data), session.createdAt, session.lastSeenAt, session.expiresAt, session.user)
    this.sessions.set(key, entry)
    this.index(key, entry.user)
    return true
  }

  update (key: string, patch: SessionPatch): boolean {
    const entry = this.live(key)
    if (entry === undefined) return false
    let data = entry.data
    if (patch.set !== null || patch.delete !== null) {
      const changed = new Map(data)
      if (patch.set !== null) for (const [name, json] of patch.set) changed.set(name, json)
      if (patch.delete !== null) for (const name of patch.delete) changed.delete(name)
      data = new RecordData(changed)
    }
    const user = patch.user === undefined ? entry.user : patch.user
    if (user !== entry.user) {
      this.unindex(key, entry.user)
      this.index(key, user)
    }
    this.sessions.delete(key)
    this.sessions.set(key, new Entry(data, entry.createdAt, patch.lastSeenAt, patch.expiresAt, user))
    return true
  }

  destroy (key: string): boolean {
    const live = this.live(key) !== undefined
    this.remove(key)
    return live
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
        const json = entry.data.get(name)
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

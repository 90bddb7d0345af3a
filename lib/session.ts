import { FST_SESSION_DESTROYED, FST_SESSION_INVALID_USER, FST_SESSION_NOT_SERIALIZABLE, FST_SESSION_STORE_UNAVAILABLE, FST_SESSION_TOO_LARGE } from './errors.js'
import { generateId, storeKey } from './id.js'
import { entrySize, parseJson, toJson } from './json.js'
import type { StoredSession } from './provider.js'
import type { SessionManager } from './manager.js'

/**
 * What a session holds. Declare your keys by declaration merging to type
 * `get` and `set`; keys you do not declare are typed `any`.
 *
 * ```ts
 * declare module 'fastify-sessions' {
 *   interface SessionData { userId: string, views: number }
 * }
 * ```
 */
export interface SessionData {}

/** The type of the value stored under `Key`. */
export type SessionValue<Key extends string> = Key extends keyof SessionData ? SessionData[Key] : any

/**
 * A session key: any string, the declared ones offered first by editors
 * (`string & {}` keeps the union from collapsing into plain `string`).
 */
export type SessionKey = (keyof SessionData & string) | (string & {})

const EMPTY: ReadonlyMap<string, string> = new Map()

const REGENERATED = 1
const DESTROYED = 2
const TOUCH = 4
/** A regenerated session already stored under its new id (see `moved`): the cookie goes out on this response. */
const MOVED = 8

/**
 * One request's view of a session. Values live as JSON texts, as the store
 * holds them; `get` parses on demand and `set` serialises at once, so a value
 * that cannot be stored fails where it is set. Objects handed out or taken
 * in are kept, so changes made to them in place are found and saved.
 */
export class Session {
  #manager: SessionManager
  #id: string | null
  #key: string | null
  #record: StoredSession | null
  /** Objects given to or taken from the caller, checked for in-place changes at save. */
  #objects: Map<string, unknown> | null = null
  /**
   * The keys of objects `get()` handed out: measured at their stored JSON,
   * they may have shrunk in place since, so `set()` leaves a size it finds
   * over the limit to the save while any of them is held.
   */
  #read: Set<string> | null = null
  /** Whether `set()` left a size over the limit to the save. */
  #sizeDeferred = false
  /** Keys changed on this request: their new JSON text, or `null` once deleted. */
  #pending: Map<string, string | null> | null = null
  /** The key of the record `regenerate()` moves away from. */
  #previousKey: string | null = null
  /** The keys of the cookies a failed load was for (see `standIn`). */
  #standIns: string[] | null = null
  /** Why the store could not load the session this one stands in for (`onStoreError: 'continue'`). */
  #loadError: Error | null = null
  /** The owner when `destroy()` ended the session, for `destroyOtherSessions()` after it. */
  #ownerAtDestroy: unknown = undefined
  #flags = 0
  /** Epoch milliseconds when the session was created. */
  readonly createdAt: number
  /** @internal The cookie was verified by an older secret and is re-signed on this response. */
  readonly renew: boolean
  /** @internal Set once the session was handed to the store, so an error response does not save it again. */
  saved = false
  /** @internal Settles once a move to the new id under way ends, however it ends (see `moved`). */
  moving: Promise<void> | null = null

  /** Made by the plugin for each request; applications use `request.session`. */
  constructor (manager: SessionManager, id: string | null, key: string | null, record: StoredSession | null, now: number, renew: boolean) {
    this.#manager = manager
    this.renew = renew
    this.#id = id
    this.#key = key
    this.#record = record
    this.createdAt = record === null ? now : record.createdAt
  }

  /** The session id: what the cookie carries. A new session gets one when first asked or saved. */
  get id (): string {
    if (this.#id === null) this.#id = generateId()
    return this.#id
  }

  /** Whether no stored session stands behind this one (no cookie, or one the store does not know). */
  get isNew (): boolean {
    return this.#record === null
  }

  /**
   * Epoch milliseconds when the session ends unless used: for a stored
   * session the deadline as loaded, for a new one the deadline it would get.
   */
  get expiresAt (): number {
    return this.#record === null ? this.#manager.deadline(this.createdAt, this.createdAt) : this.#record.expiresAt
  }

  /** Identifies this session in `listUserSessions` without revealing its id. */
  get handle (): string {
    return this.#manager.handleOf(this.key)
  }

  /** @internal The key the session is stored under. */
  get key (): string {
    if (this.#key === null) this.#key = storeKey(this.id)
    return this.#key
  }

  get<Key extends SessionKey> (key: Key): SessionValue<Key> | undefined {
    if (this.#objects !== null && this.#objects.has(key)) return this.#objects.get(key) as SessionValue<Key>
    const json = this.#json(key)
    if (json === undefined) return undefined
    const value = parseJson(json)
    if (typeof value === 'object' && value !== null) {
      if (this.#objects === null) this.#objects = new Map()
      this.#objects.set(key, value)
      ;(this.#read ??= new Set()).add(key)
    }
    return value
  }

  /**
   * Stores `value` under `key` (`undefined` deletes the key). Throws
   * `FST_SESSION_NOT_SERIALIZABLE` for what JSON cannot hold (and for a key
   * with a lone surrogate, which no store keeps as it is) and
   * `FST_SESSION_TOO_LARGE` when the session would outgrow `maxSessionSize`.
   */
  set<Key extends SessionKey> (key: Key, value: SessionValue<Key> | undefined): void {
    if (value === undefined) {
      this.delete(key)
      return
    }
    this.#writable()
    // UTF-8 has no form for half a surrogate pair: a store keeping text as UTF-8
    // (Redis, PostgreSQL, SQLite) would write U+FFFD, and two such keys become one
    if (!key.isWellFormed()) throw new FST_SESSION_NOT_SERIALIZABLE(key, 'the key holds a lone UTF-16 surrogate, which stores keeping UTF-8 cannot hold')
    const json = toJson(key, value)
    if (key === this.#manager.options.userKey) userOf(key, value)
    this.#change(key, json)
    this.#read?.delete(key)
    if (typeof value === 'object' && value !== null) {
      if (this.#objects === null) this.#objects = new Map()
      this.#objects.set(key, value)
    } else if (this.#objects !== null) {
      this.#objects.delete(key)
    }
  }

  has (key: SessionKey): boolean {
    return this.#json(key) !== undefined
  }

  delete (key: SessionKey): void {
    this.#writable()
    if (this.#json(key) === undefined) return
    this.#change(key, null)
    if (this.#objects !== null) this.#objects.delete(key)
    this.#read?.delete(key)
  }

  /** Removes every key. */
  clear (): void {
    this.#writable()
    this.#objects = null
    this.#read = null
    for (const key of this.keys()) this.#change(key, null)
  }

  /** The keys the session holds. */
  keys (): string[] {
    const keys: string[] = []
    for (const key of this.#stored().keys()) if (this.#pending?.get(key) !== null) keys.push(key)
    if (this.#pending !== null) {
      for (const [key, json] of this.#pending) if (json !== null && !this.#stored().has(key)) keys.push(key)
    }
    return keys
  }

  /** Refreshes the idle deadline in the store on this response, whatever `touchAfter` says. */
  touch (): void {
    this.#flags |= TOUCH
  }

  /**
   * Moves the session to a new id, keeping its data; the old id is destroyed
   * in the store before the response leaves. Call it when privileges change
   * (login), so an id planted before login is worthless after it.
   */
  async regenerate (): Promise<void> {
    this.#writable()
    this.#previousKey = this.#storedKey()
    this.#id = generateId()
    this.#key = null
    this.#flags |= REGENERATED
  }

  /**
   * Deletes the session in the store and clears the cookie on this response
   * (logout). Afterwards the session reads as empty and refuses changes.
   */
  async destroy (): Promise<void> {
    // a move under way decides which record there is to delete
    if (this.moving !== null) await this.moving
    if (this.#flags & DESTROYED) return
    // The session is only marked ended once the store has ended it: a failed
    // logout must not clear the cookie of a session that is still alive.
    if (this.#standIns !== null) {
      await Promise.all(this.#standIns.map((key) => this.#manager.destroyKey(key)))
    } else {
      const key = this.#storedKey()
      if (key !== null) await this.#manager.destroyKey(key)
    }
    this.ended()
  }

  /** Ends every other session of this session's user; answers how many ended. */
  async destroyOtherSessions (): Promise<number> {
    // the user is unknown while the session is: ending none would look like success
    this.assertLoaded()
    const user = this.destroyed ? this.#ownerAtDestroy : this.get(this.#manager.options.userKey)
    if (user === undefined || user === null) return 0
    return this.#manager.destroyUserSessions(user, { except: this })
  }

  /**
   * @internal Makes this empty session the stand-in for the one the store
   * failed to load, under one of `keys`: it is never saved, but `destroy()`
   * still ends every one of them (or rejects while the store is down).
   */
  standIn (keys: string[], err: Error): void {
    this.#standIns = keys
    this.#loadError = err
  }

  /**
   * @internal Whether `regenerate()` is still to move a stored record to the
   * new id, which the save would do.
   */
  get moveDue (): boolean {
    return (this.#flags & (REGENERATED | DESTROYED)) === REGENERATED && this.#previousKey !== null &&
      this.#loadError === null && !this.saved
  }

  /**
   * @internal The store now holds `record` under `key`, the new id's, ahead
   * of the save: the session goes on from there as a stored one, and the save
   * sends its cookie. Changes made while the record was being written stay
   * pending, and so does a `regenerate()` made meanwhile, now from `key`.
   */
  moved (record: StoredSession, key: string): void {
    this.#record = record
    const pending = this.#pending
    if (pending !== null) {
      for (const [name, json] of pending) if ((json ?? undefined) === record.data.get(name)) pending.delete(name)
      if (pending.size === 0) {
        // a size check set() left to the save has nothing left to measure: the record passed it
        this.#pending = null
        this.#sizeDeferred = false
      }
    }
    this.#flags |= MOVED
    if (key === this.key) {
      this.#previousKey = null
      this.#flags &= ~REGENERATED
    } else {
      this.#previousKey = key
    }
  }

  /**
   * @internal The save created the session's record under its own id (new,
   * or regenerated): what the request does after it, such as a `destroy()`
   * in `onResponse`, is about that record.
   */
  created (record: StoredSession): void {
    this.#record = record
    this.#previousKey = null
  }

  /**
   * @internal Marks the session ended: after `destroy()`, or when the record
   * `regenerate()` was to move had ended meanwhile (a logout elsewhere). Later
   * reads on this request see what the store now holds, nothing; changes are
   * refused, and the save clears the cookie.
   */
  ended (): void {
    this.#ownerAtDestroy = this.get(this.#manager.options.userKey)
    this.#flags |= DESTROYED
    this.#record = null
    this.#objects = null
    this.#read = null
    this.#pending = null
    this.#sizeDeferred = false
  }

  /** @internal Whether the session was moved to its new id before the save (the cookie is still to send). */
  get movedEarly (): boolean {
    return (this.#flags & MOVED) !== 0
  }

  /** @internal Whether this session stands in for one the store failed to load. */
  get unloaded (): boolean {
    return this.#loadError !== null
  }

  /**
   * @internal Throws when this session stands in for one the store failed to
   * load: which of the request's cookies it is, and whose, is unknown.
   */
  assertLoaded (): void {
    if (this.#loadError !== null) throw new FST_SESSION_STORE_UNAVAILABLE('the session could not be loaded on this request', { cause: this.#loadError })
  }

  /** @internal Whether `destroy()` was called. */
  get destroyed (): boolean {
    return (this.#flags & DESTROYED) !== 0
  }

  /** @internal Whether `regenerate()` was called. */
  get regenerated (): boolean {
    return (this.#flags & REGENERATED) !== 0
  }

  /** @internal Whether `touch()` was called. */
  get touchRequested (): boolean {
    return (this.#flags & TOUCH) !== 0
  }

  /** @internal What the store held when the request began. */
  get record (): StoredSession | null {
    return this.#record
  }

  /** @internal The key `regenerate()` moved away from. */
  get previousKey (): string | null {
    return this.#previousKey
  }

  /**
   * @internal The changes to save: objects changed in place are serialised
   * again and kept only where their JSON differs. `null` when nothing changed.
   */
  changes (): Map<string, string | null> | null {
    let changedInPlace = false
    if (this.#objects !== null) {
      // all in before the size is checked: one object may grow in place
      // while another shrinks, and only their sum must fit
      for (const [key, value] of this.#objects) {
        const json = toJson(key, value)
        if (json !== this.#json(key)) {
          (this.#pending ??= new Map()).set(key, json)
          changedInPlace = true
        }
      }
    }
    if (changedInPlace || this.#sizeDeferred) {
      const limit = this.#manager.options.maxSessionSize
      const size = this.#sizeOver(limit)
      if (size !== -1) throw new FST_SESSION_TOO_LARGE(size, limit)
    }
    return this.#pending
  }

  /** @internal Every key with its JSON text, once the changes are applied. */
  entries (): Map<string, string> {
    // a Map made from another walks it through the iterator protocol, empty or not
    const entries = this.#record === null ? new Map<string, string>() : new Map(this.#record.data)
    if (this.#pending !== null) {
      for (const [key, json] of this.#pending) {
        if (json === null) entries.delete(key)
        else entries.set(key, json)
      }
    }
    return entries
  }

  /** The key the store holds this session's record under, if it holds one. */
  #storedKey (): string | null {
    return this.#previousKey ?? (this.#record !== null ? this.key : null)
  }

  #stored (): ReadonlyMap<string, string> {
    return this.#record === null ? EMPTY : this.#record.data
  }

  #json (key: string): string | undefined {
    if (this.#pending !== null) {
      const json = this.#pending.get(key)
      if (json !== undefined) return json ?? undefined
    }
    return this.#stored().get(key)
  }

  #change (key: string, json: string | null): void {
    if (this.#pending === null) this.#pending = new Map()
    const before = this.#pending.get(key)
    this.#pending.set(key, json)
    if (json === null) return
    const limit = this.#manager.options.maxSessionSize
    const size = this.#sizeOver(limit)
    if (size === -1) return
    if (this.#holdsReadObjectsBesides(key)) {
      this.#sizeDeferred = true
      return
    }
    if (before === undefined) this.#pending.delete(key)
    else this.#pending.set(key, before)
    throw new FST_SESSION_TOO_LARGE(size, limit)
  }

  #holdsReadObjectsBesides (key: string): boolean {
    const read = this.#read
    return read !== null && read.size > (read.has(key) ? 1 : 0)
  }

  /**
   * The session's size (see #size) when it is over `limit`, else -1. Most
   * calls are settled by a bound from string lengths, which serialises no key
   * and measures no UTF-8: a UTF-16 unit takes at most 3 bytes of UTF-8, and
   * at most 6 characters of a JSON string (`\uXXXX`); a key both stored and
   * changed counts twice.
   */
  #sizeOver (limit: number): number {
    let bound = 2
    const add = (json: string | null, key: string): void => {
      if (json !== null) bound += 6 * key.length + 3 * json.length + 4
    }
    this.#stored().forEach(add)
    this.#pending?.forEach(add)
    if (bound <= limit) return -1
    const size = this.#size()
    return size > limit ? size : -1
  }

  /** Bytes of the session's JSON with the pending changes applied. */
  #size (): number {
    const pending = this.#pending as Map<string, string | null>
    let size = 2
    let count = 0
    for (const [key, json] of this.#stored()) {
      const change = pending.get(key)
      if (change === null) continue
      size += entrySize(key, change ?? json)
      count++
    }
    for (const [key, json] of pending) {
      if (json === null || this.#stored().has(key)) continue
      size += entrySize(key, json)
      count++
    }
    // a comma between entries; none at all once every key is deleted
    return size + Math.max(count - 1, 0)
  }

  #writable (): void {
    if (this.#flags & DESTROYED) throw new FST_SESSION_DESTROYED()
  }
}

/**
 * The owner a value under the user key names: a string (well-formed Unicode,
 * so that stores keeping UTF-8 tell owners apart) or a finite number,
 * compared as a string.
 */
export function userOf (key: string, value: unknown): string | null {
  if (value === null || value === undefined) return null
  if (typeof value === 'number' && Number.isFinite(value)) return String(value)
  if (typeof value === 'string' && value.isWellFormed()) return value
  throw new FST_SESSION_INVALID_USER(key)
}

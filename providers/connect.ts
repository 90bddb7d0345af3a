/**
 * A bridge to the session stores written for express-session (Connect):
 * connect-redis, connect-pg-simple, connect-mongo and the like, so an app
 * moving to Fastify can keep the store it already runs.
 *
 * Such a store only knows whole records: `get`, `set` (which overwrites) and
 * `destroy`, each under a session id. The plugin's store key is used as that
 * id, and every record is written in the shape express-session writes:
 *
 * ```js
 * {
 *   cookie: { originalMaxAge, maxAge, expires },   // the store takes its TTL from here
 *   fastifySessions: {
 *     data: [[key, jsonText], ...],                // the session's keys, never at the top level
 *     createdAt, lastSeenAt, expiresAt,            // epoch milliseconds
 *     user                                         // the owner, or null
 *   }
 * }
 * ```
 *
 * What it guarantees, and what a store with only these three calls cannot:
 *
 * - Reads are exact: values come back as the JSON texts that were written,
 *   deadlines to the millisecond, and a record past its `expiresAt` reads as
 *   missing however the store rounds its own TTL.
 * - The store expires records itself (from `cookie.expires`), so no sweep is
 *   needed or offered.
 * - `create` checks for a live record and then writes: two creates racing on
 *   one key can both succeed, the later one winning. Keys are 256-bit hashes
 *   of fresh random ids, so this takes a caller that reuses a key on purpose.
 * - `create` with `replaces` reads both records, deletes the old one, then
 *   writes the new one. Should the write fail, the session is gone rather
 *   than reachable under both ids.
 * - `update` reads the record, applies the patch and writes the whole record
 *   back. Two requests changing the same session at once can lose one's
 *   changes, even to different keys (last writer wins); and a `destroy`
 *   landing between an update's read and its write is undone by that write.
 *   Both windows are one store round trip long: a destroy that completed
 *   before the update began always holds.
 * - There is no user index: listing or ending a user's sessions is
 *   unsupported.
 */
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession } from '../lib/provider.js'

/** A Node-style callback, as express-session stores call them. */
export type ConnectCallback = (err?: unknown, value?: any) => void

/**
 * The part of an express-session store the bridge uses. Stores may also
 * return a promise; a rejection of it counts as a failure of the call.
 */
export interface ConnectStore {
  get (sid: string, callback: ConnectCallback): unknown
  set (sid: string, session: ConnectRecord, callback: ConnectCallback): unknown
  destroy (sid: string, callback: ConnectCallback): unknown
  /**
   * Never called: refreshing the deadline also changes `lastSeenAt`, which
   * lives inside the record, so every write goes through `set`.
   */
  touch? (sid: string, session: ConnectRecord, callback: ConnectCallback): unknown
}

/** Options of the `connect` provider. */
export interface ConnectProviderOptions {
  /**
   * An express-session store the application made, and keeps owning: the
   * provider never closes it. Required.
   * @default undefined
   */
  store: ConnectStore
}

/** The session as the bridge keeps it, under the record's `fastifySessions` field. */
export interface ConnectRecordBody {
  /** Each session key with the JSON text of its value. Pairs rather than an object, so no key is special. */
  data: Array<[string, string]>
  createdAt: number
  lastSeenAt: number
  expiresAt: number
  user: string | null
}

/** What the bridge hands the store's `set`. */
export interface ConnectRecord {
  /**
   * What stores read a record's lifetime from, as express-session writes it.
   * Both ages are the milliseconds left at the time of the write.
   */
  cookie: { originalMaxAge: number, maxAge: number, expires: Date }
  fastifySessions: ConnectRecordBody
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    connect: ConnectProviderOptions
  }
}

export const CONNECT_PROVIDER = 'connect'

const STORE_METHODS = ['get', 'set', 'destroy'] as const

/**
 * Calls `method` of `store` with a callback and answers its result. Besides
 * the callback, a rejected promise the store returns also fails the call, so
 * a store that rejects without calling back neither hangs the request nor
 * leaves an unhandled rejection.
 */
function callStore (store: ConnectStore, method: 'get' | 'destroy', sid: string): Promise<unknown>
function callStore (store: ConnectStore, method: 'set', sid: string, record: ConnectRecord): Promise<unknown>
function callStore (store: ConnectStore, method: keyof ConnectStore, sid: string, record?: ConnectRecord): Promise<unknown> {
  return new Promise(function call (resolve, reject) {
    function settle (err?: unknown, value?: unknown): void {
      if (err) reject(err)
      else resolve(value)
    }
    const returned: unknown = method === 'set'
      ? store.set(sid, record as ConnectRecord, settle)
      : store[method as 'get' | 'destroy'](sid, settle)
    if (typeof (returned as PromiseLike<unknown> | null)?.then === 'function') {
      (returned as PromiseLike<unknown>).then(undefined, reject)
    }
  })
}

/** express-session counts a store's `ENOENT` error as a missing session (file stores answer a miss so). */
function isMissing (err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'ENOENT'
}

/**
 * The bridge's part of what the store answered, or `null` when that is
 * nothing, not written by the bridge, or past its deadline.
 */
function liveBody (value: unknown, now: number): ConnectRecordBody | null {
  const body = (value as Partial<ConnectRecord> | null | undefined)?.fastifySessions
  if (typeof body !== 'object' || body === null || !Array.isArray(body.data) ||
    typeof body.createdAt !== 'number' || typeof body.lastSeenAt !== 'number' ||
    typeof body.expiresAt !== 'number' || body.expiresAt <= now) {
    return null
  }
  return body
}

/**
 * A `SessionProvider` over an express-session store. See the top of this
 * module for what it guarantees and what it cannot.
 */
export class ConnectProvider implements SessionProvider {
  /** The store the application handed in. */
  readonly store: ConnectStore

  constructor (options: ConnectProviderOptions) {
    const store = (options as Partial<ConnectProviderOptions> | undefined)?.store
    if (typeof store !== 'object' || store === null) {
      throw new FST_SESSION_PROVIDER_OPTION(CONNECT_PROVIDER, 'store must be an express-session store object')
    }
    for (const method of STORE_METHODS) {
      if (typeof store[method] !== 'function') {
        throw new FST_SESSION_PROVIDER_OPTION(CONNECT_PROVIDER, `the store has no ${method}() method`)
      }
    }
    this.store = store
  }

  async get (key: string): Promise<StoredSession | null> {
    const body = await this.#read(key)
    if (body === null) return null
    return { data: new Map(body.data), createdAt: body.createdAt, lastSeenAt: body.lastSeenAt, expiresAt: body.expiresAt }
  }

  async create (key: string, session: NewSession, replaces?: string): Promise<boolean> {
    if (await this.#read(key) !== null) return false
    if (replaces !== undefined) {
      if (await this.#read(replaces) === null) return false
      await callStore(this.store, 'destroy', replaces)
    }
    await this.#write(key, {
      data: [...session.data],
      createdAt: session.createdAt,
      lastSeenAt: session.lastSeenAt,
      expiresAt: session.expiresAt,
      user: session.user
    })
    return true
  }

  async update (key: string, patch: SessionPatch): Promise<boolean> {
    const body = await this.#read(key)
    if (body === null) return false
    let data = body.data
    if (patch.set !== null || patch.delete !== null) {
      const changed = new Map(data)
      if (patch.set !== null) for (const [name, json] of patch.set) changed.set(name, json)
      if (patch.delete !== null) for (const name of patch.delete) changed.delete(name)
      data = [...changed]
    }
    await this.#write(key, {
      data,
      createdAt: body.createdAt,
      lastSeenAt: patch.lastSeenAt,
      expiresAt: patch.expiresAt,
      user: patch.user === undefined ? body.user : patch.user
    })
    return true
  }

  async destroy (key: string): Promise<boolean> {
    const live = await this.#read(key) !== null
    // Deleted even when not live: a store that rounds its TTL up may still hold an expired record
    await callStore(this.store, 'destroy', key)
    return live
  }

  close (): void {
    // The store belongs to the application, which may share it with express
  }

  async #read (key: string): Promise<ConnectRecordBody | null> {
    let value: unknown
    try {
      value = await callStore(this.store, 'get', key)
    } catch (err) {
      if (isMissing(err)) return null
      throw err
    }
    return liveBody(value, Date.now())
  }

  #write (key: string, body: ConnectRecordBody): Promise<unknown> {
    const left = Math.max(0, body.expiresAt - Date.now())
    return callStore(this.store, 'set', key, {
      cookie: { originalMaxAge: left, maxAge: left, expires: new Date(body.expiresAt) },
      fastifySessions: body
    })
  }
}

export function createConnectProvider (options: ConnectProviderOptions): ConnectProvider {
  return new ConnectProvider(options)
}

registerProvider(CONNECT_PROVIDER, createConnectProvider)

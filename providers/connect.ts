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
 * - Within one provider (one process), the calls on a key run one after
 *   another: each of `create`, `update` and `destroy` is a read and then a
 *   write, and a call on the same key waits until the one before it has
 *   settled. Two requests of one client (two tabs) changing a session, a
 *   `regenerate()` racing another, or an update racing a logout therefore
 *   behave as with an atomic store.
 * - Across processes nothing is atomic: a `create` checks for a live record
 *   and then writes; a `create` with `replaces` reads both records, deletes
 *   the old one, then writes the new one (two processes replacing one record
 *   at once can both succeed, leaving the session under two ids); an
 *   `update` reads the record, applies the patch and writes the whole record
 *   back (two processes changing a session at once can lose one's changes,
 *   even to different keys, a touch included; a `destroy` landing between
 *   the read and the write is undone by that write).
 * - Every call has a deadline, `callTimeout`, over all its store calls: a
 *   store call unanswered by then fails the call, and a write is never sent
 *   after it. With `callTimeout` at or under the plugin's `storeTimeout`, a
 *   call the plugin has given up on (answering 503) writes nothing later.
 * - Should the write of a `create` with `replaces` fail, the session is gone
 *   rather than reachable under both ids.
 * - There is no user index: listing or ending a user's sessions is
 *   unsupported.
 */
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
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

  /**
   * Milliseconds one provider call (its reads and its write together) may
   * take; a store call unanswered by then fails it, and no write is sent
   * after it. Keep it at or under the plugin's `storeTimeout`, so that a
   * call the plugin gave up on writes nothing later; at most 2147483647.
   * @default 1500
   */
  callTimeout?: number | undefined
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
 * Calls `method` of `store` with a callback and answers its result, failing
 * once `deadline` (epoch milliseconds) passes, and at once, without calling
 * the store, when it has passed already. Besides the callback, a rejected
 * promise the store returns also fails the call, so a store that rejects
 * without calling back neither hangs the request nor leaves an unhandled
 * rejection.
 */
function callStore (store: ConnectStore, deadline: number, method: 'get' | 'destroy', sid: string): Promise<unknown>
function callStore (store: ConnectStore, deadline: number, method: 'set', sid: string, record: ConnectRecord): Promise<unknown>
function callStore (store: ConnectStore, deadline: number, method: keyof ConnectStore, sid: string, record?: ConnectRecord): Promise<unknown> {
  return new Promise(function call (resolve, reject) {
    const left = deadline - Date.now()
    if (left <= 0) {
      reject(new Error(`the call's ${CONNECT_PROVIDER} callTimeout passed before the store's ${method}() was sent`))
      return
    }
    const timer = setTimeout(function late () {
      reject(new Error(`the store did not answer ${method}() within the ${CONNECT_PROVIDER} callTimeout`))
    }, left)
    function fail (err: unknown): void {
      clearTimeout(timer)
      reject(err)
    }
    function settle (err?: unknown, value?: unknown): void {
      if (err) {
        fail(err)
        return
      }
      clearTimeout(timer)
      resolve(value)
    }
    let returned: unknown
    try {
      returned = method === 'set'
        ? store.set(sid, record as ConnectRecord, settle)
        : store[method as 'get' | 'destroy'](sid, settle)
    } catch (err) {
      fail(err)
      return
    }
    if (typeof (returned as PromiseLike<unknown> | null)?.then === 'function') {
      (returned as PromiseLike<unknown>).then(undefined, fail)
    }
  })
}

function settled (): void {}

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
  readonly callTimeout: number
  /** The last call queued on each key: the next call on that key starts once it has settled. */
  readonly #tails = new Map<string, Promise<void>>()

  constructor (options: ConnectProviderOptions) {
    checkOptionNames(CONNECT_PROVIDER, options, ['store', 'callTimeout'])
    const { store, callTimeout = 1500 } = (options ?? {}) as Partial<ConnectProviderOptions>
    if (typeof store !== 'object' || store === null) {
      throw new FST_SESSION_PROVIDER_OPTION(CONNECT_PROVIDER, 'store must be an express-session store object')
    }
    for (const method of STORE_METHODS) {
      if (typeof store[method] !== 'function') {
        throw new FST_SESSION_PROVIDER_OPTION(CONNECT_PROVIDER, `the store has no ${method}() method`)
      }
    }
    if (typeof callTimeout !== 'number' || !(callTimeout > 0) || callTimeout > 2 ** 31 - 1) {
      throw new FST_SESSION_PROVIDER_OPTION(CONNECT_PROVIDER, 'callTimeout must be a number of milliseconds above 0, at most 2147483647')
    }
    this.store = store
    this.callTimeout = callTimeout
  }

  async get (key: string): Promise<StoredSession | null> {
    const body = await this.#read(key, Date.now() + this.callTimeout)
    if (body === null) return null
    return { data: new Map(body.data), createdAt: body.createdAt, lastSeenAt: body.lastSeenAt, expiresAt: body.expiresAt }
  }

  create (key: string, session: NewSession, replaces?: string): Promise<boolean> {
    return this.#serial(replaces === undefined ? [key] : [key, replaces], async (deadline) => {
      if (await this.#read(key, deadline) !== null) return false
      if (replaces !== undefined) {
        if (await this.#read(replaces, deadline) === null) return false
        await callStore(this.store, deadline, 'destroy', replaces)
      }
      await this.#write(key, deadline, {
        data: [...session.data],
        createdAt: session.createdAt,
        lastSeenAt: session.lastSeenAt,
        expiresAt: session.expiresAt,
        user: session.user
      })
      return true
    })
  }

  update (key: string, patch: SessionPatch): Promise<boolean> {
    return this.#serial([key], (deadline) => this.#update(key, patch, deadline))
  }

  destroy (key: string): Promise<boolean> {
    return this.#serial([key], async (deadline) => {
      const live = await this.#read(key, deadline) !== null
      // Deleted even when not live: a store that rounds its TTL up may still hold an expired record
      await callStore(this.store, deadline, 'destroy', key)
      return live
    })
  }

  close (): void {
    // The store belongs to the application, which may share it with express
  }

  /**
   * Runs `work` once every call queued before it on any of `keys` has
   * settled. Its deadline runs from now, not from when it starts: the
   * plugin's `storeTimeout` runs from now too.
   */
  #serial<T> (keys: readonly string[], work: (deadline: number) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.callTimeout
    const before: Array<Promise<void>> = []
    for (const key of keys) {
      const tail = this.#tails.get(key)
      if (tail !== undefined) before.push(tail)
    }
    const run = before.length === 0 ? work(deadline) : Promise.all(before).then(() => work(deadline))
    const tail = run.then(settled, settled)
    for (const key of keys) this.#tails.set(key, tail)
    tail.then(() => {
      for (const key of keys) if (this.#tails.get(key) === tail) this.#tails.delete(key)
    })
    return run
  }

  async #update (key: string, patch: SessionPatch, deadline: number): Promise<boolean> {
    const body = await this.#read(key, deadline)
    if (body === null) return false
    let data = body.data
    if (patch.set !== null || patch.delete !== null) {
      const changed = new Map(data)
      if (patch.set !== null) for (const [name, json] of patch.set) changed.set(name, json)
      if (patch.delete !== null) for (const name of patch.delete) changed.delete(name)
      data = [...changed]
    }
    await this.#write(key, deadline, {
      data,
      createdAt: body.createdAt,
      lastSeenAt: patch.lastSeenAt,
      expiresAt: patch.expiresAt,
      user: patch.user === undefined ? body.user : patch.user
    })
    return true
  }

  async #read (key: string, deadline: number): Promise<ConnectRecordBody | null> {
    let value: unknown
    try {
      value = await callStore(this.store, deadline, 'get', key)
    } catch (err) {
      if (isMissing(err)) return null
      throw err
    }
    return liveBody(value, Date.now())
  }

  #write (key: string, deadline: number, body: ConnectRecordBody): Promise<unknown> {
    const left = Math.max(0, body.expiresAt - Date.now())
    return callStore(this.store, deadline, 'set', key, {
      cookie: { originalMaxAge: left, maxAge: left, expires: new Date(body.expiresAt) },
      fastifySessions: body
    })
  }
}

export function createConnectProvider (options: ConnectProviderOptions): ConnectProvider {
  return new ConnectProvider(options)
}

registerProvider(CONNECT_PROVIDER, createConnectProvider)

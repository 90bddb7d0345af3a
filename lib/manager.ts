import { createHash, createHmac } from 'node:crypto'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { CookieSigner, CookieWriter, findCookie, lastFound, MAX_COOKIE_LENGTH, VerifiedCookies, type VerifiedCookie } from './cookie.js'
import { FST_SESSION_COOKIE_TOO_LARGE, FST_SESSION_INVALID_USER, FST_SESSION_STORE_UNAVAILABLE, FST_SESSION_UNSUPPORTED } from './errors.js'
import { isWellFormedId, storeKey } from './id.js'
import type { ResolvedOptions } from './options.js'
import { isStateless, type NewSession, type SealedSession, type SessionPatch, type SessionProvider, type StatelessSessionProvider, type StoredSession } from './provider.js'
import { Session, userOf } from './session.js'

/** One session of a user, as `listUserSessions` shows it. Times are epoch milliseconds. */
export interface UserSessionEntry {
  /** Names the session for `destroyUserSession`; unguessable, and useless as a cookie. */
  handle: string
  createdAt: number
  /** The last time the idle deadline was written (a write, or a throttled touch). */
  lastSeenAt: number
  expiresAt: number
  /** The values of the `userInfoKeys` the session holds. */
  info: Record<string, unknown>
}

type Settled<T> = T | Promise<T>

function isPromise<T> (value: Settled<T>): value is Promise<T> {
  return typeof (value as Promise<T> | null)?.then === 'function'
}

/** How many verified cookies are remembered: about 2 MB at most. */
const VERIFIED_COOKIES = 10_000

/** 22 base64url characters: 132 bits of the keyed hash. */
const HANDLE_LENGTH = 22

/**
 * The seed's Manager, as `fastify.sessions`: it owns the provider, turns
 * cookies into sessions and sessions back into store writes and cookies.
 */
export class SessionManager {
  /** The live provider instance; it may be handed to another app as its `provider`. */
  readonly provider: SessionProvider | StatelessSessionProvider
  /** @internal The resolved options but the secrets, which only the signer and the handle keys hold. */
  readonly options: Omit<ResolvedOptions, 'secrets'>
  readonly #signer: CookieSigner
  readonly #writer: CookieWriter
  /** One per secret, the first making handles: while secrets rotate, instances on either list must understand each other's. */
  readonly #handleKeys: Buffer[]
  readonly #cookies: VerifiedCookies
  /** The store behind a stateful provider; `null` when sessions live in the cookie. */
  readonly #store: SessionProvider | null
  readonly #sealer: StatelessSessionProvider | null

  /** Made by the plugin; applications use `fastify.sessions`. */
  constructor (provider: SessionProvider | StatelessSessionProvider, options: ResolvedOptions) {
    this.provider = provider
    this.#store = isStateless(provider) ? null : provider
    this.#sealer = isStateless(provider) ? provider : null
    // `fastify.sessions` is a public object: logged or serialised, it must not show the secrets
    const { secrets, ...rest } = options
    this.options = rest
    this.#signer = new CookieSigner(secrets)
    this.#writer = new CookieWriter(options.cookieName, options.cookie)
    this.#handleKeys = secrets.map((secret) => createHash('sha256').update('fastify-sessions handle\0' + secret).digest())
    this.#cookies = new VerifiedCookies(this.#signer, VERIFIED_COOKIES)
  }

  /**
   * Deletes the session with this id. Answers whether a live one was
   * deleted; what is not a session id (not a string, or not the shape of
   * one) names no session, so nothing is deleted.
   */
  async destroy (id: string): Promise<boolean> {
    if (typeof id !== 'string' || !isWellFormedId(id)) return false
    return this.destroyKey(storeKey(id))
  }

  /** Runs a sweep now, if the provider needs them; answers how many sessions it removed. */
  async gc (): Promise<number> {
    const gc = this.#store?.gc
    if (gc === undefined) return 0
    return this.#call(() => gc.call(this.provider))
  }

  /** The live sessions of `userId`, most recently seen first. */
  async listUserSessions (userId: string | number): Promise<UserSessionEntry[]> {
    const user = this.#user(userId)
    const listByUser = this.#store?.listByUser
    if (listByUser === undefined) throw new FST_SESSION_UNSUPPORTED('listing sessions by user', 'it has no listByUser()')
    const records = await this.#call(() => listByUser.call(this.provider, user, this.options.userInfoKeys))
    const now = Date.now()
    return records
      .filter((record) => this.#live(record, now))
      .sort((a, b) => b.lastSeenAt - a.lastSeenAt)
      .map((record) => ({
        handle: this.handleOf(record.key),
        createdAt: record.createdAt,
        lastSeenAt: record.lastSeenAt,
        expiresAt: record.expiresAt,
        info: Object.fromEntries([...record.info].map(([key, json]) => [key, JSON.parse(json)]))
      }))
  }

  /**
   * Ends every session of `userId` but the one named by `except` (a session,
   * such as `request.session`, or a handle); answers how many ended.
   */
  async destroyUserSessions (userId: string | number, options: { except?: Session | string | undefined } = {}): Promise<number> {
    const user = this.#user(userId)
    const destroyByUser = this.#store?.destroyByUser
    if (destroyByUser === undefined) throw new FST_SESSION_UNSUPPORTED('ending sessions by user', 'it has no destroyByUser()')
    // null from JavaScript callers means no options, as undefined does
    const { except } = options ?? {}
    const end = (exceptKey?: string): Promise<number> => this.#call(() => destroyByUser.call(this.provider, user, exceptKey))
    let exceptKey: string | undefined
    if (except instanceof Session) {
      // which session to spare is unknown: ending them all would end this one
      except.assertLoaded()
      // another call of this request is moving it: its outcome decides
      if (except.moving !== null) await except.moving
      // A regenerated session moves to its new id when it is saved. Sparing
      // its old record until then would leave a window: another request
      // holding the old cookie could move the session first (its own
      // regenerate()) and escape, and a logout everywhere run meanwhile could
      // not see the new one. So the move happens now, and the others end
      // after it; if the old record had ended already, all of them end.
      if (except.moveDue) return await this.#moveThenEnd(except, end)
      // saved, a regenerated session is under its new id
      exceptKey = except.saved && except.regenerated ? except.key : except.previousKey ?? except.key
    } else if (typeof except === 'string') {
      exceptKey = await this.#keyOfHandle(user, except)
    }
    return await end(exceptKey)
  }

  /** Ends the session of `userId` that `handle` names; answers whether it ended one. */
  async destroyUserSession (userId: string | number, handle: string): Promise<boolean> {
    const user = this.#user(userId)
    const key = await this.#keyOfHandle(user, handle)
    // still theirs when it goes: it may have changed hands since the listing
    return key === undefined ? false : this.destroyKey(key, user)
  }

  /** @internal */
  handleOf (key: string, handleKey = this.#handleKeys[0]): string {
    return createHmac('sha256', handleKey).update(key).digest('base64url').slice(0, HANDLE_LENGTH)
  }

  /**
   * @internal The session a request gets when loading failed and
   * `onStoreError` is `'continue'`: empty and never saved, standing in for
   * the one its cookie names so that `destroy()` can still end it.
   */
  unloaded (request: FastifyRequest, err: Error): Session {
    // Whichever read failed, a load that went through might have settled on
    // any of the request's verified cookies (see #loaded): a logout ends all.
    const keys: string[] = []
    const header = request.headers.cookie
    if (this.#store !== null && header !== undefined) {
      let cookie = this.#verified(header)
      while (cookie !== null) {
        if (!keys.includes(cookie.key)) keys.push(cookie.key)
        cookie = this.#verified(header, lastFound.end, lastFound.tries)
      }
    }
    const session = new Session(this, null, null, null, Date.now(), false)
    session.standIn(keys, err)
    return session
  }

  /** @internal The deadline of a session created at `createdAt`, used at `now`. */
  deadline (createdAt: number, now: number): number {
    return Math.min(now + this.options.idleMs, createdAt + this.options.absoluteMs)
  }

  /** @internal */
  async destroyKey (key: string, owner?: string): Promise<boolean> {
    const store = this.#store
    if (store === null) return false
    return this.#call(() => store.destroy(key, owner))
  }

  /**
   * @internal The request's session, synchronously when the store answers
   * synchronously. A store failure is thrown or rejected as
   * `FST_SESSION_STORE_UNAVAILABLE`.
   */
  load (request: FastifyRequest): Session | Promise<Session> {
    const now = Date.now()
    const header = request.headers.cookie
    if (this.#sealer !== null) {
      try {
        return this.#open(header, now)
      } catch (err) {
        throw storeError(err)
      }
    }
    const cookie = header === undefined ? null : this.#verified(header)
    if (cookie === null) return new Session(this, null, null, null, now, false)
    return this.#fetch(header as string, cookie, lastFound.end, lastFound.tries, now, null)
  }

  /**
   * The session of `cookie`, found in `header` before offset `end` after
   * `tries` values, or of a later one when that session has ended. `read`
   * holds the keys read before, once there were any.
   */
  #fetch (header: string, cookie: VerifiedCookie, end: number, tries: number, now: number, read: string[] | null): Session | Promise<Session> {
    let found: Settled<StoredSession | null>
    try {
      found = (this.#store as SessionProvider).get(cookie.key)
    } catch (err) {
      throw storeError(err)
    }
    if (!isPromise(found)) return this.#loaded(found, header, cookie, end, tries, now, read)
    return this.#timed(found).then((record) => this.#loaded(record, header, cookie, end, tries, now, read))
  }

  /**
   * @internal Writes what the request changed and sets the cookie; returns a
   * promise only when a store call is under way. Throws the coded error of a
   * session that cannot be saved (size, serialisation) and
   * `FST_SESSION_STORE_UNAVAILABLE` for a store failure.
   */
  save (session: Session, request: FastifyRequest, reply: FastifyReply): Promise<void> | undefined {
    // a move the handler did not wait for decides what there is to save
    if (session.moving !== null) return session.moving.then(() => this.save(session, request, reply))
    if (session.destroyed) {
      this.#setCookie(reply, request, null)
      return
    }
    if (session.unloaded) return
    // moved ahead of the save (and not regenerated again since), the session
    // is stored under its new id whatever happens next
    const moved = session.movedEarly && !session.regenerated
    if (moved) this.#setCookie(reply, request, session.id)
    const changes = session.changes()
    if (this.#sealer !== null) {
      this.#seal(this.#sealer, session, changes, request, reply)
      return
    }
    const record = session.record
    if (record === null || session.regenerated) {
      if (changes === null && !session.regenerated) return
      return this.#create(session, request, reply)
    }
    const now = Date.now()
    const expiresAt = this.deadline(record.createdAt, now)
    // A request that only reads writes nothing until touchAfter has passed,
    // nor once the absolute deadline caps the idle one.
    if (changes === null && !session.touchRequested &&
      (now - record.lastSeenAt < this.options.touchAfterMs || expiresAt === record.expiresAt)) {
      if (session.renew && !moved) this.#setCookie(reply, request, session.id)
      return
    }
    let updated: Settled<boolean>
    try {
      updated = (this.#store as SessionProvider).update(session.key, this.#patch(changes, now, expiresAt, record.data.has(this.options.userKey)))
    } catch (err) {
      throw storeError(err)
    }
    if (!isPromise(updated)) {
      this.#updated(updated, session, request, reply)
      return
    }
    return this.#timed(updated).then((answer) => this.#updated(answer, session, request, reply))
  }

  /** @internal Logs a store failure once, at warn level, with its cause. */
  warn (log: FastifyBaseLogger, err: Error, what: string): void {
    log.warn({ err: err.cause }, `session store unavailable while ${what}: ${err.message}`)
  }

  #open (header: string | undefined, now: number): Session {
    if (header === undefined) return new Session(this, null, null, null, now, false)
    const sealer = this.#sealer as StatelessSessionProvider
    // one that opens but has ended by the lifetimes configured now gives way to a later one, as in load()
    const opened = findCookie(header, this.options.cookieName, (value) => {
      const sealed = sealer.open(value)
      return sealed !== null && this.#live(sealed.session, now) ? sealed : null
    })
    if (opened === null) return new Session(this, null, null, null, now, false)
    return new Session(this, opened.session.id, null, opened.session, now, opened.renew)
  }

  /** Seals the whole session into the cookie when it changed, is due a touch, or was opened by an older key. */
  #seal (sealer: StatelessSessionProvider, session: Session, changes: Map<string, string | null> | null, request: FastifyRequest, reply: FastifyReply): void {
    const record = session.record
    const now = Date.now()
    const due = record === null
      ? changes !== null || session.regenerated
      : changes !== null || session.regenerated || session.renew || session.touchRequested ||
        now - record.lastSeenAt >= this.options.touchAfterMs
    if (!due) return
    const data = session.entries()
    if (record === null && data.size === 0) return
    const sealed: SealedSession = {
      id: session.id,
      data,
      createdAt: session.createdAt,
      lastSeenAt: now,
      expiresAt: this.deadline(session.createdAt, now)
    }
    let value: string
    try {
      value = sealer.seal(sealed)
    } catch (err) {
      throw storeError(err)
    }
    const length = this.options.cookieName.length + 1 + value.length
    if (length > MAX_COOKIE_LENGTH) throw new FST_SESSION_COOKIE_TOO_LARGE(length, MAX_COOKIE_LENGTH)
    this.#setCookie(reply, request, value, false)
  }

  /**
   * Stores a regenerated session under its new id at once, replacing its old
   * record, then `end`s the user's other sessions, sparing the new key, or
   * none when the old record had ended and the session is now marked ended.
   * Until both are done, `session.moving` holds the request's other session
   * calls back: one that moved the session on meanwhile would otherwise have
   * its record ended as one of the others.
   */
  #moveThenEnd (session: Session, end: (exceptKey?: string) => Promise<number>): Promise<number> {
    const work = this.#moveNow(session).then((key) => end(key ?? undefined))
    const done = (): void => { session.moving = null }
    session.moving = work.then(done, done)
    return work
  }

  /** Answers the key the session now lives under, or `null` when its old record had ended (it is then marked ended). */
  async #moveNow (session: Session): Promise<string | null> {
    session.changes()
    const key = session.key
    const record = this.#newRecord(session, session.entries())
    const store = this.#store as SessionProvider
    const created = await this.#call(() => store.create(key, record, session.previousKey ?? undefined))
    if (!created) {
      session.ended()
      return null
    }
    session.moved(record, key)
    return key
  }

  /** The record a session is created with, holding `data`. */
  #newRecord (session: Session, data: Map<string, string>): NewSession {
    const now = Date.now()
    const userJson = data.get(this.options.userKey)
    return {
      data,
      createdAt: session.createdAt,
      lastSeenAt: now,
      expiresAt: this.deadline(session.createdAt, now),
      user: userJson === undefined ? null : userOf(this.options.userKey, JSON.parse(userJson))
    }
  }

  #create (session: Session, request: FastifyRequest, reply: FastifyReply): Promise<void> | undefined {
    const data = session.entries()
    const replaces = session.previousKey ?? undefined
    if (data.size === 0 && replaces === undefined) return
    const record = this.#newRecord(session, data)
    let created: Settled<boolean>
    try {
      created = (this.#store as SessionProvider).create(session.key, record, replaces)
    } catch (err) {
      throw storeError(err)
    }
    if (!isPromise(created)) {
      this.#created(created, session, record, request, reply)
      return
    }
    return this.#timed(created).then((answer) => this.#created(answer, session, record, request, reply))
  }

  #created (created: boolean, session: Session, record: NewSession, request: FastifyRequest, reply: FastifyReply): void {
    if (!created) {
      dropped(request)
      return
    }
    // a destroy() after the save (in onResponse) must find the new record
    session.created(record)
    this.#setCookie(reply, request, session.id)
  }

  /** The next cookie of ours in `header` that verifies, from offset `from` after `tried` values (see `findCookie`). */
  #verified (header: string, from = 0, tried = 0): VerifiedCookie | null {
    return findCookie(header, this.options.cookieName, this.#cookies.verify, from, tried)
  }

  #loaded (record: StoredSession | null, header: string, cookie: VerifiedCookie, end: number, tries: number, now: number, readBefore: string[] | null): Session | Promise<Session> {
    if (record !== null && this.#live(record, now)) return new Session(this, cookie.id, cookie.key, record, now, cookie.renew)
    // A cookie of ours whose session ended may come before a live one: one
    // left on another path or domain by earlier cookie settings, which the
    // clearing cookie of a logout does not reach. Stopping at it would make
    // a fresh session of every request, so that no login could stick.
    const read = readBefore ?? [cookie.key]
    let next = this.#verified(header, end, tries)
    // a value repeated in the header is read once
    while (next !== null && read.includes(next.key)) next = this.#verified(header, lastFound.end, lastFound.tries)
    if (next === null) return new Session(this, null, null, null, now, false)
    read.push(next.key)
    return this.#fetch(header, next, lastFound.end, lastFound.tries, now, read)
  }

  /** A write to a session destroyed meanwhile is dropped: no cookie refers to it. */
  #updated (updated: boolean, session: Session, request: FastifyRequest, reply: FastifyReply): void {
    if (!updated) {
      dropped(request)
      return
    }
    if (!session.movedEarly && (session.renew || this.options.cookie.maxAge !== undefined)) this.#setCookie(reply, request, session.id)
  }

  #patch (changes: Map<string, string | null> | null, lastSeenAt: number, expiresAt: number, owned: boolean): SessionPatch {
    if (changes === null) return { set: null, delete: null, lastSeenAt, expiresAt, owned }
    let set: Map<string, string> | null = null
    let deleted: string[] | null = null
    let user: string | null | undefined
    for (const [key, json] of changes) {
      if (json === null) {
        if (deleted === null) deleted = []
        deleted.push(key)
      } else {
        if (set === null) set = new Map()
        set.set(key, json)
      }
      if (key === this.options.userKey) user = json === null ? null : userOf(key, JSON.parse(json))
    }
    return { set, delete: deleted, user, lastSeenAt, expiresAt, owned }
  }

  /** Sets the session cookie to the signed `id`, or clears it when `id` is `null`. */
  #setCookie (reply: FastifyReply, request: FastifyRequest, id: string | null, sign = true): void {
    const secure = this.#writer.isSecure(request)
    const value = id === null ? null : sign ? this.#signer.sign(id) : id
    reply.header('set-cookie', value === null ? this.#writer.serializeClear(secure) : this.#writer.serialize(value, secure))
    reply.header('cache-control', 'no-store')
  }

  /** Whether a stored record is still live under the current lifetimes, which may be shorter than when it was written. */
  #live (record: Pick<StoredSession, 'createdAt' | 'lastSeenAt' | 'expiresAt'>, now: number): boolean {
    return record.expiresAt > now &&
      record.createdAt + this.options.absoluteMs > now &&
      record.lastSeenAt + this.options.idleMs > now
  }

  #user (userId: unknown): string {
    const user = userId === null ? undefined : userOf(this.options.userKey, userId)
    if (typeof user !== 'string') throw new FST_SESSION_INVALID_USER(this.options.userKey)
    return user
  }

  async #keyOfHandle (user: string, handle: string): Promise<string | undefined> {
    if (typeof handle !== 'string' || handle.length !== HANDLE_LENGTH) return undefined
    const listByUser = this.#store?.listByUser
    if (listByUser === undefined) throw new FST_SESSION_UNSUPPORTED('listing sessions by user', 'it has no listByUser()')
    const records = await this.#call(() => listByUser.call(this.provider, user, []))
    const now = Date.now()
    // as listUserSessions, which hands out the handles, sees the sessions
    // the current secret first: a handle made under an older one is the exception
    for (const handleKey of this.#handleKeys) {
      const found = records.find((record) => this.#live(record, now) && this.handleOf(record.key, handleKey) === handle)
      if (found !== undefined) return found.key
    }
    return undefined
  }

  /**
   * Runs a provider call under `storeTimeout`, turning every failure but a
   * provider's `FST_SESSION_UNSUPPORTED` into `FST_SESSION_STORE_UNAVAILABLE`
   * with the original error as its cause.
   */
  async #call<T> (operation: () => Settled<T>): Promise<T> {
    let result: Settled<T>
    try {
      result = operation()
    } catch (err) {
      throw storeError(err)
    }
    return isPromise(result) ? this.#timed(result) : result
  }

  /** `pending`, failing as `#call` says when it rejects, and with `FST_SESSION_STORE_UNAVAILABLE` when it takes longer than `storeTimeout`. */
  #timed<T> (pending: Promise<T>): Promise<T> {
    const timeout = this.options.storeTimeout
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(unavailable(new Error(`no answer within ${timeout} ms`))), timeout)
      pending.then((value) => {
        clearTimeout(timer)
        resolve(value)
      }, (err: unknown) => {
        clearTimeout(timer)
        reject(storeError(err))
      })
    })
  }
}

/**
 * A write the store refused because the session had ended since it was
 * loaded: destroyed (a logout elsewhere), moved by another request's
 * regenerate(), or past its deadline. The response still goes out, without
 * a session cookie; the line lets an operator see why a change did not stick.
 */
function dropped (request: FastifyRequest): void {
  request.log.info('session ended before the save (destroyed, moved or expired meanwhile): the changes of this request were dropped')
}

/** @internal Whether `err` is a store failure rather than a fault of the session itself. */
export function isStoreFailure (err: unknown): err is Error {
  return err instanceof FST_SESSION_STORE_UNAVAILABLE
}

/**
 * A provider call's failure as the plugin reports it: a provider refusing
 * what it cannot do stays `FST_SESSION_UNSUPPORTED` (a fault of the request,
 * answered 500); anything else is the store failing.
 */
function storeError (err: unknown): Error {
  return err instanceof FST_SESSION_UNSUPPORTED ? err : unavailable(err)
}

function unavailable (cause: unknown): Error {
  const message = cause instanceof Error ? cause.message : String(cause)
  return new FST_SESSION_STORE_UNAVAILABLE(message, { cause })
}

/**
 * The contract between the session plugin and a storage provider.
 *
 * The plugin does all the session logic (ids, cookies, deadlines, change
 * tracking); a provider only stores records. Every method may answer
 * synchronously or with a promise: the plugin always awaits.
 *
 * Guarantees every provider must keep (the conformance kit in
 * `fastify-sessions/testing` checks each one):
 * - Keys are opaque strings the plugin derives from the session id with
 *   SHA-256 (43 base64url characters). A provider never sees a session id.
 * - A missing record and an expired one look the same (`null`, `false`, 0);
 *   an exception or rejection means a real fault of the store.
 * - `update` applies only the top-level keys it names, atomically, and only
 *   to a record that still exists and has not expired.
 * - `create` never overwrites an existing record.
 * - Deadlines are absolute epoch milliseconds and travel with every write,
 *   so stores with native expiry need no sweep.
 * - Values are JSON texts in the form `JSON.stringify` writes them; a
 *   provider returns each text as it was given. (One that keeps values in a
 *   JSON type of the store may answer another text of the same value for a
 *   text in another form, `1.0` or `"\u00e9"`, which the plugin never writes.)
 */
export interface SessionProvider {
  /**
   * The live record under `key`, or `null` when there is none or its
   * `expiresAt` has passed. The plugin never mutates what this returns.
   */
  get (key: string): Promise<StoredSession | null> | StoredSession | null

  /**
   * Stores a new record. Answers `false`, changing nothing, when a live
   * record already exists under `key`.
   *
   * With `replaces`, the record under that key is deleted in the same step
   * (this is how `regenerate()` moves a session to a new id); if that record
   * no longer exists (destroyed or expired meanwhile) nothing is created and
   * the answer is `false`.
   */
  create (key: string, session: NewSession, replaces?: string): Promise<boolean> | boolean

  /**
   * Applies a change to a live record atomically: sets the keys in
   * `patch.set`, removes those in `patch.delete`, and stores the new
   * deadlines and owner. Answers `false` and writes nothing when the record
   * no longer exists or has expired, so a late write never resurrects a
   * destroyed session. A patch with no keys is a touch.
   */
  update (key: string, patch: SessionPatch): Promise<boolean> | boolean

  /**
   * Deletes the record. Answers whether a live record was deleted. With
   * `owner`, which the plugin passes only to providers that have
   * `listByUser`, deletes it only if that user owns it, in the same step:
   * a session that changed hands since it was listed is left alone.
   */
  destroy (key: string, owner?: string): Promise<boolean> | boolean

  /**
   * Removes expired records and answers how many it removed. Providers whose
   * store expires records natively leave this out; the plugin then never
   * schedules a sweep.
   */
  gc? (): Promise<number> | number

  /**
   * The live records owned by `user`, each with the values of `infoKeys`
   * (those present). Its cost follows that user's number of sessions, never
   * the total. Providers that cannot index sessions by user leave it out.
   */
  listByUser? (user: string, infoKeys: readonly string[]): Promise<UserSessionRecord[]> | UserSessionRecord[]

  /**
   * Deletes every live record owned by `user`, except the one under
   * `exceptKey`, and answers how many it deleted.
   */
  destroyByUser? (user: string, exceptKey?: string): Promise<number> | number

  /**
   * Releases what the provider opened itself (connections, files). Calling
   * it twice is harmless. Clients the application handed in stay open.
   */
  close? (): Promise<void> | void
}

/** A record as the store returns it. */
export interface StoredSession {
  /** Top-level session keys and the JSON text of each value. */
  readonly data: ReadonlyMap<string, string>
  /** Epoch milliseconds when the session was created. */
  readonly createdAt: number
  /** Epoch milliseconds of the last write of the idle deadline. */
  readonly lastSeenAt: number
  /** Epoch milliseconds after which the record is gone: the earlier of the idle and the absolute deadline. */
  readonly expiresAt: number
}

/** A record to create. */
export interface NewSession extends StoredSession {
  /** The owner (see the `userKey` option), or `null` when nobody owns the session. */
  readonly user: string | null
}

/** A change to an existing record. */
export interface SessionPatch {
  /** Keys to set, with the JSON text of each value; `null` when none. */
  readonly set: ReadonlyMap<string, string> | null
  /** Keys to remove; `null` when none. */
  readonly delete: readonly string[] | null
  /** The new owner; `undefined` leaves it as it is, `null` removes it. */
  readonly user?: string | null
  /**
   * Whether the record had an owner when the plugin read it, before this
   * patch. A hint only (another request may have changed the owner since):
   * a provider may pick a cheaper write for an unowned record, but must
   * still keep its user index right when the hint turns out wrong.
   * `undefined` when unknown.
   */
  readonly owned?: boolean
  /** The new `lastSeenAt` (epoch milliseconds). */
  readonly lastSeenAt: number
  /** The new `expiresAt` (epoch milliseconds). */
  readonly expiresAt: number
}

/** One live session of a user, as `listByUser` returns it. */
export interface UserSessionRecord {
  /** The record's key. */
  readonly key: string
  readonly createdAt: number
  readonly lastSeenAt: number
  readonly expiresAt: number
  /** The requested info keys that the session holds, as JSON texts. */
  readonly info: ReadonlyMap<string, string>
}

/**
 * Makes a provider from its options. May be async (to connect or to create a
 * table). Registered under a name with `registerProvider`.
 */
export type ProviderFactory<Options = any> = (options: Options) =>
  Promise<SessionProvider | StatelessSessionProvider> | SessionProvider | StatelessSessionProvider

/**
 * A provider that keeps the whole session inside the cookie, sealed, instead
 * of in a store (no server-side state). The plugin hands it every record to
 * seal and every cookie value to open; ids, signing and the store key are not
 * used. Such a session cannot be revoked before it expires, and a user's
 * sessions cannot be listed or ended.
 */
export interface StatelessSessionProvider {
  readonly stateless: true
  /**
   * Seals a record into a cookie value (only characters allowed in a cookie
   * value). Called on every response that changes the session.
   */
  seal (session: SealedSession): string
  /**
   * Opens a cookie value. `null` when it does not open (tampered, foreign,
   * malformed) or its `expiresAt` has passed; `renew` when it was opened by
   * an older key and must be sealed again with the current one.
   */
  open (value: string): { session: SealedSession, renew: boolean } | null
  close? (): Promise<void> | void
}

/** What a stateless provider seals: a record plus the id it stands for. */
export interface SealedSession extends StoredSession {
  readonly id: string
}

/** Whether `provider` keeps sessions in the cookie rather than in a store. */
export function isStateless (provider: SessionProvider | StatelessSessionProvider): provider is StatelessSessionProvider {
  return (provider as StatelessSessionProvider).stateless === true
}

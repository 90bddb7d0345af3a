/**
 * SQLite provider, schema version 1.
 *
 * One row per session:
 *
 * ```sql
 * CREATE TABLE "sessions" (
 *   key          TEXT PRIMARY KEY NOT NULL,  -- the plugin's store key (43 base64url characters)
 *   data         TEXT NOT NULL,              -- a JSON object: top-level session key -> its value
 *   user_id      TEXT,                       -- the owner, NULL when nobody owns the session
 *   created_at   INTEGER NOT NULL,           -- epoch milliseconds, all from the app's clock (Date.now())
 *   last_seen_at INTEGER NOT NULL,
 *   expires_at   INTEGER NOT NULL
 * );
 * CREATE INDEX "sessions_expires_at_idx" ON "sessions" (expires_at);
 * CREATE INDEX "sessions_user_id_idx" ON "sessions" (user_id) WHERE user_id IS NOT NULL;
 * ```
 *
 * `data` is one JSON object, so `json_extract(data, '$.cart')` works in ad hoc
 * queries. There is no `json_valid` check on the column: it would parse
 * every session on every write, and every write already goes through either
 * the plugin's `JSON.stringify` or SQLite's own JSON functions. The table is
 * a rowid table rather than `WITHOUT ROWID` because a session may be large,
 * and the sweep deletes by the rowids that the deadline index carries.
 *
 * A patch walks its keys with a recursive query that calls `jsonb_set` or
 * `jsonb_remove` once per key, with a path whose label is the key as a JSON
 * string. SQLite compares such labels by their decoded characters, so keys
 * with quotes, dots, `$`, brackets, control characters or lone surrogates all
 * work; the values the patch does not name keep their text in the table
 * (numbers and escapes as written, only insignificant whitespace goes),
 * though `get` answers each as `JSON.stringify` writes it (see `decode`);
 * and a value of
 * `null` is stored rather than read as "delete" as `json_patch` would.
 *
 * The one kind of key SQLite gets wrong is one holding U+0000: it compares labels
 * only up to that character, so `"a\u0000"` and `"a"` would be the same
 * member. Such keys are refused with `FST_SESSION_UNSUPPORTED` rather than
 * let a patch change the wrong value.
 *
 * Deadlines are compared with the app's clock rather than SQLite's so that
 * the plugin and the store agree on what has expired.
 */
import Database from 'better-sqlite3'
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_INVALID_TABLE, FST_SESSION_MISSING_TABLE, FST_SESSION_PROVIDER_OPTION, FST_SESSION_UNSUPPORTED } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
import { validateTableName } from '../lib/sql.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from '../lib/provider.js'

/** Options of the `sqlite` provider. Give exactly one of `database` and `filename`. */
export interface SqliteProviderOptions {
  /**
   * An open better-sqlite3 database the application owns. The provider uses
   * it as it is (journal mode, pragmas) and never closes it.
   * @default undefined
   */
  database?: Database.Database | undefined
  /**
   * A database file for the provider to open and close on `close()`. It
   * switches the file to WAL mode with `synchronous = NORMAL`: a power loss
   * may lose the last writes but never corrupts the file. `':memory:'` keeps
   * the sessions in memory, private to this provider.
   * @default undefined
   */
  filename?: string | undefined
  /**
   * The table: a letter or underscore followed by up to 62 letters, digits
   * or underscores. Its indexes are named after it.
   * @default 'sessions'
   */
  tableName?: string | undefined
  /**
   * Whether to create the table and its indexes when they are missing. With
   * `false`, a missing table makes the provider fail at creation with
   * `FST_SESSION_MISSING_TABLE`.
   * @default true
   */
  createTable?: boolean | undefined
  /**
   * How many expired rows one `DELETE` of the sweep removes at most. Each
   * batch is its own transaction, so this bounds how long a sweep keeps
   * writers in other processes waiting. The sweep is synchronous, like every
   * call of this provider, so this process waits for all of it (about 3 µs
   * per expired row).
   * @default 1000
   */
  gcBatchSize?: number | undefined
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    sqlite: SqliteProviderOptions
  }
}

export const SQLITE_PROVIDER = 'sqlite'

type Row = [data: string, createdAt: number, lastSeenAt: number, expiresAt: number]
type UserRow = [key: string, createdAt: number, lastSeenAt: number, expiresAt: number, data: string | null]

interface PatchParameters {
  key: string
  now: number
  paths: string
  values: string
  sets: number
  count: number
  lastSeenAt: number
  expiresAt: number
  user: string | null | undefined
}

/**
 * Sessions in one SQLite table, through statements prepared once. Every
 * write but a replacing create is a single statement guarded by
 * `expires_at`; SQLite runs one writer at a time, so concurrent patches of
 * a session apply one after the other, and a write that arrives after a
 * destroy or past the deadline finds no row.
 *
 * Calls are synchronous and answer plain values.
 */
export class SqliteProvider implements SessionProvider {
  readonly tableName: string
  readonly gcBatchSize: number
  readonly createTable: boolean
  private readonly db: Database.Database
  private readonly ownsDatabase: boolean
  private closed = false
  private readonly selectLive: Database.Statement<[string, number], Row>
  private readonly isLive: Database.Statement<[string, number], number>
  private readonly insert: Database.Statement<[string, string, string | null, number, number, number, number]>
  private readonly applyPatch: Database.Statement<[PatchParameters]>
  private readonly applyPatchAndOwner: Database.Statement<[PatchParameters]>
  private readonly touch: Database.Statement<[number, number, string, number]>
  private readonly touchAndOwner: Database.Statement<[number, number, string | null, string, number]>
  private readonly remove: Database.Statement<[string, number], number>
  private readonly removeOwned: Database.Statement<[string, string, number], number>
  private readonly removeLive: Database.Statement<[string, number]>
  private readonly sweep: Database.Statement<[number, number]>
  private readonly selectByUser: Database.Statement<[number, string, number], UserRow>
  private readonly removeByUser: Database.Statement<[string, number, string | null]>
  private readonly move: (key: string, session: NewSession, data: string, replaces: string, now: number) => boolean

  constructor (options: SqliteProviderOptions) {
    checkOptionNames(SQLITE_PROVIDER, options, ['database', 'filename', 'tableName', 'createTable', 'gcBatchSize'])
    const { database, filename, tableName = 'sessions', createTable = true, gcBatchSize = 1000 } = options ?? {}
    if ((database === undefined) === (filename === undefined)) {
      throw new FST_SESSION_PROVIDER_OPTION(SQLITE_PROVIDER, 'give exactly one of database and filename')
    }
    if (database !== undefined && typeof database?.prepare !== 'function') {
      throw new FST_SESSION_PROVIDER_OPTION(SQLITE_PROVIDER, 'database must be a better-sqlite3 Database')
    }
    if (filename !== undefined && (typeof filename !== 'string' || filename === '')) {
      throw new FST_SESSION_PROVIDER_OPTION(SQLITE_PROVIDER, 'filename must be a non-empty string')
    }
    if (typeof createTable !== 'boolean') {
      throw new FST_SESSION_PROVIDER_OPTION(SQLITE_PROVIDER, 'createTable must be a boolean')
    }
    if (!Number.isSafeInteger(gcBatchSize) || gcBatchSize < 1) {
      throw new FST_SESSION_PROVIDER_OPTION(SQLITE_PROVIDER, 'gcBatchSize must be a positive integer')
    }
    const table = validateTableName(tableName, { schemaQualified: false })
    if (table.table.toLowerCase().startsWith('sqlite_')) {
      throw new FST_SESSION_INVALID_TABLE(JSON.stringify(tableName), 'SQLite reserves names that begin with sqlite_')
    }
    this.tableName = table.table
    this.gcBatchSize = gcBatchSize
    this.createTable = createTable

    this.ownsDatabase = database === undefined
    this.db = database ?? new Database(filename as string)
    try {
      if (this.ownsDatabase) {
        // WAL lets readers go on while a request writes; NORMAL syncs at checkpoints rather than at
        // every commit, which in WAL mode can lose the last writes on power loss but never corrupts
        this.db.pragma('journal_mode = WAL')
        this.db.pragma('synchronous = NORMAL')
      }
      const t = table.quoted
      if (this.db.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE").get(table.table) !== undefined) {
        // a table of that name made for something else would fail every request
        try {
          this.db.prepare(`SELECT key, data, user_id, created_at, last_seen_at, expires_at FROM ${t} LIMIT 0`)
        } catch (err) {
          throw new FST_SESSION_INVALID_TABLE(t, `it exists without this provider's columns (${(err as Error).message})`)
        }
      } else if (!createTable) {
        throw new FST_SESSION_MISSING_TABLE(t)
      }
      if (createTable) {
        this.db.exec(`
          CREATE TABLE IF NOT EXISTS ${t} (
            key TEXT PRIMARY KEY NOT NULL,
            data TEXT NOT NULL,
            user_id TEXT,
            created_at INTEGER NOT NULL,
            last_seen_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
          );
          CREATE INDEX IF NOT EXISTS "${table.table}_expires_at_idx" ON ${t} (expires_at);
          CREATE INDEX IF NOT EXISTS "${table.table}_user_id_idx" ON ${t} (user_id) WHERE user_id IS NOT NULL;
        `)
      }

      // An application's database may hand out BigInts by default; deadlines are compared as numbers
      this.selectLive = this.db.prepare<[string, number], Row>(
        `SELECT data, created_at, last_seen_at, expires_at FROM ${t} WHERE key = ? AND expires_at > ?`
      ).raw().safeIntegers(false)
      this.isLive = this.db.prepare<[string, number], number>(
        `SELECT 1 FROM ${t} WHERE key = ? AND expires_at > ?`
      ).pluck()
      // An expired row under the key is as good as none, so the insert takes its place
      this.insert = this.db.prepare(`
        INSERT INTO ${t} (key, data, user_id, created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET
          data = excluded.data, user_id = excluded.user_id, created_at = excluded.created_at,
          last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at
        WHERE ${t}.expires_at <= ?
      `)
      // The recursion applies the sets (the first `sets` paths) and then the deletes one by one;
      // a fixed statement for any number of keys, and jsonb saves reparsing the text at each step.
      // Writes that keep the owner leave user_id out of SET: naming it, even unchanged, rewrites
      // its index entry, which measured twice the cost of a touch on a file
      const patchSql = (owner: string): string => `
        UPDATE ${t} SET
          data = (
            WITH RECURSIVE step (i, doc) AS (
              SELECT 0, jsonb(${t}.data)
              UNION ALL
              SELECT i + 1, iif(i < @sets, jsonb_set(doc, @paths ->> i, @values -> i), jsonb_remove(doc, @paths ->> i))
              FROM step WHERE i < @count
            )
            SELECT json(doc) FROM step WHERE i = @count
          ),
          last_seen_at = @lastSeenAt, expires_at = @expiresAt${owner}
        WHERE key = @key AND expires_at > @now
      `
      this.applyPatch = this.db.prepare(patchSql(''))
      this.applyPatchAndOwner = this.db.prepare(patchSql(', user_id = @user'))
      this.touch = this.db.prepare(`UPDATE ${t} SET last_seen_at = ?, expires_at = ? WHERE key = ? AND expires_at > ?`)
      this.touchAndOwner = this.db.prepare(`UPDATE ${t} SET last_seen_at = ?, expires_at = ?, user_id = ? WHERE key = ? AND expires_at > ?`)
      // Drops an expired row as well, since it is there anyway, but answers only for a live one
      this.remove = this.db.prepare<[string, number], number>(
        `DELETE FROM ${t} WHERE key = ? RETURNING expires_at > ?`
      ).pluck().safeIntegers(false)
      this.removeOwned = this.db.prepare<[string, string, number], number>(
        `DELETE FROM ${t} WHERE key = ? AND user_id = ? RETURNING expires_at > ?`
      ).pluck().safeIntegers(false)
      this.removeLive = this.db.prepare(`DELETE FROM ${t} WHERE key = ? AND expires_at > ?`)
      // The subquery walks the deadline index from the oldest and stops after a batch; the rowids
      // it yields come from the index itself, so a sweep reads only what it deletes
      this.sweep = this.db.prepare(
        `DELETE FROM ${t} WHERE rowid IN (SELECT rowid FROM ${t} WHERE expires_at <= ? LIMIT ?)`
      )
      // `data` is read only when info keys are asked for: a large session costs nothing otherwise
      this.selectByUser = this.db.prepare<[number, string, number], UserRow>(
        `SELECT key, created_at, last_seen_at, expires_at, iif(?, data, NULL) FROM ${t} WHERE user_id = ? AND expires_at > ?`
      ).raw().safeIntegers(false)
      this.removeByUser = this.db.prepare(
        `DELETE FROM ${t} WHERE user_id = ? AND expires_at > ? AND key IS NOT ?`
      )
    } catch (err) {
      if (this.ownsDatabase) this.db.close()
      throw err
    }

    // IMMEDIATE takes the write lock up front, so nothing changes between the check and the writes
    this.move = this.db.transaction(this.moveRecord).immediate.bind(this)
  }

  get (key: string): StoredSession | null {
    const row = this.selectLive.get(key, Date.now())
    if (row === undefined) return null
    return { data: decode(row[0]), createdAt: row[1], lastSeenAt: row[2], expiresAt: row[3] }
  }

  create (key: string, session: NewSession, replaces?: string): boolean {
    const now = Date.now()
    const data = encode(session.data)
    if (replaces !== undefined) return this.move(key, session, data, replaces, now)
    return this.insertRow(key, session, data, now) === 1
  }

  update (key: string, patch: SessionPatch): boolean {
    const now = Date.now()
    const names: string[] = []
    const jsons: string[] = []
    if (patch.set !== null) {
      for (const [name, json] of patch.set) {
        names.push(storable(name))
        jsons.push(parsable(name, json))
      }
    }
    const sets = names.length
    if (patch.delete !== null) {
      // A key holding NUL is never stored, and its path could match another key
      for (const name of patch.delete) if (!name.includes('\u0000')) names.push(name)
    }
    if (names.length === 0) {
      const { changes } = patch.user === undefined
        ? this.touch.run(patch.lastSeenAt, patch.expiresAt, key, now)
        : this.touchAndOwner.run(patch.lastSeenAt, patch.expiresAt, patch.user, key, now)
      return changes === 1
    }
    const parameters: PatchParameters = {
      key,
      now,
      paths: JSON.stringify(names.map(path)),
      values: '[' + jsons.join(',') + ']',
      sets,
      count: names.length,
      lastSeenAt: patch.lastSeenAt,
      expiresAt: patch.expiresAt,
      user: patch.user
    }
    const { changes } = (patch.user === undefined ? this.applyPatch : this.applyPatchAndOwner).run(parameters)
    return changes === 1
  }

  destroy (key: string, owner?: string): boolean {
    const now = Date.now()
    return (owner === undefined ? this.remove.get(key, now) : this.removeOwned.get(key, owner, now)) === 1
  }

  gc (): number {
    const now = Date.now()
    let removed = 0
    for (;;) {
      const { changes } = this.sweep.run(now, this.gcBatchSize)
      removed += changes
      if (changes < this.gcBatchSize) return removed
    }
  }

  listByUser (user: string, infoKeys: readonly string[]): UserSessionRecord[] {
    const rows = this.selectByUser.all(infoKeys.length > 0 ? 1 : 0, user, Date.now())
    const list: UserSessionRecord[] = []
    for (const [key, createdAt, lastSeenAt, expiresAt, data] of rows) {
      const info = new Map<string, string>()
      if (data !== null) {
        const values = JSON.parse(data) as Record<string, unknown>
        for (const name of infoKeys) {
          if (Object.hasOwn(values, name)) info.set(name, JSON.stringify(values[name]))
        }
      }
      list.push({ key, createdAt, lastSeenAt, expiresAt, info })
    }
    return list
  }

  destroyByUser (user: string, exceptKey?: string): number {
    return this.removeByUser.run(user, Date.now(), exceptKey ?? null).changes
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    if (this.ownsDatabase) this.db.close()
  }

  /** The body of a replacing create, run in one transaction. */
  private moveRecord (key: string, session: NewSession, data: string, replaces: string, now: number): boolean {
    if (this.isLive.get(replaces, now) === undefined) return false
    if (this.insertRow(key, session, data, now) === 0) return false
    this.removeLive.run(replaces, now)
    return true
  }

  /** Inserts the record unless a live one holds the key; answers the rows written (0 or 1). */
  private insertRow (key: string, session: NewSession, data: string, now: number): number {
    return this.insert.run(key, data, session.user, session.createdAt, session.lastSeenAt, session.expiresAt, now).changes
  }
}

/** A JSON path to the top-level member `name`, whatever characters the name holds. */
function path (name: string): string {
  return '$.' + JSON.stringify(name)
}

/** The JSON object text of a session's data, from the JSON texts of its values. */
function encode (data: ReadonlyMap<string, string>): string {
  let text = '{'
  for (const [name, json] of data) {
    if (text.length > 1) text += ','
    text += JSON.stringify(storable(name)) + ':' + parsable(name, json)
  }
  return text + '}'
}

/**
 * How deep a value may nest: SQLite's JSON functions refuse a document
 * nested 1000 levels deep, and the data object is one level. A value stored
 * deeper would make every later change of the session fail to parse.
 */
const MAX_VALUE_NESTING = 999

/** `json`, unless it nests deeper than SQLite's JSON functions parse. */
function parsable (name: string, json: string): string {
  // every level takes two brackets, so only a long text can be too deep
  if (json.length > 2 * MAX_VALUE_NESTING && nesting(json) > MAX_VALUE_NESTING) {
    throw new FST_SESSION_UNSUPPORTED(`the value of ${JSON.stringify(name)}`, `SQLite's JSON functions parse at most ${MAX_VALUE_NESTING} levels of nesting in a value`)
  }
  return json
}

/** The deepest nesting of arrays and objects in a JSON text. */
function nesting (json: string): number {
  let depth = 0
  let deepest = 0
  let inString = false
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (inString) {
      if (c === 92 /* \ */) i++
      else if (c === 34 /* " */) inString = false
    } else if (c === 34) {
      inString = true
    } else if (c === 91 /* [ */ || c === 123 /* { */) {
      if (++depth > deepest) deepest = depth
    } else if (c === 93 /* ] */ || c === 125 /* } */) {
      depth--
    }
  }
  return deepest
}

/** `name`, unless it is a key that SQLite's JSON paths would confuse with another. */
function storable (name: string): string {
  if (name.includes('\u0000')) {
    throw new FST_SESSION_UNSUPPORTED(`the session key ${JSON.stringify(name)}`, 'SQLite compares JSON keys only up to a NUL character')
  }
  return name
}

/**
 * The JSON text of each top-level value. Parsing the whole object once in
 * JavaScript and stringifying each value measured faster than splitting it
 * with `json_each` in SQL for sessions of usual sizes (4.3 against 6.7 µs
 * for five keys, 30 against 57 µs for thirty). The texts are the
 * same values; for texts the plugin wrote with `JSON.stringify`, they are
 * the same texts too.
 */
function decode (text: string): Map<string, string> {
  const values = JSON.parse(text) as Record<string, unknown>
  const data = new Map<string, string>()
  // JSON.parse makes `__proto__` an own property, so reading it back touches no prototype
  for (const name of Object.keys(values)) data.set(name, JSON.stringify(values[name]))
  return data
}

export function createSqliteProvider (options: SqliteProviderOptions): SqliteProvider {
  return new SqliteProvider(options)
}

registerProvider(SQLITE_PROVIDER, createSqliteProvider)

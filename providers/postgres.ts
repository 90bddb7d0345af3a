/**
 * PostgreSQL provider, schema version 1.
 *
 * One row per session:
 *
 * ```sql
 * CREATE TABLE "sessions" (
 *   key          text PRIMARY KEY,  -- the plugin's store key (43 base64url characters)
 *   data         jsonb NOT NULL,    -- top-level session key -> JSON text of its value, as a string
 *   user_id      text,              -- the owner, NULL when nobody owns the session
 *   created_at   bigint NOT NULL,   -- epoch milliseconds, all from the app's clock (Date.now())
 *   last_seen_at bigint NOT NULL,
 *   expires_at   bigint NOT NULL
 * );
 * CREATE INDEX ON "sessions" (expires_at);                              -- "sessions_expires_at_idx"
 * CREATE INDEX ON "sessions" (user_id) WHERE user_id IS NOT NULL;       -- "sessions_user_id_idx"
 * COMMENT ON TABLE "sessions" IS 'fastify-sessions schema version 1';
 * ```
 *
 * `data` holds each value's JSON text as a JSON string (`{"cart": "[1,2]"}`)
 * rather than as parsed JSON: jsonb would reformat the text (spacing, key
 * order, escapes) and refuses `\u0000` and lone surrogate escapes, while the
 * contract wants texts back verbatim. `||` and `-` still merge top-level keys
 * in place, and `(data ->> 'cart')::jsonb` reads a value as JSON in ad hoc
 * queries.
 *
 * Deadlines are compared with the app's clock rather than `now()` so that the
 * plugin and the store agree on what has expired.
 *
 * Text in PostgreSQL cannot hold U+0000, nor a jsonb key a lone surrogate, so
 * session keys and owners holding either are refused with
 * `FST_SESSION_UNSUPPORTED` (a fault of the request, not an outage); deleting
 * or looking up such a name finds nothing, as nothing can be stored under it.
 */
import { createHash } from 'node:crypto'
import pg from 'pg'
import type { ClientBase, Pool, PoolClient } from 'pg'
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_INVALID_TABLE, FST_SESSION_MISSING_TABLE, FST_SESSION_PROVIDER_OPTION, FST_SESSION_UNSUPPORTED } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
import { validateTableName } from '../lib/sql.js'
import type { TableName } from '../lib/sql.js'
import type { NewSession, SessionPatch, SessionProvider, StoredSession, UserSessionRecord } from '../lib/provider.js'

/** Milliseconds a query waits for a connection of the pool the provider made. */
const CONNECTION_TIMEOUT = 2000

/**
 * For the 'error' events of connections: the statement under way when a
 * connection breaks fails on its own, and the pool replaces the connection,
 * but an event nobody listens to would end the process.
 */
function dropConnectionError (): void {}

/**
 * Under repeatable read or serializable, two writes to one row make the
 * second fail with a serialization error (a 503 for that request), so the
 * provider's own connections run at read committed whatever the database's
 * default. pg-pool runs this on each new connection before handing it out.
 */
async function readCommitted (client: ClientBase): Promise<void> {
  await client.query('SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED')
}

/** Transactions that rely on read committed, also on a pool handed in whose sessions default to another level. */
const BEGIN = 'BEGIN ISOLATION LEVEL READ COMMITTED'

/** Options of the `postgres` provider. Give exactly one of `pool` and `connectionString`. */
export interface PostgresProviderOptions {
  /**
   * A `pg.Pool` the application owns. The provider borrows it and never ends it.
   * @default undefined
   */
  pool?: Pool | undefined
  /**
   * A connection string for a pool the provider makes, and ends on `close()`.
   * @default undefined
   */
  connectionString?: string | undefined
  /**
   * The table, optionally schema-qualified (`schema.table`). Each part is a
   * letter or underscore followed by up to 62 letters, digits or underscores,
   * and keeps its case.
   * @default 'sessions'
   */
  tableName?: string | undefined
  /**
   * Whether to create the table and its indexes at startup when the table is
   * missing. With `false`, a missing table makes startup fail with
   * `FST_SESSION_MISSING_TABLE`.
   * @default true
   */
  createTable?: boolean | undefined
  /**
   * How many expired rows one `DELETE` of the sweep removes at most, which
   * bounds how long each statement holds its locks.
   * @default 1000
   */
  gcBatchSize?: number | undefined
  /**
   * Milliseconds after which a statement on the pool the provider made fails
   * for want of an answer, and its connection is dropped (pg's
   * `query_timeout`). Without it a connection whose server stopped answering
   * (a dead route, a frozen host) would stay checked out for good: once all
   * are, every request fails until a restart, and `close()` never ends. Keep
   * it above the slowest statement (a sweep batch). A pool handed in keeps
   * its own settings.
   * @default 5000
   */
  queryTimeout?: number | undefined
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    postgres: PostgresProviderOptions
  }
}

export const POSTGRES_PROVIDER = 'postgres'

const SCHEMA_VERSION = 1

// Update statements differ by which parts of the patch are present.
const SETS_KEYS = 1
const DELETES_KEYS = 2
const SETS_USER = 4

interface SessionRow {
  created_at: string
  last_seen_at: string
  expires_at: string
  names: string[] | null
  jsons: string[] | null
}

interface UserSessionRow extends SessionRow {
  key: string
}

/**
 * Sessions in one PostgreSQL table. Each write but a replacing create is one statement guarded
 * by `expires_at`, so atomicity comes from row locks: concurrent patches of
 * one session apply one after the other to the latest row, and a write that
 * arrives after a destroy or past the deadline finds no row.
 */
export class PostgresProvider implements SessionProvider {
  /** The table as given in the options. */
  readonly tableName: string
  /** The `bigint` key of the session-level advisory lock that `gc()` holds while it sweeps. */
  readonly gcLockKey: string
  readonly gcBatchSize: number
  readonly createTable: boolean
  // a private field: its options, a password in the connection string included, stay out of inspect() and logs
  readonly #pool: Pool
  private readonly ownsPool: boolean
  private readonly table: TableName
  private readonly ddlLockKey: string
  private readonly updates = new Map<number, string>()
  private closing: Promise<void> | null = null
  private readonly sql: {
    readonly get: string
    readonly create: string
    readonly destroy: string
    readonly destroyOwned: string
    readonly deleteLive: string
    readonly sweep: string
    readonly listByUser: string
    readonly destroyByUser: string
  }

  constructor (options: PostgresProviderOptions) {
    checkOptionNames(POSTGRES_PROVIDER, options, ['pool', 'connectionString', 'tableName', 'createTable', 'gcBatchSize', 'queryTimeout'])
    const { pool, connectionString, tableName = 'sessions', createTable = true, gcBatchSize = 1000, queryTimeout = 5000 } = options ?? {}
    if ((pool === undefined) === (connectionString === undefined)) {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'give exactly one of pool and connectionString')
    }
    if (pool !== undefined && typeof pool?.connect !== 'function') {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'pool must be a pg.Pool')
    }
    if (connectionString !== undefined && (typeof connectionString !== 'string' || connectionString === '')) {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'connectionString must be a non-empty string')
    }
    if (typeof createTable !== 'boolean') {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'createTable must be a boolean')
    }
    if (!Number.isSafeInteger(gcBatchSize) || gcBatchSize < 1) {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'gcBatchSize must be a positive integer')
    }
    // above 2^31 - 1 Node fires timers after 1 ms
    if (!Number.isSafeInteger(queryTimeout) || queryTimeout < 1 || queryTimeout > 2 ** 31 - 1) {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'queryTimeout must be a whole number of milliseconds from 1 to 2147483647')
    }
    if (pool !== undefined && options.queryTimeout !== undefined) {
      throw new FST_SESSION_PROVIDER_OPTION(POSTGRES_PROVIDER, 'queryTimeout goes with connectionString; set query_timeout on the pool handed in')
    }
    this.table = validateTableName(tableName, { schemaQualified: true })
    this.tableName = tableName
    this.createTable = createTable
    this.gcBatchSize = gcBatchSize
    this.gcLockKey = advisoryLockKey('gc', this.table)
    this.ddlLockKey = advisoryLockKey('ddl', this.table)
    if (pool === undefined) {
      // A bounded wait for a connection: otherwise a query the plugin gave up on
      // (storeTimeout) waits in the pool's queue and may still run much later.
      this.#pool = new pg.Pool({ connectionString, connectionTimeoutMillis: CONNECTION_TIMEOUT, query_timeout: queryTimeout, onConnect: readCommitted })
      // an idle connection the server drops emits 'error' on the pool
      this.#pool.on('error', dropConnectionError)
      this.ownsPool = true
    } else {
      this.#pool = pool
      this.ownsPool = false
    }

    const t = this.table.quoted
    // Arrays of names and JSON texts come from one aggregate pass, so they line up.
    const columns = `s.created_at, s.last_seen_at, s.expires_at, d.names, d.jsons FROM ${t} s`
    const upsert = `INSERT INTO ${t} AS s (key, data, user_id, created_at, last_seen_at, expires_at)
      VALUES ($1, $2::jsonb, $3, $4, $5, $6)
      ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, user_id = EXCLUDED.user_id,
        created_at = EXCLUDED.created_at, last_seen_at = EXCLUDED.last_seen_at, expires_at = EXCLUDED.expires_at
      WHERE s.expires_at <= $7`
    this.sql = {
      get: `SELECT ${columns}
        CROSS JOIN LATERAL (SELECT array_agg(e.key) AS names, array_agg(e.value) AS jsons FROM jsonb_each_text(s.data) e) d
        WHERE s.key = $1 AND s.expires_at > $2`,
      create: upsert,
      destroy: `DELETE FROM ${t} WHERE key = $1 RETURNING expires_at > $2 AS live`,
      destroyOwned: `DELETE FROM ${t} WHERE key = $1 AND user_id = $3 RETURNING expires_at > $2 AS live`,
      deleteLive: `DELETE FROM ${t} WHERE key = $1 AND expires_at > $2`,
      // The batch goes in as an array so its rows are found through the
      // primary key rather than by a join over the table; the deadline is
      // checked again because a row can be revived (create over an expired
      // one) between the batch being picked and deleted.
      sweep: `DELETE FROM ${t} WHERE key = ANY (ARRAY(SELECT key FROM ${t} WHERE expires_at <= $1 LIMIT $2)) AND expires_at <= $1`,
      listByUser: `SELECT s.key, ${columns}
        CROSS JOIN LATERAL (SELECT array_agg(n) AS names, array_agg(s.data ->> n) AS jsons
          FROM unnest($3::text[]) n WHERE s.data ? n) d
        WHERE s.user_id = $1 AND s.expires_at > $2
        ORDER BY s.created_at, s.key`,
      destroyByUser: `DELETE FROM ${t} WHERE user_id = $1 AND expires_at > $2 AND ($3::text IS NULL OR key <> $3)`
    }
  }

  /**
   * Makes sure the table exists: creates it when `createTable` allows,
   * otherwise fails with `FST_SESSION_MISSING_TABLE`. `createPostgresProvider`
   * calls it.
   */
  async prepare (): Promise<void> {
    if (await this.tableExists(this.#pool)) {
      await this.checkColumns()
      return
    }
    if (!this.createTable) throw new FST_SESSION_MISSING_TABLE(JSON.stringify(this.tableName))
    await this.withClient((client) => this.createSchema(client))
  }

  /**
   * A table of that name made for something else (another library's
   * sessions, say) would pass the existence check and then fail every
   * request: it fails startup instead.
   */
  private async checkColumns (): Promise<void> {
    try {
      await this.#pool.query(`SELECT key, data, user_id, created_at, last_seen_at, expires_at FROM ${this.table.quoted} LIMIT 0`)
    } catch (err) {
      if ((err as { code?: unknown }).code !== UNDEFINED_COLUMN) throw err
      throw new FST_SESSION_INVALID_TABLE(JSON.stringify(this.tableName), `it exists without this provider's columns (${(err as Error).message})`)
    }
  }

  async get (key: string): Promise<StoredSession | null> {
    const { rows } = await this.#pool.query<SessionRow>(this.sql.get, [key, Date.now()])
    return rows.length === 0 ? null : toSession(rows[0])
  }

  async create (key: string, session: NewSession, replaces?: string): Promise<boolean> {
    const values = [key, jsonObject(session.data), owner(session.user), session.createdAt, session.lastSeenAt, session.expiresAt, Date.now()]
    if (replaces === undefined) {
      const { rowCount } = await this.#pool.query(this.sql.create, values)
      return rowCount === 1
    }
    // Two statements in a transaction: if the new key turns out to be taken,
    // the rollback brings the old row back, so a failed create changes nothing.
    return await this.withClient(async (client) => {
      await client.query(BEGIN)
      // the new owner's lock, which ending that user's sessions waits for (see destroyByUser)
      if (session.user !== null) await this.lockUser(client, session.user)
      const deleted = await client.query(this.sql.deleteLive, [replaces, values[6]])
      const created = deleted.rowCount === 1 && (await client.query(this.sql.create, values)).rowCount === 1
      await client.query(created ? 'COMMIT' : 'ROLLBACK')
      return created
    })
  }

  async update (key: string, patch: SessionPatch): Promise<boolean> {
    const values: unknown[] = [key, Date.now(), patch.lastSeenAt, patch.expiresAt]
    let shape = 0
    if (patch.set !== null && patch.set.size > 0) {
      shape |= SETS_KEYS
      values.push(jsonObject(patch.set))
    }
    const deleted = patch.delete?.filter(storable)
    if (deleted !== undefined && deleted.length > 0) {
      shape |= DELETES_KEYS
      values.push(deleted)
    }
    if (patch.user !== undefined) {
      shape |= SETS_USER
      values.push(owner(patch.user))
    }
    const { rowCount } = await this.#pool.query(this.updateStatement(shape), values)
    return rowCount === 1
  }

  async destroy (key: string, owner?: string): Promise<boolean> {
    if (owner !== undefined && !storable(owner)) return false
    const { rows } = owner === undefined
      ? await this.#pool.query<{ live: boolean }>(this.sql.destroy, [key, Date.now()])
      : await this.#pool.query<{ live: boolean }>(this.sql.destroyOwned, [key, Date.now(), owner])
    return rows.length === 1 && rows[0].live
  }

  /**
   * Deletes expired rows `gcBatchSize` at a time until none is left. When
   * another instance is already sweeping this table it answers 0 at once.
   */
  async gc (): Promise<number> {
    return await this.withClient((client) => this.sweep(client))
  }

  async listByUser (user: string, infoKeys: readonly string[]): Promise<UserSessionRecord[]> {
    if (!storable(user)) return []
    const { rows } = await this.#pool.query<UserSessionRow>(this.sql.listByUser, [user, Date.now(), infoKeys.filter(storable)])
    return rows.map(function toRecord (row) {
      const { data, ...times } = toSession(row)
      return { key: row.key, ...times, info: data }
    })
  }

  /**
   * A `regenerate()` moving one of the user's sessions deletes the old row
   * and inserts the new one in one transaction. A delete waiting on the old
   * row would skip it once that transaction commits, and never see the new
   * row, which its snapshot predates: the session would survive under its
   * new key. So both take the user's advisory lock first: this delete then
   * starts after the move has committed, and sees the new row, or before it
   * began, and the move finds nothing left to move.
   */
  async destroyByUser (user: string, exceptKey?: string): Promise<number> {
    if (!storable(user)) return 0
    return await this.withClient(async (client) => {
      await client.query(BEGIN)
      await this.lockUser(client, user)
      const { rowCount } = await client.query(this.sql.destroyByUser, [user, Date.now(), exceptKey ?? null])
      await client.query('COMMIT')
      return rowCount as number
    })
  }

  /**
   * Takes the transaction-scoped advisory lock of one user's sessions in
   * this table. The key comes from the table the name resolves to (its oid),
   * not from the name as written: instances naming one table `sessions` and
   * `public.sessions`, or through different search paths, must take the
   * same lock.
   */
  private async lockUser (client: PoolClient, user: string): Promise<void> {
    await client.query(USER_LOCK, ['fastify-sessions:user:' + user + ':', this.table.quoted])
  }

  /** Ends the pool made from `connectionString`; a pool handed in stays open. */
  close (): Promise<void> {
    if (this.ownsPool) this.closing ??= this.#pool.end()
    return this.closing ?? Promise.resolve()
  }

  /**
   * Runs `work` on one connection, for statements that must share it. pg-pool
   * stops listening for a connection's errors while it is checked out, so
   * this does. A failure drops the connection, which aborts any transaction
   * it had open and ends its session, advisory locks included, should the
   * unlock itself have failed.
   */
  private async withClient<T> (work: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.checkOut()
    let result: T
    try {
      result = await work(client)
    } catch (err) {
      // still listened to: a connection being dropped may yet report its end
      client.release(err as Error)
      throw err
    }
    client.off('error', dropConnectionError)
    client.release()
    return result
  }

  /**
   * A connection from the pool, listened to from the moment it is handed
   * over. Awaiting `pool.connect()` would add the listener a tick late: a
   * backend terminated just as its connection became ready sends its FATAL
   * in the same read, and an 'error' event nobody listens to ends the
   * process.
   */
  private checkOut (): Promise<PoolClient> {
    return new Promise((resolve, reject) => {
      let answered = false
      const take = (err: Error | undefined | null, client?: PoolClient): void => {
        if (answered) return
        answered = true
        if (err !== undefined && err !== null) {
          reject(err)
          return
        }
        (client as PoolClient).on('error', dropConnectionError)
        resolve(client as PoolClient)
      }
      const returned = this.#pool.connect(take) as unknown as PromiseLike<PoolClient> | undefined
      // a pg-compatible pool (a wrapper) may answer with a promise instead, or as well
      if (typeof returned?.then === 'function') returned.then((client) => take(undefined, client), take)
    })
  }

  private async tableExists (db: Pool | PoolClient): Promise<boolean> {
    const { rows } = await db.query<{ exists: boolean }>('SELECT to_regclass($1) IS NOT NULL AS exists', [this.table.quoted])
    return rows[0].exists
  }

  // Concurrent `CREATE TABLE IF NOT EXISTS` can still fail on a unique
  // violation in pg_type, so instances starting together queue on an advisory
  // lock and the ones behind the first find the table made. The lock is
  // taken before the transaction, not inside it: a backend refreshes its
  // catalog caches when a transaction starts, and one that waited inside its
  // transaction would still see the table as missing and fail to create it.
  private async createSchema (client: PoolClient): Promise<void> {
    const t = this.table.quoted
    await client.query('SELECT pg_advisory_lock($1::bigint)', [this.ddlLockKey])
    await client.query('BEGIN')
    if (!(await this.tableExists(client))) {
      await client.query(`CREATE TABLE ${t} (
        key text PRIMARY KEY,
        data jsonb NOT NULL,
        user_id text,
        created_at bigint NOT NULL,
        last_seen_at bigint NOT NULL,
        expires_at bigint NOT NULL
      )`)
      // Unnamed, PostgreSQL names them <table>_expires_at_idx and
      // <table>_user_id_idx, shortening long names and avoiding clashes itself.
      await client.query(`CREATE INDEX ON ${t} (expires_at)`)
      await client.query(`CREATE INDEX ON ${t} (user_id) WHERE user_id IS NOT NULL`)
      await client.query(`COMMENT ON TABLE ${t} IS 'fastify-sessions schema version ${SCHEMA_VERSION}'`)
    }
    await client.query('COMMIT')
    await client.query('SELECT pg_advisory_unlock($1::bigint)', [this.ddlLockKey])
  }

  private async sweep (client: PoolClient): Promise<number> {
    const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1::bigint) AS locked', [this.gcLockKey])
    if (!rows[0].locked) return 0
    // One cut-off for the whole sweep, so rows expiring meanwhile cannot keep it going.
    const now = Date.now()
    let removed = 0
    try {
      let batch: number
      do {
        batch = (await client.query(this.sql.sweep, [now, this.gcBatchSize])).rowCount as number
        removed += batch
      } while (batch === this.gcBatchSize)
    } finally {
      // Unlocked at once, so a failed sweep does not keep the other
      // instances from sweeping until the discarded connection is gone.
      await client.query('SELECT pg_advisory_unlock($1::bigint)', [this.gcLockKey])
    }
    return removed
  }

  private updateStatement (shape: number): string {
    let text = this.updates.get(shape)
    if (text === undefined) {
      let param = 4
      let data = 'data'
      if ((shape & SETS_KEYS) !== 0) data = `${data} || $${++param}::jsonb`
      if ((shape & DELETES_KEYS) !== 0) data = `(${data}) - $${++param}::text[]`
      // A touch leaves `data` out of the SET list, so a large value stored
      // out of line is not rewritten.
      const assignments = ['last_seen_at = $3', 'expires_at = $4']
      if ((shape & (SETS_KEYS | DELETES_KEYS)) !== 0) assignments.push(`data = ${data}`)
      if ((shape & SETS_USER) !== 0) assignments.push(`user_id = $${++param}`)
      text = `UPDATE ${this.table.quoted} SET ${assignments.join(', ')} WHERE key = $1 AND expires_at > $2`
      this.updates.set(shape, text)
    }
    return text
  }
}

/**
 * The text of the jsonb object mapping each name to its JSON text as a
 * string, built by concatenation: the values are quoted, never parsed.
 */
function jsonObject (data: ReadonlyMap<string, string>): string {
  let text = '{'
  for (const [name, json] of data) {
    if (!storable(name)) throw new FST_SESSION_UNSUPPORTED(`the session key ${JSON.stringify(name)}`, 'PostgreSQL text holds no U+0000, nor a jsonb key a lone surrogate')
    if (text.length > 1) text += ','
    text += JSON.stringify(name) + ':' + JSON.stringify(json)
  }
  return text + '}'
}

/** Whether PostgreSQL can keep `name` as text and as a jsonb key (see the top of this file). */
function storable (name: string): boolean {
  return !name.includes('\u0000') && name.isWellFormed()
}

/** The owner as the `user_id` column takes it. */
function owner (user: string | null): string | null {
  if (user !== null && !storable(user)) throw new FST_SESSION_UNSUPPORTED(`the session owner ${JSON.stringify(user)}`, 'PostgreSQL text holds no U+0000')
  return user
}

function toSession (row: SessionRow): StoredSession {
  const data = new Map<string, string>()
  if (row.names !== null && row.jsons !== null) {
    for (let i = 0; i < row.names.length; i++) data.set(row.names[i], row.jsons[i])
  }
  return {
    data,
    createdAt: Number(row.created_at),
    lastSeenAt: Number(row.last_seen_at),
    expiresAt: Number(row.expires_at)
  }
}

/** PostgreSQL's SQLSTATE for a column that does not exist. */
const UNDEFINED_COLUMN = '42703'

/** The advisory lock keyed by the first 64 bits of SHA-256 of `$1` and the oid of the table `$2` names (an error if it names none). */
const USER_LOCK = "SELECT pg_advisory_xact_lock(('x' || encode(substr(sha256(convert_to($1 || $2::regclass::oid::text, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint)"

/**
 * A `bigint` advisory lock key for one purpose on one table, as decimal text.
 * Hashing keeps keys of different tables apart; the prefix keeps them apart
 * from the application's own advisory locks in all likelihood.
 */
function advisoryLockKey (purpose: string, table: TableName): string {
  const digest = createHash('sha256').update(`fastify-sessions:${purpose}:${table.quoted}`).digest()
  return digest.readBigInt64BE(0).toString()
}

/** Makes a provider and makes sure its table exists (see `createTable`). */
export async function createPostgresProvider (options: PostgresProviderOptions): Promise<PostgresProvider> {
  const provider = new PostgresProvider(options)
  try {
    await provider.prepare()
  } catch (err) {
    await provider.close()
    throw err
  }
  return provider
}

registerProvider(POSTGRES_PROVIDER, createPostgresProvider)

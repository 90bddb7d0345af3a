import { FST_SESSION_INVALID_TABLE } from './errors.js'

// A plain identifier that fits PostgreSQL's 63-byte limit untruncated. Being
// this strict is what lets the SQL providers splice the name into statements.
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/

/** A table name that passed `validateTableName`. */
export interface TableName {
  /** The schema part, or `null` when the name has none. */
  readonly schema: string | null
  /** The table part. */
  readonly table: string
  /** The name as SQL text, each part double-quoted so its case is kept. */
  readonly quoted: string
}

/**
 * Checks a table name from the options of an SQL provider. With
 * `schemaQualified`, `schema.table` is allowed too. Anything else throws
 * `FST_SESSION_INVALID_TABLE`.
 */
export function validateTableName (name: unknown, options: { schemaQualified: boolean }): TableName {
  if (typeof name !== 'string') {
    throw new FST_SESSION_INVALID_TABLE(String(name), 'it must be a string')
  }
  const parts = name.split('.')
  if (parts.length > (options.schemaQualified ? 2 : 1)) {
    throw new FST_SESSION_INVALID_TABLE(JSON.stringify(name),
      options.schemaQualified ? 'it takes at most one dot, as in schema.table' : 'it cannot be schema-qualified')
  }
  for (const part of parts) {
    if (!IDENTIFIER.test(part)) {
      throw new FST_SESSION_INVALID_TABLE(JSON.stringify(name),
        'each part must be a letter or underscore followed by up to 62 letters, digits or underscores')
    }
  }
  const table = parts.pop() as string
  const schema = parts.length === 1 ? parts[0] : null
  return { schema, table, quoted: parts.concat(table).map(quote).join('.') }
}

function quote (identifier: string): string {
  return `"${identifier}"`
}

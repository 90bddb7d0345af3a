import { FST_SESSION_NOT_SERIALIZABLE } from './errors.js'

function rejectUnstorable (this: unknown, key: string, value: unknown): unknown {
  const type = typeof value
  if (type === 'function' || type === 'symbol' || type === 'bigint') {
    throw new TypeError(`a ${type} at ${JSON.stringify(key)} has no JSON form`)
  }
  return value
}

/**
 * The JSON text of a session value. Throws `FST_SESSION_NOT_SERIALIZABLE`
 * for what JSON would drop or cannot write (functions, symbols, BigInts,
 * cycles) instead of losing it silently at save time.
 */
export function toJson (key: string, value: unknown): string {
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
      return JSON.stringify(value)
    case 'object':
      if (value === null) return 'null'
      try {
        const json = JSON.stringify(value, rejectUnstorable)
        if (json !== undefined) return json
      } catch (err) {
        throw new FST_SESSION_NOT_SERIALIZABLE(key, (err as Error).message)
      }
      throw new FST_SESSION_NOT_SERIALIZABLE(key, 'its toJSON() gave undefined')
    default:
      throw new FST_SESSION_NOT_SERIALIZABLE(key, `a ${typeof value} has no JSON form`)
  }
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
/** V8 interns the strings of up to this many characters that `JSON.parse` makes. */
const INTERNED_LENGTH = 10

/**
 * `JSON.parse`, but a short string without escapes is taken out of its
 * quotes. V8 interns every string of up to 10 characters that `JSON.parse`
 * makes: a lookup in the process-wide string table that, across many
 * sessions holding distinct values (a user id each), misses the CPU caches
 * on every read, and tripled the parse in a store of 50,000 such values.
 * The result, and what throws, are `JSON.parse`'s: any text other than a
 * quote, up to 10 characters that need no escape, and a quote goes to it.
 */
export function parseJson (json: string): any {
  const end = json.length - 1
  if (end < 1 || end > INTERNED_LENGTH + 1 || json.charCodeAt(0) !== QUOTE || json.charCodeAt(end) !== QUOTE) return JSON.parse(json)
  for (let i = 1; i < end; i++) {
    const code = json.charCodeAt(i)
    if (code === QUOTE || code === BACKSLASH || code < 0x20) return JSON.parse(json)
  }
  return json.slice(1, end)
}

/** Bytes that `"key":json` adds to a session's JSON, as `maxSessionSize` counts them. */
export function entrySize (key: string, json: string): number {
  return Buffer.byteLength(JSON.stringify(key)) + 1 + Buffer.byteLength(json)
}

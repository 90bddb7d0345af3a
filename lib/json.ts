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

/** Bytes that `"key":json` adds to a session's JSON, as `maxSessionSize` counts them. */
export function entrySize (key: string, json: string): number {
  return Buffer.byteLength(JSON.stringify(key)) + 1 + Buffer.byteLength(json)
}

import { hash, randomBytes } from 'node:crypto'

/** Session ids are 256 bits from the CSPRNG, as 43 base64url characters. */
const ID_BYTES = 32
export const ID_LENGTH = 43
const ID_PATTERN = /^[A-Za-z0-9_-]{43}$/

/** Random bytes are drawn in batches: one syscall serves many new sessions. */
const POOL_IDS = 128
let pool = Buffer.alloc(0)
let poolOffset = 0

export function generateId (): string {
  if (poolOffset === pool.length) {
    pool = randomBytes(ID_BYTES * POOL_IDS)
    poolOffset = 0
  }
  const id = pool.toString('base64url', poolOffset, poolOffset + ID_BYTES)
  pool.fill(0, poolOffset, poolOffset + ID_BYTES)
  poolOffset += ID_BYTES
  return id
}

export function isWellFormedId (value: string): boolean {
  return value.length === ID_LENGTH && ID_PATTERN.test(value)
}

/**
 * The key a session is stored under: SHA-256 of its id, so that a leaked
 * store holds nothing a client could present as a cookie.
 */
export function storeKey (id: string): string {
  return hash('sha256', id, 'base64url')
}

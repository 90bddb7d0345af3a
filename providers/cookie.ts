/**
 * Sessions kept in the cookie itself, sealed with AES-256-GCM: nothing is
 * stored on the server.
 *
 * A sealed value is the base64url text (no padding) of
 *
 * ```
 * version (1 byte, 0x01) | nonce (12 random bytes) | ciphertext | tag (16 bytes)
 * ```
 *
 * where the plaintext is the UTF-8 JSON of `{ id, data, createdAt,
 * lastSeenAt, expiresAt }`, `data` holding each session key with the JSON
 * text of its value (texts rather than values, so every value comes back
 * exactly as it was written), and the version byte is authenticated as
 * additional data.
 *
 * The trade-offs of keeping state in the client:
 * - A session cannot be revoked: a copied cookie keeps working, and since
 *   any cookie that opens is resealed with a later deadline once
 *   `touchAfter` has passed, a copy replayed within each idle period lasts
 *   until the absolute deadline. Logout only clears the browser's copy, and
 *   `regenerate()` does not invalidate the previous value. Keep lifetimes
 *   short.
 * - Everything stored travels on every request, and a cookie holds 4096
 *   bytes at most: the JSON texts of the values are escaped once more inside
 *   the payload, and encryption plus base64url add about a third.
 * - The contents are confidential and tamper-proof, but the length of the
 *   cookie reveals roughly how much the session holds.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'
import { registerProvider } from '../lib/registry.js'
import { FST_SESSION_PROVIDER_OPTION } from '../lib/errors.js'
import { checkOptionNames } from '../lib/options.js'
import type { SealedSession, StatelessSessionProvider } from '../lib/provider.js'

/** Options of the `cookie` provider. */
export interface CookieProviderOptions {
  /**
   * The key ring: the first key seals, every key opens, and a cookie opened
   * by any other than the first is sealed again with the first on that
   * response. Deploy `[newKey, oldKey]` to rotate without logging anybody
   * out, and drop `oldKey` once the longest session lifetime has passed.
   *
   * Each key is either a `Buffer` (or other `Uint8Array`) of exactly 32
   * random bytes, used as the AES-256 key, or a string of at least 32 characters, from which the key
   * is derived with HKDF-SHA-256 (no salt, info
   * `'fastify-sessions cookie provider'`). The derivation separates the key
   * from other uses of the same secret, such as the plugin's `secret`; it
   * does not add strength, so a string key must be random too.
   * Required.
   * @default undefined
   */
  keys: string | Buffer | Uint8Array | ReadonlyArray<string | Buffer | Uint8Array>
}

declare module '../lib/registry.js' {
  interface SessionProviders {
    cookie: CookieProviderOptions
  }
}

export const COOKIE_PROVIDER = 'cookie'

const VERSION = Buffer.from([1])
const KEY_BYTES = 32
const MIN_KEY_CHARS = 32
const NONCE_BYTES = 12
const TAG_BYTES = 16
const HKDF_INFO = 'fastify-sessions cookie provider'
/** No browser keeps a longer cookie, so a longer value was never ours. */
const MAX_SEALED_LENGTH = 4096
const BASE64URL = /^[A-Za-z0-9_-]+$/

function optionError (why: string): never {
  throw new FST_SESSION_PROVIDER_OPTION(COOKIE_PROVIDER, why)
}

function toKey (key: unknown, index: number): Buffer {
  if (typeof key === 'string') {
    if (key.length < MIN_KEY_CHARS) optionError(`keys[${index}] is a string of ${key.length} characters; at least ${MIN_KEY_CHARS} are required`)
    return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), HKDF_INFO, KEY_BYTES))
  }
  if (key instanceof Uint8Array) {
    if (key.byteLength !== KEY_BYTES) optionError(`keys[${index}] is ${key.byteLength} bytes; a Buffer key must be exactly ${KEY_BYTES} bytes`)
    // A copy, so that the application reusing its buffer cannot change the key
    return Buffer.from(key)
  }
  return optionError(`keys[${index}] must be a string or a Buffer`)
}

function resolveKeys (options: CookieProviderOptions | undefined): Buffer[] {
  const keys = (options as Partial<CookieProviderOptions> | undefined)?.keys
  if (keys === undefined) optionError('keys is required')
  const ring = Array.isArray(keys) ? keys : [keys]
  if (ring.length === 0) optionError('keys must hold at least one key')
  return ring.map(toKey)
}

/** The payload's fields, checked: they opened under a ring key, but a key may have sealed something else. */
function toSession (payload: unknown): SealedSession | null {
  if (typeof payload !== 'object' || payload === null) return null
  const { id, data, createdAt, lastSeenAt, expiresAt } = payload as Record<string, unknown>
  if (typeof id !== 'string' || typeof data !== 'object' || data === null || Array.isArray(data) ||
    typeof createdAt !== 'number' || typeof lastSeenAt !== 'number' || typeof expiresAt !== 'number') {
    return null
  }
  // Own entries only, into a Map: a "__proto__" key stays an ordinary key
  const entries = Object.entries(data)
  for (const [, json] of entries) if (typeof json !== 'string') return null
  return { id, data: new Map(entries as Array<[string, string]>), createdAt, lastSeenAt, expiresAt }
}

/**
 * A `StatelessSessionProvider` sealing sessions with AES-256-GCM under a key
 * ring. See the top of this module for the format and the trade-offs.
 */
export class CookieProvider implements StatelessSessionProvider {
  readonly stateless = true as const
  readonly #keys: Buffer[]

  constructor (options: CookieProviderOptions) {
    checkOptionNames(COOKIE_PROVIDER, options, ['keys'])
    this.#keys = resolveKeys(options)
  }

  seal (session: SealedSession): string {
    const plaintext = JSON.stringify({
      id: session.id,
      // fromEntries defines properties rather than assigning them, so "__proto__" is kept as data
      data: Object.fromEntries(session.data),
      createdAt: session.createdAt,
      lastSeenAt: session.lastSeenAt,
      expiresAt: session.expiresAt
    })
    // A fresh random nonce per seal: GCM loses both secrecy and integrity if one repeats under a key
    const nonce = randomBytes(NONCE_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#keys[0], nonce, { authTagLength: TAG_BYTES })
    cipher.setAAD(VERSION)
    const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
    return Buffer.concat([VERSION, nonce, body, cipher.getAuthTag()]).toString('base64url')
  }

  open (value: string): { session: SealedSession, renew: boolean } | null {
    if (typeof value !== 'string' || value.length > MAX_SEALED_LENGTH || !BASE64URL.test(value)) return null
    const sealed = Buffer.from(value, 'base64url')
    // Base64url has several spellings of the same bytes; only the one seal writes is accepted
    if (sealed.length < VERSION.length + NONCE_BYTES + TAG_BYTES || sealed.toString('base64url') !== value) return null
    if (sealed[0] !== VERSION[0]) return null
    const nonce = sealed.subarray(VERSION.length, VERSION.length + NONCE_BYTES)
    const body = sealed.subarray(VERSION.length + NONCE_BYTES, sealed.length - TAG_BYTES)
    const tag = sealed.subarray(sealed.length - TAG_BYTES)
    // Trial decryption, the sealing key first: the common case costs one attempt, and no key id is revealed
    for (let i = 0; i < this.#keys.length; i++) {
      const plaintext = decrypt(this.#keys[i], nonce, body, tag)
      if (plaintext === null) continue
      const session = parse(plaintext)
      if (session === null || !(session.expiresAt > Date.now())) return null
      return { session, renew: i > 0 }
    }
    return null
  }
}

function decrypt (key: Buffer, nonce: Buffer, body: Buffer, tag: Buffer): Buffer | null {
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES })
  decipher.setAAD(VERSION)
  decipher.setAuthTag(tag)
  const head = decipher.update(body)
  try {
    // final() is where the tag is checked; nothing decrypted is used before it passes
    return Buffer.concat([head, decipher.final()])
  } catch {
    return null
  }
}

function parse (plaintext: Buffer): SealedSession | null {
  let payload: unknown
  try {
    payload = JSON.parse(plaintext.toString('utf8'))
  } catch {
    return null
  }
  return toSession(payload)
}

export function createCookieProvider (options: CookieProviderOptions): CookieProvider {
  return new CookieProvider(options)
}

registerProvider(COOKIE_PROVIDER, createCookieProvider)

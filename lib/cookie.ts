import { isUtf8 } from 'node:buffer'
import { hash, timingSafeEqual } from 'node:crypto'
import { ID_LENGTH, isWellFormedId, storeKey } from './id.js'

/** Cookies longer than this are not ours to read (browsers cap a cookie at 4096 bytes). */
export const MAX_COOKIE_LENGTH = 4096

/** A verified session cookie: the id, its store key, and whether it must be re-signed with the current secret. */
export interface VerifiedCookie {
  readonly id: string
  readonly key: string
  readonly renew: boolean
}

/** SHA-256's block size: HMAC pads its key to this length. */
const BLOCK = 64

/**
 * HMAC-SHA256 (RFC 2104) of session ids under one secret, as two one-shot
 * SHA-256 calls over buffers made once. `createHmac` builds a native object
 * for every message, which made signing the costliest step of creating a
 * session: 1.6 µs a signature against 0.75 µs here. The output is the same,
 * byte for byte (the tests compare it with `createHmac` for secrets of every
 * length class).
 */
class IdMac {
  /** The padded key XOR 0x36, then room for one id. */
  readonly #inner = Buffer.alloc(BLOCK + ID_LENGTH)
  /** The padded key XOR 0x5c, then room for the inner digest. */
  readonly #outer = Buffer.alloc(BLOCK + 32)

  constructor (secret: string) {
    let key = Buffer.from(secret)
    if (key.length > BLOCK) key = hash('sha256', key, 'buffer')
    for (let i = 0; i < BLOCK; i++) {
      const byte = i < key.length ? key[i] : 0
      this.#inner[i] = byte ^ 0x36
      this.#outer[i] = byte ^ 0x5c
    }
  }

  /** Unpadded base64 MAC of `id`, which must be a well-formed session id (ASCII, `ID_LENGTH` long). */
  digest (id: string): string {
    this.#inner.write(id, BLOCK, 'binary')
    this.#outer.write(hash('sha256', this.#inner, 'binary'), BLOCK, 'binary')
    // 32 bytes of base64 always end in exactly one '=' of padding
    return hash('sha256', this.#outer, 'base64').slice(0, -1)
  }
}

/**
 * Signs and verifies cookie values as `<id>.<signature>`, the signature
 * being unpadded base64 HMAC-SHA256, exactly as @fastify/cookie's signer
 * makes it. The first secret signs; every secret verifies.
 */
export class CookieSigner {
  private readonly macs: IdMac[]

  constructor (secrets: readonly string[]) {
    this.macs = secrets.map((secret) => new IdMac(secret))
  }

  /** The cookie value for a well-formed session id; anything else would get a wrong signature, so it throws. */
  sign (id: string): string {
    if (!isWellFormedId(id)) throw new TypeError('only a session id (43 base64url characters) can be signed')
    return id + '.' + this.macs[0].digest(id)
  }

  /** The id inside a cookie value, or `null` when it is malformed or its signature fails. */
  verify (cookie: string): VerifiedCookie | null {
    const dot = cookie.lastIndexOf('.')
    if (dot === -1) return null
    const id = cookie.slice(0, dot)
    if (!isWellFormedId(id)) return null
    const signature = Buffer.from(cookie.slice(dot + 1))
    for (let i = 0; i < this.macs.length; i++) {
      const expected = Buffer.from(this.macs[i].digest(id))
      if (expected.length === signature.length && timingSafeEqual(expected, signature)) {
        return { id, key: storeKey(id), renew: i > 0 }
      }
    }
    return null
  }
}

/**
 * Remembers the cookies that verified, so a returning client costs a map
 * lookup instead of an HMAC and a SHA-256 on every request. The answer for a
 * given cookie value never changes, so nothing needs invalidating; the oldest
 * entries make room once `capacity` is reached. Failures are not remembered:
 * garbage cannot fill the cache.
 */
export class VerifiedCookies {
  readonly #signer: CookieSigner
  readonly #capacity: number
  readonly #verified = new Map<string, VerifiedCookie>()
  /**
   * One cursor over the cache, kept between evictions: a fresh `keys()`
   * iterator would step over every slot already deleted at the front of the
   * table, microseconds per new cookie once the cache is full. Entries only
   * join at the back, so the cursor never runs dry while the cache is full.
   */
  #evictor: Iterator<string> | null = null
  /** `verify` as a function value, made once and handed to `findCookie` on every request. */
  readonly verify: (value: string) => VerifiedCookie | null

  constructor (signer: CookieSigner, capacity: number) {
    this.#signer = signer
    this.#capacity = capacity
    this.verify = (value) => this.#lookup(value)
  }

  #lookup (value: string): VerifiedCookie | null {
    const known = this.#verified.get(value)
    if (known !== undefined) return known
    const checked = this.#signer.verify(value)
    if (checked === null) return null
    // `value` and its id are slices of the request's Cookie header, and V8
    // keeps a slice's whole parent alive: remembered as they are, each entry
    // would hold up to a header's worth of memory (tens of kilobytes).
    // A value that verifies is ASCII, so a latin1 round trip copies it exactly.
    const own = Buffer.from(value, 'latin1').toString('latin1')
    const verified = { id: own.slice(0, checked.id.length), key: checked.key, renew: checked.renew }
    if (this.#verified.size >= this.#capacity) {
      if (this.#evictor === null) this.#evictor = this.#verified.keys()
      this.#verified.delete(this.#evictor.next().value as string)
    }
    this.#verified.set(own, verified)
    return verified
  }
}

/**
 * How many values of the session cookie's name a header may offer before the
 * rest are ignored. Browsers send one per path and domain that set it, so a
 * few at most; each costs a signature check (per secret) or a decryption (per
 * key), so hundreds in one header would be a cheap way to burn server CPU.
 */
export const MAX_SAME_NAME_COOKIES = 8

/**
 * Where the last `findCookie` that found something stopped: just after the
 * value it accepted, and how many values it had tried by then, so that a
 * caller can go on from there without trying any value twice. Read it right
 * after the call: the next call overwrites it.
 */
export const lastFound = { end: 0, tries: 0 }

/**
 * Calls `accept` with each value of cookie `name` in a `Cookie` header, in
 * order from offset `from`, until it answers something other than `null`,
 * trying at most `MAX_SAME_NAME_COOKIES` values in all (`tried` of them
 * before `from`). A header may carry the same name several times (one per
 * path and domain that set it).
 */
export function findCookie<T> (header: string, name: string, accept: (value: string) => T | null, from = 0, tried = 0): T | null {
  let tries = tried
  while (from < header.length && tries < MAX_SAME_NAME_COOKIES) {
    const at = header.indexOf(name, from)
    if (at === -1) return null
    from = at + name.length
    if (header.charCodeAt(from) !== 61 /* = */ || !atCookieStart(header, at)) continue
    let end = header.indexOf(';', from)
    if (end === -1) end = header.length
    const raw = header.slice(from + 1, end).trim()
    from = end
    if (raw.length === 0 || raw.length > MAX_COOKIE_LENGTH) continue
    // counted before decoding: a header of broken escapes must not buy unbounded work
    tries++
    const value = decode(raw)
    if (value === null) continue
    const result = accept(value)
    if (result !== null) {
      lastFound.end = from
      lastFound.tries = tries
      return result
    }
  }
  return null
}

function atCookieStart (header: string, at: number): boolean {
  for (let i = at - 1; i >= 0; i--) {
    const code = header.charCodeAt(i)
    if (code === 59 /* ; */) return true
    if (code !== 32 && code !== 9) return false
  }
  return true
}

/**
 * Undoes the quoting and percent-encoding other cookie writers apply; `null`
 * when the value cannot be one of ours: its escapes do not decode, or decode
 * to anything but printable ASCII.
 */
function decode (raw: string): string | null {
  let value = raw
  if (value.length > 1 && value.charCodeAt(0) === 34 && value.charCodeAt(value.length - 1) === 34) {
    value = value.slice(1, -1)
  }
  if (!value.includes('%')) return value
  // a value with an escape that decodes is always shorter: the same one means it did not
  const decoded = decodeCookieValue(value)
  return decoded === value || NOT_PRINTABLE_ASCII.test(decoded) ? null : decoded
}

const NOT_PRINTABLE_ASCII = /[^ -~]/

/**
 * What `decodeURIComponent` makes of a cookie value, or the value as it is
 * where that would throw: the rule of @fastify/cookie's parser, as its
 * `parseOptions.decode`, but without the exception, which costs microseconds:
 * a 16 KB header of broken escapes under distinct names cost milliseconds of
 * CPU a request. A maximal run of escapes decodes without a throw exactly
 * when each is two hex digits and their bytes together are valid UTF-8.
 */
export function decodeCookieValue (value: string): string {
  let escape = value.indexOf('%')
  if (escape === -1) return value
  while (escape !== -1) {
    let end = escape
    let ascii = true
    while (value.charCodeAt(end) === 37 /* % */) {
      const byte = hexDigit(value.charCodeAt(end + 1)) * 16 + hexDigit(value.charCodeAt(end + 2))
      if (Number.isNaN(byte)) return value
      if (byte >= 0x80) ascii = false
      end += 3
    }
    if (!ascii && !isUtf8(Buffer.from(value.slice(escape, end).replaceAll('%', ''), 'hex'))) return value
    escape = value.indexOf('%', end)
  }
  return decodeURIComponent(value)
}

/** The value of a hexadecimal digit's character code; NaN for anything else (a missing character included). */
function hexDigit (code: number): number {
  if (code >= 48 && code <= 57) return code - 48
  const lower = code | 0x20
  if (lower >= 97 && lower <= 102) return lower - 87
  return NaN
}

/** The attributes of the session cookie, as the plugin options give them. */
export interface CookieAttributes {
  path: string
  domain: string | undefined
  httpOnly: boolean
  sameSite: 'lax' | 'strict' | 'none' | false
  secure: boolean | 'auto'
  maxAge: number | undefined
  partitioned: boolean
}

/**
 * Serialises the session cookie. The attribute tails are built once at
 * registration, so a response only concatenates strings.
 */
export class CookieWriter {
  private readonly prefix: string
  private readonly tail: string
  private readonly secureTail: string
  private readonly clearTail: string
  private readonly clearSecureTail: string

  constructor (name: string, readonly attributes: CookieAttributes) {
    this.prefix = name + '='
    let common = '; Path=' + attributes.path
    if (attributes.domain !== undefined) common += '; Domain=' + attributes.domain
    let flags = ''
    if (attributes.httpOnly) flags += '; HttpOnly'
    if (attributes.sameSite !== false) flags += '; SameSite=' + attributes.sameSite[0].toUpperCase() + attributes.sameSite.slice(1)
    const secureFlags = '; Secure' + (attributes.partitioned ? '; Partitioned' : '')
    const maxAge = attributes.maxAge === undefined ? '' : '; Max-Age=' + attributes.maxAge
    this.tail = common + maxAge + flags
    this.secureTail = this.tail + secureFlags
    const clear = common + '; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT' + flags
    this.clearTail = clear
    this.clearSecureTail = clear + secureFlags
  }

  /**
   * Whether the cookie carries Secure on this request. Only `'auto'` reads
   * the protocol: Fastify works it out on each read, from the socket and,
   * behind a trusted proxy, the forwarded headers, whose case it keeps.
   */
  isSecure (request: { readonly protocol: string }): boolean {
    const { secure } = this.attributes
    return secure === 'auto' ? String(request.protocol).toLowerCase() === 'https' : secure
  }

  serialize (value: string, secure: boolean): string {
    return this.prefix + value + (secure ? this.secureTail : this.tail)
  }

  serializeClear (secure: boolean): string {
    return this.prefix + (secure ? this.clearSecureTail : this.clearTail)
  }
}

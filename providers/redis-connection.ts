import net from 'node:net'
import tls from 'node:tls'
import { createHash } from 'node:crypto'

/*
 * The Redis provider's own connection, used when it is given a `url`: one
 * socket speaking RESP2, with just what sessions need. It exists for speed.
 * Every request costs a session store at least one command, and a general
 * client spends several microseconds per command on bookkeeping the provider
 * does not use, plus one write system call per command; on loopback that
 * call also wakes Redis, which then competes with the application for the
 * CPU. Here the commands of every request handled in one turn of the event
 * loop leave in one write, and the reply parser reads straight from the
 * socket's buffers.
 */

/** An error reply from Redis (`-ERR ...`, `-NOSCRIPT ...`). */
export class RedisReplyError extends Error {
  override name = 'RedisReplyError'
}

/**
 * Whether an error reply says the server is a read-only replica: `READONLY …`
 * from Redis 7 on, for a script's write too; before 7, inside the error of
 * the script that tried to write (`ERR Error running script … -READONLY …`).
 */
function isReadOnly (message: string): boolean {
  return message.startsWith('READONLY') || message.includes('-READONLY ')
}

/** A RESP2 reply: status and bulk strings, integers, nil, arrays, and errors inside arrays. */
export type Reply = string | number | null | RedisReplyError | Reply[]

/** A Lua script, sent by its SHA-1 once Redis knows it. */
export class RedisScript {
  readonly sha: string
  constructor (readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex')
  }
}

export interface RedisConnectionOptions {
  /** Extra options for `tls.connect` on a `rediss://` URL (a private CA, a client certificate). */
  tls?: tls.ConnectionOptions
}

/** A call not answered within this long fails, and the connection is replaced. */
export const COMMAND_TIMEOUT_MS = 2000
/** How often the wait of the oldest call is checked: a call fails at most this much after its timeout. */
const WATCH_INTERVAL_MS = 250
/** Size of the buffer a plain TCP connection reads replies into. */
const READ_BUFFER_BYTES = 65536
/** After a failed connection attempt, calls fail at once for 100 ms, then 200 ms, … up to this. */
const MAX_RETRY_DELAY_MS = 1000

interface Pending {
  resolve: (reply: Reply) => void
  reject: (error: Error) => void
  /** When the call was made, for the command timeout. */
  sentAt: number
}

/** A reply the buffer does not hold in full yet. */
const INCOMPLETE = Symbol('incomplete')
/** Where the reply just parsed ends: a module variable, so the parser allocates nothing else. */
let parsedEnd = 0
/** After INCOMPLETE: how many bytes the buffer must hold before parsing again is worth it (0: unknown). */
let wanted = 0

function readInteger (buffer: Buffer, from: number, to: number): number {
  let negative = false
  if (buffer[from] === 45 /* - */) {
    negative = true
    from++
  }
  let value = 0
  for (let i = from; i < to; i++) value = value * 10 + buffer[i] - 48
  return negative ? -value : value
}

/** The reply that starts at `start`, or INCOMPLETE; sets `parsedEnd`. */
function parseReply (buffer: Buffer, start: number): Reply | typeof INCOMPLETE {
  const eol = buffer.indexOf(13 /* \r */, start + 1)
  if (eol === -1 || eol + 1 >= buffer.length) {
    wanted = 0
    return INCOMPLETE
  }
  switch (buffer[start]) {
    case 36 /* $ */: {
      const length = readInteger(buffer, start + 1, eol)
      if (length < 0) {
        parsedEnd = eol + 2
        return null
      }
      const end = eol + 2 + length
      if (end + 2 > buffer.length) {
        // a large value arrives in many chunks: wait for all of it instead of parsing again on each
        wanted = end + 2
        return INCOMPLETE
      }
      parsedEnd = end + 2
      return buffer.toString('utf8', eol + 2, end)
    }
    case 42 /* * */: {
      const count = readInteger(buffer, start + 1, eol)
      if (count < 0) {
        parsedEnd = eol + 2
        return null
      }
      const items: Reply[] = new Array(count)
      let at = eol + 2
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, at)
        if (item === INCOMPLETE) return INCOMPLETE
        items[i] = item
        at = parsedEnd
      }
      parsedEnd = at
      return items
    }
    case 58 /* : */:
      parsedEnd = eol + 2
      return readInteger(buffer, start + 1, eol)
    case 43 /* + */:
      parsedEnd = eol + 2
      return buffer.toString('utf8', start + 1, eol)
    case 45 /* - */:
      parsedEnd = eol + 2
      return new RedisReplyError(buffer.toString('utf8', start + 1, eol))
    default:
      throw new Error(`Redis sent something that is not RESP2 (byte ${buffer[start]})`)
  }
}

function encode (args: readonly string[]): string {
  let out = '*' + args.length + '\r\n'
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    out += '$' + Buffer.byteLength(arg) + '\r\n' + arg + '\r\n'
  }
  return out
}

function failure (message: string, cause?: unknown): Error {
  return new Error(message, cause === undefined ? undefined : { cause })
}

/**
 * One connection to Redis from a `redis://` or `rediss://` URL (user,
 * password and database number included). It connects on the first call,
 * and again on the first call after it was lost. While Redis cannot be
 * reached, calls fail at once rather than waiting: the first right away,
 * then every call for a growing delay after each failed attempt; a call
 * made after that delay tries again. An attempt has failed when the
 * connection is lost before Redis answered anything on it. Calls wait for
 * the handshake (AUTH, SELECT) to succeed before they are sent, so that none
 * runs unauthenticated or in the wrong database. A call Redis does not
 * answer within two seconds fails, as do all others in flight, and the
 * connection is replaced. A failed call is never sent again: the caller
 * hears about it.
 */
export class RedisConnection {
  /** `wait`: no connection (yet, or any more); `connecting` until Redis first answers; `ready`; `end` once closed. */
  status: 'wait' | 'connecting' | 'ready' | 'end' = 'wait'
  readonly #url: URL
  /** AUTH and SELECT as the URL asks, sent first on every connection. */
  readonly #handshake: string[][] = []
  readonly #tls: tls.ConnectionOptions | undefined
  #socket: net.Socket | null = null
  readonly #pending: Pending[] = []
  /** Commands of this turn of the event loop, written together at its end. */
  #outgoing = ''
  /** Commands waiting for the handshake to succeed. */
  #held = ''
  #handshaking = false
  #flushing = false
  readonly #flush = (): void => {
    this.#flushing = false
    // null: the connection was lost or closed since, and its calls have failed
    if (this.#socket !== null) this.#socket.write(this.#outgoing)
    this.#outgoing = ''
  }

  /** Chunks holding a reply not complete yet, their length, and the length worth parsing again. */
  #unparsed: Buffer[] | null = null
  #unparsedLength = 0
  #wanted = 0
  #watch: NodeJS.Timeout | null = null
  #failedAttempts = 0
  #retryAt = 0
  #lastError: Error | null = null

  /**
   * Throws a `URIError` for a user or password that is not valid
   * percent-encoding: decoded here, once, so that nothing can fail between a
   * socket opening and its AUTH and SELECT being queued ahead of every call.
   */
  constructor (url: string, options: RedisConnectionOptions = {}) {
    this.#url = new URL(url)
    this.#tls = options.tls
    const password = decodeURIComponent(this.#url.password)
    const username = decodeURIComponent(this.#url.username)
    if (password !== '') this.#handshake.push(username === '' ? ['AUTH', password] : ['AUTH', username, password])
    const db = this.#url.pathname.slice(1)
    if (db !== '' && db !== '0') this.#handshake.push(['SELECT', db])
  }

  /** Sends one command (`args[0]` its name) and resolves with its reply; an error reply rejects. */
  send (args: readonly string[]): Promise<Reply> {
    if (this.status === 'end') return Promise.reject(failure('Connection is closed.'))
    if (this.#socket === null) {
      if (Date.now() < this.#retryAt) {
        return Promise.reject(failure(`Redis is unreachable: ${(this.#lastError as Error).message}`, this.#lastError))
      }
      this.#connect()
    }
    if (this.#handshaking) this.#held += encode(args)
    else this.#queue(encode(args))
    return new Promise((resolve, reject) => {
      this.#pending.push({ resolve, reject, sentAt: Date.now() })
    })
  }

  /** Runs a script: EVALSHA, and EVAL when Redis does not know it (a restart, a SCRIPT FLUSH). */
  async run (script: RedisScript, key: string, args: readonly string[]): Promise<Reply> {
    try {
      return await this.send(['EVALSHA', script.sha, '1', key, ...args])
    } catch (error) {
      if (!(error instanceof RedisReplyError) || !error.message.startsWith('NOSCRIPT')) throw error
      return await this.send(['EVAL', script.source, '1', key, ...args])
    }
  }

  /** Closes the connection; calls in flight and later calls fail. */
  close (): void {
    if (this.status === 'end') return
    this.status = 'end'
    this.#lost(failure('Connection is closed.'))
  }

  #queue (commands: string): void {
    this.#outgoing += commands
    if (!this.#flushing) {
      this.#flushing = true
      setImmediate(this.#flush)
    }
  }

  #connect (): void {
    const url = this.#url
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
    const port = url.port === '' ? 6379 : Number(url.port)
    let socket: net.Socket
    if (url.protocol === 'rediss:') {
      socket = tls.connect({ host, port, servername: net.isIP(host) === 0 ? host : undefined, ...this.#tls })
      socket.on('data', (chunk: Buffer) => this.#read(socket, chunk))
    } else {
      // replies land in one buffer kept for the connection, and reach the
      // parser without a Buffer per read or the stream machinery in between
      const replies = Buffer.allocUnsafe(READ_BUFFER_BYTES)
      socket = net.connect({
        host,
        port,
        onread: {
          buffer: replies,
          callback: (length) => {
            this.#read(socket, replies.subarray(0, length))
            return true
          }
        }
      })
    }
    socket.setNoDelay(true)
    socket.setKeepAlive(true, 30_000)
    this.#socket = socket
    this.status = 'connecting'
    let cause: Error | null = null
    socket.on('error', (error) => { cause = error })
    socket.on('close', () => {
      if (this.#socket === socket) this.#lost(failure(`Redis connection lost: ${cause?.message ?? 'closed by the server'}`, cause))
    })

    const handshake = this.#handshake
    let left = handshake.length
    this.#handshaking = left > 0
    for (const command of handshake) {
      this.#queue(encode(command))
      this.#pending.push({
        resolve: () => {
          if (--left > 0) return
          this.#handshaking = false
          this.#proven()
          if (this.#held !== '') this.#queue(this.#held)
          this.#held = ''
        },
        reject: (error) => {
          if (this.#socket === socket) this.#lost(failure(`Redis refused the connection: ${error.message}`, error))
        },
        sentAt: Date.now()
      })
    }

    // replies come in order, so the oldest call is the one that has waited longest
    this.#watch = setInterval(() => {
      const oldest = this.#pending[0]
      if (oldest !== undefined && Date.now() - oldest.sentAt >= COMMAND_TIMEOUT_MS) {
        this.#lost(failure(`Redis command timed out: no reply within ${COMMAND_TIMEOUT_MS} ms`))
      }
    }, WATCH_INTERVAL_MS).unref()
  }

  /** Redis has answered (the handshake, if any, succeeded): a loss from now on is not a failed attempt. */
  #proven (): void {
    this.status = 'ready'
    this.#failedAttempts = 0
  }

  #read (socket: net.Socket, chunk: Buffer): void {
    let buffer = chunk
    if (this.#unparsed !== null) {
      // a copy: the read buffer is overwritten by the next read
      this.#unparsed.push(Buffer.from(chunk))
      this.#unparsedLength += chunk.length
      if (this.#unparsedLength < this.#wanted) return
      buffer = Buffer.concat(this.#unparsed, this.#unparsedLength)
    }
    let at = 0
    let demoted: string | null = null
    while (at < buffer.length) {
      let reply: Reply | typeof INCOMPLETE
      try {
        reply = parseReply(buffer, at)
      } catch (error) {
        this.#lost(failure(`Redis connection lost: ${(error as Error).message}`))
        return
      }
      if (reply === INCOMPLETE) break
      at = parsedEnd
      const pending = this.#pending.shift()
      if (pending === undefined) {
        this.#lost(failure('Redis connection lost: Redis sent a reply nobody asked for'))
        return
      }
      if (reply instanceof RedisReplyError && isReadOnly(reply.message)) demoted = reply.message
      // an error can be the server turning the connection away (at its client
      // limit, it answers the first command so and hangs up): no proof yet,
      // unless it says the server is a replica, which is an answer
      if (this.status === 'connecting' && !this.#handshaking && (!(reply instanceof RedisReplyError) || demoted !== null)) this.#proven()
      if (reply instanceof RedisReplyError) pending.reject(reply)
      else pending.resolve(reply)
      // a refused handshake has just replaced the connection
      if (this.#socket !== socket) return
    }
    // A primary demoted by a failover refuses every write on this connection
    // for good; a new one, through a name or proxy that follows the failover,
    // reaches the new primary. The replies read so far have been delivered.
    if (demoted !== null) {
      this.#lost(failure(`Redis connection dropped: the server became a read-only replica (${demoted})`))
      return
    }
    if (at === buffer.length) {
      this.#unparsed = null
    } else {
      this.#unparsed = [Buffer.from(buffer.subarray(at))]
      this.#unparsedLength = buffer.length - at
      this.#wanted = wanted - at
    }
  }

  /** The connection is gone: every call in flight fails, and the next call connects again, or waits out the delay. */
  #lost (error: Error): void {
    const socket = this.#socket
    this.#socket = null
    if (socket !== null) socket.destroy()
    if (this.#watch !== null) clearInterval(this.#watch)
    this.#watch = null
    this.#unparsed = null
    this.#outgoing = ''
    this.#held = ''
    this.#handshaking = false
    if (this.status !== 'end') {
      if (this.status === 'connecting') {
        this.#failedAttempts++
        this.#retryAt = Date.now() + Math.min(this.#failedAttempts * 100, MAX_RETRY_DELAY_MS)
        this.#lastError = error
      }
      this.status = 'wait'
    }
    const pending = this.#pending.splice(0)
    for (const call of pending) call.reject(error)
  }
}

// The Redis provider's own connection reading real Redis replies that a
// proxy hands over in pieces cut at chosen offsets: every offset of a
// pipeline holding each reply shape the provider meets, a byte at a time,
// at random, and a large value over many reads.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { REDIS_URL, requireRedis } from '../fixtures/services.js'
import { RedisConnection, type Reply } from '../../providers/redis-connection.js'

/**
 * A TCP forwarder to Redis that passes the client's bytes on as they come,
 * and holds the server's until `hold` bytes have gathered, then writes them
 * in pieces of the sizes `cut` gives (the rest in one last piece), each piece
 * in a turn of the event loop of its own: the client, in this same process,
 * polls its socket between two turns, so each piece reaches it in a read of
 * its own.
 */
class Rechunker {
  hold = 0
  cut: (length: number) => number[] = (length) => [length]
  /** Bytes of the server's handed to the client so far. */
  forwarded = 0
  connections = 0
  port = 0
  #gathered: Buffer[] = []
  #gatheredLength = 0
  #writing: Promise<void> = Promise.resolve()
  readonly #server: net.Server
  readonly #sockets = new Set<net.Socket>()

  constructor (readonly target: URL) {
    this.#server = net.createServer((client) => {
      this.connections++
      const upstream = net.connect({ host: target.hostname, port: Number(target.port || 6379) })
      client.setNoDelay(true)
      for (const socket of [client, upstream]) {
        this.#sockets.add(socket)
        socket.on('error', () => {})
        socket.on('close', () => {
          client.destroy()
          upstream.destroy()
        })
      }
      client.on('data', (chunk: Buffer) => upstream.write(chunk))
      upstream.on('data', (chunk: Buffer) => this.#gather(client, chunk))
    })
  }

  async start (): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve))
    this.port = (this.#server.address() as net.AddressInfo).port
  }

  stop (): void {
    for (const socket of this.#sockets) socket.destroy()
    this.#server.close()
  }

  #gather (client: net.Socket, chunk: Buffer): void {
    this.#gathered.push(chunk)
    this.#gatheredLength += chunk.length
    if (this.#gatheredLength < this.hold) return
    const bytes = Buffer.concat(this.#gathered, this.#gatheredLength)
    this.#gathered = []
    this.#gatheredLength = 0
    const sizes = this.cut(bytes.length)
    // pieces of earlier server chunks still going out stay ahead
    this.#writing = this.#writing.then(async () => {
      let at = 0
      for (const size of sizes) {
        if (at >= bytes.length) break
        await nextTurn()
        this.#forward(client, bytes.subarray(at, at + size))
        at += size
      }
      await nextTurn()
      if (at < bytes.length) this.#forward(client, bytes.subarray(at))
    })
  }

  /** Counted before it is written, so that a reply the client has is counted in full. */
  #forward (client: net.Socket, piece: Buffer): void {
    this.forwarded += piece.length
    client.write(piece)
  }
}

/** A deterministic generator of integers in [1, max], so that a failing cut can be replayed. */
function sizes (seed: number): (max: number) => number {
  let state = seed
  return (max) => {
    state = (state * 1103515245 + 12345) % 2147483648
    return 1 + (state % max)
  }
}

/** Rejects when `promise` has not settled within `ms`: a parser that stalls fails the test instead of hanging it. */
async function within<T> (ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const stalled = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`stalled: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, stalled])
  } finally {
    clearTimeout(timer)
  }
}

/** Every call's outcome: its reply, or its error's message. */
async function outcomes (calls: Array<Promise<Reply>>): Promise<unknown[]> {
  const settled = await Promise.allSettled(calls)
  return settled.map((result) => result.status === 'fulfilled' ? result.value : `error: ${(result.reason as Error).message}`)
}

t.test('replies cut anywhere come back whole, in order, and nothing stalls', async (t) => {
  if (!await requireRedis(t)) return
  const proxy = new Rechunker(new URL(REDIS_URL))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const url = new URL(REDIS_URL)
  url.hostname = '127.0.0.1'
  url.port = String(proxy.port)
  const redis = new RedisConnection(url.href)
  t.teardown(() => redis.close())

  const space = `conn-split-${process.pid}-${randomBytes(4).toString('hex')}:`
  const [hash, set, big] = [`${space}hash`, `${space}set`, `${space}big`]
  const admin = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 })
  t.teardown(async () => {
    await admin.del(hash, set, big)
    admin.disconnect()
  })
  await admin.hset(hash, 'field-0123456789', 'value-0123456789', 'ü', 'ß✓🍕', 'empty', '')
  const large = 'é'.repeat(45_000) + randomBytes(10_000).toString('hex')
  await admin.set(big, large, 'PX', 60_000)
  await admin.pexpire(hash, 60_000)
  // EVAL rather than run(): another test's SCRIPT FLUSH would add a NOSCRIPT
  // reply, and the bytes of a round would no longer be the ones measured
  const evaluate = (source: string, ...args: string[]): Promise<Reply> => redis.send(['EVAL', source, '1', set, ...args])
  const pair = 'return {1, ARGV[1]}'
  t.equal(await redis.send(['PING']), 'PONG', 'connected through the proxy')

  // each reply shape the provider meets, two-digit lengths included, an error among them
  const pipeline = (): Array<Promise<Reply>> => [
    redis.send(['HGETALL', hash]),
    evaluate(pair, 'user-0123456789'),
    evaluate('return {0, false}'),
    evaluate('return {1, {ARGV[1], {3, false}}, {}}', 'abcdefghijk'),
    redis.send(['GET', `${space}missing`]),
    redis.send(['SET', set, 'x', 'PX', '60000']),
    redis.send(['HLEN', hash]),
    redis.send(['HGET', hash]),
    redis.send(['PEXPIRE', `${space}missing`, '1'])
  ]
  const expected = [
    ['field-0123456789', 'value-0123456789', 'ü', 'ß✓🍕', 'empty', ''],
    [1, 'user-0123456789'],
    [0, null],
    [1, ['abcdefghijk', [3, null]], []],
    null,
    'OK',
    3,
    'error: ERR wrong number of arguments for \'hget\' command',
    0
  ]

  const before = proxy.forwarded
  t.strictSame(await within(3000, outcomes(pipeline()), 'uncut'), expected, 'uncut')
  const length = proxy.forwarded - before
  t.ok(length > 200, `the pipeline's replies are ${length} bytes`)

  await t.test('cut in two at every offset: inside a length, between CR and LF, inside a value, inside nested arrays, after some whole replies', async (t) => {
    for (let at = 1; at < length; at++) {
      proxy.hold = length
      proxy.cut = () => [at]
      t.strictSame(await within(3000, outcomes(pipeline()), `cut after byte ${at}`), expected, `cut after byte ${at}`, { diagnostic: true })
    }
    proxy.hold = 0
    proxy.cut = (n) => [n]
  })

  await t.test('a byte at a time', async (t) => {
    proxy.hold = length
    proxy.cut = (n) => new Array<number>(n).fill(1)
    t.strictSame(await within(5000, outcomes(pipeline()), 'a byte at a time'), expected)
    proxy.hold = 0
    proxy.cut = (n) => [n]
  })

  await t.test('at random offsets', async (t) => {
    const next = sizes(20261201)
    for (let round = 0; round < 200; round++) {
      proxy.hold = length
      proxy.cut = (n) => {
        const pieces: number[] = []
        for (let left = n; left > 0; left -= pieces[pieces.length - 1]) pieces.push(next(12))
        return pieces
      }
      t.strictSame(await within(3000, outcomes(pipeline()), `random round ${round}`), expected, `random round ${round}`, { diagnostic: true })
    }
    proxy.hold = 0
    proxy.cut = (n) => [n]
  })

  await t.test('a value of 100 KB over many reads, alone and between small replies', async (t) => {
    const bytes = Buffer.byteLength(large)
    t.ok(bytes > 100_000)
    const before = proxy.forwarded
    t.equal(await redis.send(['GET', big]), large, 'uncut')
    const alone = proxy.forwarded - before
    // every cut in the length line and around the value's end, and the value in pieces of up to 4 KB
    const edges = [1, 2, 3, 4, 5, 6, 7, 8, alone - 4, alone - 3, alone - 2, alone - 1]
    for (const at of edges) {
      proxy.hold = alone
      proxy.cut = () => [at]
      t.equal(await within(3000, redis.send(['GET', big]), `cut after byte ${at}`), large, `cut after byte ${at}`)
    }
    const next = sizes(7)
    for (let round = 0; round < 20; round++) {
      proxy.hold = 0
      proxy.cut = (n) => {
        const pieces: number[] = []
        for (let left = n; left > 0; left -= pieces[pieces.length - 1]) pieces.push(next(4096))
        return pieces
      }
      const got = await within(3000, outcomes([redis.send(['HLEN', hash]), redis.send(['GET', big]), evaluate(pair, 'after'), redis.send(['GET', big])]), `big round ${round}`)
      t.strictSame(got, [3, large, [1, 'after'], large], `round ${round}`, { diagnostic: true })
    }
    proxy.hold = 0
    proxy.cut = (n) => [n]
  })

  t.equal(proxy.connections, 1, 'one connection throughout: no call timed out or dropped it')
})

// The Redis provider's own connection, on its own: the RESP2 parser against
// a scripted TCP server that answers exactly the bytes a test gives it, the
// back-off against one that hangs up, and the handshake (database,
// password, ACL user, TLS) against real Redis servers started for the test.
import t, { type Test } from 'tap'
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { REDIS_URL, requireRedis } from '../fixtures/services.js'
import { freePort, requireRedisServer, startRedisServer } from '../fixtures/redis-server.js'
import { RedisConnection, RedisReplyError, RedisScript } from '../../providers/redis-connection.js'

/**
 * A TCP server that answers each chunk it receives with the next of
 * `replies` (a function gets the socket, to misbehave at will), and counts
 * connections and chunks.
 */
async function scripted (t: Test, replies: Array<string | ((socket: net.Socket) => void)>): Promise<{ url: string, connections: number, received: string[] }> {
  const state = { url: '', connections: 0, received: [] as string[] }
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    state.connections++
    sockets.add(socket)
    socket.setNoDelay(true)
    socket.on('error', () => {})
    socket.on('data', (chunk) => {
      state.received.push(chunk.toString())
      const reply = replies.shift()
      if (typeof reply === 'function') reply(socket)
      else if (reply !== undefined) socket.write(reply)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  state.url = `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  return state
}

function open (t: Test, url: string, options?: ConstructorParameters<typeof RedisConnection>[1]): RedisConnection {
  const connection = new RedisConnection(url, options)
  t.teardown(() => connection.close())
  return connection
}

t.test('every RESP2 reply type, UTF-8 by byte length, and errors', async (t) => {
  const server = await scripted(t, [
    '+OK\r\n',
    ':-42\r\n',
    '$7\r\nhé\r\nß\r\n',
    '$-1\r\n',
    '*-1\r\n',
    '*0\r\n',
    '*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR inner\r\n',
    '-ERR boom\r\n'
  ])
  const redis = open(t, server.url)
  t.equal(await redis.send(['PING']), 'OK')
  t.equal(await redis.send(['X']), -42)
  t.equal(await redis.send(['X']), 'hé\r\nß', 'a bulk string may hold CR LF and multi-byte characters')
  t.equal(await redis.send(['X']), null)
  t.equal(await redis.send(['X']), null)
  t.strictSame(await redis.send(['X']), [])
  const nested = await redis.send(['X']) as unknown[]
  t.strictSame(nested.slice(0, 2), ['a', [1, null]])
  t.type(nested[2], RedisReplyError, 'an error inside an array is a value')
  await t.rejects(redis.send(['X']), { name: 'RedisReplyError', message: 'ERR boom' })
  t.equal(redis.status, 'ready')
  t.equal(server.received[0], '*1\r\n$4\r\nPING\r\n', 'commands go out as RESP arrays of bulk strings')
})

t.test('replies that arrive a byte at a time, and several in one packet', async (t) => {
  const reply = '*2\r\n$5\r\nfirst\r\n$6\r\nsecond\r\n'
  const server = await scripted(t, [
    (socket) => {
      const bytes = Buffer.from(reply)
      let next = 0
      const drip = setInterval(() => {
        socket.write(bytes.subarray(next, next + 1))
        if (++next === bytes.length) clearInterval(drip)
      }, 1)
    },
    ':1\r\n:2\r\n:3\r\n'
  ])
  const redis = open(t, server.url)
  t.strictSame(await redis.send(['X']), ['first', 'second'])
  const three = await Promise.all([redis.send(['A']), redis.send(['B']), redis.send(['C'])])
  t.strictSame(three, [1, 2, 3])
  t.equal(server.received.length, 2, 'the three commands of one turn left in one write')
  t.equal(server.received[1], '*1\r\n$1\r\nA\r\n*1\r\n$1\r\nB\r\n*1\r\n$1\r\nC\r\n')
})

t.test('bytes that are not RESP2 fail the calls in flight, and the next call gets a new connection', async (t) => {
  const server = await scripted(t, ['+OK\r\n', '?what\r\n', '+back\r\n'])
  const redis = open(t, server.url)
  t.equal(await redis.send(['X']), 'OK')
  await t.rejects(redis.send(['X']), /connection lost: Redis sent something that is not RESP2/)
  t.equal(redis.status, 'wait')
  t.equal(await redis.send(['X']), 'back', 'a connection lost after it was proven is replaced at once')
  t.equal(server.connections, 2)
})

t.test('a reply nobody asked for drops the connection', async (t) => {
  const server = await scripted(t, ['+OK\r\n+EXTRA\r\n', '+next\r\n'])
  const redis = open(t, server.url)
  t.equal(await redis.send(['X']), 'OK')
  await sleep(20)
  t.equal(redis.status, 'wait')
  t.equal(await redis.send(['X']), 'next')
  t.equal(server.connections, 2)
})

t.test('a READONLY reply (a primary turned replica by a failover) fails its call and drops the connection, so the next call can reach the new primary', async (t) => {
  const server = await scripted(t, ['+OK\r\n', '-READONLY You can\'t write against a read only replica.\r\n', '+written\r\n'])
  const redis = open(t, server.url)
  t.equal(await redis.send(['X']), 'OK')
  const refused = await redis.send(['HSET', 'k', 'f', 'v']).catch((err: unknown) => err)
  t.type(refused, RedisReplyError, 'the call gets the reply itself')
  t.match((refused as Error).message, /^READONLY/)
  t.equal(redis.status, 'wait')
  t.equal(await redis.send(['HSET', 'k', 'f', 'v']), 'written')
  t.equal(server.connections, 2)
})

t.test('replies that came with a READONLY are delivered, only unanswered calls fail, and a first reply READONLY is no failed attempt', async (t) => {
  const readOnly = '-READONLY You can\'t write against a read only replica.\r\n'
  const server = await scripted(t, [
    '+OK\r\n',
    (socket) => { socket.write('$1\r\na\r\n' + readOnly + '$1\r\nb\r\n$5\r\nhal') },
    // Redis before 7: the script's error carries it
    '-ERR Error running script (call to f_0123): @user_script:1: @user_script: 1: -READONLY You can\'t write against a read only replica.\r\n',
    '+read\r\n'
  ])
  const redis = open(t, server.url)
  t.equal(await redis.send(['X']), 'OK')
  const calls = [redis.send(['GET', 'a']), redis.send(['HSET', 'k', 'f', 'v']), redis.send(['GET', 'b']), redis.send(['GET', 'c'])]
  const settled = await Promise.allSettled(calls)
  t.same(settled.map((s) => s.status === 'fulfilled' ? s.value : (s.reason as Error).message.slice(0, 30)), ['a', 'READONLY You can\'t write again', 'b', 'Redis connection dropped: the '])
  await t.rejects(redis.send(['EVALSHA']), /-READONLY/)
  t.equal(redis.status, 'wait')
  t.equal(await redis.send(['GET', 'a']), 'read', 'the next call connects at once: a READONLY is an answer, not a failed attempt')
  t.equal(server.connections, 3)
})

t.test('other error replies leave the connection as it is', async (t) => {
  const server = await scripted(t, ['-ERR wrong number of arguments\r\n', '+fine\r\n'])
  const redis = open(t, server.url)
  await t.rejects(redis.send(['X']), /^ERR wrong number/)
  t.equal(await redis.send(['X']), 'fine')
  t.equal(server.connections, 1)
})

t.test('a connection the server closes: calls in flight fail, the next call connects again', async (t) => {
  const server = await scripted(t, ['+OK\r\n', (socket) => socket.end(), '+again\r\n'])
  const redis = open(t, server.url)
  t.equal(await redis.send(['X']), 'OK')
  await t.rejects(redis.send(['X']), /connection lost: closed by the server/)
  t.equal(await redis.send(['X']), 'again')
})

t.test('a server that accepts and hangs up or talks nonsense before any reply: a failed attempt, so calls back off', async (t) => {
  for (const misbehave of [(socket: net.Socket) => socket.end(), '?what\r\n']) {
    const server = await scripted(t, [misbehave])
    const redis = open(t, server.url)
    await t.rejects(redis.send(['X']), /connection lost/)
    await t.rejects(redis.send(['X']), /Redis is unreachable/, 'the next call does not even try')
    t.equal(server.connections, 1)
  }
})

t.test('a server at its client limit, which answers the first command with an error and hangs up: a failed attempt too', async (t) => {
  const server = await scripted(t, [(socket) => socket.end('-ERR max number of clients reached\r\n')])
  const redis = open(t, server.url)
  await t.rejects(redis.send(['X']), /max number of clients reached/)
  await sleep(50)
  await t.rejects(redis.send(['X']), /Redis is unreachable/, 'the next call, once the server hung up, does not even try')
  t.equal(server.connections, 1)
})

t.test('each call has its own 2 s: a late answer within it succeeds, a call queued behind a slow one fails 2 s after it was made', async (t) => {
  const late = await scripted(t, [(socket) => setTimeout(() => socket.write('+late\r\n'), 1900)])
  t.equal(await open(t, late.url).send(['X']), 'late', 'answered after 1.9 s')

  const slow = await scripted(t, [(socket) => setTimeout(() => socket.write('+first\r\n'), 1500)])
  const redis = open(t, slow.url)
  const first = redis.send(['FIRST'])
  await sleep(1000)
  const sent = Date.now()
  const second = redis.send(['SECOND'])
  t.equal(await first, 'first')
  await t.rejects(second, /timed out: no reply within 2000 ms/)
  const waited = Date.now() - sent
  t.ok(waited >= 2000 && waited < 2450, `the second call failed ${waited} ms after it was made, not 2 s after the last reply`)
})

t.test('run() falls back to EVAL only on NOSCRIPT; other errors are the caller\'s', async (t) => {
  const script = new RedisScript('return 1')
  t.equal(script.sha, 'e0e1f9fabfc9d4800c877a703b823ac0578ff8db', 'the SHA-1 Redis gives the same source')
  const server = await scripted(t, ['-NOSCRIPT No matching script\r\n', ':1\r\n', '-ERR script failed\r\n'])
  const redis = open(t, server.url)
  t.equal(await redis.run(script, 'k', ['a']), 1)
  t.match(server.received[0], /^\*5\r\n\$7\r\nEVALSHA\r\n\$40\r\ne0e1f9fa/)
  t.match(server.received[1], /^\*5\r\n\$4\r\nEVAL\r\n\$8\r\nreturn 1\r\n\$1\r\n1\r\n\$1\r\nk\r\n\$1\r\na\r\n$/)
  await t.rejects(redis.run(script, 'k', []), /ERR script failed/)
  t.equal(server.received.length, 3, 'no EVAL after an error that is not NOSCRIPT')
})

t.test('close() fails the calls in flight and every later one', async (t) => {
  const server = await scripted(t, [])
  const redis = open(t, server.url)
  const inFlight = redis.send(['X'])
  redis.close()
  redis.close()
  await t.rejects(inFlight, /Connection is closed/)
  await t.rejects(redis.send(['X']), /Connection is closed/)
  t.equal(redis.status, 'end')
  const never = new RedisConnection(server.url)
  never.close()
  t.equal(never.status, 'end', 'closing a connection never opened')
})

t.test('while nothing listens: the first call fails at once, calls fail without trying for a growing delay, then it tries again', async (t) => {
  const redis = open(t, `redis://127.0.0.1:${await freePort()}`)
  await t.rejects(redis.send(['PING']), /connection lost: connect ECONNREFUSED/)
  const started = Date.now()
  await t.rejects(redis.send(['PING']), /Redis is unreachable: Redis connection lost: connect ECONNREFUSED/)
  t.ok(Date.now() - started < 50, 'within the delay a call does not even try')
  await sleep(120)
  await t.rejects(redis.send(['PING']), /connection lost: connect ECONNREFUSED/, 'after 100 ms it tries again')
  await t.rejects(redis.send(['PING']), /unreachable/, 'and the delay has grown')
})

/**
 * A TCP server that hangs up on every connection at once, as a Redis that
 * is not up yet would look, or, once `answer` is set, answers each chunk
 * with a PONG; it notes when each connection arrived.
 */
async function flaky (t: Test): Promise<{ url: string, answer: boolean, arrivals: number[], hangUp: () => void }> {
  const sockets = new Set<net.Socket>()
  const state = {
    url: '',
    answer: false,
    arrivals: [] as number[],
    hangUp: () => { for (const socket of sockets) socket.destroy() }
  }
  const server = net.createServer((socket) => {
    state.arrivals.push(Date.now())
    socket.on('error', () => {})
    if (!state.answer) {
      socket.destroy()
      return
    }
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('data', () => socket.write('+PONG\r\n'))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    state.hangUp()
    server.close()
  })
  state.url = `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  return state
}

/** Calls one after another, a few milliseconds apart, until `attempts` connections have reached the server. */
async function callUntil (redis: RedisConnection, arrivals: number[], attempts: number): Promise<void> {
  while (arrivals.length < attempts) {
    await redis.send(['PING']).catch(() => {})
    await sleep(3)
  }
}

/** The time from each connection attempt to the next. */
function gaps (arrivals: number[]): number[] {
  return arrivals.slice(1).map((at, i) => at - arrivals[i])
}

t.test('the wait after failed attempts grows by 100 ms and stays at 1 s from the tenth on', async (t) => {
  const server = await flaky(t)
  const redis = open(t, server.url)
  await callUntil(redis, server.arrivals, 13)
  const waits = gaps(server.arrivals)
  t.comment(`waits between attempts: ${waits.join(', ')} ms`)
  for (let i = 0; i < waits.length; i++) {
    const delay = Math.min((i + 1) * 100, 1000)
    // a call inside the wait fails without trying, so no attempt comes earlier; calls 3 ms apart, and a loaded machine, make it later
    t.ok(waits[i] >= delay - 2 && waits[i] < delay + 150, `after ${i + 1} failed attempts, the next came ${waits[i]} ms later (${delay} ms)`)
  }
  t.ok(waits[11] < 1150, `after 12 failed attempts the wait is ${waits[11]} ms, capped at 1 s, not 1.2 s`)
})

t.test('a connection Redis answered starts the wait over: its loss is no failed attempt, and the next failure waits 100 ms again', async (t) => {
  const server = await flaky(t)
  const redis = open(t, server.url)
  await callUntil(redis, server.arrivals, 3)
  const [first, second] = gaps(server.arrivals)
  t.ok(first >= 98 && first < 250 && second >= 198 && second < 350, `three failed attempts, ${first} and ${second} ms apart; 300 ms to wait now`)

  server.answer = true
  let reply: unknown = null
  while (reply === null) {
    reply = await redis.send(['PING']).catch(() => null)
    await sleep(3)
  }
  t.equal(reply, 'PONG')
  t.equal(server.arrivals.length, 4, 'answered on the fourth attempt')
  t.ok(server.arrivals[3] - server.arrivals[2] >= 298, 'which came after the third wait')

  server.answer = false
  server.hangUp()
  while (redis.status !== 'wait') await sleep(1)
  const lost = Date.now()
  await callUntil(redis, server.arrivals, 6)
  t.ok(server.arrivals[4] - lost < 80, `the lost connection is replaced at once (${server.arrivals[4] - lost} ms)`)
  const wait = server.arrivals[5] - server.arrivals[4]
  t.ok(wait >= 98 && wait < 250, `that replacement failed, and the next attempt came ${wait} ms later: 100 ms, not 400 ms`)
})

t.test('against real Redis', async (t) => {
  if (!await requireRedis(t)) return

  t.test('the database in the url, and none for /0', async (t) => {
    const url = new URL(REDIS_URL)
    url.pathname = '/5'
    const key = `conn-test-${process.pid}`
    const redis = open(t, url.href)
    t.equal(await redis.send(['SET', key, 'five']), 'OK')
    const admin = new Redis(REDIS_URL, { db: 5 })
    t.teardown(() => admin.disconnect())
    t.equal(await admin.get(key), 'five', 'the key is in database 5')
    await admin.del(key)
    url.pathname = '/0'
    t.equal(await open(t, url.href).send(['PING']), 'PONG')
  })

  t.test('no command runs before the handshake succeeds', async (t) => {
    const admin = new Redis(REDIS_URL)
    t.teardown(() => admin.disconnect())
    const key = `conn-test-held-${process.pid}`
    const url = new URL(REDIS_URL)
    url.pathname = '/99'
    await t.rejects(open(t, url.href).send(['SET', key, 'x']), /refused the connection: ERR DB index is out of range/)
    url.pathname = ''
    url.password = 'not-set-on-this-server'
    await t.rejects(open(t, url.href).send(['SET', key, 'x']), /refused the connection: (ERR AUTH|WRONGPASS)/)
    t.equal(await admin.get(key), null, 'the SET sent with them never ran')
  })

  t.test('port 6379 when the url names none', async (t) => {
    const url = new URL(REDIS_URL)
    if (url.port !== '6379') {
      t.comment(`SKIPPED: REDIS_URL ${REDIS_URL} is not on port 6379`)
      return
    }
    url.port = ''
    t.equal(await open(t, url.href).send(['PING']), 'PONG')
  })
})

t.test('a password, an ACL user, and a wrong password', async (t) => {
  if (!requireRedisServer(t)) return
  const server = await startRedisServer(t, undefined, ['--requirepass', 'p@ss/w rd', '--user', 'alice', 'on', '>apple', '~*', '&*', '+@all'])
  const at = `127.0.0.1:${server.port}`
  t.equal(await open(t, `redis://:${encodeURIComponent('p@ss/w rd')}@${at}`).send(['PING']), 'PONG', 'the default user, percent-encoded password')
  const alice = open(t, `redis://alice:apple@${at}/2`)
  t.equal(await alice.send(['ACL', 'WHOAMI']), 'alice')
  t.equal(alice.status, 'ready')
  const wrong = open(t, `redis://:nope@${at}`)
  await t.rejects(wrong.send(['PING']), /Redis refused the connection: (WRONGPASS|ERR invalid password)/, 'the call fails with the reason')
  t.equal(wrong.status, 'wait')
  await t.rejects(wrong.send(['PING']), /unreachable/, 'and it counts as a failed attempt')
})

t.test('a user or password that is not percent-encoding on its own is refused before any socket opens', async (t) => {
  // together 'u%C3' and '%A9' would decode to 'ué'
  t.throws(() => new RedisConnection('redis://u%C3:%A9@127.0.0.1:1'), URIError)
  t.throws(() => new RedisConnection('redis://:%zz@127.0.0.1:1'), URIError)
})

t.test('rediss:// with a private CA', async (t) => {
  if (!requireRedisServer(t)) return
  if (spawnSync('openssl', ['version'], { stdio: 'ignore' }).status !== 0) {
    const message = 'openssl is not on the PATH, so no certificate for the TLS test'
    if (process.env.CI === 'true') {
      t.fail(`${message}: under CI=true this is a failure`)
    } else {
      console.error(`\n!!! ${message}: SKIPPING "${t.name}".\n`)
      t.comment(`SKIPPED: ${message}`)
    }
    return
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'fastify-sessions-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = (name: string): string => path.join(dir, name)
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore' }) }
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=test CA', '-keyout', file('ca.key'), '-out', file('ca.crt'))
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', file('server.key'), '-out', file('server.csr'))
  writeFileSync(file('san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.crt'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '1',
    '-extfile', file('san.cnf'), '-out', file('server.crt'))
  const tlsPort = await freePort()
  await startRedisServer(t, undefined, [
    '--tls-port', String(tlsPort), '--tls-cert-file', file('server.crt'), '--tls-key-file', file('server.key'),
    '--tls-ca-cert-file', file('ca.crt'), '--tls-auth-clients', 'no'
  ])
  const ca = readFileSync(file('ca.crt'))
  t.equal(await open(t, `rediss://127.0.0.1:${tlsPort}`, { tls: { ca } }).send(['PING']), 'PONG', 'by IP address')
  t.equal(await open(t, `rediss://localhost:${tlsPort}`, { tls: { ca } }).send(['PING']), 'PONG', 'by name (SNI)')
  await t.rejects(open(t, `rediss://127.0.0.1:${tlsPort}`).send(['PING']), /connection lost: .*(self[- ]signed|unable to (get|verify))/, 'an unknown CA is refused')
})

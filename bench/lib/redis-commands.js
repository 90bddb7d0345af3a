// Store commands per request for our Redis provider. The provider talks to
// Redis through a counting TCP proxy, which parses the RESP commands the
// client sends (so only this server's traffic is counted) and counts round
// trips (a client send that follows a server reply, or opens the
// conversation). `INFO commandstats` is read before and after as well; it
// is server-wide, so it also shows commands that Lua scripts run, and any
// traffic from other clients of the same Redis.
import net from 'node:net'
import Redis from 'ioredis'
import { startChild } from './procs.js'
import { cookiePair, httpClient } from './http.js'

/** A TCP proxy to `target` that counts client commands and round trips. */
export async function countingProxy (target) {
  const { hostname, port } = new URL(target)
  const counts = { commands: 0, roundTrips: 0, byName: {} }
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: hostname, port: Number(port || 6379) })
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    let serverSpoke = true
    let buffer = Buffer.alloc(0)
    client.on('data', (chunk) => {
      if (serverSpoke) counts.roundTrips++
      serverSpoke = false
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])
      buffer = parseCommands(buffer, (name) => {
        counts.commands++
        counts.byName[name] = (counts.byName[name] ?? 0) + 1
      })
      upstream.write(chunk)
    })
    upstream.on('data', (chunk) => {
      serverSpoke = true
      client.write(chunk)
    })
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => client.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    counts,
    reset () {
      counts.commands = 0
      counts.roundTrips = 0
      counts.byName = {}
    },
    close: () => new Promise((resolve) => { server.close(resolve); server.unref() })
  }
}

/**
 * Calls `onCommand(NAME)` for each complete RESP array in `buffer`; answers
 * the unparsed rest. Only arrays of bulk strings (what clients send).
 */
export function parseCommands (buffer, onCommand) {
  let at = 0
  for (;;) {
    if (at >= buffer.length) return buffer.subarray(at)
    if (buffer[at] !== 0x2a /* * */) throw new Error('unexpected RESP from client')
    const header = buffer.indexOf('\r\n', at)
    if (header === -1) return buffer.subarray(at)
    const n = Number(buffer.toString('latin1', at + 1, header))
    let p = header + 2
    let name = null
    let complete = true
    for (let i = 0; i < n; i++) {
      const eol = buffer.indexOf('\r\n', p)
      if (eol === -1) { complete = false; break }
      const len = Number(buffer.toString('latin1', p + 1, eol))
      if (eol + 2 + len + 2 > buffer.length) { complete = false; break }
      if (i === 0) name = buffer.toString('latin1', eol + 2, eol + 2 + len).toUpperCase()
      p = eol + 2 + len + 2
    }
    if (!complete) return buffer.subarray(at)
    onCommand(name)
    at = p
  }
}

function parseCommandStats (info) {
  const stats = {}
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
    if (m !== null) stats[m[1]] = Number(m[2])
  }
  return stats
}

function diff (after, before) {
  const d = {}
  for (const [name, calls] of Object.entries(after)) {
    const delta = calls - (before[name] ?? 0)
    if (delta > 0 && name !== 'info') d[name] = delta
  }
  return d
}

/**
 * Starts bench/servers/fastify-sessions.js on the redis provider behind the
 * proxy and measures each request kind `requests` times, one at a time.
 * Every response (warm-up included) is checked: a kind with a bad one, or
 * whose writes did not each add 1 to the stored counter, has `failure`.
 */
export async function measureRedisCommands ({ redisUrl, serversDir, requests = 500, core, prefix = 'bench:', module }) {
  const target = new URL(redisUrl)
  const proxy = await countingProxy(redisUrl)
  const proxied = `redis://${target.hostname}:${proxy.port}${target.pathname}`
  const admin = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })
  const server = startChild(serversDir + 'fastify-sessions.js', [JSON.stringify({ provider: 'redis', providerOptions: { url: proxied, prefix }, ...(module === undefined ? {} : { module }) })], { core })
  const kinds = []
  try {
    await admin.connect()
    const { port } = await server.ready
    const http = httpClient(`http://127.0.0.1:${port}`, { sockets: 1 })
    const seeded = await http.get('/seed?v=hello')
    const cookie = cookiePair(seeded.setCookie, 'sessionid')
    if (cookie === null) throw new Error('seeding gave no cookie')
    const peek = async () => (await http.get('/peek', cookie)).body
    let counter = Number(await peek())
    const plan = [
      { kind: 'read', path: '/read', cookie, expect: () => 'hello' },
      { kind: 'none (cookie, untouched)', path: '/none', cookie, expect: () => 'none' },
      { kind: 'none-optout', path: '/none-optout', cookie, expect: () => 'none' },
      { kind: 'write', path: '/write', cookie, expect: () => String(++counter) },
      { kind: 'new', path: '/new', expect: () => 'new', newCookie: true },
      { kind: 'touch (session.touch())', path: '/touch', cookie, expect: () => 'touched' }
    ]
    for (const step of plan) {
      let bad = 0
      const samples = []
      const send = async () => {
        const expected = step.expect()
        const res = await http.get(step.path, step.cookie)
        if (res.status !== 200 || res.body !== expected || (step.newCookie && cookiePair(res.setCookie, 'sessionid') === null)) {
          bad++
          if (samples.length < 2) samples.push(`${res.status} ${JSON.stringify(res.body.slice(0, 60))} for ${JSON.stringify(expected)}`)
        }
      }
      for (let i = 0; i < 20; i++) await send()
      const before = parseCommandStats(await admin.info('commandstats'))
      proxy.reset()
      for (let i = 0; i < requests; i++) await send()
      const counts = { ...proxy.counts, byName: { ...proxy.counts.byName } }
      const after = parseCommandStats(await admin.info('commandstats'))
      const server = diff(after, before)
      const serverTotal = Object.values(server).reduce((a, b) => a + b, 0)
      // Read outside the counted window: the stored counter, not just the answers.
      const stored = step.kind === 'write' ? await peek() : null
      const failure = bad > 0
        ? `${bad} of ${requests + 20} responses were wrong, e.g. ${samples.join('; ')}`
        : stored !== null && stored !== String(counter) ? `the stored counter is ${stored} after writes answering up to ${counter}` : undefined
      kinds.push({
        kind: step.kind,
        requests,
        bad,
        ...(failure === undefined ? {} : { failure }),
        commandsPerRequest: counts.commands / requests,
        roundTripsPerRequest: counts.roundTrips / requests,
        commandsByName: Object.fromEntries(Object.entries(counts.byName).map(([k, v]) => [k, v / requests])),
        commandstatsPerRequest: serverTotal / requests,
        commandstatsByName: Object.fromEntries(Object.entries(server).map(([k, v]) => [k, v / requests]))
      })
    }
    http.close()
    return { kinds }
  } finally {
    await server.stop()
    admin.disconnect()
    await proxy.close()
  }
}

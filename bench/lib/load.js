// The load generator: a long-lived child process (pinned to its own core by
// the orchestrator) that runs autocannon on request and checks every
// response. Protocol (IPC): { type: 'run', id, spec } -> { type: 'result', id, result }.
//
// spec: {
//   url: 'http://127.0.0.1:port', path: '/read', connections, duration (s),
//   mode: 'fixed'   -> connection i sends cookies[i % n] and expects values[i % n]
//         'counter' -> connection i sends cookies[i % n]; each body must be the previous + 1
//                      (or equal `constant` when set: a stateless store cannot count, as
//                      the connection keeps sending the first cookie; then every 2xx must
//                      carry a Set-Cookie of `cookieName`, and each connection's last one
//                      is answered (writtenCookies) for the orchestrator to read back)
//         'new'     -> no cookie; body 'new' and a Set-Cookie of `cookieName` whose value
//                      no earlier response carried; the last RECENT_COOKIES of them are
//                      answered (newCookies) for the orchestrator to read back
//         'random'  -> each connection cycles through its own random permutation of its
//                      share of `cookies` (connection i: cookies i, i+n, i+2n, ...), so all
//                      sessions are hit uniformly in random order; expects each one's value.
//                      Requests are prebuilt per connection: building one per request
//                      (setupRequest) made autocannon the bottleneck.
//   cookies: ['sessionid=...'], values: ['...'], expect: 'body', constant: '1', cookieName,
//   rate: optional overall req/s (default: as fast as the server answers)
//   timeout: optional seconds a request may wait for its response (default: half the duration)
// }
import autocannon from 'autocannon'

const RECENT_COOKIES = 20

/** Reads the `name=value` pair of a response's Set-Cookie for `name` out of autocannon's 'headers' event; `null` without one. */
function sessionCookieOf (name) {
  const prefix = name + '='
  return (info) => {
    const raw = info.headers ?? []
    let pair = null
    for (let i = 0; i < raw.length; i += 2) {
      if (raw[i].length === 10 && raw[i].toLowerCase() === 'set-cookie' && raw[i + 1].startsWith(prefix) && raw[i + 1].length > prefix.length + 1) pair = raw[i + 1].split(';', 1)[0]
    }
    return pair
  }
}

/** Runs one autocannon load and returns the counts the orchestrator judges. */
export function runLoad (spec) {
  const { cookies = [], values = [], mode } = spec
  const count = { sent: 0, responses: 0, ok: 0, non2xx: 0, badBody: 0, badCookie: 0, repeatedCookie: 0 }
  // Responses per connection: a connection the server never answers would
  // otherwise only lower the rate, not fail the cell.
  const answered = []
  const seenCookies = new Set()
  const recentCookies = []
  const writtenCookies = []
  const statuses = {}
  let latencies = new Float64Array(1 << 16)
  let nLat = 0
  let nextClient = 0
  const badSamples = []
  let firstAt = null
  let lastAt = null

  function bad (what) {
    count.badBody++
    if (badSamples.length < 5) badSamples.push(what)
  }

  function setupClient (client) {
    const index = nextClient++
    let expected = null
    answered[index] = 0
    // Attached before the client sends its first request (setupClient runs first).
    client.on('request', () => { count.sent++ })
    client.on('response', (status, _bytes, duration) => {
      const now = process.hrtime.bigint()
      if (firstAt === null) firstAt = now
      lastAt = now
      // With pipelining 1 the answered request is still the iterator's current one.
      if (mode === 'random') expected = client.requestIterator.currentRequest.expected
      count.responses++
      answered[index]++
      statuses[status] = (statuses[status] ?? 0) + 1
      if (status >= 200 && status < 300) {
        count.ok++
        if (nLat === latencies.length) {
          const bigger = new Float64Array(latencies.length * 2)
          bigger.set(latencies)
          latencies = bigger
        }
        latencies[nLat++] = duration
      } else {
        count.non2xx++
      }
    })
    if (mode === 'random') {
      const mine = []
      for (let i = index; i < cookies.length; i += spec.connections) mine.push(i)
      for (let i = mine.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1))
        ;[mine[i], mine[j]] = [mine[j], mine[i]]
      }
      client.setRequests(mine.map((i) => ({ method: 'GET', path: spec.path, headers: { cookie: cookies[i] }, expected: values[i] })))
      client.opts.verifyBody = (body) => body === expected || (bad({ expected, body }) && false)
    } else if (mode === 'new') {
      const sessionCookie = sessionCookieOf(spec.cookieName)
      client.on('headers', (info) => {
        const pair = sessionCookie(info)
        if (pair === null) {
          if (info.statusCode >= 200 && info.statusCode < 300) count.badCookie++
        } else if (seenCookies.has(pair)) {
          count.repeatedCookie++
        } else {
          seenCookies.add(pair)
          // The newest sessions: the least likely to have been evicted from a full store.
          if (recentCookies.length === RECENT_COOKIES) recentCookies.shift()
          recentCookies.push(pair)
        }
      })
      client.opts.verifyBody = (body) => body === 'new' || (bad({ expected: 'new', body }) && false)
    } else if (mode === 'fixed' || mode === 'counter') {
      const slot = index % cookies.length
      client.setHeaders({ cookie: cookies[slot] })
      if (mode === 'fixed') {
        const expected = values[slot] ?? spec.expect
        client.opts.verifyBody = (body) => body === expected || (bad({ slot, expected, body }) && false)
      } else if (spec.constant !== undefined) {
        client.opts.verifyBody = (body) => body === spec.constant || (bad({ slot, expected: spec.constant, body }) && false)
        const sessionCookie = sessionCookieOf(spec.cookieName)
        client.on('headers', (info) => {
          const written = sessionCookie(info)
          if (written !== null) writtenCookies[index] = written
          else if (info.statusCode >= 200 && info.statusCode < 300) count.badCookie++
        })
      } else {
        let last = null
        client.opts.verifyBody = (body) => {
          const n = Number(body)
          const good = Number.isInteger(n) && String(n) === body && (last === null ? n >= 1 : n === last + 1)
          if (!good) bad({ slot, expected: last === null ? 'an integer' : last + 1, body })
          last = Number.isInteger(n) ? n : last
          return good
        }
      }
    }
  }

  const options = {
    url: spec.url + spec.path,
    connections: spec.connections,
    duration: spec.duration,
    // Shorter than the phase (where autocannon's 1 s minimum allows), so that
    // a request the server never answers times out, an error, instead of
    // idling its connection until the load stops.
    timeout: spec.timeout ?? Math.max(1, spec.duration / 2),
    pipelining: 1,
    setupClient
  }
  // A fixed overall request rate instead of as fast as possible: for A/B
  // comparisons of CPU per request at the same load (no batching effects).
  if (spec.rate !== undefined) options.overallRate = spec.rate
  if (mode === 'random') {
    // A placeholder: every connection gets its own list in setupClient.
    options.requests = [{ method: 'GET', path: spec.path, headers: { cookie: cookies[0] }, expected: values[0] }]
  }

  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const cpu0 = process.cpuUsage()
    autocannon(options, (err, result) => {
      if (err) {
        reject(err)
        return
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      const cpu = process.cpuUsage(cpu0)
      const lat = latencies.subarray(0, nLat).sort()
      const pct = (p) => (nLat === 0 ? null : lat[Math.min(nLat - 1, Math.ceil(p * nLat) - 1)])
      resolve({
        seconds,
        loadCpuShare: (cpu.user + cpu.system) / 1e6 / seconds,
        acDuration: result.duration,
        connections: spec.connections,
        sent: count.sent,
        responses: count.responses,
        silentConnections: answered.filter((n) => n === 0).length,
        ok: count.ok,
        non2xx: count.non2xx,
        statuses,
        errors: result.errors,
        timeouts: result.timeouts,
        resets: result.resets,
        mismatches: result.mismatches,
        badBody: count.badBody,
        badCookie: count.badCookie,
        repeatedCookie: count.repeatedCookie,
        newCookies: recentCookies,
        writtenCookies: writtenCookies.filter((cookie) => cookie !== undefined),
        badSamples,
        // Steady-state rate: from the first response to the last, so the
        // clients' setup (inside autocannon's own duration) does not count.
        rps: count.ok < 2 ? 0 : (count.ok - 1) / (Number(lastAt - firstAt) / 1e9),
        p50: pct(0.5),
        p99: pct(0.99),
        mean: nLat === 0 ? null : lat.reduce((a, b) => a + b, 0) / nLat
      })
    })
  })
}

if (process.send !== undefined && process.argv[1] === new URL(import.meta.url).pathname) {
  process.on('message', async (msg) => {
    // The orchestrator's stop(): exit now rather than be killed after its grace period.
    if (msg.type === 'stop') process.exit(0)
    if (msg.type !== 'run') return
    try {
      process.send({ type: 'result', id: msg.id, result: await runLoad(msg.spec) })
    } catch (err) {
      process.send({ type: 'result', id: msg.id, error: String(err?.stack ?? err) })
    }
  })
  process.on('disconnect', () => process.exit(0))
  process.send({ type: 'ready' })
}

// A tiny keep-alive HTTP client for setup steps (seeding sessions, reading
// counters); never used for the measured load.
import http from 'node:http'

export function httpClient (base, { sockets = 10 } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets })
  const { hostname, port } = new URL(base)

  function get (path, cookie) {
    return new Promise((resolve, reject) => {
      const req = http.get({ hostname, port, path, agent, headers: cookie === undefined ? {} : { cookie } }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk) => { body += chunk })
        res.on('end', () => resolve({ status: res.statusCode, body, setCookie: res.headers['set-cookie'] ?? [] }))
        res.on('error', reject)
      })
      req.setTimeout(30_000, () => req.destroy(new Error(`GET ${path} timed out`)))
      req.on('error', reject)
    })
  }

  return { get, close: () => agent.destroy() }
}

/** The `name=value` pair of cookie `name` in a response's Set-Cookie headers, or null. */
export function cookiePair (setCookie, name) {
  for (const line of setCookie) {
    const pair = line.split(';', 1)[0]
    if (pair.startsWith(name + '=') && pair.length > name.length + 1) return pair
  }
  return null
}

/** Runs `fn(i)` for i in [0, n) with at most `concurrency` at a time; answers the results in order. */
export async function inParallel (n, concurrency, fn) {
  const results = new Array(n)
  let next = 0
  async function worker () {
    while (next < n) {
      const i = next++
      results[i] = await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
  return results
}

// What a measured cell sends and expects, and how the sessions it needs are
// made; shared by run.js and profile.js.
import { cookiePair, httpClient, inParallel } from './http.js'

/**
 * Creates, through the implementation's own /seed route, one session per
 * connection (values c<i>-<impl>) and, when `many` > 0, a pool of `many`
 * sessions (values m<i>). Answers { conn: { cookies, values }, many }.
 */
export async function seed (base, implId, { connections, many = 0 }) {
  const http = httpClient(base, { sockets: 10 })
  try {
    const one = async (value) => {
      const res = await http.get('/seed?v=' + value)
      const cookie = cookiePair(res.setCookie, 'sessionid')
      if (res.status !== 200 || res.body !== value || cookie === null) {
        throw new Error(`seeding failed: ${res.status} ${JSON.stringify(res.body).slice(0, 200)} cookie=${cookie}`)
      }
      return cookie
    }
    const connValues = Array.from({ length: connections }, (_, i) => `c${i}-${implId}`)
    const connCookies = await inParallel(connValues.length, 10, (i) => one(connValues[i]))
    let pool = null
    if (many > 0) {
      const values = Array.from({ length: many }, (_, i) => `m${i}`)
      const cookies = await inParallel(values.length, 10, (i) => one(values[i]))
      pool = { cookies, values }
    }
    return { conn: { cookies: connCookies, values: connValues }, many: pool }
  } finally {
    http.close()
  }
}

/** The load generator spec of `route` (see bench/lib/load.js). */
export function loadSpec (route, base, seeds, { connections, stateless = false }) {
  const spec = { url: base, path: route === 'many' ? '/read' : '/' + route, connections, cookieName: 'sessionid' }
  if (route === 'read') Object.assign(spec, { mode: 'fixed', cookies: seeds.conn.cookies, values: seeds.conn.values })
  else if (route === 'none' || route === 'none-optout') Object.assign(spec, { mode: 'fixed', cookies: seeds.conn.cookies, expect: 'none' })
  else if (route === 'write') Object.assign(spec, { mode: 'counter', cookies: seeds.conn.cookies, ...(stateless ? { constant: '1' } : {}) })
  else if (route === 'many') Object.assign(spec, { mode: 'random', cookies: seeds.many.cookies, values: seeds.many.values })
  else if (route === 'new') Object.assign(spec, { mode: 'new' })
  else throw new Error(`unknown route ${route}`)
  return spec
}

/** Problems with a load result, as sentences; empty when every response was right. */
export function problems (res, phase) {
  const p = []
  if (res.non2xx > 0) p.push(`${phase}: ${res.non2xx} non-2xx (${JSON.stringify(res.statuses)})`)
  if (res.errors > 0) p.push(`${phase}: ${res.errors} errors (${res.timeouts} timeouts)`)
  if (res.badBody > 0 || res.mismatches > 0) p.push(`${phase}: ${Math.max(res.badBody, res.mismatches)} wrong bodies, e.g. ${JSON.stringify(res.badSamples.slice(0, 2))}`)
  if (res.badCookie > 0) p.push(`${phase}: ${res.badCookie} responses without a session cookie`)
  if (res.repeatedCookie > 0) p.push(`${phase}: ${res.repeatedCookie} responses repeated the session cookie of an earlier one`)
  // With pipelining 1 each connection has at most one request in flight when
  // the load stops; any other request without a response was lost (a
  // connection closed on it, or it timed out).
  const unanswered = res.sent - res.responses
  if (unanswered > res.connections) p.push(`${phase}: ${unanswered} of ${res.sent} requests got no response (at most ${res.connections}, one per connection, may be in flight when the load stops)`)
  if (res.silentConnections > 0) p.push(`${phase}: ${res.silentConnections} of ${res.connections} connections got no response at all`)
  if (res.ok === 0) p.push(`${phase}: no 2xx response at all`)
  return p
}

/** Runs one load in the load-generator child; throws when it reports an error. */
export async function runLoad (load, spec) {
  const reply = await load.request({ type: 'run', spec })
  if (reply.error !== undefined) throw new Error('load generator: ' + reply.error)
  return reply.result
}

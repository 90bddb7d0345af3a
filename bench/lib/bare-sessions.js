// Bare Fastify's "sessions": a plain Map keyed by the raw cookie value (no
// signing, no store abstraction), capped like our memory provider, so that
// every route does the least work that still gives the same answers. The
// baseline is made of it, and so are the diagnostic servers built on the
// baseline.

const MAX = 100_000

/**
 * Decorates the app's requests and answers the get/set pair `defineRoutes`
 * takes; new sessions get ids `prefix` + a counter.
 */
export function bareSessions (app, prefix) {
  const store = new Map()
  let seq = 0
  // Evicts through one cursor kept between evictions, as our memory provider
  // does: a fresh keys() iterator would walk every slot already deleted at the
  // front of the table, tens of microseconds per new session once the store is
  // full, and make bare Fastify's `new` route look slower than it is.
  let evictor = null
  app.decorateRequest('bareRecord', null)

  function record (request) {
    const id = request.cookies.sessionid
    return id === undefined ? undefined : store.get(id)
  }

  return {
    get (request, key) {
      return record(request)?.[key]
    },
    set (request, reply, key, value) {
      let rec = record(request)
      if (rec === undefined) {
        rec = request.bareRecord
        if (rec === null) {
          const id = prefix + (++seq)
          rec = request.bareRecord = {}
          if (store.size >= MAX) {
            evictor ??= store.keys()
            store.delete(evictor.next().value)
          }
          store.set(id, rec)
          reply.setCookie('sessionid', id, { path: '/', httpOnly: true, sameSite: 'lax' })
        }
      }
      rec[key] = value
    }
  }
}

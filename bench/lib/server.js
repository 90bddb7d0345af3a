// Shared by every bench server: the routes (same semantics for each
// implementation), the listen step, and the IPC channel through which the
// orchestrator reads the server's own CPU time.
//
// A server is started as `node bench/servers/<impl>.js '<json config>'` with
// an IPC channel; it answers { type: 'ready', port } once listening, and
// { type: 'cpu', id, cpu, heapUsed } to every { type: 'cpu', id } it receives.

/** The config the orchestrator hands a server (argv[2], JSON). */
export function serverConfig () {
  return JSON.parse(process.argv[2] ?? '{}')
}

/**
 * Registers the bench routes. `s` adapts an implementation's session API:
 * get(request, key), set(request, reply, key, value), and optionally
 * touch(request). `optOut` says whether routes can skip the session
 * (`config: { session: false }`); without it `/none-optout` is not defined.
 * `faults` (see FAULTS) break routes on purpose, so a test can check that
 * the harness fails such a run; a route without a fault runs its plain
 * handler.
 */
export function defineRoutes (app, s, { optOut = false, faults = [] } = {}) {
  const faultOf = parseFaults(faults)
  const route = (name, handler, options = {}) => {
    const fault = faultOf.get(name)
    app.get('/' + name, fault === 'samecookie' ? { ...options, onSend: sameCookie() } : options, faulty(fault, handler))
  }

  // Setup only, never measured: creates a session holding v and n = 0.
  app.get('/seed', (request, reply) => {
    const v = String(request.query.v)
    s.set(request, reply, 'v', v)
    s.set(request, reply, 'n', 0)
    return v
  })
  // Setup only: the counter, without changing it.
  app.get('/peek', (request) => String(s.get(request, 'n') ?? 'none'))

  route('read', (request) => String(s.get(request, 'v')))
  const write = (request, reply) => {
    const n = s.get(request, 'n') + 1
    s.set(request, reply, 'n', n)
    return String(n)
  }
  const writeFault = faultOf.get('write')
  route('write', writeFault === 'nocount' ? uncountedWrite(s) : writeFault === 'unsaved' ? (request) => String(s.get(request, 'n') + 1) : write)
  const stored = faultOf.get('new') === 'forget' ? 'forgotten' : 'new'
  route('new', (request, reply) => {
    s.set(request, reply, 'v', stored)
    return 'new'
  })
  // Heap measurement only: a session holding { n: 1 }.
  app.get('/n1', (request, reply) => {
    s.set(request, reply, 'n', 1)
    return 'ok'
  })
  route('none', () => 'none')
  if (optOut) route('none-optout', () => 'none', { config: { session: false } })
  if (s.touch !== undefined) {
    app.get('/touch', (request) => {
      s.touch(request)
      return 'touched'
    })
  }
}

/**
 * Faults, each `KIND:ROUTE` (a bare ROUTE means `wrong:ROUTE`):
 * wrong: a wrong body; status: the right body with status 500; hang: never
 * answers the session (or, without a cookie, the connection) that asks
 * first; drop: closes the connection
 * instead of answering every 10th request; nocount (write): answers its
 * connection's next number without storing it; unsaved (write): answers the
 * session's number plus one without storing it; forget (new): answers `new`
 * but stores another value; samecookie (new): every answer carries the
 * first answer's session cookie.
 */
const FAULTS = { wrong: null, status: null, hang: null, drop: null, nocount: 'write', unsaved: 'write', forget: 'new', samecookie: 'new' }

function parseFaults (faults) {
  const byRoute = new Map()
  for (const spec of faults) {
    const [kind, route] = spec.includes(':') ? spec.split(':') : ['wrong', spec]
    if (!(kind in FAULTS) || (FAULTS[kind] !== null && FAULTS[kind] !== route)) throw new Error(`unknown fault ${spec}`)
    byRoute.set(route, kind)
  }
  return byRoute
}

/** `handler` with the generic faults applied; the handler itself without one. */
function faulty (fault, handler) {
  if (fault === 'wrong') return (request, reply) => handler(request, reply) + 'X'
  if (fault === 'status') {
    return (request, reply) => {
      reply.code(500)
      return handler(request, reply)
    }
  }
  if (fault === 'hang') {
    // Keyed by the session cookie, which a load connection resends after a
    // timeout reconnects it: that connection then never gets an answer.
    let hung = null
    return (request, reply) => {
      const key = request.headers.cookie ?? request.raw.socket
      hung ??= key
      return key === hung ? new Promise(() => {}) : handler(request, reply)
    }
  }
  if (fault === 'drop') {
    let calls = 0
    return (request, reply) => {
      if (++calls % 10 !== 0) return handler(request, reply)
      request.raw.socket.destroy()
      return new Promise(() => {})
    }
  }
  return handler
}

/** A write route that counts per connection in the server, not in the session. */
function uncountedWrite (s) {
  const counts = new WeakMap()
  return (request) => {
    const n = (counts.get(request.raw.socket) ?? s.get(request, 'n')) + 1
    counts.set(request.raw.socket, n)
    return String(n)
  }
}

/** An onSend hook that replaces the session cookie of every answer with the first one. */
function sameCookie () {
  let first = null
  return (_request, reply, payload, done) => {
    const lines = [reply.getHeader('set-cookie') ?? []].flat()
    const at = lines.findIndex((line) => line.startsWith('sessionid='))
    if (at !== -1) {
      first ??= lines[at]
      lines[at] = first
      reply.removeHeader('set-cookie')
      reply.header('set-cookie', lines)
    }
    done(null, payload)
  }
}

/** Listens on a free port of 127.0.0.1 and serves the orchestrator's IPC requests. */
export async function serve (app, { close } = {}) {
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address()
  const shutdown = async () => {
    try {
      await app.close()
      if (close !== undefined) await close()
    } finally {
      process.exit(0)
    }
  }
  process.on('message', (msg) => {
    if (msg.type === 'cpu') {
      process.send({ type: 'cpu', id: msg.id, cpu: process.cpuUsage(), heapUsed: process.memoryUsage().heapUsed })
    } else if (msg.type === 'heap') {
      // Needs --expose-gc; several passes so weak and finalisable garbage goes too.
      for (let i = 0; i < 4; i++) global.gc?.()
      process.send({ type: 'heap', id: msg.id, heapUsed: process.memoryUsage().heapUsed, gc: typeof global.gc === 'function' })
    } else if (msg.type === 'stop') {
      shutdown()
    }
  })
  process.on('disconnect', shutdown)
  process.on('SIGTERM', shutdown)
  if (process.send !== undefined) process.send({ type: 'ready', port })
  else console.log(`listening on http://127.0.0.1:${port}`)
}

/** Reports a startup failure to the orchestrator (e.g. a provider that does not build or a store that is down). */
export function failStartup (err) {
  if (process.send !== undefined) {
    process.send({ type: 'failed', error: String(err?.stack ?? err) }, () => process.exit(1))
  } else {
    console.error(err)
    process.exit(1)
  }
}

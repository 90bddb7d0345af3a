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
 * `fault` (a route name) makes that route answer a wrong body, so a test
 * can check that the harness fails such a run.
 */
export function defineRoutes (app, s, { optOut = false, fault = null } = {}) {
  const wrong = (route, body) => (fault === route ? body + 'X' : body)

  // Setup only, never measured: creates a session holding v and n = 0.
  app.get('/seed', (request, reply) => {
    const v = String(request.query.v)
    s.set(request, reply, 'v', v)
    s.set(request, reply, 'n', 0)
    return v
  })
  // Setup only: the counter, without changing it.
  app.get('/peek', (request) => String(s.get(request, 'n') ?? 'none'))

  app.get('/read', (request) => wrong('read', String(s.get(request, 'v'))))
  app.get('/write', (request, reply) => {
    const n = s.get(request, 'n') + 1
    s.set(request, reply, 'n', n)
    return wrong('write', String(n))
  })
  app.get('/new', (request, reply) => {
    s.set(request, reply, 'v', 'new')
    return wrong('new', 'new')
  })
  // Heap measurement only: a session holding { n: 1 }.
  app.get('/n1', (request, reply) => {
    s.set(request, reply, 'n', 1)
    return 'ok'
  })
  app.get('/none', () => wrong('none', 'none'))
  if (optOut) {
    app.get('/none-optout', { config: { session: false } }, () => wrong('none-optout', 'none'))
  }
  if (s.touch !== undefined) {
    app.get('/touch', (request) => {
      s.touch(request)
      return 'touched'
    })
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

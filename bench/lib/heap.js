// Heap bytes per stored session of an in-memory store: the bench server runs
// with --expose-gc; `count` sessions holding { n: 1 } are created over real
// HTTP (GET /n1, no cookie), and the heapUsed delta after full GCs is divided
// by `count`. A warm-up batch first compiles the code paths and allocates
// whatever is allocated once. Any bad response (not 200 `ok` with a session
// cookie) fails the measurement: the growth would not be `count` sessions'.
import { startChild } from './procs.js'
import { cookiePair, httpClient, inParallel } from './http.js'

export async function measureHeap ({ serversDir, impl, count = 100_000, warm = 2000, core }) {
  const config = { ...impl.config, heap: true }
  if (impl.ours === 'memory') config.providerOptions = { ...config.providerOptions, maxSessions: count + warm + 1000 }
  const server = startChild(serversDir + impl.script, [JSON.stringify(config)], { core, nodeArgs: ['--expose-gc', '--max-old-space-size=4096'] })
  try {
    const { port } = await server.ready
    const http = httpClient(`http://127.0.0.1:${port}`, { sockets: 10 })
    let bad = 0
    const create = async () => {
      const res = await http.get('/n1')
      if (res.status !== 200 || res.body !== 'ok' || cookiePair(res.setCookie, 'sessionid') === null) bad++
    }
    await inParallel(warm, 10, create)
    // Let the keep-alive sockets settle, then measure.
    const before = await server.request({ type: 'heap' })
    if (!before.gc) throw new Error('the server has no global.gc (needs --expose-gc)')
    const started = Date.now()
    await inParallel(count, 10, create)
    const after = await server.request({ type: 'heap' })
    http.close()
    if (bad > 0) throw new Error(`${bad} of ${warm + count} GET /n1 responses were not 200 'ok' with a session cookie`)
    return {
      count,
      bytesPerSession: (after.heapUsed - before.heapUsed) / count,
      heapBefore: before.heapUsed,
      heapAfter: after.heapUsed,
      seconds: (Date.now() - started) / 1000
    }
  } finally {
    await server.stop()
  }
}

import t from 'tap'
import Fastify, { type FastifyContextConfig, type FastifyRequest } from 'fastify'
import { contextKey, routeConfigReader } from '../lib/route-config.js'

/** A stand-in request: `routeOptions.config` is `config`, and `reads` counts how often routeOptions was built. */
function fakeRequest (config: FastifyContextConfig, symbols: Record<symbol, unknown> = {}): { request: FastifyRequest, reads: () => number } {
  let reads = 0
  const request = {
    ...symbols,
    get routeOptions () {
      reads++
      return { config }
    }
  }
  return { request: request as unknown as FastifyRequest, reads: () => reads }
}

t.test('on this Fastify the reader takes the route context: routeOptions is built once, and each route gets its own config', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const routeConfigOf = routeConfigReader()
  let reads = 0
  const seen: Array<{ same: boolean, session: unknown }> = []
  const handler = async (request: FastifyRequest): Promise<string> => {
    const expected = request.routeOptions.config
    // a spy on this request's routeOptions, found on its prototype chain
    let proto: object | null = request
    let getter: (() => unknown) | undefined
    while (getter === undefined && proto !== null) {
      getter = Object.getOwnPropertyDescriptor(proto, 'routeOptions')?.get
      proto = Object.getPrototypeOf(proto)
    }
    Object.defineProperty(request, 'routeOptions', {
      get () {
        reads++
        return getter?.call(this)
      }
    })
    const config = routeConfigOf(request)
    seen.push({ same: config === expected, session: config.session })
    return 'ok'
  }
  app.get('/in', handler)
  app.get('/out', { config: { session: false } }, handler)
  for (const url of ['/in', '/out', '/in', '/out']) t.equal((await app.inject({ url })).statusCode, 200)
  // a Fastify that moved its route context would leave the plugin on the slow path: this fails first
  t.equal(reads, 1, 'routeOptions was read on the first request only, to check the context against it')
  t.same(seen.map((s) => s.same), [true, true, true, true])
  t.same(seen.map((s) => s.session), [undefined, false, undefined, false])
})

t.test('once the context is found, routeOptions is not built again', async (t) => {
  const config = { session: false }
  const key = Symbol('fastify.context')
  const { request, reads } = fakeRequest(config, { [key]: { config } })
  const routeConfigOf = routeConfigReader()
  t.equal(routeConfigOf(request), config)
  t.equal(routeConfigOf(request), config)
  t.equal(routeConfigOf(request), config)
  t.equal(reads(), 1, 'read once, to check the context against it')
})

t.test('without such a context the reader keeps to routeOptions', async (t) => {
  const config = { session: false }
  const { request, reads } = fakeRequest(config, { [Symbol('something else')]: { config } })
  const routeConfigOf = routeConfigReader()
  t.equal(routeConfigOf(request), config)
  t.equal(routeConfigOf(request), config)
  t.equal(reads(), 3, 'one read to look for the context, then one per call')
})

t.test('a context whose config is not the one routeOptions gives is not taken', async (t) => {
  const config = { session: false }
  const cases: Array<[string, unknown]> = [
    ['another config', { config: {} }],
    ['no config', {}],
    ['a string', 'fastify'],
    ['undefined', undefined],
    ['null', null]
  ]
  for (const [name, context] of cases) {
    const { request } = fakeRequest(config, { [Symbol('fastify.context')]: context })
    t.equal(contextKey(request), null, name)
    t.equal(routeConfigReader()(request), config, name)
  }
})

import t from 'tap'
import { createReadStream, type ReadStream } from 'node:fs'
import { Writable } from 'node:stream'
import { gunzipSync, gzipSync } from 'node:zlib'
import Fastify from 'fastify'
import sessions from '../index.js'
import { fileURLToPath } from 'node:url'
import { build, cookieHeader, sessionCookie, setCookies, SECRET } from './fixtures/app.js'
import { FailingProvider, RecordingProvider } from './fixtures/providers.js'
import { FST_SESSION_UNSUPPORTED } from '../lib/errors.js'
import { storeKey } from '../lib/id.js'

const json = { 'content-type': 'application/json' }

/** A logger that keeps every line it is given, parsed. */
function captureLogs (): { logs: Array<Record<string, any>>, logger: { level: string, stream: Writable } } {
  const logs: Array<Record<string, any>> = []
  const stream = new Writable({
    write (chunk, _encoding, callback) {
      logs.push(JSON.parse(chunk.toString()))
      callback()
    }
  })
  return { logs, logger: { level: 'debug', stream } }
}

const warnings = (logs: Array<Record<string, any>>): Array<Record<string, any>> => logs.filter((line) => line.level === 40)
const errors = (logs: Array<Record<string, any>>): Array<Record<string, any>> => logs.filter((line) => line.level >= 50)

for (const mode of ['throw', 'hang', 'throw-sync'] as const) {
  t.test(`a store that fails (${mode}) while loading answers 503 with a coded error and one warn line`, async (t) => {
    const provider = new FailingProvider()
    const { logs, logger } = captureLogs()
    const app = await build(t, { provider, storeTimeout: 100 }, { logger })
    // another plugin's hook that reads the session on the way out, 503 included
    app.addHook('onSend', async (request, reply, payload) => {
      reply.header('x-a', String(request.session.get('a') ?? 'none'))
      return payload
    })
    const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
    const cookie = sessionCookie(login) as string
    provider.mode = mode
    const started = Date.now()
    const res = await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })
    t.ok(Date.now() - started < 1000, 'answers within the store timeout, not later')
    t.equal(res.statusCode, 503)
    t.same(res.json(), {
      statusCode: 503,
      code: 'FST_SESSION_STORE_UNAVAILABLE',
      error: 'Service Unavailable',
      message: 'The session store is unavailable'
    }, 'the cause stays out of the response')
    t.equal(res.headers['x-a'], 'none', 'the session that could not be loaded reads as empty')
    t.same(setCookies(res), [])
    t.equal(warnings(logs).length, 1)
    t.match(warnings(logs)[0].msg, /session store unavailable while loading the session/)
    t.match(warnings(logs)[0].msg, mode === 'hang' ? 'no answer within 100 ms' : mode === 'throw' ? 'connection refused' : 'disk I/O error', 'and goes to the log')
    t.ok(warnings(logs)[0].err, 'the cause is logged')
    t.same(errors(logs), [], 'nothing at error level')
    provider.mode = 'ok'
    const recovered = await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })
    t.same(recovered.json(), { value: 1 }, 'the next request succeeds once the store is back')
  })
}

t.test('a request without a cookie needs no store and is served while the store is down', async (t) => {
  const provider = new FailingProvider()
  provider.mode = 'throw'
  const app = await build(t, { provider })
  t.equal((await app.inject('/none')).statusCode, 200)
})

t.test('a failed save answers 503 and sets no cookie: nothing is reported saved that was not', async (t) => {
  const provider = new FailingProvider()
  const { logs, logger } = captureLogs()
  const app = await build(t, { provider, storeTimeout: 100 }, { logger })
  provider.mode = 'throw'
  const res = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(res.statusCode, 503)
  t.same(res.json(), { statusCode: 503, code: 'FST_SESSION_STORE_UNAVAILABLE', error: 'Service Unavailable', message: 'The session store is unavailable' }, 'the cause stays out of the response')
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store', 'no cache keeps the 503')
  t.same(setCookies(res), [])
  t.equal(warnings(logs).length, 1)
  t.match(warnings(logs)[0].msg, /while saving the session/)
  t.same(errors(logs), [])
})

t.test('a 503 for a failed save drops the headers that described the payload it replaces, such as a compression hook\'s', async (t) => {
  for (const onStoreError of ['fail', 'continue'] as const) {
    const provider = new FailingProvider()
    const app = Fastify()
    t.teardown(() => app.close())
    // runs before the plugin's save, as a compression plugin registered first does
    app.addHook('onSend', async (_request, reply, payload) => {
      reply.header('content-encoding', 'gzip').header('etag', '"v1"')
      return gzipSync(String(payload))
    })
    await app.register(sessions, { secret: SECRET, provider, onStoreError })
    app.post('/set/a', async (request) => {
      request.session.set('a', 1)
      return { ok: true }
    })
    provider.mode = 'throw'
    const res = await app.inject({ method: 'POST', url: '/set/a' })
    if (onStoreError === 'fail') {
      t.equal(res.statusCode, 503)
      t.equal(res.headers['content-encoding'], undefined, 'no content-encoding on the plain JSON body')
      t.equal(res.headers.etag, undefined)
      t.equal(res.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
    } else {
      t.equal(res.statusCode, 200, "'continue' keeps the response, and its headers with it")
      t.equal(res.headers['content-encoding'], 'gzip')
      t.same(JSON.parse(gunzipSync(res.rawPayload).toString()), { ok: true })
    }
  }
})

t.test('a stream the handler returned is closed when its session cannot be saved, so no file descriptor is left open', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider })
  const streams: ReadStream[] = []
  app.get('/file', async (request) => {
    request.session.set('downloads', 1)
    const stream = createReadStream(fileURLToPath(import.meta.url))
    streams.push(stream)
    return stream
  })
  app.get('/file-too-large', async (request) => {
    const list: string[] = []
    request.session.set('list', list)
    list.push('x'.repeat(70_000))
    const stream = createReadStream(fileURLToPath(import.meta.url))
    streams.push(stream)
    return stream
  })
  provider.mode = 'throw'
  const unavailable = await app.inject('/file')
  t.equal(unavailable.statusCode, 503)
  t.equal(unavailable.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  const tooLarge = await app.inject('/file-too-large')
  t.equal(tooLarge.statusCode, 500)
  t.equal(tooLarge.json().code, 'FST_SESSION_TOO_LARGE')
  t.equal(streams.length, 2)
  t.ok(streams.every((stream) => stream.destroyed), 'both streams were destroyed')
})

t.test('a web stream or Response the handler returned is cancelled when its session cannot be saved', async (t) => {
  const rejections: unknown[] = []
  const onRejection = (reason: unknown): void => { rejections.push(reason) }
  process.on('unhandledRejection', onRejection)
  t.teardown(() => process.off('unhandledRejection', onRejection))
  const provider = new FailingProvider()
  const app = await build(t, { provider })
  const cancelled: string[] = []
  const body = (name: string): ReadableStream => new ReadableStream({
    pull (controller) { controller.enqueue(new TextEncoder().encode('x')) },
    cancel () {
      cancelled.push(name)
      // a source failing to cancel has no one to tell, but must not be an unhandled rejection
      if (name === 'response') throw new Error('cannot cancel')
    }
  }, { highWaterMark: 0 })
  app.get('/web-stream', async (request, reply) => {
    request.session.set('downloads', 1)
    return reply.type('text/plain').send(body('stream'))
  })
  app.get('/response', async (request, reply) => {
    request.session.set('downloads', 1)
    return reply.send(new Response(body('response')))
  })
  provider.mode = 'throw'
  for (const url of ['/web-stream', '/response']) {
    const res = await app.inject(url)
    t.equal(res.statusCode, 503, url)
  }
  await new Promise((resolve) => setImmediate(resolve))
  t.same(cancelled.sort(), ['response', 'stream'])
  t.same(rejections, [], 'no unhandled rejection')
})

t.test('a provider refusing what it cannot store answers 500 with its coded error, not a store outage', async (t) => {
  const provider = new FailingProvider()
  const { logs, logger } = captureLogs()
  const app = await build(t, { provider, onStoreError: 'continue' }, { logger })
  provider.create = () => Promise.reject(new FST_SESSION_UNSUPPORTED('the session key "x"', 'this store cannot hold it'))
  const res = await app.inject({ method: 'POST', url: '/set/x', payload: '1', headers: json })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_SESSION_UNSUPPORTED')
  t.same(setCookies(res), [])
  t.same(warnings(logs), [], 'not logged as the store being unavailable')
})

t.test("under 'continue', a logout after a failed read ends every session the request's cookies name", async (t) => {
  // the first cookie's session has ended, the second's lives: whichever read
  // fails, the session a load would have settled on must end
  for (const failing of ['ended', 'live'] as const) {
    for (const provider of [new RecordingProvider(), new FailingProvider()]) {
      const app = await build(t, { provider, onStoreError: 'continue' })
      const ended = sessionCookie(await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })) as string
      await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(ended) })
      const live = sessionCookie(await app.inject({ method: 'POST', url: '/set/a', payload: '2', headers: json })) as string
      const get = provider.get.bind(provider)
      const cookie = failing === 'live' ? live : ended
      const failingKey = storeKey(cookie.slice(0, cookie.indexOf('.')))
      provider.get = ((key: string) => {
        if (key !== failingKey) return get(key)
        if (provider instanceof FailingProvider) return Promise.reject(new Error('a hiccup'))
        throw new Error('a hiccup')
      }) as typeof provider.get
      const logout = await app.inject({ method: 'POST', url: '/logout', headers: { cookie: `sessionid=${ended}; sessionid=${live}` } })
      provider.get = get
      t.equal(logout.statusCode, 200)
      t.same((await app.inject({ url: '/get/a', headers: cookieHeader(live) })).json(), { value: null }, `the logout ended the live session (the ${failing} one's read failed)`)
    }
  }
})

t.test('a provider refusing a read with its coded error answers 500 with it, whatever onStoreError says', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, onStoreError: 'continue' })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  provider.get = () => Promise.reject(new FST_SESSION_UNSUPPORTED('reading this session', 'the store cannot'))
  const res = await app.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_SESSION_UNSUPPORTED')
})

t.test('a synchronous provider refusing with FST_SESSION_UNSUPPORTED answers 500 with it, at every kind of call', async (t) => {
  const refuse = (): never => { throw new FST_SESSION_UNSUPPORTED('this', 'the store cannot') }
  for (const method of ['get', 'update', 'destroy'] as const) {
    const provider = new RecordingProvider()
    const app = await build(t, { provider, onStoreError: 'continue' })
    const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
    provider[method] = refuse
    const res = method === 'destroy'
      ? await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(sessionCookie(login) as string) })
      : await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(sessionCookie(login) as string) } })
    t.equal(res.statusCode, 500, method)
    t.equal(res.json().code, 'FST_SESSION_UNSUPPORTED', method)
  }
})

t.test('a stateless provider: a refusal to open answers 500, a failure to seal is a store failure', async (t) => {
  const provider = {
    stateless: true as const,
    seal: (): never => { throw new Error('key ring unreadable') },
    open: (): never => { throw new FST_SESSION_UNSUPPORTED('this cookie', 'an unknown format version') }
  }
  const app = await build(t, { provider })
  const open = await app.inject({ url: '/get/a', headers: cookieHeader('sealed') })
  t.equal(open.statusCode, 500)
  t.equal(open.json().code, 'FST_SESSION_UNSUPPORTED')
  const seal = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  t.equal(seal.statusCode, 503)
  t.same(seal.json(), { statusCode: 503, code: 'FST_SESSION_STORE_UNAVAILABLE', error: 'Service Unavailable', message: 'The session store is unavailable' })
})

t.test("onStoreError 'continue' serves the request with an empty, unsaved session", async (t) => {
  const provider = new FailingProvider()
  const { logs, logger } = captureLogs()
  const app = await build(t, { provider, onStoreError: 'continue' }, { logger })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  provider.mode = 'throw'
  const read = await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })
  t.equal(read.statusCode, 200)
  t.same(read.json(), { value: null })
  const write = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(cookie) } })
  t.equal(write.statusCode, 200)
  t.same(setCookies(write), [], 'no cookie for a session that was never stored')
  const fresh = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: json })
  t.equal(fresh.statusCode, 200, 'a failed save still answers the handler response')
  t.same(setCookies(fresh), [])
  t.equal(warnings(logs).length, 3)
  provider.mode = 'ok'
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: 1 }, 'the stored session was left as it was')
})

t.test('a logout whose store call fails answers 503: the user is not told a live session ended', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, onStoreError: 'continue' })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  t.equal(provider.memory.size, 1)
  const realDestroy = provider.destroy.bind(provider)
  provider.destroy = () => Promise.reject(new Error('connection reset'))
  const res = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.notMatch(setCookies(res).join(), /Max-Age=0/, 'the cookie is not cleared')
  t.equal(provider.memory.size, 1)
  provider.destroy = realDestroy
  t.equal((await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })).statusCode, 200)
  t.equal(provider.memory.size, 0)
})

t.test("onStoreError 'continue': a logout on a request whose load failed still ends the session, or answers 503", async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, onStoreError: 'continue' })
  app.post('/logout-others', async (request) => ({ ended: await request.session.destroyOtherSessions() }))
  app.post('/logout-others-of-alice', async (request) => ({ ended: await app.sessions.destroyUserSessions('alice', { except: request.session }) }))
  const login = await app.inject({ method: 'POST', url: '/login', payload: { user: 'alice' } })
  const cookie = sessionCookie(login) as string
  provider.mode = 'throw'
  const down = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.equal(down.statusCode, 503, 'not reported as logged out')
  t.equal(down.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.notMatch(setCookies(down).join(), /Max-Age=0/)
  const others = await app.inject({ method: 'POST', url: '/logout-others', headers: cookieHeader(cookie) })
  t.equal(others.statusCode, 503, 'ending the other sessions of an unknown user is not reported as ending none')
  t.equal(others.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  provider.mode = 'ok'

  // the user is known to the app, but which session to spare is not
  const realRead = provider.get.bind(provider)
  provider.get = () => Promise.reject(new Error('read timed out'))
  const spareUnknown = await app.inject({ method: 'POST', url: '/logout-others-of-alice', headers: cookieHeader(cookie) })
  provider.get = realRead
  t.equal(spareUnknown.statusCode, 503, 'sparing a session that could not be loaded is refused')
  t.equal(spareUnknown.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.equal(provider.memory.size, 1, 'rather than ending the very session that asked')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: 'alice' }, 'the session is still alive')

  const realGet = provider.get.bind(provider)
  provider.get = () => Promise.reject(new Error('read timed out'))
  const loadFailed = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  provider.get = realGet
  t.equal(loadFailed.statusCode, 200)
  t.match(setCookies(loadFailed)[0], /^sessionid=; .*Max-Age=0/, 'the cookie is cleared')
  t.equal(provider.memory.size, 0, 'the session the cookie named is gone from the store')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test("onStoreError 'continue' with a stateless provider that fails to open: an empty session, and logout clears the cookie", async (t) => {
  const failing = {
    stateless: true as const,
    seal: () => 'sealed',
    open: (): never => { throw new Error('key ring unreadable') }
  }
  const app = await build(t, { provider: failing, onStoreError: 'continue' })
  const read = await app.inject({ url: '/get/a', headers: cookieHeader('sealed') })
  t.equal(read.statusCode, 200)
  t.same(read.json(), { value: null })
  t.same(setCookies(read), [])
  const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader('sealed') })
  t.equal(logout.statusCode, 200)
  t.match(setCookies(logout)[0], /^sessionid=; .*Max-Age=0/)
})

t.test('a failing sweep is logged at warn and the timer goes on', async (t) => {
  const provider = new FailingProvider()
  const { logs, logger } = captureLogs()
  await build(t, { provider, gcInterval: 0.03 }, { logger })
  provider.mode = 'throw'
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.ok(warnings(logs).length >= 2, 'each failed sweep logged')
  t.match(warnings(logs)[0].msg, /while sweeping expired sessions/)
})

t.test('set() past maxSessionSize throws a coded error naming the size and the limit', async (t) => {
  const app = await build(t, { maxSessionSize: 100 })
  app.post('/big', async (request) => {
    request.session.set('small', 'x')
    try {
      request.session.set('big', 'y'.repeat(200))
    } catch (err) {
      return { code: (err as { code: string }).code, message: (err as Error).message, keys: request.session.keys() }
    }
    return {}
  })
  const res = await app.inject({ method: 'POST', url: '/big' })
  t.same(res.json(), {
    code: 'FST_SESSION_TOO_LARGE',
    message: 'Session data would be 222 bytes of JSON, over the limit of 100 bytes',
    keys: ['small']
  })
  t.ok(sessionCookie(res), 'the request goes on with what fit')
})

t.test('in-place growth past maxSessionSize fails that response with the same code and leaves the store as it was', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, maxSessionSize: 100 })
  app.post('/grow', async (request) => {
    request.session.get('list').push('z'.repeat(200))
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/set/list', payload: '["a"]', headers: json })
  const cookie = sessionCookie(login) as string
  const res = await app.inject({ method: 'POST', url: '/grow', headers: cookieHeader(cookie) })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_SESSION_TOO_LARGE')
  t.same((await app.inject({ url: '/get/list', headers: cookieHeader(cookie) })).json(), { value: ['a'] })
})

t.test('changes in place are measured together at save: one growing while another shrinks is saved when the sum fits', async (t) => {
  const app = await build(t, { maxSessionSize: 100 })
  app.post('/init', async (request) => {
    request.session.set('done', [])
    request.session.set('todo', ['x'.repeat(30), 'y'.repeat(30)])
    return {}
  })
  // `done` was handed out first, so it is serialised first at save
  app.post('/move', async (request) => {
    const done = request.session.get('done') as string[]
    const todo = request.session.get('todo') as string[]
    done.push(...todo.splice(0))
    return {}
  })
  app.post('/clear-and-set', async (request) => {
    (request.session.get('done') as string[]).length = 0
    request.session.set('note', 'z'.repeat(20))
    return {}
  })
  const init = await app.inject({ method: 'POST', url: '/init' })
  const cookie = sessionCookie(init) as string
  const moved = await app.inject({ method: 'POST', url: '/move', headers: cookieHeader(cookie) })
  t.equal(moved.statusCode, 200)
  t.same((await app.inject({ url: '/get/done', headers: cookieHeader(cookie) })).json(), { value: ['x'.repeat(30), 'y'.repeat(30)] })
  t.same((await app.inject({ url: '/get/todo', headers: cookieHeader(cookie) })).json(), { value: [] })
  // set() sees `done` at its stored size (both strings), which with `note`
  // passes the limit; the session as saved, with `done` emptied, fits
  const both = await app.inject({ method: 'POST', url: '/clear-and-set', headers: cookieHeader(cookie) })
  t.equal(both.statusCode, 200)
  t.same((await app.inject({ url: '/get/note', headers: cookieHeader(cookie) })).json(), { value: 'z'.repeat(20) })
  t.same((await app.inject({ url: '/get/done', headers: cookieHeader(cookie) })).json(), { value: [] })
})

t.test('a size check left to the save is settled by a regenerate() that stores everything ahead of it', async (t) => {
  const app = await build(t, { maxSessionSize: 1000 })
  app.post('/sign-in', async (request) => {
    request.session.set('userId', 'ada')
    request.session.set('prefs', { blob: 'p'.repeat(400) })
    return {}
  })
  app.post('/password', async (request) => {
    await request.session.regenerate()
    request.session.get('prefs')
    // over the limit while `prefs` is held, so checked at the save; fits once it is gone
    request.session.set('note', 'x'.repeat(700))
    request.session.delete('prefs')
    return { ended: await request.session.destroyOtherSessions() }
  })
  const login = await app.inject({ method: 'POST', url: '/sign-in' })
  const changed = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(changed.statusCode, 200)
  t.same(changed.json(), { ended: 0 })
  const cookie = sessionCookie(changed) as string
  t.same((await app.inject({ url: '/get/note', headers: cookieHeader(cookie) })).json(), { value: 'x'.repeat(700) })
  t.same((await app.inject({ url: '/get/prefs', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('set() past maxSessionSize still throws at once when the only objects held were set, not read', async (t) => {
  const app = await build(t, { maxSessionSize: 100 })
  app.post('/prefs-then-big', async (request) => {
    request.session.set('prefs', { theme: 'dark' })
    try {
      request.session.set('blob', 'y'.repeat(500))
    } catch (err) {
      return { code: (err as { code: string }).code }
    }
    return {}
  })
  const res = await app.inject({ method: 'POST', url: '/prefs-then-big' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { code: 'FST_SESSION_TOO_LARGE' }, 'caught in the handler, not a failed response')
})

t.test('set() past maxSessionSize throws at once when the only object read is the one it replaces', async (t) => {
  const app = await build(t, { maxSessionSize: 100 })
  app.post('/replace', async (request) => {
    request.session.get('o')
    try {
      request.session.set('o', 'y'.repeat(500))
    } catch (err) {
      return { code: (err as { code: string }).code }
    }
    return {}
  })
  const created = await app.inject({ method: 'POST', url: '/set/o', payload: '{"a":1}', headers: json })
  const res = await app.inject({ method: 'POST', url: '/replace', headers: cookieHeader(sessionCookie(created) as string) })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { code: 'FST_SESSION_TOO_LARGE' }, 'caught in the handler: the object it replaces cannot shrink the session any more')
})

t.test('a request that reads an object and only deletes is saved, even in a session already over a lower limit', async (t) => {
  // two apps on one store, the second with a lower limit than the session's size
  const provider = new FailingProvider()
  const roomy = await build(t, { provider })
  const tight = await build(t, { provider, maxSessionSize: 200 })
  tight.post('/trim', async (request) => {
    request.session.get('obj')
    request.session.delete('blob')
    return {}
  })
  const created = await roomy.inject({ method: 'POST', url: '/set/obj', payload: '{"a":1}', headers: json })
  const cookie = sessionCookie(created) as string
  await roomy.inject({ method: 'POST', url: '/set/blob', payload: JSON.stringify('b'.repeat(300)), headers: { ...json, ...cookieHeader(cookie) } })
  await roomy.inject({ method: 'POST', url: '/set/more', payload: JSON.stringify('m'.repeat(300)), headers: { ...json, ...cookieHeader(cookie) } })
  const trimmed = await tight.inject({ method: 'POST', url: '/trim', headers: cookieHeader(cookie) })
  t.equal(trimmed.statusCode, 200, 'the delete is saved')
  t.same((await roomy.inject({ url: '/get/blob', headers: cookieHeader(cookie) })).json(), { value: null })
})

t.test('a value made unstorable in place fails that response with the serialisation error', async (t) => {
  const app = await build(t)
  app.post('/poison', async (request) => {
    request.session.get('obj').fn = () => 1
    return {}
  })
  const login = await app.inject({ method: 'POST', url: '/set/obj', payload: '{"a":1}', headers: json })
  const res = await app.inject({ method: 'POST', url: '/poison', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_SESSION_NOT_SERIALIZABLE')
})

t.test('an answer that comes after storeTimeout is ignored, whether it resolves or rejects', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, storeTimeout: 30 })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const realGet = provider.get.bind(provider)
  for (const late of [
    (key: string) => new Promise((resolve) => setTimeout(() => resolve(realGet(key)), 60)),
    () => new Promise((_resolve, reject) => setTimeout(() => reject(new Error('too late')), 60))
  ]) {
    provider.get = late as typeof provider.get
    const res = await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })
    t.equal(res.statusCode, 503)
    await new Promise((resolve) => setTimeout(resolve, 60))
  }
  provider.get = realGet
  t.same((await app.inject({ url: '/get/a', headers: cookieHeader(cookie) })).json(), { value: 1 })
})

t.test('a store that rejects with something other than an Error still gets a 503 and a readable log line', async (t) => {
  const provider = new FailingProvider()
  const { logs, logger } = captureLogs()
  const app = await build(t, { provider }, { logger })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  // some drivers reject with a bare string; the rule against that is exactly what this test is about
  // eslint-disable-next-line prefer-promise-reject-errors
  provider.get = () => Promise.reject('ECONNRESET') as never
  const res = await app.inject({ url: '/get/a', headers: cookieHeader(sessionCookie(login) as string) })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
  t.match(warnings(logs)[0].msg, /while loading the session: The session store is unavailable: ECONNRESET$/)
})

t.test('a store that throws synchronously while saving or ending a session is a store failure too', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const diskFull = (): never => { throw new Error('disk full') }
  provider.create = diskFull
  provider.update = diskFull
  provider.destroy = diskFull
  const create = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: json })
  t.equal(create.statusCode, 503, 'create')
  const update = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(cookie) } })
  t.equal(update.statusCode, 503, 'update')
  const logout = await app.inject({ method: 'POST', url: '/logout', headers: cookieHeader(cookie) })
  t.equal(logout.statusCode, 503, 'destroy')
  t.equal(logout.json().code, 'FST_SESSION_STORE_UNAVAILABLE')
})

t.test('a store that answers asynchronously gets every write through, and rejected writes are 503', async (t) => {
  const provider = new FailingProvider()
  const app = await build(t, { provider, cookie: { maxAge: 3600 } })
  const login = await app.inject({ method: 'POST', url: '/set/a', payload: '1', headers: json })
  const cookie = sessionCookie(login) as string
  const update = await app.inject({ method: 'POST', url: '/set/b', payload: '2', headers: { ...json, ...cookieHeader(cookie) } })
  t.equal(update.statusCode, 200)
  t.match(setCookies(update)[0], /Max-Age=3600/, 'the persistent cookie is refreshed after an async write')
  provider.mode = 'throw'
  const failed = await app.inject({ method: 'POST', url: '/set/c', payload: '3', headers: { ...json, ...cookieHeader(cookie) } })
  t.equal(failed.statusCode, 503)
  t.same(setCookies(failed), [])
})

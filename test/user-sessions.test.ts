import t from 'tap'
import { sign } from '@fastify/cookie'
import type { SessionProvider } from '../lib/provider.js'
import { build, cookieHeader, sessionCookie, setCookies, SECRET } from './fixtures/app.js'
import { AsyncMemoryProvider, FailingProvider } from './fixtures/providers.js'
import { MemoryProvider } from '../providers/memory.js'

const json = { 'content-type': 'application/json' }

async function loginAs (app: Awaited<ReturnType<typeof build>>, user: string | number, agent: string): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/login', payload: { user }, headers: { ...json, 'user-agent': agent } })
  return sessionCookie(res) as string
}

async function appWithUserRoutes (t: Parameters<typeof build>[0], options = {}): Promise<Awaited<ReturnType<typeof build>>> {
  const app = await build(t, { userInfoKeys: ['agent'], ...options })
  app.addHook('preHandler', async (request) => {
    if (request.url === '/login') request.session.set('agent', request.headers['user-agent'])
  })
  app.get('/mine', async (request) => ({
    handle: request.session.handle,
    sessions: await app.sessions.listUserSessions(request.session.get('userId'))
  }))
  app.post('/end-others', async (request) => ({ ended: await request.session.destroyOtherSessions() }))
  app.post<{ Body: { handle: string } }>('/end', async (request) => ({
    ended: await app.sessions.destroyUserSession(request.session.get('userId'), request.body.handle)
  }))
  return app
}

/**
 * A password change that pauses between destroyOtherSessions() and its
 * response, as one sending a notification would: `pastDestroy` settles at
 * the pause, `release()` lets it go on to set a value and answer.
 */
function pausingPasswordRoute (app: Awaited<ReturnType<typeof build>>): { pastDestroy: Promise<void>, release: () => void } {
  let passed!: () => void
  const pastDestroy = new Promise<void>((resolve) => { passed = resolve })
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  app.post('/password', async (request) => {
    await request.session.regenerate()
    const ended = await request.session.destroyOtherSessions()
    passed()
    await gate
    request.session.set('changedAt', 1)
    return { ended }
  })
  return { pastDestroy, release }
}

t.test('listUserSessions lists every live session of a user, most recently seen first, with the info keys', async (t) => {
  const app = await appWithUserRoutes(t, { touchAfter: 0 })
  const phone = await loginAs(app, 'ada', 'phone')
  const laptop = await loginAs(app, 'ada', 'laptop')
  await loginAs(app, 'bob', 'other')
  await new Promise((resolve) => setTimeout(resolve, 5))
  await app.inject({ url: '/get/userId', headers: cookieHeader(phone) })
  const res = (await app.inject({ url: '/mine', headers: cookieHeader(laptop) })).json()
  t.equal(res.sessions.length, 2)
  t.same(res.sessions.map((s: { info: unknown }) => s.info), [{ agent: 'phone' }, { agent: 'laptop' }], 'the phone was seen after the laptop logged in')
  const current = res.sessions.find((s: { handle: string }) => s.handle === res.handle)
  t.same(current.info, { agent: 'laptop' }, 'request.session.handle marks this device')
  t.match(current, { handle: /^[A-Za-z0-9_-]{22}$/, createdAt: Number, lastSeenAt: Number, expiresAt: Number })
  t.ok(res.sessions[0].lastSeenAt > res.sessions[1].lastSeenAt)
})

t.test('a handle is not the session id and is useless as a cookie', async (t) => {
  const app = await appWithUserRoutes(t)
  const cookie = await loginAs(app, 'ada', 'phone')
  const { handle } = (await app.inject({ url: '/mine', headers: cookieHeader(cookie) })).json()
  t.not(handle, cookie.slice(0, cookie.lastIndexOf('.')))
  for (const value of [handle, sign(handle, SECRET)]) {
    const res = await app.inject({ url: '/get/userId', headers: cookieHeader(value) })
    t.same(res.json(), { value: null })
  }
})

t.test('regenerate() changes the handle and moves the index entry', async (t) => {
  const app = await appWithUserRoutes(t)
  const first = await loginAs(app, 'ada', 'phone')
  const before = (await app.inject({ url: '/mine', headers: cookieHeader(first) })).json()
  const again = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: { ...json, ...cookieHeader(first), 'user-agent': 'phone' } })
  const after = (await app.inject({ url: '/mine', headers: cookieHeader(sessionCookie(again) as string) })).json()
  t.not(after.handle, before.handle)
  t.same(after.sessions.map((s: { handle: string }) => s.handle), [after.handle])
})

t.test('destroyOtherSessions ends every other session of the user and keeps this one', async (t) => {
  const app = await appWithUserRoutes(t)
  const cookies = [await loginAs(app, 'ada', 'a'), await loginAs(app, 'ada', 'b'), await loginAs(app, 'ada', 'c')]
  const bob = await loginAs(app, 'bob', 'b')
  const res = await app.inject({ method: 'POST', url: '/end-others', headers: cookieHeader(cookies[2]) })
  t.same(res.json(), { ended: 2 })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookies[0]) })).json(), { value: null })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookies[2]) })).json(), { value: 'ada' })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(bob) })).json(), { value: 'bob' }, 'another user is untouched')
  const anonymous = await app.inject({ method: 'POST', url: '/end-others' })
  t.same(anonymous.json(), { ended: 0 })
})

t.test('destroyUserSessions takes a handle as except, or nothing at all', async (t) => {
  const app = await appWithUserRoutes(t)
  const keep = await loginAs(app, 'ada', 'keep')
  await loginAs(app, 'ada', 'drop')
  const { handle } = (await app.inject({ url: '/mine', headers: cookieHeader(keep) })).json()
  t.equal(await app.sessions.destroyUserSessions('ada', { except: handle }), 1)
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(keep) })).json(), { value: 'ada' })
  t.equal(await app.sessions.destroyUserSessions('ada', { except: 'not-a-handle' }), 1)
  t.equal(await app.sessions.destroyUserSessions('ada'), 0)
  await loginAs(app, 'ada', 'again')
  t.equal(await app.sessions.destroyUserSessions('ada', null as unknown as undefined), 1, 'null options are no options')
})

t.test('destroyUserSession ends one listed session, only for its own user', async (t) => {
  const app = await appWithUserRoutes(t)
  const ada = await loginAs(app, 'ada', 'a')
  const bob = await loginAs(app, 'bob', 'b')
  const bobHandle = (await app.inject({ url: '/mine', headers: cookieHeader(bob) })).json().handle
  t.same((await app.inject({ method: 'POST', url: '/end', payload: { handle: bobHandle }, headers: { ...json, ...cookieHeader(ada) } })).json(), { ended: false }, "a leaked handle cannot end someone else's session")
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(bob) })).json(), { value: 'bob' })
  t.equal(await app.sessions.destroyUserSession('bob', bobHandle), true)
  t.equal(await app.sessions.destroyUserSession('bob', bobHandle), false)
  t.equal(await app.sessions.destroyUserSession('bob', 42 as unknown as string), false, 'a malformed handle is false')
})

t.test('while a secret rotates, a handle listed by an instance still on the old secret names its session on one already on the new', async (t) => {
  const store = new MemoryProvider()
  const NEW = 'n'.repeat(32)
  const old = await appWithUserRoutes(t, { provider: store })
  const rotated = await appWithUserRoutes(t, { provider: store, secret: [NEW, SECRET] })
  const keep = await loginAs(old, 'ada', 'keep')
  const drop = await loginAs(old, 'ada', 'drop')
  const listed = (await old.inject({ url: '/mine', headers: cookieHeader(keep) })).json()
  const dropHandle = listed.sessions.find((s: { info: { agent: string } }) => s.info.agent === 'drop').handle
  t.equal(await rotated.sessions.destroyUserSessions('ada', { except: listed.handle }), 1, 'except spares the session its old handle names')
  t.same((await rotated.inject({ url: '/get/userId', headers: cookieHeader(keep) })).json(), { value: 'ada' })
  t.same((await old.inject({ url: '/get/userId', headers: cookieHeader(drop) })).json(), { value: null })
  const again = await loginAs(old, 'ada', 'again')
  const againHandle = (await old.inject({ url: '/mine', headers: cookieHeader(again) })).json().handle
  t.equal(await rotated.sessions.destroyUserSession('ada', againHandle), true, 'and destroyUserSession ends it')
  t.equal(await rotated.sessions.destroyUserSession('ada', dropHandle), false, 'a handle of a session already ended names nothing')
  t.equal((await rotated.sessions.listUserSessions('ada')).length, 1)
  const newHandle = (await rotated.sessions.listUserSessions('ada'))[0].handle
  t.not(newHandle, listed.handle, 'the rotated instance hands out handles under the new secret')
  t.equal(await old.sessions.destroyUserSession('ada', newHandle), false, 'which an instance that does not know it cannot match')
})

t.test('destroyUserSession does not end a session that changed hands after it was listed', async (t) => {
  const provider = new AsyncMemoryProvider()
  const app = await appWithUserRoutes(t, { provider })
  app.post<{ Body: { user: string } }>('/become', async (request) => {
    // a login without regenerate(): the same id, another owner
    request.session.set('userId', request.body.user)
    return {}
  })
  const cookie = await loginAs(app, 'ada', 'a')
  const { handle } = (await app.inject({ url: '/mine', headers: cookieHeader(cookie) })).json()
  const listByUser = provider.listByUser.bind(provider)
  provider.listByUser = async (user, infoKeys) => {
    const records = await listByUser(user, infoKeys)
    provider.listByUser = listByUser
    await app.inject({ method: 'POST', url: '/become', payload: { user: 'bob' }, headers: { ...json, ...cookieHeader(cookie) } })
    return records
  }
  t.equal(await app.sessions.destroyUserSession('ada', handle), false, 'ada no longer owns it when it would go')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: 'bob' }, "bob's session lives")
  t.equal((await app.sessions.listUserSessions('bob')).length, 1)
})

t.test('destroyUserSession does not end a session past the lifetimes of the app that asks', async (t) => {
  // two apps on one store: the one that asks has a shorter idle timeout
  const provider = new AsyncMemoryProvider()
  const long = await appWithUserRoutes(t, { provider })
  const short = await appWithUserRoutes(t, { provider, maxLifetime: 0.05 })
  const cookie = await loginAs(long, 'ada', 'a')
  const { handle } = (await long.inject({ url: '/mine', headers: cookieHeader(cookie) })).json()
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.same(await short.sessions.listUserSessions('ada'), [], 'not listed there')
  t.equal(await short.sessions.destroyUserSession('ada', handle), false, 'so not ended there either')
  t.equal((await long.sessions.listUserSessions('ada')).length, 1, 'the app whose lifetimes it is within still has it')
})

t.test('user ids are strings or finite numbers compared as strings; anything else is a coded error', async (t) => {
  const app = await appWithUserRoutes(t)
  app.post('/bad-user', async (request) => {
    try {
      request.session.set('userId', { id: 1 })
    } catch (err) {
      return { code: (err as { code: string }).code }
    }
    return {}
  })
  await loginAs(app, 7, 'numeric')
  t.equal((await app.sessions.listUserSessions('7')).length, 1)
  t.equal((await app.sessions.listUserSessions(7)).length, 1)
  t.same((await app.inject({ method: 'POST', url: '/bad-user' })).json(), { code: 'FST_SESSION_INVALID_USER' })
  await t.rejects(app.sessions.listUserSessions(NaN), { code: 'FST_SESSION_INVALID_USER' })
  await t.rejects(app.sessions.listUserSessions(null as unknown as string), { code: 'FST_SESSION_INVALID_USER' })
})

t.test('removing the user key takes the session out of the index; expired sessions are not listed', async (t) => {
  const app = await appWithUserRoutes(t, { maxLifetime: 0.1 })
  const cookie = await loginAs(app, 'ada', 'a')
  await loginAs(app, 'ada', 'b')
  await app.inject({ method: 'POST', url: '/delete/userId', headers: cookieHeader(cookie) })
  t.equal((await app.sessions.listUserSessions('ada')).length, 1)
  await new Promise((resolve) => setTimeout(resolve, 130))
  t.same(await app.sessions.listUserSessions('ada'), [])
  t.equal(await app.sessions.destroyUserSessions('ada'), 0, 'expired sessions are not counted')
})

t.test('a user id set to null leaves the index like a delete', async (t) => {
  const app = await appWithUserRoutes(t)
  app.post('/anonymous', async (request) => { request.session.set('userId', null); return {} })
  const cookie = await loginAs(app, 'ada', 'a')
  await app.inject({ method: 'POST', url: '/anonymous', headers: cookieHeader(cookie) })
  t.same(await app.sessions.listUserSessions('ada'), [])
})

t.test('a provider without a user index answers with a coded error', async (t) => {
  const full = new AsyncMemoryProvider()
  const bare: SessionProvider = {
    get: (key) => full.get(key),
    create: (key, session, replaces) => full.create(key, session, replaces),
    update: (key, patch) => full.update(key, patch),
    destroy: (key) => full.destroy(key)
  }
  const app = await build(t, { provider: bare })
  await t.rejects(app.sessions.listUserSessions('ada'), { code: 'FST_SESSION_UNSUPPORTED' })
  await t.rejects(app.sessions.destroyUserSessions('ada'), { code: 'FST_SESSION_UNSUPPORTED' })
  await t.rejects(app.sessions.destroyUserSession('ada', 'x'.repeat(22)), { code: 'FST_SESSION_UNSUPPORTED' })
  t.equal(await app.sessions.gc(), 0, 'no sweep to run')
})

t.test('regenerate() then destroyOtherSessions(): a request holding the old cookie cannot move the session away and survive', async (t) => {
  for (const provider of ['memory', new AsyncMemoryProvider()] as const) {
    const app = await appWithUserRoutes(t, { provider })
    const { pastDestroy, release } = pausingPasswordRoute(app)
    app.post('/regenerate', async (request) => {
      await request.session.regenerate()
      return {}
    })
    const stolen = await loginAs(app, 'ada', 'phone')
    await loginAs(app, 'ada', 'laptop')
    const change = app.inject({ method: 'POST', url: '/password', headers: cookieHeader(stolen) })
    await pastDestroy
    const thief = await app.inject({ method: 'POST', url: '/regenerate', headers: cookieHeader(stolen) })
    release()
    const changed = await change
    t.same(changed.json(), { ended: 1 }, 'the laptop ended; the old record of this session is not counted')
    const moved = sessionCookie(thief)
    if (moved !== undefined) {
      t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(moved) })).json(), { value: null }, "the thief's regenerate kept nothing")
    }
    const mine = sessionCookie(changed) as string
    t.ok(mine, 'the password change answered with its new cookie')
    t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(mine) })).json(), { value: 'ada' })
    t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(stolen) })).json(), { value: null }, 'the old cookie opens nothing')
    const { handle, sessions } = (await app.inject({ url: '/mine', headers: cookieHeader(mine) })).json()
    t.same(sessions.map((s: { handle: string }) => s.handle), [handle], 'one session is left: the one that changed the password')
  }
})

t.test('regenerate() then destroyOtherSessions() of a session ended meanwhile: nothing survives, nothing is saved', async (t) => {
  const app = await appWithUserRoutes(t)
  app.post('/password', async (request) => {
    await request.session.regenerate()
    await app.sessions.destroyUserSessions('ada')
    return { ended: await request.session.destroyOtherSessions() }
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
  t.same(res.json(), { ended: 0 })
  t.equal(sessionCookie(res), '', 'the session had ended: no new one was created, and the cookie is cleared')
  t.same(await app.sessions.listUserSessions('ada'), [])
})

t.test('regenerate() then destroyOtherSessions(): a logout everywhere run before the response leaves still ends the session', async (t) => {
  for (const provider of ['memory', new AsyncMemoryProvider()] as const) {
    const app = await appWithUserRoutes(t, { provider })
    const { pastDestroy, release } = pausingPasswordRoute(app)
    const cookie = await loginAs(app, 'ada', 'phone')
    const change = app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
    await pastDestroy
    t.equal(await app.sessions.destroyUserSessions('ada'), 1, 'the ban sees the session under its new id')
    release()
    const res = await change
    t.equal(res.statusCode, 200)
    const moved = sessionCookie(res)
    if (moved !== undefined) t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(moved) })).json(), { value: null }, 'the new cookie opens nothing')
    t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null })
    t.same(await app.sessions.listUserSessions('ada'), [], 'nothing was saved after the ban')
  }
})

t.test('destroyOtherSessions() once the response is saved spares the session under its new id', async (t) => {
  const app = await appWithUserRoutes(t)
  const ended: number[] = []
  app.addHook('onResponse', async (request) => {
    if (request.url === '/login') ended.push(await request.session.destroyOtherSessions())
  })
  await loginAs(app, 'ada', 'laptop')
  const first = await loginAs(app, 'ada', 'phone')
  // a login again from a stored session: regenerate() moves it at the save
  const again = await app.inject({ method: 'POST', url: '/login', payload: { user: 'ada' }, headers: { ...json, ...cookieHeader(first), 'user-agent': 'phone' } })
  const phone = sessionCookie(again) as string
  t.same(ended, [0, 1, 0], 'the laptop ended after the phone first logged in')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(phone) })).json(), { value: 'ada' }, 'the phone\'s new session lives')
})

t.test('after the move, a failed save still sends the cookie of the session it moved, which lives on', async (t) => {
  const provider = new FailingProvider()
  const app = await appWithUserRoutes(t, { provider })
  app.post('/password', async (request) => {
    await request.session.regenerate()
    const ended = await request.session.destroyOtherSessions()
    request.session.set('changedAt', 1)
    provider.mode = 'throw'
    return { ended }
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
  provider.mode = 'ok'
  t.equal(res.statusCode, 503, 'the last change was not saved')
  const moved = sessionCookie(res) as string
  t.ok(moved, 'but the session was moved, and its new cookie goes out')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(moved) })).json(), { value: 'ada' }, 'so the user stays logged in')
  t.same((await app.inject({ url: '/get/changedAt', headers: cookieHeader(moved) })).json(), { value: null })
})

t.test('regenerate() again after destroyOtherSessions() still saves the session, under its newest id', async (t) => {
  const app = await appWithUserRoutes(t)
  app.post('/twice', async (request) => {
    await request.session.regenerate()
    const ended = await request.session.destroyOtherSessions()
    await request.session.regenerate()
    return { ended }
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  await loginAs(app, 'ada', 'laptop')
  const res = await app.inject({ method: 'POST', url: '/twice', headers: cookieHeader(cookie) })
  t.same(res.json(), { ended: 1 })
  const latest = sessionCookie(res) as string
  t.ok(latest)
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(latest) })).json(), { value: 'ada' })
  t.equal((await app.sessions.listUserSessions('ada')).length, 1)
})

t.test('with cookie.maxAge, a change after the move to the new id sends the cookie once', async (t) => {
  const app = await appWithUserRoutes(t, { cookie: { maxAge: 3600 } })
  app.post('/password', async (request) => {
    await request.session.regenerate()
    await request.session.destroyOtherSessions()
    request.session.set('changedAt', 1)
    return {}
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
  t.equal(res.statusCode, 200)
  t.equal(setCookies(res).length, 1)
  t.match(setCookies(res)[0], /; Max-Age=3600;/)
})

t.test('destroy() after regenerate() and destroyOtherSessions() ends the session and asks the store for nothing more', async (t) => {
  const provider = new AsyncMemoryProvider()
  const app = await appWithUserRoutes(t, { provider })
  let destroys = 0
  const destroy = provider.destroy.bind(provider)
  provider.destroy = async (key) => { destroys++; return await destroy(key) }
  app.post('/leave', async (request) => {
    await request.session.regenerate()
    await request.session.destroyOtherSessions()
    await request.session.destroy()
    return {}
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/leave', headers: cookieHeader(cookie) })
  t.equal(sessionCookie(res), '', 'the cookie is cleared')
  t.equal(destroys, 1, 'only the old record was deleted; the new id was never stored')
  t.same(await app.sessions.listUserSessions('ada'), [])
})

t.test('calls that overlap the move to the new id, in the same request, wait for it or are kept', async (t) => {
  for (const provider of ['memory', new AsyncMemoryProvider()] as const) {
    const name = typeof provider === 'string' ? provider : 'asynchronous store'
    const app = await appWithUserRoutes(t, { provider })
    app.post<{ Body: { step: string } }>('/overlap', async (request) => {
      const session = request.session
      await session.regenerate()
      const step = request.body.step
      if (step === 'set') {
        const moving = session.destroyOtherSessions()
        session.set('during', 1)
        return { ended: await moving }
      }
      if (step === 'regenerate') {
        const moving = session.destroyOtherSessions()
        await session.regenerate()
        return { ended: await moving }
      }
      if (step === 'regenerate, then again') {
        const first = session.destroyOtherSessions()
        await session.regenerate()
        const [ended, again] = await Promise.all([first, session.destroyOtherSessions()])
        return { ended: ended + again }
      }
      if (step === 'regenerate, not awaited') {
        session.destroyOtherSessions().catch((err: Error) => request.log.error(err))
        await session.regenerate()
        return { ended: 1 }
      }
      if (step === 'twice') {
        const [first, second] = await Promise.all([session.destroyOtherSessions(), app.sessions.destroyUserSessions('ada', { except: session })])
        return { ended: first + second }
      }
      if (step === 'destroy') {
        const [ended] = await Promise.all([session.destroyOtherSessions(), session.destroy()])
        return { ended }
      }
      // not awaited at all: the save waits for it
      session.destroyOtherSessions().catch((err: Error) => request.log.error(err))
      return { ended: 1 }
    })
    for (const step of ['set', 'regenerate', 'regenerate, then again', 'regenerate, not awaited', 'twice', 'destroy', 'unawaited']) {
      await app.sessions.destroyUserSessions('ada')
      const cookie = await loginAs(app, 'ada', 'phone')
      await loginAs(app, 'ada', 'laptop')
      const res = await app.inject({ method: 'POST', url: '/overlap', payload: { step }, headers: { ...json, ...cookieHeader(cookie) } })
      t.same(res.json(), { ended: 1 }, `${name}, ${step}: the other session ended, once`)
      const listed = await app.sessions.listUserSessions('ada')
      if (step === 'destroy') {
        t.equal(sessionCookie(res), '', `${name}, destroy: the cookie is cleared`)
        t.same(listed, [], `${name}, destroy: nothing is left`)
        continue
      }
      const latest = sessionCookie(res) as string
      t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(latest) })).json(), { value: 'ada' }, `${name}, ${step}: the cookie sent opens the session`)
      t.equal(listed.length, 1, `${name}, ${step}: it is the user's only session`)
      if (step === 'set') t.same((await app.inject({ url: '/get/during', headers: cookieHeader(latest) })).json(), { value: 1 }, `${name}: a value set during the move is saved`)
    }
  }
})

t.test('a move the store fails leaves the session as it was: caught, the save still regenerates it', async (t) => {
  const provider = new FailingProvider()
  const app = await appWithUserRoutes(t, { provider })
  app.post('/password', async (request) => {
    await request.session.regenerate()
    provider.mode = 'throw'
    const code = await request.session.destroyOtherSessions().then(() => null, (err: { code: string }) => err.code)
    provider.mode = 'ok'
    return { code }
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
  t.same(res.json(), { code: 'FST_SESSION_STORE_UNAVAILABLE' })
  const latest = sessionCookie(res) as string
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(latest) })).json(), { value: 'ada' })
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(cookie) })).json(), { value: null }, 'the old id is retired by the save')
})

t.test('after the move, a save that fails on the session itself (a value made unserialisable) still sends the moved session\'s cookie', async (t) => {
  const app = await appWithUserRoutes(t)
  app.post('/password', async (request) => {
    request.session.set('profile', { n: 1 })
    await request.session.regenerate()
    await request.session.destroyOtherSessions()
    const profile = request.session.get('profile') as { n: unknown }
    profile.n = 10n
    return {}
  })
  const cookie = await loginAs(app, 'ada', 'phone')
  const res = await app.inject({ method: 'POST', url: '/password', headers: cookieHeader(cookie) })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_SESSION_NOT_SERIALIZABLE')
  const moved = sessionCookie(res) as string
  t.ok(moved, 'the cookie of the moved session goes out with the error')
  t.same((await app.inject({ url: '/get/userId', headers: cookieHeader(moved) })).json(), { value: 'ada' })
})

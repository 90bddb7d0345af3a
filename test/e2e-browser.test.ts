// The example app (examples/app.js) driven by a real Chromium: sign in, count,
// see and end the sessions of a second device, sign out. Also runs the app as
// `node examples/app.js` does, to check what `npm start` prints and serves.

import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { MemoryProvider } from '../index.js'
import { chromium, type Browser, type BrowserContext, type Cookie, type Locator, type Page } from 'playwright-core'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const APP_FILE = fileURLToPath(new URL('../examples/app.js', import.meta.url))
const SECRET = 'e2e browser test secret, at least 32 characters'
/** Markup in the name checks that the pages escape it. */
const USER = 'ada <i>lovelace</i> & co'
const SECOND_DEVICE_UA = 'fastify-sessions e2e second device'
const WAIT = 10_000

interface ExampleApp {
  build (options: { secret: string, logger?: boolean }): Promise<FastifyInstance>
  config (env?: Record<string, string | undefined>, warn?: (message: string) => void): { port: number, host: string, secret: string }
}

/** Rejects with `what` when `promise` does not settle within `ms`. */
async function within<T> (promise: Promise<T>, what: string, ms = WAIT): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function sessionCookie (context: BrowserContext): Promise<Cookie | undefined> {
  return (await context.cookies()).find((cookie) => cookie.name === 'sessionid')
}

/** Clicks a form's submit button and waits for the page the POST redirects to. */
async function submit (page: Page, button: Locator): Promise<void> {
  await Promise.all([page.waitForEvent('load'), button.click()])
}

async function signIn (page: Page, base: string, user: string): Promise<void> {
  await page.goto(base + '/')
  await page.getByLabel('Username').fill(user)
  await submit(page, page.getByRole('button', { name: 'Sign in' }))
}

async function heading (page: Page): Promise<string | null> {
  return page.locator('h1').textContent()
}

async function newContext (t: Test, browser: Browser, options: { userAgent?: string } = {}): Promise<Page> {
  const context = await browser.newContext(options)
  context.setDefaultTimeout(WAIT)
  context.setDefaultNavigationTimeout(WAIT)
  t.teardown(() => context.close())
  return context.newPage()
}

async function main (): Promise<void> {
  // Plain JS outside the type-checked program: a computed specifier keeps tsc
  // from looking for its types, and the interface above states them.
  const example: ExampleApp = await import(String(new URL('../examples/app.js', import.meta.url)))

  t.test('config() reads PORT and SESSION_SECRET', async (t) => {
    const warnings: string[] = []
    const warn = (message: string): void => { warnings.push(message) }

    const defaults = example.config({}, warn)
    t.equal(defaults.port, 3000, 'port 3000 by default')
    t.equal(defaults.host, '127.0.0.1', 'local interface only')
    t.ok(defaults.secret.length >= 32, 'the development secret is long enough for the plugin')
    t.equal(warnings.length, 1, 'and using it warns')
    t.match(warnings[0], /SESSION_SECRET/)

    warnings.length = 0
    t.same(example.config({ PORT: '0', SESSION_SECRET: SECRET }, warn), { port: 0, host: '127.0.0.1', secret: SECRET }, 'PORT=0 asks for a free port')
    t.equal(example.config({ PORT: '', SESSION_SECRET: '' }, warn).port, 3000, 'empty values count as unset')
    t.equal(warnings.length, 1, 'warns only for the empty secret')
    t.throws(() => example.config({ PORT: 'http' }, warn), /PORT must be a port number/)
    t.throws(() => example.config({ PORT: '65536' }, warn), /PORT must be a port number/)
  })

  t.test('a POST from another site is refused, so it can neither sign a visitor in under another name nor out', async (t) => {
    const app = await example.build({ secret: SECRET })
    t.teardown(() => app.close())
    const form = { 'content-type': 'application/x-www-form-urlencoded', host: 'app.test' }
    const login = async (headers: Record<string, string>): Promise<number> =>
      (await app.inject({ method: 'POST', url: '/login', payload: 'username=mallory', headers: { ...form, ...headers } })).statusCode
    t.equal(await login({ 'sec-fetch-site': 'cross-site', origin: 'https://evil.test' }), 403, 'a browser that says cross-site')
    t.equal(await login({ 'sec-fetch-site': 'same-site', origin: 'http://sub.app.test' }), 403, 'a sibling subdomain')
    t.equal(await login({ origin: 'https://evil.test' }), 403, 'an older browser that only sends Origin')
    const logout = await app.inject({ method: 'POST', url: '/logout', headers: { ...form, 'sec-fetch-site': 'cross-site' } })
    t.equal(logout.statusCode, 403)
    t.equal(logout.headers['set-cookie'], undefined, 'no cookie is cleared')
    t.equal(await login({ 'sec-fetch-site': 'same-origin', origin: 'http://app.test' }), 303, 'the app\'s own form')
    t.equal(await login({ origin: 'http://app.test' }), 303, 'its own form in an older browser')
    t.equal(await login({}), 303, 'a client that sends neither (curl)')
  })

  t.test('a username that is not well-formed text gets a 400, and a browser without a name shows as unnamed', async (t) => {
    const app = await example.build({ secret: SECRET })
    t.teardown(() => app.close())
    const bad = await app.inject({ method: 'POST', url: '/login', payload: '{"username":"\\ud800"}', headers: { 'content-type': 'application/json' } })
    t.equal(bad.statusCode, 400)
    const login = await app.inject({ method: 'POST', url: '/login', payload: 'username=ada', headers: { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': '' } })
    const cookie = login.cookies.find((c) => c.name === 'sessionid')?.value as string
    const list = await app.inject({ url: '/sessions', headers: { cookie: `sessionid=${cookie}` } })
    t.match(list.body, '<td class="ua">an unnamed browser</td>')
  })

  t.test('signing in as someone else in the same browser does not carry the first user\'s data over', async (t) => {
    const app = await example.build({ secret: SECRET })
    t.teardown(() => app.close())
    const form = { 'content-type': 'application/x-www-form-urlencoded' }
    const cookieOf = (res: { cookies: Array<{ name: string, value: string }> }): string =>
      `sessionid=${res.cookies.find((c) => c.name === 'sessionid')?.value as string}`
    let cookie = cookieOf(await app.inject({ method: 'POST', url: '/login', payload: 'username=ada', headers: form }))
    await app.inject({ method: 'POST', url: '/count', headers: { ...form, cookie } })
    t.match((await app.inject({ url: '/', headers: { cookie } })).body, '<output id="count">1</output>')
    cookie = cookieOf(await app.inject({ method: 'POST', url: '/login', payload: 'username=ada', headers: { ...form, cookie } }))
    t.match((await app.inject({ url: '/', headers: { cookie } })).body, '<output id="count">1</output>', 'the same user again keeps it')
    cookie = cookieOf(await app.inject({ method: 'POST', url: '/login', payload: 'username=bob', headers: { ...form, cookie } }))
    const home = (await app.inject({ url: '/', headers: { cookie } })).body
    t.match(home, '<strong>bob</strong>')
    t.match(home, '<output id="count">0</output>', 'bob starts from nothing')
  })

  t.test('node examples/app.js listens on PORT and prints its URL', async (t) => {
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: '0' }
    delete env.SESSION_SECRET
    const child = spawn(process.execPath, [APP_FILE], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    let stdout = ''
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const url = await within(new Promise<string>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk
        const match = /Example app listening on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(stdout)
        if (match !== null) resolve(match[1] as string)
      })
      child.once('exit', (code) => reject(new Error(`the app exited (${code}) before listening:\n${stderr}`)))
    }), 'the app printing its URL')

    t.not(url, 'http://127.0.0.1:0', 'the URL names the port it got')
    t.match(stderr, /SESSION_SECRET is not set/, 'warns about the development secret')
    const health = await fetch(url + '/health', { signal: AbortSignal.timeout(WAIT) })
    t.equal(health.status, 200)
    t.same(await health.json(), { ok: true })
    const home = await fetch(url + '/', { signal: AbortSignal.timeout(WAIT) })
    t.equal(home.status, 200)
    t.match(await home.text(), /<h1>Sign in<\/h1>/)

    child.kill('SIGTERM')
    t.equal(await within(exited, 'the app exiting on SIGTERM'), 0, 'SIGTERM closes the app and it exits cleanly')
  })

  t.test('in a browser', async (t) => {
    const app = await example.build({ secret: SECRET })
    t.teardown(() => app.close())
    const base = await app.listen({ port: 0, host: '127.0.0.1' })

    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
    })
    t.teardown(() => browser.close())

    const laptop = await newContext(t, browser)
    const laptopContext = laptop.context()

    await laptop.goto(base + '/')
    t.equal(await heading(laptop), 'Sign in', 'a new visitor sees the login form')
    t.equal(await sessionCookie(laptopContext), undefined, 'and gets no cookie for merely looking')

    await signIn(laptop, base, USER)
    t.equal(await laptop.locator('#user').textContent(), `Signed in as ${USER}`, 'signed in, the name shown as text')
    t.equal(await laptop.locator('#user i').count(), 0, 'the markup in the name was escaped, not rendered')

    const cookie = await sessionCookie(laptopContext)
    t.ok(cookie, 'signing in set the session cookie')
    t.equal(cookie?.httpOnly, true, 'HttpOnly')
    t.equal(cookie?.sameSite, 'Lax', 'SameSite=Lax')
    t.equal(cookie?.path, '/')
    t.notMatch(String(await laptop.evaluate('document.cookie')), /sessionid/, 'page scripts cannot read it')

    await laptop.reload()
    t.equal(await laptop.locator('#user').textContent(), `Signed in as ${USER}`, 'still signed in after a reload')

    t.equal(await laptop.locator('#count').textContent(), '0')
    await submit(laptop, laptop.getByRole('button', { name: 'Count' }))
    t.equal(await laptop.locator('#count').textContent(), '1', 'the counter counts')
    await submit(laptop, laptop.getByRole('button', { name: 'Count' }))
    t.equal(await laptop.locator('#count').textContent(), '2')
    await laptop.reload()
    t.equal(await laptop.locator('#count').textContent(), '2', 'and the count survives a reload')

    const blank = await fetch(base + '/login', { method: 'POST', body: new URLSearchParams({ username: '   ' }), signal: AbortSignal.timeout(WAIT) })
    t.equal(blank.status, 400, 'the server refuses a blank name, whatever the form says')

    const health = await fetch(base + '/health', { headers: { cookie: `sessionid=${cookie?.value}` }, signal: AbortSignal.timeout(WAIT) })
    t.equal(health.status, 200, '/health answers')
    t.equal(health.headers.get('set-cookie'), null, 'without touching the session')

    // A second device: its own context, so its own cookie jar.
    const phone = await newContext(t, browser, { userAgent: SECOND_DEVICE_UA })
    const phoneContext = phone.context()
    await signIn(phone, base, USER)
    t.equal(await phone.locator('#user').textContent(), `Signed in as ${USER}`, 'the second device signs in as the same user')
    t.equal(await phone.locator('#count').textContent(), '0', 'with a session of its own')
    const phoneCookie = await sessionCookie(phoneContext)
    t.not(phoneCookie?.value, cookie?.value, 'and a cookie of its own')

    await laptop.getByRole('link', { name: 'Your sessions' }).click()
    await laptop.waitForURL(base + '/sessions')
    t.equal(await heading(laptop), 'Your sessions')
    const rows = laptop.locator('tbody tr')
    t.equal(await rows.count(), 2, 'two sessions listed')
    const current = laptop.locator('tbody tr[data-current]')
    const other = laptop.locator('tbody tr:not([data-current])')
    t.equal(await current.count(), 1, 'one of them marked as this device')
    t.match(await current.textContent(), /this device/)
    t.match(await other.locator('td.ua').textContent(), SECOND_DEVICE_UA, 'the other shows the second device\'s browser')
    t.match(await current.locator('td.ua').textContent(), /Chrome/, 'this one shows ours')
    const times = await laptop.locator('tbody td.time').allTextContents()
    t.equal(times.length, 6, 'login, creation and last-seen times for each')
    t.ok(times.every((cell) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(cell)), 'shown as ISO 8601')

    await submit(laptop, other.getByRole('button', { name: 'End' }))
    t.equal(laptop.url(), base + '/sessions', 'back on the list')
    t.equal(await rows.count(), 1, 'the other session is gone from the list')
    t.equal(await current.count(), 1, 'ours is left')

    await phone.reload()
    t.equal(await heading(phone), 'Sign in', 'the ended device is signed out on its next request')
    await phone.goto(base + '/sessions')
    t.equal(phone.url(), base + '/', 'and /sessions sends it to the login form')

    // Sign the phone in again (its stale cookie is replaced: a new id at login),
    // then end it with "Log out other devices".
    await signIn(phone, base, USER)
    t.equal(await phone.locator('#user').textContent(), `Signed in as ${USER}`)
    t.not((await sessionCookie(phoneContext))?.value, phoneCookie?.value, 'signing in again issued a new session id')
    await laptop.reload()
    t.equal(await rows.count(), 2, 'two sessions again')
    await submit(laptop, laptop.getByRole('button', { name: 'Log out other devices' }))
    t.equal(await rows.count(), 1, 'only this device is left')
    t.equal(await current.count(), 1)
    await phone.reload()
    t.equal(await heading(phone), 'Sign in', 'the other device is signed out')

    // Signing in again, as another login would, must also move the session to a new id.
    const beforeRelogin = await sessionCookie(laptopContext)
    const relogin = await laptopContext.request.post(base + '/login', { form: { username: USER }, maxRedirects: 0, timeout: WAIT })
    t.equal(relogin.status(), 303, 'a login POST answers with a redirect')
    t.not((await sessionCookie(laptopContext))?.value, beforeRelogin?.value, 'signing in again issued a new session id')
    t.equal((await app.sessions.listUserSessions(USER)).length, 1, 'replacing the old one rather than adding one')
    await laptop.goto(base + '/')
    t.equal(await laptop.locator('#count').textContent(), '2', 'keeping the session\'s data')

    // Sign out, then check the old cookie is dead on the server, not merely deleted in the browser.
    const beforeLogout = await sessionCookie(laptopContext) as Cookie
    await submit(laptop, laptop.getByRole('button', { name: 'Log out' }))
    t.equal(await heading(laptop), 'Sign in', 'signed out')
    t.equal(await sessionCookie(laptopContext), undefined, 'the browser dropped the cookie')
    await laptopContext.addCookies([beforeLogout])
    await laptop.reload()
    t.equal(await heading(laptop), 'Sign in', 'and replaying the old cookie does not sign back in')
    t.same(await app.sessions.listUserSessions(USER), [], 'the user has no sessions left')
    t.equal((app.sessions.provider as MemoryProvider).size, 0, 'and the store holds none at all')
  })
}

if (existsSync(CHROMIUM)) {
  await main()
} else {
  const message = `no Chromium at ${CHROMIUM}: the browser test of examples/app.js did not run. ` +
    'Install it (apt-get install chromium) or point CHROMIUM_PATH at one.'
  if (process.env.CI === 'true') {
    t.fail(message)
  } else {
    console.error(`\n${'!'.repeat(72)}\n!! SKIPPED: ${message}\n${'!'.repeat(72)}\n`)
    t.plan(0, message)
  }
}

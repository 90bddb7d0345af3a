// An example app: sign in with any name, count clicks in the session, and see
// and end your sessions on other devices. Server-rendered HTML, no client JS.
//
//   npm start                          # builds the package, then runs this file
//   PORT=8080 SESSION_SECRET=... node examples/app.js
//
// CSRF: every state change is a POST, and the session cookie is SameSite=Lax
// (the plugin's default), so browsers do not send it on POSTs from other sites.
// That alone does not stop a cross-site form from signing a visitor in under
// another name, or out (a POST needs no cookie to set or clear one), so POSTs
// whose browser says they come from another site (Sec-Fetch-Site, else Origin)
// are refused. Neither covers sibling subdomains (same site) or very old
// browsers, so a real app should add CSRF tokens as well, e.g.
// @fastify/csrf-protection.

import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import sessions from 'fastify-sessions'

const DEV_SECRET = 'development secret: set SESSION_SECRET for real use'
const HOST = '127.0.0.1'

/**
 * The settings from the environment: PORT (default 3000; 0 picks a free one)
 * and SESSION_SECRET (a development default, with a warning, when unset).
 */
export function config (env = process.env, warn = console.warn) {
  const port = env.PORT === undefined || env.PORT === '' ? 3000 : Number(env.PORT)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`PORT must be a port number, got ${JSON.stringify(env.PORT)}`)
  }
  let secret = env.SESSION_SECRET
  if (secret === undefined || secret === '') {
    warn('SESSION_SECRET is not set: using a development secret. Anyone who knows it can forge session cookies.')
    secret = DEV_SECRET
  }
  return { port, host: HOST, secret }
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

/** Escapes text for HTML element content and quoted attribute values. */
function escapeHtml (value) {
  return String(value).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c])
}

function iso (ms) {
  return new Date(ms).toISOString()
}

// Pages name the user; they must not be cached (the plugin already sends
// no-store on responses that set the cookie, but not on plain reads). The CSP
// forbids scripts outright: the pages need none, so an escaping slip could not
// run one either.
function page (reply, title, body) {
  return reply
    .header('cache-control', 'no-store')
    .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
    .type('text/html; charset=utf-8')
    .send(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · fastify-sessions example</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
  form.inline { display: inline; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  td.ua { min-width: 14rem; word-break: break-word; }
  td.time { white-space: nowrap; }
</style>
</head>
<body>
${body}
</body>
</html>
`)
}

const loginBody = {
  type: 'object',
  required: ['username'],
  properties: { username: { type: 'string', minLength: 1, maxLength: 64, pattern: '\\S' } }
}

const endBody = {
  type: 'object',
  required: ['handle'],
  properties: { handle: { type: 'string', maxLength: 64 } }
}

/** Builds the app, not listening; `options.secret` is required. */
export async function build ({ secret, logger = false }) {
  const app = Fastify({ logger })

  // HTML forms post application/x-www-form-urlencoded, which Fastify does not
  // parse by itself; URLSearchParams is all it takes for flat forms.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body)))
  })

  await app.register(sessions, {
    secret,
    // Shown beside each session on /sessions, so a user can tell them apart.
    userInfoKeys: ['userAgent', 'loginAt']
  })

  app.addHook('onRequest', async function refuseCrossSitePosts (request, reply) {
    if (request.method !== 'POST') return
    const site = request.headers['sec-fetch-site']
    const origin = request.headers.origin
    const crossSite = site === undefined
      ? origin !== undefined && origin !== `${request.protocol}://${request.host}`
      : site !== 'same-origin' && site !== 'none'
    if (crossSite) return reply.code(403).type('text/plain; charset=utf-8').send('Cross-site requests are refused.')
  })

  // Routes that need a signed-in user send everyone else back to the login form.
  async function requireUser (request, reply) {
    if (request.session.get('userId') === undefined) return reply.redirect('/', 303)
  }

  app.get('/', async (request, reply) => {
    const userId = request.session.get('userId')
    if (userId === undefined) {
      return page(reply, 'Sign in', `<h1>Sign in</h1>
<p>Any name will do: this is a demo.</p>
<form method="post" action="/login">
  <label>Username <input name="username" required maxlength="64" autocomplete="username" autofocus></label>
  <button type="submit">Sign in</button>
</form>`)
    }
    const count = request.session.get('count') ?? 0
    return page(reply, 'Home', `<h1>Hello</h1>
<p id="user">Signed in as <strong>${escapeHtml(userId)}</strong></p>
<form method="post" action="/count">
  <p>Clicks this session: <output id="count">${count}</output> <button type="submit">Count</button></p>
</form>
<p><a href="/sessions">Your sessions</a></p>
<form method="post" action="/logout"><button type="submit">Log out</button></form>`)
  })

  app.post('/login', { schema: { body: loginBody } }, async (request, reply) => {
    // A new id at login, so an id planted in the browser beforehand (session
    // fixation) is worthless afterwards.
    const { username } = request.body
    // JSON bodies can carry half a surrogate pair, which no session store keeps
    if (!username.isWellFormed()) return reply.code(400).type('text/plain; charset=utf-8').send('The username is not valid text.')
    await request.session.regenerate()
    // What an earlier user left in this browser's session is not the new
    // user's; what an anonymous visitor gathered before signing in is.
    const previous = request.session.get('userId')
    if (previous !== undefined && previous !== username) request.session.clear()
    request.session.set('userId', username)
    request.session.set('userAgent', request.headers['user-agent'] || 'an unnamed browser')
    request.session.set('loginAt', Date.now())
    return reply.redirect('/', 303)
  })

  app.post('/count', { preHandler: requireUser }, async (request, reply) => {
    request.session.set('count', (request.session.get('count') ?? 0) + 1)
    return reply.redirect('/', 303)
  })

  app.post('/logout', async (request, reply) => {
    await request.session.destroy()
    return reply.redirect('/', 303)
  })

  app.get('/sessions', { preHandler: requireUser }, async (request, reply) => {
    const userId = request.session.get('userId')
    const entries = await app.sessions.listUserSessions(userId)
    const rows = entries.map((entry) => {
      const current = entry.handle === request.session.handle
      const action = current
        ? '<strong>this device</strong>'
        : `<form class="inline" method="post" action="/sessions/end">
      <input type="hidden" name="handle" value="${escapeHtml(entry.handle)}">
      <button type="submit">End</button>
    </form>`
      return `<tr data-handle="${escapeHtml(entry.handle)}"${current ? ' data-current' : ''}>
  <td><code>${escapeHtml(entry.handle)}</code></td>
  <td class="ua">${escapeHtml(entry.info.userAgent)}</td>
  <td class="time">${iso(entry.info.loginAt)}</td>
  <td class="time">${iso(entry.createdAt)}</td>
  <td class="time">${iso(entry.lastSeenAt)}</td>
  <td>${action}</td>
</tr>`
    })
    return page(reply, 'Your sessions', `<h1>Your sessions</h1>
<p>Signed in as <strong>${escapeHtml(userId)}</strong> on ${entries.length} device(s). <a href="/">Home</a></p>
<table>
<thead><tr><th>Session</th><th>Browser</th><th>Signed in</th><th>Created</th><th>Last seen</th><th></th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>
<form method="post" action="/sessions/end-others"><p><button type="submit">Log out other devices</button></p></form>`)
  })

  app.post('/sessions/end', { preHandler: requireUser, schema: { body: endBody } }, async (request, reply) => {
    // Scoped to the signed-in user: a handle of someone else's session ends nothing.
    await app.sessions.destroyUserSession(request.session.get('userId'), request.body.handle)
    return reply.redirect('/sessions', 303)
  })

  app.post('/sessions/end-others', { preHandler: requireUser }, async (request, reply) => {
    await request.session.destroyOtherSessions()
    return reply.redirect('/sessions', 303)
  })

  // For load balancers and uptime checks: no session is loaded or saved.
  app.get('/health', { config: { session: false } }, async () => ({ ok: true }))

  return app
}

/** Runs the app until SIGINT or SIGTERM, then closes it so the sessions store shuts down cleanly. */
async function main () {
  const { port, host, secret } = config()
  const app = await build({ secret, logger: { level: 'warn' } })
  const address = await app.listen({ port, host })
  const stop = () => app.close()
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  console.log(`Example app listening on ${address}`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main()

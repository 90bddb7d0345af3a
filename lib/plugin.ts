import { Readable } from 'node:stream'
import fastifyCookie, { type FastifyCookieOptions } from '@fastify/cookie'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { decodeCookieValue } from './cookie.js'
import { FST_SESSION_INVALID_OPTION, FST_SESSION_INVALID_PROVIDER, FST_SESSION_STORE_UNAVAILABLE } from './errors.js'
import { isStoreFailure, SessionManager } from './manager.js'
import { foreignOptions, resolveOptions, type SessionPluginOptions } from './options.js'
import { isStateless, type SessionProvider, type StatelessSessionProvider } from './provider.js'
import { getProvider } from './registry.js'
import { routeConfigReader } from './route-config.js'
import { Session } from './session.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's session; `null` only on routes with `config: { session: false }`. */
    session: Session
  }
  interface FastifyInstance {
    /** The session manager: the provider, `gc()`, and a user's sessions. */
    sessions: SessionManager
  }
  interface FastifyContextConfig {
    /** `false` skips loading and saving the session on this route (static files, health checks). */
    session?: boolean
  }
}

type OnSendDone = (err: Error | null, payload?: unknown) => void

const PROVIDER_METHODS = ['get', 'create', 'update', 'destroy'] as const
const STATELESS_METHODS = ['seal', 'open'] as const

type AnyProvider = SessionProvider | StatelessSessionProvider

async function resolveProvider (options: SessionPluginOptions): Promise<{ provider: AnyProvider, owned: boolean }> {
  const { provider = 'memory', providerOptions = {} } = options
  if (typeof provider === 'string') {
    const factory = getProvider(provider)
    let created: unknown
    try {
      created = await factory(providerOptions)
    } catch (err) {
      throw startFailure(provider, err)
    }
    try {
      checkProvider(created)
    } catch (err) {
      // whatever it opened would outlive the failed registration
      const close = (created as { close?: unknown } | null)?.close
      if (typeof close === 'function') {
        try {
          await close.call(created)
        } catch {
          // a close that fails too must not hide why the registration failed
        }
      }
      throw err
    }
    return { provider: created, owned: true }
  }
  checkProvider(provider)
  // options for a provider made elsewhere would be silently ignored
  if (options.providerOptions !== undefined && Object.keys(options.providerOptions).length > 0) {
    throw new FST_SESSION_INVALID_OPTION('providerOptions', 'goes with a provider name; configure the provider instance you pass instead')
  }
  return { provider, owned: false }
}

/**
 * A provider that could not start: its own coded errors (bad options, a
 * missing table) as they are, anything else (a refused connection, a file
 * that cannot be opened) as the store being unavailable, cause attached.
 */
function startFailure (name: string, err: unknown): unknown {
  if (err instanceof Error && String((err as { code?: unknown }).code).startsWith('FST_SESSION_')) return err
  const reason = err instanceof Error ? err.message : String(err)
  return new FST_SESSION_STORE_UNAVAILABLE(`the ${name} provider could not start: ${reason}`, { cause: err })
}

function checkProvider (provider: unknown): asserts provider is AnyProvider {
  if (typeof provider !== 'object' || provider === null) {
    throw new FST_SESSION_INVALID_PROVIDER('expected a registered name or an object implementing SessionProvider')
  }
  for (const method of isStateless(provider as AnyProvider) ? STATELESS_METHODS : PROVIDER_METHODS) {
    if (typeof (provider as Record<string, unknown>)[method] !== 'function') {
      throw new FST_SESSION_INVALID_PROVIDER(`it has no ${method}() method`)
    }
  }
}

async function fastifySessions (fastify: FastifyInstance, options: SessionPluginOptions): Promise<void> {
  const foreign = foreignOptions(options)
  const resolved = resolveOptions(options)
  for (const name of foreign) {
    fastify.log.warn({ option: name }, 'fastify-sessions: "%s" is not one of its options and is ignored', name)
  }
  const { provider, owned } = await resolveProvider(options)
  const manager = new SessionManager(provider, resolved)

  try {
    fastify.decorate('sessions', manager)
    // another session plugin (or this one, twice) has it already
    fastify.decorateRequest('session', null as unknown as Session)
    if (!fastify.hasPlugin('@fastify/cookie')) {
      // parseOptions go to the parser (its documented `decode` included), though typed as serialise options
      await fastify.register(fastifyCookie, { parseOptions: { decode: decodeCookieValue } as FastifyCookieOptions['parseOptions'] })
    }
  } catch (err) {
    // the provider made for this registration would outlive it: a pool, a file
    if (owned) await provider.close?.()
    throw err
  }

  function loadFailed (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction, err: Error): void {
    if (!isStoreFailure(err)) {
      done(err)
      return
    }
    manager.warn(request.log, err, 'loading the session')
    // the 503 too goes through other plugins' hooks, which may read the session
    request.session = manager.unloaded(request, err)
    if (resolved.onStoreError === 'continue') {
      done()
      return
    }
    unavailable(reply).send(STORE_UNAVAILABLE_BODY)
  }

  /** The payload to send after a failed save; throws what is not a store failure. */
  function saveFailed (request: FastifyRequest, reply: FastifyReply, payload: unknown, err: Error): unknown {
    if (!isStoreFailure(err)) {
      discard(payload)
      throw err
    }
    manager.warn(request.log, err, 'saving the session')
    if (resolved.onStoreError === 'continue') return payload
    discard(payload)
    unavailable(reply)
    return STORE_UNAVAILABLE_BODY
  }

  // read on every request rather than kept by an onRoute hook, which never
  // sees the routes declared before the plugin
  const routeConfigOf = routeConfigReader()

  fastify.addHook('onRequest', function loadSession (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    if (routeConfigOf(request).session === false) {
      done()
      return
    }
    let loaded: Session | Promise<Session>
    try {
      loaded = manager.load(request)
    } catch (err) {
      loadFailed(request, reply, done, err as Error)
      return
    }
    if (loaded instanceof Session) {
      request.session = loaded
      done()
      return
    }
    loaded.then((session) => {
      request.session = session
      done()
    }, (err: Error) => loadFailed(request, reply, done, err))
  })

  // Synchronous saves call `done`; an asynchronous one returns its promise
  // instead, so that Fastify itself continues the response when it settles:
  // whatever throws on the way out (a header with CR LF refused by Node) then
  // becomes Fastify's 500, where a `done` called from a promise reaction would
  // throw into that promise, unhandled, and take the process down.
  fastify.addHook('onSend', function saveSession (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: OnSendDone): Promise<unknown> | undefined {
    const session = request.session
    if (session === null || session.saved) {
      done(null, payload)
      return
    }
    session.saved = true
    let saving: Promise<void> | undefined
    try {
      saving = manager.save(session, request, reply)
    } catch (err) {
      let replacement: unknown
      try {
        replacement = saveFailed(request, reply, payload, err as Error)
      } catch (fault) {
        done(fault as Error)
        return
      }
      done(null, replacement)
      return
    }
    if (saving === undefined) {
      done(null, keepNoStore(reply, payload))
      return
    }
    return saving.then(() => keepNoStore(reply, payload), (err: Error) => saveFailed(request, reply, payload, err))
  })

  if ('gc' in provider && provider.gc !== undefined && resolved.gcIntervalMs > 0) {
    const timer = setInterval(function sweepSessions () {
      manager.gc().catch((err: Error) => manager.warn(fastify.log, err, 'sweeping expired sessions'))
    }, resolved.gcIntervalMs)
    timer.unref()
    fastify.addHook('onClose', function stopSweeping (_instance, done) {
      clearInterval(timer)
      done()
    })
  }

  if (owned && provider.close !== undefined) {
    fastify.addHook('onClose', async function closeProvider () {
      await provider.close?.()
    })
  }
}

/**
 * Headers describing a payload that the error body replaces. Hooks that ran
 * before the save (compression, caching) may have set them, and a client
 * would then try to gunzip plain JSON.
 */
const PAYLOAD_HEADERS = ['content-encoding', 'content-length', 'content-range', 'content-disposition', 'content-language', 'etag', 'last-modified']

/** Readies the reply for STORE_UNAVAILABLE_BODY, which no cache may keep. */
function unavailable (reply: FastifyReply): FastifyReply {
  for (const name of PAYLOAD_HEADERS) reply.removeHeader(name)
  return reply.code(503).header('content-type', 'application/json; charset=utf-8').header('cache-control', 'no-store')
}

/**
 * Closes a stream payload that will not be sent, as nobody else will: Fastify
 * only ends the streams it pipes, and an unread file stream holds its file
 * descriptor open.
 */
function discard (payload: unknown): void {
  if (payload instanceof Readable) payload.destroy()
  else if (payload instanceof ReadableStream) payload.cancel().catch(ignore)
  else if (payload instanceof Response) payload.body?.cancel().catch(ignore)
}

/**
 * Fastify copies the headers of a web `Response` payload onto the reply after
 * `onSend`, so the Response's own Cache-Control would replace the `no-store`
 * that goes out with a session cookie: such a payload is handed on as the
 * same Response with `no-store`.
 */
function keepNoStore (reply: FastifyReply, payload: unknown): unknown {
  // the usual payload, a string, goes by without a look at the Response global
  if (typeof payload !== 'object' || !(payload instanceof Response)) return payload
  if (reply.getHeader('cache-control') !== 'no-store' || !payload.headers.has('cache-control') || payload.bodyUsed) return payload
  const headers = new Headers(payload.headers)
  headers.set('cache-control', 'no-store')
  return new Response(payload.body, { status: payload.status, headers })
}

/** For the cancellation of a stream nobody reads: its failure has no one to tell. */
function ignore (): void {}

/**
 * Fastify's standard error JSON, sent as data so the failure is logged once,
 * at warn level, rather than as a 5xx error. The cause (a host and port, an
 * authentication failure) goes to that log line, not to the client.
 */
const STORE_UNAVAILABLE_BODY = JSON.stringify({
  statusCode: 503,
  code: 'FST_SESSION_STORE_UNAVAILABLE',
  error: 'Service Unavailable',
  message: 'The session store is unavailable'
})

export const sessions = fp(fastifySessions, { fastify: '^5.11.0', name: 'fastify-sessions' })

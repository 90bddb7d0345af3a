import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { requireRedis, REDIS_URL } from './fixtures/services.js'

const INSTANCE = fileURLToPath(new URL('./fixtures/instance.ts', import.meta.url))

/** Starts one app instance in its own process and answers its base URL. */
async function startInstance (t: Test, prefix: string): Promise<string> {
  const env: NodeJS.ProcessEnv = { ...process.env, INSTANCE_REDIS_URL: REDIS_URL, INSTANCE_PREFIX: prefix, TS_NODE_TRANSPILE_ONLY: '1' }
  delete env.NODE_V8_COVERAGE
  const loader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
  const child: ChildProcess = spawn(process.execPath, [...loader, INSTANCE], { stdio: ['ignore', 'pipe', 'inherit'], env })
  t.teardown(async () => {
    if (child.exitCode !== null) return
    child.kill('SIGTERM')
    await once(child, 'exit')
  })
  const [line] = await Promise.race([
    once(child.stdout as NodeJS.ReadableStream, 'data'),
    new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error('the instance did not start within 20 s')), 20_000))
  ])
  return `http://127.0.0.1:${JSON.parse(String(line)).port}`
}

async function call (base: string, path: string, cookie?: string, body?: unknown): Promise<{ status: number, json: any, cookie?: string }> {
  const res = await fetch(base + path, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { ...(cookie === undefined ? {} : { cookie: `sessionid=${cookie}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000)
  })
  const set = res.headers.getSetCookie().find((c) => c.startsWith('sessionid='))
  return { status: res.status, json: await res.json(), cookie: set?.slice('sessionid='.length, set.indexOf(';')) }
}

t.test('two app processes on one Redis share their sessions', async (t) => {
  if (!await requireRedis(t)) return
  const prefix = `test:${randomUUID()}:`
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL)
    const keys = await redis.keys(`${prefix}*`)
    if (keys.length > 0) await redis.del(...keys)
    await redis.quit()
  })
  const [a, b] = await Promise.all([startInstance(t, prefix), startInstance(t, prefix)])
  t.not(a, b, 'each listens on its own port')

  const login = await call(a, '/login', undefined, { user: 'ada' })
  const cookie = login.cookie as string
  t.ok(cookie, 'A created the session')
  t.same((await call(b, '/get/userId', cookie)).json, { value: 'ada' }, 'B reads it')

  t.equal((await call(b, '/set/cart', cookie, ['book'])).status, 200)
  t.same((await call(a, '/get/cart', cookie)).json, { value: ['book'] }, 'A sees the change made on B')

  const moved = await call(a, '/regenerate', cookie, {})
  const newCookie = moved.cookie as string
  t.ok(newCookie && newCookie !== cookie, 'A moved the session to a new id')
  t.same((await call(b, '/get/userId', cookie)).json, { value: null }, 'B rejects the old cookie')
  t.same((await call(b, '/get/userId', newCookie)).json, { value: 'ada' }, 'B reads the new one')

  const logout = await call(b, '/logout', newCookie, {})
  t.match(logout.cookie, '', 'B cleared the cookie')
  t.same((await call(a, '/get/userId', newCookie)).json, { value: null }, 'after logout on B, A treats the cookie as no session')
})

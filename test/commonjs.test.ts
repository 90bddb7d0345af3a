import t from 'tap'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const run = promisify(execFile)

t.test('a CommonJS application can require() the built package on Node 20', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/commonjs-user.cjs', import.meta.url))
  const { stdout } = await run(process.execPath, ['--no-warnings', script])
  t.same(JSON.parse(stdout), {
    status: 200,
    body: { type: 'function', registerProvider: 'function' },
    cookie: 'sessionid'
  })
})

t.test('the package exports every provider, but not the Redis provider\'s internal connection', async (t) => {
  const probe = (specifier: string): string =>
    `import(${JSON.stringify(specifier)}).then(() => console.log('ok'), (err) => console.log(err.code))`
  const answer = async (specifier: string): Promise<string> => {
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', probe(specifier)], { cwd: fileURLToPath(new URL('..', import.meta.url)) })
    return stdout.trim()
  }
  t.equal(await answer('fastify-sessions/providers/redis'), 'ok')
  t.equal(await answer('fastify-sessions/providers/redis-connection'), 'ERR_PACKAGE_PATH_NOT_EXPORTED')
})

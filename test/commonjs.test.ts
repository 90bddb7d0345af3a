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

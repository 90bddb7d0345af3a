import t from 'tap'
import { readFile } from 'node:fs/promises'
import * as errors from '../lib/errors.js'

t.test('every error code is documented in the README, and every documented code exists', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('## Error codes'), readme.indexOf('## Security notes'))
  const documented = [...section.matchAll(/^\| `(FST_SESSION_[A-Z_]+)` \| (\d{3}) \|/gm)].map(([, code, status]) => [code, Number(status)])
  const defined = Object.entries(errors).map(([name, ErrorType]) => {
    const err = new (ErrorType as new (...args: unknown[]) => Error & { code: string, statusCode: number })('a', 'b')
    t.equal(err.code, name, `${name} is exported under its own code`)
    return [err.code, err.statusCode]
  })
  t.same(documented.sort(), defined.sort())
})

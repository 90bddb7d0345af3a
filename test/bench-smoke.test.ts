// Proves the benchmark harness works end to end on a tiny run (1 round,
// 1 s, 2 implementations, 1 route) and that it fails a run whose server
// answers a wrong body. No timing assertions. The harness runs as a child
// process, as `npm run bench` runs it.
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const RUN = fileURLToPath(new URL('../bench/run.js', import.meta.url))

interface Outcome { code: number | null, output: string }

/**
 * The harness runs with tap's coverage switched off (tap's processinfo hook
 * still follows the child, but records no coverage for it or its servers):
 * the harness is a tool, not code under test, and its servers load dist/,
 * whose coverage would be mapped back onto lib/*.ts through the source maps
 * and hide lines the unit tests miss.
 */
const HARNESS_ENV = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' }

function bench (args: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [RUN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: HARNESS_ENV })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.on('close', (code) => resolve({ code, output }))
  })
}

const TINY = ['--rounds', '1', '--duration', '1', '--warmup', '0', '--impls', 'baseline,ours-memory', '--routes', 'read', '--skip-micro']

function tempDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('a tiny run measures both implementations and writes the report', async (t) => {
  const out = tempDir(t)
  const { code, output } = await bench([...TINY, '--out', out])
  t.equal(code, 0, output)
  const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'))
  t.same(results.cells.map((c: { impl: string }) => c.impl).sort(), ['baseline', 'ours-memory'])
  for (const cell of results.cells) {
    t.equal(cell.failed, false, `${cell.impl}: ${cell.failures}`)
    t.ok(cell.ok > 0, `${cell.impl} got 2xx responses`)
    t.ok(cell.cpuUsPerRequest > 0, `${cell.impl} has a CPU time per request`)
  }
  t.equal(results.summary['ours-memory'].read.status, 'ok')
  t.type(results.summary['ours-memory'].read.ratio, 'number')
  t.match(readFileSync(join(out, 'RESULTS.md'), 'utf8'), /## Throughput/)
  t.match(readFileSync(join(out, 'ratios.svg'), 'utf8'), /^<svg[^>]*>[\s\S]*<\/svg>\s*$/)
})

t.test('a run whose server answers a wrong body is FAILED, not a number', async (t) => {
  const out = tempDir(t)
  const { code, output } = await bench([...TINY, '--out', out, '--fault', 'ours-memory:read'])
  t.equal(code, 1, output)
  const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'))
  const cell = results.cells.find((c: { impl: string }) => c.impl === 'ours-memory')
  t.equal(cell.failed, true)
  t.match(cell.failures.join(' '), /wrong bodies/)
  t.equal(results.summary['ours-memory'].read.status, 'FAILED')
  t.equal(results.summary.baseline.read.status, 'ok')
  t.match(readFileSync(join(out, 'RESULTS.md'), 'utf8'), /\*\*FAILED\*\*/)
})

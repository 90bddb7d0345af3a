// CPU µs per MemoryProvider.create() once the store is full (maxSessions),
// when every create evicts the least recently used session, against the
// same creates below capacity. Run as its own process:
// node bench/lib/evict.js <maxSessions> <creates per batch> <batches>; prints one JSON line,
// with `error` when the store did not end at exactly maxSessions.
import { randomBytes } from 'node:crypto'
// The build to measure: $BENCH_MODULE (a snapshot of dist/ the orchestrator took), else dist/.
const { MemoryProvider } = await import(process.env.BENCH_MODULE ?? new URL('../../dist/index.js', import.meta.url).href)

const max = Number(process.argv[2] ?? 100_000)
const batch = Number(process.argv[3] ?? 50_000)
const batches = Number(process.argv[4] ?? 4)
const total = max + batch * batches
const keys = randomBytes(32 * total)
const key = (i) => keys.toString('base64url', i * 32, i * 32 + 32)
const now = Date.now()
const record = () => ({ data: new Map([['v', '"new"']]), createdAt: now, lastSeenAt: now, expiresAt: now + 3_600_000, user: null })
const cpu = (c) => c.user + c.system

const provider = new MemoryProvider({ maxSessions: max })
// Below capacity: the last `batch` creates of the fill.
for (let i = 0; i < max - batch; i++) provider.create(key(i), record())
let c0 = process.cpuUsage()
for (let i = max - batch; i < max; i++) provider.create(key(i), record())
const belowUs = cpu(process.cpuUsage(c0)) / batch

const fullUs = []
for (let b = 0; b < batches; b++) {
  c0 = process.cpuUsage()
  for (let i = 0; i < batch; i++) provider.create(key(max + b * batch + i), record())
  fullUs.push(cpu(process.cpuUsage(c0)) / batch)
}
const error = provider.size === max ? {} : { error: `${provider.size} sessions left, expected maxSessions (${max})` }
console.log(JSON.stringify({ ...error, maxSessions: max, batch, belowUs, fullUs, size: provider.size }))

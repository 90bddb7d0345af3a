// Times one MemoryProvider.gc() sweep over `total` sessions of which a share
// has expired. Run as its own process (node --expose-gc bench/lib/sweep.js
// <total> <share>); prints one JSON line, with `error` when the sweeps did
// not remove exactly the expired sessions.
//
// The expired sessions are created first with expiresAt in the past: the
// provider's Map is its recency list, so they sit at the LRU front, where
// most sessions that stopped being used end up when their deadline passes.
// The sweep stops at the first live session: this measures sessions expired
// in recency order, not ones that expired behind a live one.
import { randomBytes } from 'node:crypto'
// The build to measure: $BENCH_MODULE (a snapshot of dist/ the orchestrator took), else dist/.
const { MemoryProvider } = await import(process.env.BENCH_MODULE ?? new URL('../../dist/index.js', import.meta.url).href)

const total = Number(process.argv[2] ?? 1_000_000)
const share = Number(process.argv[3] ?? 0.01)
const expired = Math.round(total * share)

const provider = new MemoryProvider({ maxSessions: total })
const now = Date.now()
const keys = randomBytes(32 * total)
const fillStart = process.hrtime.bigint()
for (let i = 0; i < total; i++) {
  const key = keys.toString('base64url', i * 32, i * 32 + 32)
  const past = i < expired
  provider.create(key, {
    data: new Map([['n', '1']]),
    createdAt: now - 7_200_000,
    lastSeenAt: past ? now - 7_200_000 : now,
    expiresAt: past ? now - 3_600_000 : now + 3_600_000,
    user: null
  })
}
const fillMs = Number(process.hrtime.bigint() - fillStart) / 1e6
for (let i = 0; i < 3; i++) global.gc?.()

// Wall time, and the process's CPU time, which a busy machine does not
// inflate by descheduling the process mid-sweep.
const cpuMs = (u) => (u.user + u.system) / 1000
const c0 = process.cpuUsage()
const t0 = process.hrtime.bigint()
const removed = provider.gc()
const sweepMs = Number(process.hrtime.bigint() - t0) / 1e6
const sweepCpuMs = cpuMs(process.cpuUsage(c0))

// A second sweep finds nothing expired: its cost must not follow the total.
const c1 = process.cpuUsage()
const t1 = process.hrtime.bigint()
const removedAgain = provider.gc()
const cleanSweepMs = Number(process.hrtime.bigint() - t1) / 1e6
const cleanSweepCpuMs = cpuMs(process.cpuUsage(c1))

const mismatch = removed !== expired || removedAgain !== 0 || provider.size !== total - expired
console.log(JSON.stringify({
  ...(mismatch ? { error: `removed ${removed} then ${removedAgain}, ${provider.size} left, for ${expired} expired of ${total}` } : {}),
  total,
  share,
  expired,
  removed,
  removedAgain,
  remaining: provider.size,
  sweepMs,
  sweepCpuMs,
  usPerExpired: expired === 0 ? null : (sweepCpuMs * 1000) / expired,
  cleanSweepMs,
  cleanSweepCpuMs,
  fillMs
}))

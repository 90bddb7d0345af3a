#!/usr/bin/env node
// Redis's own CPU per provider call (from `INFO cpu`, user + system, so
// parsing and socket work count too), the calls 50 at a time over the
// provider's own connection, the way concurrent requests share it:
//
//   node bench/redis-cost.js [--redis-url redis://127.0.0.1:6379/9] [--calls 100000] [--rounds 2]
//
// Needs a build (npm run build). Keys go under bench-cost:<pid>: and are
// removed afterwards. Redis must be otherwise idle for the figures to mean
// anything.
import { parseArgs } from 'node:util'
import { createRedisProvider } from '../dist/providers/redis.js'

const { values: opts } = parseArgs({
  options: {
    'redis-url': { type: 'string', default: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/9' },
    calls: { type: 'string', default: '100000' },
    rounds: { type: 'string', default: '2' }
  }
})
const CALLS = Number(opts.calls)
const CONCURRENCY = 50
const HOUR = 3_600_000

const provider = createRedisProvider({ url: opts['redis-url'], prefix: `bench-cost:${process.pid}:` })
const redis = provider.client

async function redisCpuMicros () {
  const info = await redis.send(['INFO', 'cpu'])
  const seconds = (name) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)[1])
  return (seconds('used_cpu_user') + seconds('used_cpu_sys')) * 1e6
}

const keys = Array.from({ length: CONCURRENCY }, (_, i) => `key${String(i).padStart(40, '0')}`)
const now = Date.now()
for (const key of keys) {
  await provider.create(key, { data: new Map([['n', '1']]), createdAt: now, lastSeenAt: now, expiresAt: now + HOUR, user: null })
}

const write = (owned) => (key, i) => provider.update(key, {
  set: new Map([['n', String(i)]]), delete: null, lastSeenAt: Date.now(), expiresAt: Date.now() + HOUR, owned
})
const kinds = [
  ['get (HGETALL)', (key) => provider.get(key)],
  ['update, no hint (UPDATE script)', write(undefined)],
  ['update, hinted unowned (lean script)', write(false)]
]

console.log(`Redis CPU µs per call, ${CALLS} calls, ${CONCURRENCY} at a time`)
for (let round = 1; round <= Number(opts.rounds); round++) {
  for (const [name, call] of kinds) {
    const before = await redisCpuMicros()
    let next = 0
    await Promise.all(keys.map(async (key) => {
      while (next < CALLS) await call(key, next++)
    }))
    const spent = await redisCpuMicros() - before
    console.log(`  round ${round}  ${name.padEnd(40)} ${(spent / CALLS).toFixed(2)}`)
  }
}

for (const key of keys) await provider.destroy(key)
provider.close()

#!/usr/bin/env node
// What one Redis round trip costs the client process: a single PING sent,
// its reply awaited, again and again over one connection, with nothing else
// running in the process. Prints wall time and the process's own CPU time
// (user and system) per round trip. Run it pinned to the core the bench
// pins its servers to, to see what each round trip a request makes costs
// the server:
//
//   taskset -c 0 node bench/round-trip.js [--redis-url redis://127.0.0.1:6379] [--n 20000] [--rounds 3]
import { parseArgs } from 'node:util'
import net from 'node:net'

const { values: opts } = parseArgs({
  options: {
    'redis-url': { type: 'string', default: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379' },
    n: { type: 'string', default: '20000' },
    rounds: { type: 'string', default: '3' }
  }
})
const N = Number(opts.n)
const { hostname, port } = new URL(opts['redis-url'])
const PING = '*1\r\n$4\r\nPING\r\n'

const socket = net.connect(Number(port || 6379), hostname)
socket.setNoDelay(true)
await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))

/** N round trips; each reply (+PONG, one packet) triggers the next PING. */
function roundTrips () {
  return new Promise((resolve) => {
    let left = N
    const onData = () => {
      if (--left > 0) {
        socket.write(PING)
        return
      }
      socket.off('data', onData)
      resolve()
    }
    socket.on('data', onData)
    socket.write(PING)
  })
}

console.log(`one Redis PING round trip, ${N} in a row, per round trip:`)
for (let round = 1; round <= Number(opts.rounds); round++) {
  const cpu = process.cpuUsage()
  const start = process.hrtime.bigint()
  await roundTrips()
  const wall = Number(process.hrtime.bigint() - start) / 1000 / N
  const { user, system } = process.cpuUsage(cpu)
  console.log(`  round ${round}  wall ${wall.toFixed(1)} µs  CPU ${((user + system) / N).toFixed(1)} µs (user ${(user / N).toFixed(1)}, system ${(system / N).toFixed(1)})`)
}
socket.destroy()

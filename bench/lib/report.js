// Turns the raw cells into ratios and writes RESULTS.md and ratios.svg
// (hand-written SVG, no chart library).
import { writeFileSync } from 'node:fs'
import { ROUTES, ROUTE_NOTES, TARGETS } from './impls.js'
import { max, median, min } from './stats.js'

const HEAP_TARGET = 400

/**
 * Per implementation and route: medians over the rounds and ratios to the
 * baseline of the same round. `rounds` counts the cells the medians of
 * absolute figures are over; `ratioRounds` the rounds whose baseline did not
 * fail, which the ratios are over.
 */
export function aggregate (results) {
  const { cells, settings } = results
  const byKey = new Map()
  for (const cell of cells) {
    const key = cell.impl + '|' + cell.route
    if (!byKey.has(key)) byKey.set(key, [])
    byKey.get(key).push(cell)
  }
  const baselineOf = (route, round) => cells.find((c) => c.impl === 'baseline' && c.route === route && c.round === round)
  const summary = {}
  for (const impl of settings.impls) {
    summary[impl] = {}
    for (const route of settings.routes) {
      const list = byKey.get(impl + '|' + route)
      if (list === undefined) {
        summary[impl][route] = { status: results.unavailable[impl] !== undefined ? 'unavailable' : 'n/a' }
        continue
      }
      const failed = list.filter((c) => c.failed)
      if (failed.length > 0) {
        summary[impl][route] = { status: 'FAILED', failures: failed.map((c) => `round ${c.round}: ${c.failures.join('; ')}`) }
        continue
      }
      const ratios = []
      const p99Ratios = []
      const cpuRatios = []
      for (const c of list) {
        const b = baselineOf(route, c.round)
        if (b === undefined || b.failed) continue
        ratios.push(c.rps / b.rps)
        p99Ratios.push(c.p99 / b.p99)
        cpuRatios.push(b.cpuUsPerRequest / c.cpuUsPerRequest)
      }
      const target = TARGETS[impl]?.[route]
      const ratio = median(ratios)
      summary[impl][route] = {
        status: 'ok',
        rounds: list.length,
        ratioRounds: ratios.length,
        rps: median(list.map((c) => c.rps)),
        p99: median(list.map((c) => c.p99)),
        cpuUsPerRequest: median(list.map((c) => c.cpuUsPerRequest)),
        serverCpuShare: median(list.map((c) => c.serverCpuShare)),
        loadCpuShare: median(list.map((c) => c.loadCpuShare)),
        ratio,
        ratioMin: min(ratios),
        ratioMax: max(ratios),
        p99Ratio: median(p99Ratios),
        cpuRatio: median(cpuRatios),
        target: target ?? null,
        verdict: target === undefined || ratio === null ? null : ratio >= target ? 'PASS' : 'MISS',
        cpuVerdict: target === undefined || median(cpuRatios) === null ? null : median(cpuRatios) >= target ? 'PASS' : 'MISS'
      }
    }
  }
  return summary
}

/** The micro-measurements that failed, as sentences (a Redis that is not reachable is not a failure). */
export function microFailures (micro) {
  if (micro === null) return []
  return [
    ...micro.heap.filter((h) => h.error !== undefined).map((h) => `heap per session, ${h.impl}: ${h.error}`),
    ...micro.sweep.filter((s) => s.error !== undefined).map((s) => `sweep of ${s.total} sessions, ${s.share * 100}% expired: ${s.error}`),
    ...(micro.evict?.error === undefined ? [] : [`creating sessions when full: ${micro.evict.error}`]),
    ...(micro.redis?.error === undefined ? [] : [`Redis commands: ${micro.redis.error}`]),
    ...(micro.redis?.kinds ?? []).filter((k) => k.failure !== undefined).map((k) => `Redis commands, ${k.kind}: ${k.failure}`)
  ]
}

const f = (x, digits = 2) => (x === null || x === undefined ? '–' : x.toFixed(digits))
const fInt = (x) => (x === null || x === undefined ? '–' : Math.round(x).toLocaleString('en-US'))

function statusCell (s) {
  if (s === undefined) return '–'
  if (s.status === 'FAILED') return '**FAILED**'
  if (s.status === 'n/a') return 'n/a'
  if (s.status === 'unavailable') return 'unavailable'
  return null
}

const NO_BASELINE = '**FAILED** (bare Fastify failed in every round)'

/**
 * A median of per-round ratios, with its range and, when fewer than the
 * run's rounds had a bare Fastify figure, how many rounds it is over.
 */
function ratioText (value, s, rounds, range = null) {
  if (value === null) return NO_BASELINE
  const notes = [range, s.ratioRounds < rounds ? `${s.ratioRounds} of ${rounds} rounds` : null].filter((x) => x !== null)
  return notes.length === 0 ? f(value) : `${f(value)} (${notes.join(', ')})`
}

export function markdown (results) {
  const { machine, settings, summary, implementations, unavailable, micro } = results
  const impls = settings.impls.filter((id) => id !== 'baseline')
  const routes = settings.routes
  const label = (id) => implementations[id]?.label ?? id
  const lines = []
  const push = (...l) => lines.push(...l)
  const table = (head, rows) => {
    push('| ' + head.join(' | ') + ' |', '|' + head.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|') + '|')
    for (const row of rows) push('| ' + row.join(' | ') + ' |')
    push('')
  }

  push('# Benchmark results', '')
  push(`Generated by \`npm run bench\` (\`node bench/run.js\`) on ${machine.date}. Raw numbers: \`bench/out/results.json\`.`, '')
  if (results.cells.length > 0) {
    push(`**${settings.rounds} interleaved round${settings.rounds === 1 ? '' : 's'}** of ${settings.duration} s per cell${settings.rounds < 3 ? ': fewer than the 3 the issue asks for, so one disturbed round can move a median' : ''}. Throughput, latency and CPU figures are medians over them; a ratio whose round count is given is over fewer, the rounds whose bare Fastify cell failed being left out.`, '')
  }
  push('![req/s ratio to bare Fastify](ratios.svg)', '')

  push('## Machine and settings', '')
  table(['', ''], [
    ['Code', `fastify-sessions ${machine.git ?? 'unknown'} (a snapshot of dist/ taken at the start of the run)`],
    ['CPUs (`nproc`)', machine.nproc],
    ['CPU model', machine.cpuModel],
    ['Memory', `${machine.memGiB} GiB`],
    ['Node.js', machine.node],
    ['Platform', machine.platform],
    ['Date', machine.date],
    ['Pinning', machine.taskset ? 'server on core 0 (`taskset -c 0`), autocannon on core 1 (`taskset -c 1`); Redis/PostgreSQL unpinned' : '**taskset not available: nothing pinned**'],
    ['Load average (1/5/15 min) at start', machine.loadavgStart.map((x) => x.toFixed(2)).join(' / ')],
    ['Load average at end', machine.loadavgEnd.map((x) => x.toFixed(2)).join(' / ')],
    ['Rounds × duration', `${settings.rounds} interleaved rounds × ${settings.duration} s measured per cell (+ ${settings.warmup} s warm-up, not measured)`],
    ['Connections', `${settings.connections} (autocannon, pipelining 1)`],
    ['Live sessions for `many`', fInt(settings.many)],
    ['Wall time', `${Math.round(machine.wallSeconds)} s`]
  ])
  const baseLoad = settings.routes.map((r) => summary.baseline?.[r]?.loadCpuShare).filter((x) => typeof x === 'number')
  if (baseLoad.length > 0 && Math.max(...baseLoad) > 0.85) {
    push(`> The load generator used up to ${Math.round(Math.max(...baseLoad) * 100)}% of its core on bare Fastify cells: there, autocannon is close to being the limit, so bare Fastify's req/s may be understated and ratios slightly flattering. Per-cell CPU shares of server and load generator are in results.json.`, '')
  }
  const starved = results.cells.filter((c) => c.impl === 'baseline' && !c.failed && c.serverCpuShare < 0.8)
  if (starved.length > 0) {
    push(`> In ${starved.length} of ${results.cells.filter((c) => c.impl === 'baseline').length} bare Fastify cells the server got less than 80% of its core (${starved.map((c) => `round ${c.round} \`${c.route}\` ${Math.round(c.serverCpuShare * 100)}%`).join(', ')}): other processes were running on it. Ratios of those rounds are distorted (in the implementations' favour when the baseline was starved); medians over rounds damp this, the CPU-per-request figures much more so.`, '')
  }
  // At the end the bench's own two processes count in the load average; at the start they do not run yet.
  const busySigns = []
  if (machine.loadavgStart[0] > Number(machine.nproc) * 0.5) busySigns.push(`a 1-minute load average of ${machine.loadavgStart[0].toFixed(2)} at the start, which also counts any work that ended just before`)
  if (starved.length > 0) busySigns.push('the starved cells above')
  if (busySigns.length > 0) {
    push(`> **The machine may have been busy with other work during this run** (${busySigns.join('; ')}). Other processes share both cores, so req/s and p99 are noisy; the server CPU µs per request and the "CPU ratio" (bare Fastify µs ÷ implementation µs) are the steadier figures. Ranges show the spread of per-round ratios.`, '')
  }

  push('## Throughput: req/s as a ratio to bare Fastify', '')
  push('Median over rounds of (implementation req/s ÷ bare Fastify req/s in the same round); in brackets the lowest and highest round. Higher is better. Bare Fastify row: absolute req/s.', '')
  const head = ['Implementation', ...routes.map((r) => '`' + r + '`')]
  const baseRow = ['bare Fastify + @fastify/cookie (req/s)', ...routes.map((r) => statusCell(summary.baseline?.[r]) ?? fInt(summary.baseline[r].rps))]
  table(head, [baseRow, ...impls.map((id) => [label(id), ...routes.map((r) => {
    const s = summary[id][r]
    return statusCell(s) ?? ratioText(s.ratio, s, settings.rounds, `${f(s.ratioMin)}–${f(s.ratioMax)}`)
  })])])

  push('## p99 latency as a ratio to bare Fastify', '')
  push('Median over rounds of (implementation p99 ÷ bare Fastify p99 in the same round). Lower is better. Bare Fastify row: absolute p99 in ms.', '')
  table(head, [
    ['bare Fastify + @fastify/cookie (p99 ms)', ...routes.map((r) => statusCell(summary.baseline?.[r]) ?? f(summary.baseline[r].p99))],
    ...impls.map((id) => [label(id), ...routes.map((r) => statusCell(summary[id][r]) ?? ratioText(summary[id][r].p99Ratio, summary[id][r], settings.rounds))])
  ])

  push('## Server CPU per request', '')
  push("The server process's own CPU time (`process.cpuUsage()`, user + system) over the measured phase only, divided by the responses; µs per request. The store's CPU (Redis, PostgreSQL) is not included.", '')
  table(head, [...['baseline', ...impls].map((id) => [label(id), ...routes.map((r) => statusCell(summary[id]?.[r]) ?? f(summary[id][r].cpuUsPerRequest, 1))])])

  push('## Targets', '')
  push('Targets from the issue, as ratios of req/s to bare Fastify. "CPU ratio" is the median over rounds of (bare Fastify µs/request ÷ ours in the same round), the req/s ratio a saturated, uncontended core would give: a median of per-round ratios, so it need not equal the ratio of the two medians of absolute µs in the CPU table above. It is shown for reference; the verdict is on the measured req/s ratio.', '')
  const targetRows = []
  for (const id of Object.keys(TARGETS)) {
    if (summary[id] === undefined) continue
    for (const r of ROUTES) {
      if (!routes.includes(r)) continue
      const s = summary[id][r]
      const t = TARGETS[id][r]
      const cell = statusCell(s)
      const row = [label(id), '`' + r + '`', '≥ ' + f(t)]
      if (cell !== null) targetRows.push([...row, cell, cell === '**FAILED**' ? '**MISS** (failed)' : cell, cell])
      else if (s.ratio === null) targetRows.push([...row, NO_BASELINE, '**FAILED**', 'FAILED'])
      else targetRows.push([...row, ratioText(s.ratio, s, settings.rounds), `**${s.verdict}**`, `${f(s.cpuRatio)} (${s.cpuVerdict})`])
    }
  }
  if (micro !== null) {
    const ours = micro.heap.find((h) => h.impl === 'ours-memory')
    if (ours !== undefined) {
      targetRows.push(['fastify-sessions (memory)', 'heap per session', `≤ ${HEAP_TARGET} B`, ours.error === undefined ? `${fInt(ours.bytesPerSession)} B` : 'FAILED', ours.error === undefined ? `**${ours.bytesPerSession <= HEAP_TARGET ? 'PASS' : 'MISS'}**` : '**FAILED**', ''])
    }
    const kinds = micro.redis?.kinds
    if (kinds !== undefined) {
      const read = kinds.find((k) => k.kind === 'read')
      const write = kinds.find((k) => k.kind === 'write')
      targetRows.push(['fastify-sessions (redis)', 'commands per read', '= 1', ...(read.failure === undefined ? [f(read.commandsPerRequest), `**${read.commandsPerRequest === 1 ? 'PASS' : 'MISS'}**`] : ['FAILED', '**FAILED**']), ''])
      targetRows.push(['fastify-sessions (redis)', 'round trips per write', '= 1 (after the read)', ...(write.failure === undefined ? [f(write.roundTripsPerRequest - 1), `**${write.roundTripsPerRequest === 2 ? 'PASS' : 'MISS'}**`] : ['FAILED', '**FAILED**']), ''])
    } else if (micro.redis?.error !== undefined) {
      targetRows.push(['fastify-sessions (redis)', 'commands per read', '= 1', 'FAILED', '**FAILED**', ''])
    } else if (micro.redis?.unavailable !== undefined) {
      targetRows.push(['fastify-sessions (redis)', 'commands per read', '= 1', 'not measured', micro.redis.unavailable, ''])
    }
  }
  table(['Implementation', 'Measure', 'Target', 'Measured', 'PASS/MISS', 'CPU ratio'], targetRows)

  if (micro !== null) {
    push('## Heap per stored session (in-memory stores)', '')
    push('Sessions holding `{ n: 1 }` created over HTTP (`GET /n1`, no cookie); `heapUsed` after full GCs (`--expose-gc`), after minus before, divided by the count. Includes the key, the store\'s bookkeeping and whatever the library keeps per session.', '')
    table(['Store', 'Sessions', 'Bytes per session'], micro.heap.map((h) => [label(h.impl), fInt(h.count), h.error === undefined ? fInt(h.bytesPerSession) : '**FAILED**: ' + h.error]))

    push('## Sweep of the memory provider', '')
    push('One `MemoryProvider.gc()` over sessions whose expired share sits at the front of the recency order (created first, with `expiresAt` in the past): sessions mostly expire in recency order, so that is where most expired ones end up. The sweep walks from the front and stops at the first live session, so this measures sessions expired in that order. A session that expired behind a live one (by the absolute lifetime while still in use, or by idleness behind a session used again while in the newer half of the list, which does not move it) is not reached by the sweep: it is dropped when next looked up, evicted when the store is full, or swept once it reaches the front. Each line is a fresh process. CPU time is the process\'s own (`process.cpuUsage()`), which a busy machine does not inflate the way it inflates wall time. The second sweep finds nothing expired: its time must not follow the total.', '')
    table(['Sessions', 'Expired', 'Sweep CPU', 'Sweep wall', 'CPU µs per expired', 'Removed', 'Then a clean sweep (CPU / wall)'], micro.sweep.map((s) => s.error !== undefined
      ? [fInt(s.total), `${s.share * 100}%`, '**FAILED**: ' + s.error, '', '', '', '']
      : [fInt(s.total), `${fInt(s.expired)} (${s.share * 100}%)`, `${f(s.sweepCpuMs, 1)} ms`, `${f(s.sweepMs, 1)} ms`, s.usPerExpired === null ? '–' : f(s.usPerExpired, 3), fInt(s.removed), `${f(s.cleanSweepCpuMs, 3)} / ${f(s.cleanSweepMs, 3)} ms`]))

    if (micro.evict !== null && micro.evict !== undefined) {
      push('## Memory provider: creating sessions when full', '')
      push('CPU µs per `MemoryProvider.create()` below `maxSessions`, and once the store is full, when each create first evicts the least recently used session; each figure is one batch of creates, in order.', '')
      if (micro.evict.error !== undefined) push(`**FAILED**: ${micro.evict.error}`, '')
      else table(['maxSessions', 'Below capacity', 'At capacity, batch by batch'], [[fInt(micro.evict.maxSessions), `${f(micro.evict.belowUs)} µs`, micro.evict.fullUs.map((x) => f(x) + ' µs').join(' · ') + ` (batches of ${fInt(micro.evict.batch)})`]])
    }

    push('## Redis: store commands per request (fastify-sessions, redis provider)', '')
    if (micro.redis?.unavailable !== undefined) {
      push(`Not measured: ${micro.redis.unavailable}`, '')
    } else if (micro.redis?.error !== undefined) {
      push(`**FAILED**: ${micro.redis.error}`, '')
    } else {
      push(`${micro.redis.kinds[0].requests} sequential requests per kind. "Sent" = commands the provider sent, parsed from the wire by a counting proxy (only this server's traffic); "round trips" = client sends that follow a reply. "INFO commandstats" = server-side delta, which also counts commands run inside Lua scripts and any traffic of other clients of that Redis.`, '')
      const byName = (o) => Object.entries(o).map(([k, v]) => `${k} ${+v.toFixed(3)}`).join(', ') || '–'
      table(['Request', 'Sent', 'Round trips', 'Commands sent', 'INFO commandstats', 'commandstats by command', 'Bad responses'], micro.redis.kinds.map((k) => k.failure === undefined
        ? [k.kind, f(k.commandsPerRequest, 3), f(k.roundTripsPerRequest, 3), byName(k.commandsByName), f(k.commandstatsPerRequest, 3), byName(k.commandstatsByName), String(k.bad)]
        : [k.kind, '**FAILED**: ' + k.failure, '', '', '', '', String(k.bad)]))
    }
  }

  const failures = []
  for (const id of settings.impls) {
    for (const r of routes) {
      const s = summary[id]?.[r]
      if (s?.status === 'FAILED') failures.push(`- **${label(id)} · ${r}**: ${s.failures.join(' / ')}`)
    }
  }
  const failedMicro = microFailures(micro).map((m) => `- **${m}**`)
  const missing = Object.entries(unavailable).map(([id, why]) => `- ${label(id)}: ${why}`)
  if (failures.length > 0 || failedMicro.length > 0 || missing.length > 0) {
    push('## Failed and unavailable', '')
    if (failures.length > 0) push('A cell fails when any response (warm-up included) is not 2xx, errors, times out, has a wrong body; when more requests went unanswered than one per connection (the most that can be in flight when the load stops), or a connection got no response at all; when the write counters did not advance by the number of 2xx responses (plus at most the requests in flight at the end); or when a `new` response repeated an earlier session cookie, or one of the newest sessions it made does not read back as `new`.', '', ...failures, '')
    if (failedMicro.length > 0) push('Measurements that failed (a bad response, or a check of their result), and give no figure:', '', ...failedMicro, '')
    if (missing.length > 0) push('Not run:', '', ...missing, '')
  }

  push('## Method', '')
  push('- Routes (same semantics everywhere):', ...routes.map((r) => `  - \`${r}\`: ${ROUTE_NOTES[r]}`))
  push('- `none-optout` applies where a route can opt out of the session; elsewhere it reads n/a.')
  push('- Each connection of `read`, `write`, `none` has its own seeded session, so `write` has no lost updates: every `write` body must be the previous one + 1 on its connection, and the counters read before and after must have advanced by the number of 2xx responses (plus at most the requests still in flight when the load stopped). `read` must return the value seeded in that session; `many` the value of the session it picked; `new` must answer `new` with a `sessionid` Set-Cookie that no earlier response of the cell carried, and the 20 newest sessions it made must then read back `new` through `/read`. Every connection must get responses, and no request may go unanswered but the one per connection in flight when the load stops; a request unanswered for half the measured phase (at least 1 s) times out. The stateless @fastify/secure-session cannot count across requests that resend the same cookie: its `write` must answer 1 every time.')
  push('- Bare Fastify: @fastify/cookie parses the cookie, a plain `Map` keyed by the raw cookie value holds the data (no signing, no store abstraction).')
  push('- The peers run as their READMEs set them up. @fastify/session: library defaults (`rolling: true`, `saveUninitialized: true`) with `cookie.secure: false` for plain http. `rolling: true` saves the session to the store again and sends a Set-Cookie on every request that brings a valid cookie: that is why it writes to its store on `read`, `none` and `many` too. fastify-sessions (defaults) writes on such a request only once `touchAfter` (maxLifetime / 10, 6 minutes by default) has passed since the session was last stored.')
  push('- @mgcrea/fastify-session: README quickstart (HMAC, `cookie.maxAge` 86400 s). Its `Session.touch()` runs whenever a request brings an existing session and always calls the store\'s `touch`, whatever the cookie options: every request with a cookie writes to the store (with Redis: HGETALL to load it, then HSET + EXPIRE).')
  push('- `many`: each connection cycles through its own random permutation of its share of the 10,000 sessions (prebuilt requests; building one per request made autocannon the bottleneck), so every session is hit, uniformly, in random order.')
  push('- Every round restarts all servers and re-seeds them. Each run stores under its own names (Redis key prefix `bench:<run>:`, table `bench_sessions_<run>`, its own SQLite file) and removes them afterwards, also when SIGINT or SIGTERM interrupts the run, so runs never touch each other\'s data or anybody else\'s. Servers load a snapshot of dist/ taken at the start, as dist/ may be rebuilt during a run.')
  push('- req/s counts 2xx responses from the first response to the last (client setup excluded); p99 is computed from every response\'s latency (autocannon\'s histogram only has whole milliseconds).')
  push('')
  return lines.join('\n')
}

const COLORS = {
  'ours-memory': '#1f6feb',
  'ours-redis': '#d1242f',
  'ours-postgres': '#2da44e',
  'ours-sqlite': '#8250df',
  'fsession-memory': '#9ecbff',
  'fsession-redis': '#ffaba8',
  'mgcrea-memory': '#b6e3ff',
  'mgcrea-redis': '#ffcecb',
  'secure-session': '#bbbbbb'
}

/** "median of 3 rounds", or the real range when rounds whose baseline failed were left out. */
function roundsTitle (summary, impls, routes, rounds) {
  const counts = impls.flatMap((id) => routes.map((r) => summary[id]?.[r])).filter((s) => s?.status === 'ok' && s.ratioRounds > 0).map((s) => s.ratioRounds)
  if (counts.length === 0) return `no ratio: bare Fastify failed in every one of ${rounds} rounds`
  const lo = Math.min(...counts)
  const hi = Math.max(...counts)
  if (lo === rounds) return `median of ${rounds} round${rounds === 1 ? '' : 's'}`
  return `median of ${lo === hi ? lo : `${lo}–${hi}`} of ${rounds} rounds (rounds whose bare Fastify cell failed left out)`
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** A horizontal grouped bar chart: one group per route, one bar per implementation, the 1.0 line is bare Fastify. */
export function svg (results) {
  const { settings, summary, implementations } = results
  const impls = settings.impls.filter((id) => id !== 'baseline')
  const routes = settings.routes
  const left = 250
  const plotW = 560
  const maxRatio = 1.2
  const bar = 11
  const gap = 2
  const groupGap = 16
  const top = 54
  const x = (r) => left + (Math.min(r, maxRatio) / maxRatio) * plotW
  const parts = []
  let y = top
  for (const route of routes) {
    const rows = impls.filter((id) => summary[id]?.[route]?.status !== 'n/a')
    parts.push(`<text x="10" y="${y + 10}" class="route">${esc(route)}</text>`)
    y += 16
    for (const id of rows) {
      const s = summary[id][route]
      parts.push(`<text x="${left - 6}" y="${y + bar - 2}" class="label" text-anchor="end">${esc(implementations[id]?.label ?? id)}</text>`)
      if (s.status === 'ok' && s.ratio !== null) {
        const w = Math.max(1, x(s.ratio) - left)
        parts.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${bar}" fill="${COLORS[id] ?? '#888'}"><title>${esc(id)} ${esc(route)}: ${s.ratio.toFixed(3)} (${s.ratioMin.toFixed(2)}–${s.ratioMax.toFixed(2)})</title></rect>`)
        if (s.ratioMin !== null && s.ratioMax !== null && s.ratioMax > s.ratioMin) {
          parts.push(`<line x1="${x(s.ratioMin).toFixed(1)}" x2="${x(s.ratioMax).toFixed(1)}" y1="${y + bar / 2}" y2="${y + bar / 2}" class="range"/>`)
        }
        parts.push(`<text x="${(Math.max(x(s.ratio), s.ratioMax === null ? 0 : x(s.ratioMax)) + 4).toFixed(1)}" y="${y + bar - 2}" class="value">${s.ratio.toFixed(2)}${s.ratio > maxRatio ? ' →' : ''}</text>`)
        if (s.target !== null) {
          const tx = x(s.target).toFixed(1)
          parts.push(`<line x1="${tx}" x2="${tx}" y1="${y - 1}" y2="${y + bar + 1}" class="target"><title>target ${s.target}</title></line>`)
        }
      } else {
        parts.push(`<text x="${left + 4}" y="${y + bar - 2}" class="value">${esc(s.status === 'ok' ? 'FAILED: bare Fastify failed in every round' : s.status)}</text>`)
      }
      y += bar + gap
    }
    y += groupGap
  }
  const height = y + 30
  const width = left + plotW + 70
  const ticks = []
  for (let t = 0; t <= maxRatio + 1e-9; t += 0.2) {
    const tx = x(t).toFixed(1)
    ticks.push(`<line x1="${tx}" x2="${tx}" y1="${top - 6}" y2="${y - groupGap}" class="${Math.abs(t - 1) < 1e-9 ? 'one' : 'grid'}"/>`)
    ticks.push(`<text x="${tx}" y="${top - 10}" class="tick" text-anchor="middle">${t.toFixed(1)}</text>`)
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif">
<style>
  .title { font-size: 14px; font-weight: 600; fill: #24292f; }
  .sub { font-size: 11px; fill: #57606a; }
  .route { font-size: 12px; font-weight: 600; fill: #24292f; }
  .label, .value, .tick { font-size: 10px; fill: #24292f; }
  .grid { stroke: #d0d7de; stroke-width: 1; }
  .one { stroke: #24292f; stroke-width: 1.5; }
  .range { stroke: #24292f; stroke-width: 1; opacity: 0.6; }
  .target { stroke: #24292f; stroke-width: 2; stroke-dasharray: 2 1; }
</style>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="18" class="title">req/s as a ratio to bare Fastify + @fastify/cookie (1.0), ${esc(roundsTitle(summary, impls, routes, settings.rounds))}</text>
<text x="10" y="33" class="sub">thin line: lowest–highest round; dashed tick: target from the issue; ${settings.duration} s per cell, ${settings.connections} connections</text>
${ticks.join('\n')}
${parts.join('\n')}
</svg>
`
}

export function writeReport (results, { markdown: mdPath, svg: svgPath }) {
  writeFileSync(mdPath, markdown(results))
  writeFileSync(svgPath, svg(results))
}

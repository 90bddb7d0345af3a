// Child processes with an IPC channel, pinned to one core with taskset when
// it exists.
import { spawn, spawnSync } from 'node:child_process'

let tasksetChecked = null
// Every child started here that has not exited, so that an interrupted run
// can end them; once ending, no child starts any more.
const running = new Set()
let ending = false

/** Whether `taskset` can pin processes here. */
export function hasTaskset () {
  if (tasksetChecked === null) {
    const probe = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' })
    tasksetChecked = probe.status === 0
  }
  return tasksetChecked
}

/**
 * Starts `node <nodeArgs> <script> <args>` with IPC, pinned to `core` when
 * taskset exists and `core` is given, under `wrapper` (a command that execs
 * node in the same process, such as valgrind) when one is given. Answers a
 * handle whose `ready` settles with the child's first { type: 'ready' }
 * message, or rejects when the child reports { type: 'failed' }, exits
 * first, or stays silent past `timeoutMs`.
 */
export function startChild (script, args = [], { core, nodeArgs = [], env, timeoutMs = 60_000, pin = true, wrapper = [] } = {}) {
  const command = [...wrapper, process.execPath, ...nodeArgs, script, ...args]
  const useTaskset = pin && core !== undefined && hasTaskset()
  const child = track(useTaskset
    ? spawn('taskset', ['-c', String(core), ...command], { stdio: ['ignore', 'inherit', 'pipe', 'ipc'], env: env ?? process.env })
    : spawn(command[0], command.slice(1), { stdio: ['ignore', 'inherit', 'pipe', 'ipc'], env: env ?? process.env }))
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    stderr += chunk
    if (stderr.length > 20_000) stderr = stderr.slice(-20_000)
  })

  const pending = new Map()
  let nextId = 0
  let exited = null
  const exitWaiters = []

  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready message within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`)), timeoutMs)
    child.on('message', (msg) => {
      if (msg.type === 'ready') {
        clearTimeout(timer)
        resolve(msg)
      } else if (msg.type === 'failed') {
        clearTimeout(timer)
        reject(new Error(msg.error))
      } else if (msg.id !== undefined && pending.has(msg.id)) {
        const { resolve: done } = pending.get(msg.id)
        pending.delete(msg.id)
        done(msg)
      }
    })
    child.on('exit', (code, signal) => {
      exited = { code, signal }
      clearTimeout(timer)
      reject(new Error(`exited (${signal ?? code}) before it was ready; stderr: ${stderr.slice(-2000)}`))
      for (const { reject: fail } of pending.values()) fail(new Error(`child exited (${signal ?? code}); stderr: ${stderr.slice(-2000)}`))
      pending.clear()
      for (const waiter of exitWaiters) waiter()
    })
  })
  ready.catch(() => {})

  /** Sends `msg` with a fresh id and answers the child's reply carrying that id. */
  function request (msg, replyTimeoutMs = 600_000) {
    if (exited !== null) return Promise.reject(new Error(`child already exited (${exited.signal ?? exited.code}); stderr: ${stderr.slice(-2000)}`))
    const id = ++nextId
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id)
        reject(new Error(`no reply to ${msg.type} within ${replyTimeoutMs} ms`))
      }, replyTimeoutMs)
      pending.set(id, {
        resolve: (value) => { clearTimeout(timer); resolve(value) },
        reject: (err) => { clearTimeout(timer); reject(err) }
      })
      child.send({ ...msg, id })
    })
  }

  /** Asks the child to stop, then kills it if it lingers. */
  async function stop (graceMs = 5000) {
    if (exited !== null) return
    const gone = new Promise((resolve) => exitWaiters.push(resolve))
    try {
      child.send({ type: 'stop' })
    } catch {}
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    await gone
    clearTimeout(timer)
  }

  return { child, ready, request, stop, pinned: useTaskset, get exited () { return exited }, get stderr () { return stderr } }
}

/** Registers a just-spawned child for endChildren(); kills it at once when the run is already ending. */
export function track (child) {
  running.add(child)
  child.once('exit', () => running.delete(child))
  if (ending) child.kill('SIGKILL')
  return child
}

/** Ends every tracked child (SIGTERM, SIGKILL after `graceMs`) and waits until they have exited. */
export async function endChildren (graceMs = 2000) {
  ending = true
  await Promise.all([...running].map((child) => new Promise((resolve) => {
    child.once('exit', resolve)
    child.kill('SIGTERM')
    setTimeout(() => child.kill('SIGKILL'), graceMs).unref()
  })))
}

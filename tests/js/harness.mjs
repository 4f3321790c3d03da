// Starts a real paddock-runtime (in hack/scratch-runtime's private
// namespaces) for a test file, and stops it afterwards.
import { after, before } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import os from 'node:os'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/paddock/target')
const bin = process.env.PADDOCK_RUNTIME_BIN ??
  path.join(targetDir, 'x86_64-unknown-linux-musl/release/paddock-runtime')
const kernelPython = process.env.PADDOCK_KERNEL_PYTHON ??
  path.join(process.env.PADDOCK_KERNEL_VENV ?? '/var/cache/paddock/kernel-venv', 'bin/python')

// Calls `pred` until it returns something truthy and returns that; rejects after `timeoutMs`
// naming `what` and the last result or error. Errors from `pred` mean "not yet" (a server
// still coming up refuses connections); a GiveUp error ends the wait at once.
export class GiveUp extends Error {}
export async function waitUntil (pred, timeoutMs, what, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const v = await pred()
      if (v) return v
      last = v
    } catch (e) {
      if (e instanceof GiveUp) throw e
      last = e
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last attempt: ${last}`)
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

// A TCP port of 127.0.0.1 that nobody listens on now (the kernel picks it).
export async function freePort () {
  const srv = net.createServer()
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

// Starts `args` detached (its own process group), waits until `readyUrl` answers 2xx (giving
// up early if the process exits) and returns { stop, exited }; stop() SIGTERMs the group and
// waits for the exit. On a timeout the group is killed and the error carries `logFile`'s tail.
async function startAndWait ({ what, cmd, args, readyUrl, timeoutMs, logFile, env }) {
  const out = logFile ? openSync(logFile, 'w') : 'ignore'
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], detached: true, env: env ?? process.env })
  let exitCode = null
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    exitCode = code ?? signal
    resolve(exitCode)
  }))
  try {
    await waitUntil(async () => {
      if (exitCode !== null) throw new GiveUp(`${what} exited with ${exitCode}`)
      return (await fetch(readyUrl)).ok
    }, timeoutMs, `${readyUrl} (${what})`, 100)
  } catch (e) {
    if (exitCode === null) {
      process.kill(-child.pid, 'SIGKILL')
      await exited
    }
    const tail = logFile ? `\nlast lines of ${logFile}:\n${readFileSync(logFile, 'utf8').split('\n').slice(-60).join('\n')}` : ''
    throw new Error(`${what} did not start: ${e.message}${tail}`)
  }
  return {
    exited,
    stop: async () => {
      if (exitCode === null) process.kill(-child.pid, 'SIGTERM')
      return await exited
    }
  }
}

// Envd on 49983 and the code interpreter on 49999: where the SDKs look in debug mode.
export async function startRuntime ({ readyUrl = 'http://127.0.0.1:49983/health' } = {}) {
  assert.ok(existsSync(bin), `${bin} missing: build it first (hack/test does)`)
  const { stop } = await startAndWait({
    what: 'the runtime',
    cmd: path.join(root, 'hack/scratch-runtime'),
    args: [bin, '--listen', '127.0.0.1:49983', '--code-interpreter-listen', '127.0.0.1:49999',
      '--kernel-python', kernelPython],
    readyUrl,
    timeoutMs: 30_000
  })
  return stop
}

// In Kubernetes mode (PADDOCK_E2E_MODE=kubernetes) the stack is stood up outside this process
// (`python3 tests/paddock_testing.py kube-up`, as tests/kube-e2e/run.sh does) and named by the
// SDK's own variables.
export const kubernetes = process.env.PADDOCK_E2E_MODE === 'kubernetes'

// `paddock up` on a free port of 127.0.0.1 with its own data dir. Returns { url, sandboxUrl,
// adminKey, stop }; stop() shuts it down (SIGTERM), checks it exited cleanly and removes the
// data dir. In Kubernetes mode: the manager (url) and gateway (sandboxUrl) of the environment,
// with its admin key; stop() leaves them to whoever started them.
export async function startPaddock ({ adminKey }) {
  if (kubernetes) {
    const { E2B_API_URL: url, E2B_SANDBOX_URL: sandboxUrl, E2B_API_KEY: key } = process.env
    assert.ok(url && sandboxUrl && key, 'Kubernetes mode needs E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY')
    paddockUrl = url
    return { url, sandboxUrl, adminKey: key, stop: async () => {} }
  }
  const paddock = process.env.PADDOCK_BIN ?? path.join(targetDir, 'debug/paddock')
  assert.ok(existsSync(paddock), `${paddock} missing: build it first (hack/test does)`)
  const data = mkdtempSync('/var/tmp/paddock-js-')
  const url = `http://127.0.0.1:${await freePort()}`
  const { stop } = await startAndWait({
    what: 'paddock up',
    cmd: paddock,
    args: ['up', '--listen', url.slice('http://'.length), '--data-dir', data, '--admin-api-key', adminKey,
      '--runtime', bin, '--pool-size', '1'],
    readyUrl: `${url}/health`,
    // A cold machine builds both templates first.
    timeoutMs: 900_000,
    // hack/test prints the end of this log when the suite fails.
    logFile: '/tmp/paddock-js.log',
    env: {
      PADDOCK_TEMPLATE_CACHE: '/var/tmp/paddock-test-templates',
      RUST_LOG: 'info,paddock_gateway=debug,libcontainer=error,libcgroups=error',
      ...process.env
    }
  })
  paddockUrl = url
  return {
    url,
    sandboxUrl: url,
    adminKey,
    stop: async () => {
      const code = await stop()
      rmSync(data, { recursive: true, force: true })
      assert.equal(code, 0, 'paddock up must shut down cleanly; see /tmp/paddock-js.log')
    }
  }
}

// For a test file that runs in embedded mode only: starts `paddock up` before its tests and stops
// it after them. Returns the SDK options ({ apiKey, apiUrl, sandboxUrl }), filled in once the
// `before` hook has run. In Kubernetes mode nothing starts (such files skip their tests there).
export function embeddedPaddockForFile ({ adminKey }) {
  const opts = { apiKey: adminKey }
  let paddock
  before(async () => {
    if (kubernetes) return
    paddock = await startPaddock({ adminKey })
    Object.assign(opts, { apiKey: paddock.adminKey, apiUrl: paddock.url, sandboxUrl: paddock.sandboxUrl })
  })
  after(async () => { await paddock?.stop() })
  return opts
}

let paddockUrl

// The sandbox's own runtime log (requests, processes), for a failure message.
export async function sandboxLogs (sandboxId, apiKey) {
  try {
    const r = await fetch(`${paddockUrl}/v2/sandboxes/${sandboxId}/logs?limit=200`, {
      headers: { 'X-API-Key': apiKey }
    })
    const { logs } = await r.json()
    return logs.map((l) => `${l.timestamp} ${l.level} ${l.message} ${JSON.stringify(l.fields ?? {})}`).join('\n')
  } catch (e) {
    return `(logs unavailable: ${e})`
  }
}

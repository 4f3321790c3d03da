// Starts a real paddock-runtime (in hack/scratch-runtime's private
// namespaces) for a test file, and stops it afterwards.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, openSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import os from 'node:os'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/paddock/target')
const bin = process.env.PADDOCK_RUNTIME_BIN ??
  path.join(targetDir, 'x86_64-unknown-linux-musl/release/paddock-runtime')
const kernelPython = process.env.PADDOCK_KERNEL_PYTHON ??
  path.join(process.env.PADDOCK_KERNEL_VENV ?? '/var/cache/paddock/kernel-venv', 'bin/python')

// Envd on 49983 and the code interpreter on 49999: where the SDKs look in debug mode.
export async function startRuntime ({ readyUrl = 'http://127.0.0.1:49983/health' } = {}) {
  assert.ok(existsSync(bin), `${bin} missing: build it first (hack/test does)`)
  const child = spawn(path.join(root, 'hack/scratch-runtime'), [bin, '--listen', '127.0.0.1:49983',
    '--code-interpreter-listen', '127.0.0.1:49999', '--kernel-python', kernelPython],
  { stdio: 'ignore', detached: true })
  for (let i = 0; i < 600; i++) {
    try {
      if ((await fetch(readyUrl)).ok) return () => process.kill(-child.pid, 'SIGTERM')
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  process.kill(-child.pid, 'SIGKILL')
  throw new Error('runtime did not start')
}

// `paddock up` on 127.0.0.1:3200 with its own data dir; returns a stop function.
export async function startPaddock ({ adminKey }) {
  const paddock = process.env.PADDOCK_BIN ?? path.join(targetDir, 'debug/paddock')
  assert.ok(existsSync(paddock), `${paddock} missing: build it first (hack/test does)`)
  const data = mkdtempSync('/var/tmp/paddock-js-')
  // hack/test prints the end of this log when the suite fails.
  const log = openSync('/tmp/paddock-js.log', 'w')
  const child = spawn(paddock, ['up', '--listen', '127.0.0.1:3200', '--data-dir', data,
    '--admin-api-key', adminKey, '--runtime', bin, '--pool-size', '1'],
  {
    stdio: ['ignore', log, log],
    detached: true,
    env: {
      PADDOCK_TEMPLATE_CACHE: '/var/tmp/paddock-test-templates',
      RUST_LOG: 'info,paddock_gateway=debug,libcontainer=error,libcgroups=error',
      ...process.env
    }
  })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  for (let i = 0; i < 9000; i++) {
    try {
      if ((await fetch('http://127.0.0.1:3200/health')).ok) {
        return async () => {
          process.kill(-child.pid, 'SIGTERM')
          await exited
          rmSync(data, { recursive: true, force: true })
        }
      }
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  process.kill(-child.pid, 'SIGKILL')
  throw new Error('paddock up did not start')
}

// The sandbox's own runtime log (requests, processes), for a failure message.
export async function sandboxLogs (sandboxId, apiKey) {
  try {
    const r = await fetch(`http://127.0.0.1:3200/v2/sandboxes/${sandboxId}/logs?limit=200`, {
      headers: { 'X-API-Key': apiKey }
    })
    const { logs } = await r.json()
    return logs.map((l) => `${l.timestamp} ${l.level} ${l.message} ${JSON.stringify(l.fields ?? {})}`).join('\n')
  } catch (e) {
    return `(logs unavailable: ${e})`
  }
}

// Starts a real paddock-runtime (in hack/scratch-runtime's private
// namespaces) for a test file, and stops it afterwards.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
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

// The unmodified @e2b/code-interpreter JS SDK against a real paddock-runtime
// and Jupyter kernel, in debug mode (localhost:49983 and localhost:49999).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import os from 'node:os'
import { Sandbox } from '@e2b/code-interpreter'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const targetDir = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/paddock/target')
const bin = process.env.PADDOCK_RUNTIME_BIN ??
  path.join(targetDir, 'x86_64-unknown-linux-musl/release/paddock-runtime')
const kernelPython = process.env.PADDOCK_KERNEL_PYTHON ??
  path.join(process.env.PADDOCK_KERNEL_VENV ?? '/var/cache/paddock/kernel-venv', 'bin/python')
let runtime

before(async () => {
  assert.ok(existsSync(bin), `${bin} missing: build it first (hack/test does)`)
  runtime = spawn(path.join(root, 'hack/scratch-runtime'), [bin, '--listen', '127.0.0.1:49983',
    '--code-interpreter-listen', '127.0.0.1:49999', '--kernel-python', kernelPython],
  { stdio: 'ignore', detached: true })
  for (let i = 0; i < 600; i++) {
    try {
      const r = await fetch('http://127.0.0.1:49999/health')
      if (r.ok) return
    } catch {}
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error('runtime did not start')
})

after(() => { if (runtime) process.kill(-runtime.pid, 'SIGTERM') })

test('runCode returns results, logs and errors', async () => {
  const sbx = await Sandbox.create({ debug: true })
  const one = await sbx.runCode('1+1')
  assert.equal(one.text, '2')
  const out = await sbx.runCode('print("hello from js")\nx = 41')
  assert.deepEqual(out.logs.stdout, ['hello from js\n'])
  assert.equal((await sbx.runCode('x + 1')).text, '42')
  const err = await sbx.runCode('undefined_name')
  assert.equal(err.error.name, 'NameError')
})

test('contexts are separate', async () => {
  const sbx = await Sandbox.create({ debug: true })
  const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
  assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp')
  await sbx.runCode('only_here = 1', { context: ctx })
  const other = await sbx.runCode('only_here')
  assert.equal(other.error.name, 'NameError')
})

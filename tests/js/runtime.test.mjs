// The unmodified E2B JS SDK against a real paddock-runtime, in debug mode
// (the SDK then talks to localhost:49983 directly).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { Sandbox, CommandExitError } from 'e2b'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const bin = process.env.PADDOCK_RUNTIME_BIN ??
  path.join(root, 'target/x86_64-unknown-linux-musl/release/paddock-runtime')
let runtime

before(async () => {
  assert.ok(existsSync(bin), `${bin} missing: build it first (hack/test does)`)
  runtime = spawn(path.join(root, 'hack/scratch-runtime'), [bin, '--listen', '127.0.0.1:49983'],
    { stdio: 'ignore', detached: true })
  for (let i = 0; i < 300; i++) {
    try {
      const r = await fetch('http://127.0.0.1:49983/health')
      if (r.status === 204) return
    } catch {}
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error('runtime did not start')
})

after(() => { if (runtime) process.kill(-runtime.pid, 'SIGTERM') })

test('commands.run returns stdout, stderr and exit code', async () => {
  const sbx = await Sandbox.create({ debug: true })
  const r = await sbx.commands.run('echo hello; echo oops >&2; whoami')
  assert.equal(r.stdout, 'hello\nuser\n')
  assert.equal(r.stderr, 'oops\n')
  assert.equal(r.exitCode, 0)
  await assert.rejects(sbx.commands.run('exit 4'), (e) => e instanceof CommandExitError && e.exitCode === 4)
})

test('files write and read round trip', async () => {
  const sbx = await Sandbox.create({ debug: true })
  const info = await sbx.files.write('/home/user/js/hello.txt', 'from js')
  assert.equal(info.path, '/home/user/js/hello.txt')
  assert.equal(await sbx.files.read('/home/user/js/hello.txt'), 'from js')
  const bytes = new Uint8Array([0, 1, 2, 250, 255])
  await sbx.files.write('/tmp/js.bin', bytes.buffer)
  const back = await sbx.files.read('/tmp/js.bin', { format: 'bytes' })
  assert.deepEqual(Array.from(back), Array.from(bytes))
  const entries = await sbx.files.list('/home/user/js')
  assert.deepEqual(entries.map((e) => e.name), ['hello.txt'])
})

// The unmodified E2B JS SDK against a real paddock-runtime, in debug mode
// (the SDK then talks to localhost:49983 directly).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError } from 'e2b'
import { startRuntime } from './harness.mjs'

let stop
before(async () => { stop = await startRuntime() })
after(() => stop?.())

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

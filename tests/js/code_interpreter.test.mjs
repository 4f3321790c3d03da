// The unmodified @e2b/code-interpreter JS SDK against a real paddock-runtime
// and Jupyter kernel, in debug mode (localhost:49983 and localhost:49999).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from '@e2b/code-interpreter'
import { startRuntime } from './harness.mjs'

let stop
before(async () => { stop = await startRuntime({ readyUrl: 'http://127.0.0.1:49999/health' }) })
after(() => stop?.())

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

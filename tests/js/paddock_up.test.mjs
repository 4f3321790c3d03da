// The unmodified E2B JS SDK against `paddock up` (control and data plane on
// one address, as E2B_API_URL and E2B_SANDBOX_URL).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'
import { startPaddock } from './harness.mjs'

const apiKey = 'e2b_' + 'js'.repeat(20)
const opts = { apiKey, apiUrl: 'http://127.0.0.1:3200', sandboxUrl: 'http://127.0.0.1:3200' }
let stop
before(async () => { stop = await startPaddock({ adminKey: apiKey }) })
after(async () => { await stop?.() })

test('create, run, files, list, kill', async () => {
  const sbx = await Sandbox.create({ ...opts, metadata: { from: 'js' } })
  try {
    const r = await sbx.commands.run('echo from-js; whoami')
    assert.equal(r.stdout, 'from-js\nuser\n')
    await sbx.files.write('/home/user/js.txt', 'hello js')
    assert.equal(await sbx.files.read('/home/user/js.txt'), 'hello js')
    const listed = await Sandbox.list({ ...opts, query: { metadata: { from: 'js' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
  } finally {
    assert.equal(await sbx.kill(), true)
  }
})

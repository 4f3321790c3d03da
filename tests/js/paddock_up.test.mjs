// The unmodified E2B JS SDK against `paddock up` (control and data plane on
// one address, as E2B_API_URL and E2B_SANDBOX_URL) or, with PADDOCK_E2E_MODE=kubernetes,
// against `paddock manager` (E2B_API_URL) and `paddock gateway` (E2B_SANDBOX_URL) on the
// test bed.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'
import { kubernetes, sandboxLogs, startPaddock, waitUntil } from './harness.mjs'

let apiKey = 'e2b_' + 'js'.repeat(20)
const opts = { apiKey }
let paddock
before(async () => {
  paddock = await startPaddock({ adminKey: apiKey })
  apiKey = paddock.adminKey
  Object.assign(opts, { apiKey, apiUrl: paddock.url, sandboxUrl: paddock.sandboxUrl })
})
after(async () => { await paddock?.stop() })

test('create, run, files, list, kill', async () => {
  const sbx = await Sandbox.create({ ...opts, metadata: { from: 'js' } })
  try {
    const r = await sbx.commands.run('echo from-js; whoami')
    assert.equal(r.stdout, 'from-js\nuser\n')
    await sbx.files.write('/home/user/js.txt', 'hello js')
    assert.equal(await sbx.files.read('/home/user/js.txt'), 'hello js')
    const listed = await Sandbox.list({ ...opts, query: { metadata: { from: 'js' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
  } catch (e) {
    console.error(`sandbox ${sbx.sandboxId} runtime log:\n${await sandboxLogs(sbx.sandboxId, apiKey)}`)
    throw e
  } finally {
    assert.equal(await sbx.kill(), true)
  }
})

test('pause keeps files, connect resumes, timeouts, info, metrics, auth', async () => {
  const sbx = await Sandbox.create({ ...opts, timeoutMs: 60_000 })
  try {
    await sbx.files.write('/home/user/keep.txt', 'kept')
    assert.equal(await sbx.pause(), true)
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused')
    assert.equal(await sbx.isRunning(), false)
    const resumed = await Sandbox.connect(sbx.sandboxId, opts)
    if (kubernetes) {
      // Paused on Kubernetes, the Pod is deleted: files survive only on a volume (the base
      // SandboxSet has none). The recreated Pod runs commands again.
      assert.equal((await resumed.commands.run('echo resumed')).stdout, 'resumed\n')
    } else {
      assert.equal(await resumed.files.read('/home/user/keep.txt'), 'kept')
    }
    await resumed.setTimeout(120_000)
    const info = await resumed.getInfo()
    assert.equal(info.state, 'running')
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 100_000 && left <= 121_000, `timeout left: ${left} ms`)
    const metrics = await resumed.getMetrics()
    assert.ok(metrics.length >= 1 && metrics[0].memTotal > 0, JSON.stringify(metrics))
    await assert.rejects(Sandbox.create({ ...opts, apiKey: 'e2b_' + '00'.repeat(20) }), /nauthori|401|invalid/i)
    await assert.rejects(Sandbox.connect('nosuchsandbox0000000', opts), /not found|404/i)
  } finally {
    await Sandbox.kill(sbx.sandboxId, opts)
  }
})

test('a server in the sandbox is reachable through the gateway', async () => {
  const sbx = await Sandbox.create(opts)
  try {
    await sbx.files.write('/home/user/site/index.html', 'js-served')
    await sbx.commands.run('cd /home/user/site && python3 -m http.server 8000', { background: true })
    const host = sbx.getHost(8000)
    assert.ok(host.startsWith(`8000-${sbx.sandboxId}`), host)
    const body = await waitUntil(async () => {
      const r = await fetch(`${paddock.sandboxUrl}/index.html`, {
        headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000' }
      })
      return r.ok && await r.text()
    }, 30_000, 'the server in the sandbox to answer through the gateway', 100)
    assert.equal(body, 'js-served')
  } finally {
    await sbx.kill()
  }
})

// Issue 15's smaller contracts, as the JS SDK sends them.
test('list order and filters, metrics by range, set_timeout shortens, file URLs', async () => {
  const made = []
  const tag = { suite: 'js-contracts' }
  try {
    for (let i = 0; i < 2; i++) made.push(await Sandbox.create({ ...opts, metadata: tag }))
    const [a, b] = made.map((s) => s.sandboxId)
    const listed = async (query, order) => (await Sandbox.list({ ...opts, query: { metadata: tag, ...query }, order }).nextItems())
    assert.deepEqual((await listed({}, 'asc')).map((s) => s.sandboxId), [a, b])
    assert.deepEqual((await listed({}, 'desc')).map((s) => s.sandboxId), [b, a])
    const startedB = (await listed({})).find((s) => s.sandboxId === b).startedAt
    assert.deepEqual((await listed({ startedAfter: startedB })).map((s) => s.sandboxId), [b])
    assert.deepEqual((await listed({ template: 'base' }, 'asc')).map((s) => s.sandboxId), [a, b])
    assert.deepEqual(await listed({ template: 'nosuch' }), [])

    // Samples every 5 s (after the first, taken when the sandbox is first asked about); a
    // range before the sandbox existed holds none.
    const sbx = made[0]
    const samples = await waitUntil(async () => {
      const m = await sbx.getMetrics()
      return m.length >= 3 && m
    }, 60_000, 'three metric samples')
    const gap = samples[samples.length - 1].timestamp - samples[samples.length - 2].timestamp
    assert.ok(gap >= 4000 && gap <= 6000, `gap between samples: ${gap} ms`)
    const created = samples[0].timestamp.getTime()
    assert.deepEqual(await sbx.getMetrics({ start: new Date(created - 3_600_000), end: new Date(created - 60_000) }), [])

    // Signed file URLs at the one sandbox address.
    await sbx.files.write('/home/user/js-url.txt', 'via url')
    const res = await fetch(await sbx.downloadUrl('/home/user/js-url.txt', { useSignatureExpiration: 60 }))
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'via url')
    const form = new FormData()
    form.append('file', new Blob(['up from js']), 'up.txt')
    const up = await fetch(await made[1].uploadUrl('/home/user/up.txt'), { method: 'POST', body: form })
    assert.equal(up.status, 200, await up.text())
    assert.equal(await made[1].files.read('/home/user/up.txt'), 'up from js')

    // set_timeout may shorten the deadline.
    await made[1].setTimeout(3_000)
    const left = (await made[1].getInfo()).endAt.getTime() - Date.now()
    assert.ok(left <= 4_000, `left: ${left} ms`)
    await waitUntil(async () => !(await made[1].isRunning()), 120_000, 'the sandbox to end at its shortened timeout')
  } finally {
    for (const s of made) await Sandbox.kill(s.sandboxId, opts)
  }
})

// Snapshots and fork with the unmodified E2B JS SDK against `paddock up`: a snapshot is a
// filesystem others start from, a fork a running copy; each is independent of its source.
// Embedded mode only (tests/e2e/test_snapshots.py has the Python side, teams and restarts).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { Sandbox } from 'e2b'
import { embeddedPaddockForFile, kubernetes } from './harness.mjs'

const opts = embeddedPaddockForFile({ adminKey: 'e2b_' + 'sn'.repeat(20) })

const read = async (sbx, path) => (await sbx.commands.run(`cat ${path} 2>/dev/null || echo missing`)).stdout.trim()

test('a snapshot starts independent sandboxes; list and delete it', { skip: kubernetes && 'embedded mode only' },
  async () => {
    const name = 'js-snap-' + randomBytes(4).toString('hex')
    const src = await Sandbox.create({ ...opts, timeoutMs: 120_000 })
    const made = []
    try {
      await src.files.write('/home/user/state.txt', 'before')
      const snap = await src.createSnapshot({ name })
      assert.ok(snap.snapshotId, JSON.stringify(snap))
      await src.files.write('/home/user/state.txt', 'after')
      for (const from of [snap.snapshotId, name]) {
        made.push(await Sandbox.create(from, { ...opts, timeoutMs: 120_000 }))
      }
      // Each sees the snapshot's file, not the source's later write, and not each other's.
      for (const s of made) assert.equal(await s.files.read('/home/user/state.txt'), 'before')
      await made[0].files.write('/home/user/state.txt', 'mine')
      assert.equal(await made[1].files.read('/home/user/state.txt'), 'before')
      assert.equal(await src.files.read('/home/user/state.txt'), 'after')
      const listed = await src.listSnapshots().nextItems()
      assert.ok(listed.some((s) => s.snapshotId === snap.snapshotId), JSON.stringify(listed))
      const byName = await Sandbox.listSnapshots({ ...opts, name }).nextItems()
      assert.deepEqual(byName.map((s) => s.snapshotId), [snap.snapshotId])
      // In use: deleting it is refused while sandboxes sit on it.
      await assert.rejects(Sandbox.deleteSnapshot(snap.snapshotId, opts))
      for (const s of made.splice(0)) await Sandbox.kill(s.sandboxId, opts)
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), true)
      assert.deepEqual(await Sandbox.listSnapshots({ ...opts, name }).nextItems(), [])
      await assert.rejects(Sandbox.create(snap.snapshotId, opts))
    } finally {
      for (const s of made) await Sandbox.kill(s.sandboxId, opts)
      await Sandbox.kill(src.sandboxId, opts)
    }
  })

test('fork copies a running sandbox; the original keeps running', { skip: kubernetes && 'embedded mode only' },
  async () => {
    const src = await Sandbox.create({ ...opts, timeoutMs: 120_000 })
    let forks = []
    try {
      await src.files.write('/home/user/state.txt', 'inherited')
      forks = await src.fork({ count: 2 })
      assert.equal(forks.length, 2)
      for (const f of forks) {
        assert.ok(!(f instanceof Error), String(f))
        assert.notEqual(f.sandboxId, src.sandboxId)
        assert.equal(await f.files.read('/home/user/state.txt'), 'inherited')
      }
      await forks[0].files.write('/home/user/state.txt', 'fork 0')
      assert.equal(await read(forks[1], '/home/user/state.txt'), 'inherited')
      assert.equal(await read(src, '/home/user/state.txt'), 'inherited')
      assert.equal(await src.isRunning(), true)
    } finally {
      for (const f of forks) if (!(f instanceof Error)) await Sandbox.kill(f.sandboxId, opts)
      await Sandbox.kill(src.sandboxId, opts)
    }
  })

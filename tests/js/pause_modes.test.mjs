// Filesystem-only pause with the unmodified E2B JS SDK against `paddock up`: the processes end,
// the files stay, and resume boots the sandbox again (a new boot id); the freezer pause keeps
// the boot. Embedded mode only (tests/e2e/test_pause_modes.py has the Python side and the
// wake-on-traffic cases).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'
import { embeddedPaddockForFile, kubernetes } from './harness.mjs'

const opts = embeddedPaddockForFile({ adminKey: 'e2b_' + 'pm'.repeat(20) })

const bootId = async (sbx) => (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout.trim()

test('keepMemory: false reboots on resume and keeps the files; the freezer pause does not reboot',
  { skip: kubernetes && 'embedded mode only' }, async () => {
    const sbx = await Sandbox.create({ ...opts, timeoutMs: 120_000 })
    try {
      const first = await bootId(sbx)
      await sbx.files.write('/home/user/keep.txt', 'kept')
      assert.equal(await sbx.pause({ keepMemory: false }), true)
      assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused')
      const rebooted = await Sandbox.connect(sbx.sandboxId, opts)
      const second = await bootId(rebooted)
      assert.notEqual(second, first)
      assert.equal(await rebooted.files.read('/home/user/keep.txt'), 'kept')
      assert.equal(await rebooted.pause(), true)
      const thawed = await Sandbox.connect(sbx.sandboxId, opts)
      assert.equal(await bootId(thawed), second)
    } finally {
      await Sandbox.kill(sbx.sandboxId, opts)
    }
  })

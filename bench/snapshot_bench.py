"""Snapshot, restore and fork times of `paddock up` (embedded; filesystem snapshots) through
the unmodified E2B SDK, with a plain cold create from the template beside them as the
reference (the pool is off, so every create is cold).

- snapshot: `sandbox.create_snapshot()` of a sandbox holding `--mb` MiB of files written
  after its start (the sandbox is frozen for the copy of its writable layer);
- restore: `Sandbox.create(<snapshot id>)` -> `commands.run("true")` done;
- fork: `sandbox.fork(count=1)` -> the fork's `commands.run("true")` done;
- reference: `Sandbox.create("base")` -> `commands.run("true")` done.

    sudo .venv/bin/python bench/snapshot_bench.py [--runs 20] [--mb 20] [--debug]

`--debug` uses the debug binaries the tests use ($PADDOCK_BIN / $PADDOCK_RUNTIME_BIN, see
tests/paddock_testing.py) instead of release builds.
"""

import argparse
import os
import time

from e2b import Sandbox

from paddock_harness import ADMIN_KEY, Paddock, row
from paddock_testing import PaddockUp, debug_binaries


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def start(debug: bool):
    if not debug:
        return Paddock(pool_size=0)
    paddock, runtime = debug_binaries()
    srv = PaddockUp(paddock, runtime, ADMIN_KEY, pool_size=0, prefix="paddock-bench-")
    srv.start()
    os.environ.update(srv.sdk_env())
    return srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args()
    srv = start(a.debug)
    snap_ms, restore_ms, fork_ms, plain_ms = [], [], [], []
    try:
        src = Sandbox.create(timeout=3600)
        src.commands.run(f"head -c {a.mb << 20} /dev/urandom > /home/user/blob && "
                         "mkdir -p /home/user/tree && for i in $(seq 200); do echo $i > /home/user/tree/$i; done")
        for _ in range(a.runs):
            t0 = time.perf_counter()
            sbx = Sandbox.create("base", timeout=120)
            sbx.commands.run("true")
            plain_ms.append(ms(t0))
            sbx.kill()

            t0 = time.perf_counter()
            snap = src.create_snapshot()
            snap_ms.append(ms(t0))

            t0 = time.perf_counter()
            sbx = Sandbox.create(snap.snapshot_id, timeout=120)
            sbx.commands.run("true")
            restore_ms.append(ms(t0))
            sbx.kill()
            Sandbox.delete_snapshot(snap.snapshot_id)

            t0 = time.perf_counter()
            (fork,) = src.fork(count=1, timeout=120)
            fork.commands.run("true")
            fork_ms.append(ms(t0))
            fork.kill()
        src.kill()
    finally:
        srv.stop()
        if a.debug:
            srv.remove_data()
    print(f"filesystem snapshots of a sandbox with {a.mb} MiB written; pool off (all creates cold)")
    print(row("reference: create from template + run", plain_ms))
    print(row("snapshot (create_snapshot)", snap_ms))
    print(row("restore: create from snapshot + run", restore_ms, plain_ms))
    print(row("fork(count=1) + run in the fork", fork_ms, plain_ms))


if __name__ == "__main__":
    main()

"""Creation rate of `paddock up` by how many sandboxes already exist.

Creates `--batches` batches of `--batch` `base` sandboxes with bare `POST /sandboxes` from 8
(`--clients`) concurrent clients (the density bench's http client: the SDK's own CPU would bound the rate),
keeping all of them, and prints per batch: creates/s, create latency p50/p90/p99, and the
host's CPU per create (all CPUs busy time over the batch, from /proc/stat, divided by the
creates: it includes the kernel's and the sandboxes' own boot work). Then kills them all.
`PERF=1` records `perf record -a -g` of the first and last batch under /tmp.

A/B: run it once per build, with PADDOCK_BENCH_BIN / PADDOCK_BENCH_RUNTIME_BIN naming each.

    sudo flock /var/lock/paddock-suites.lock .venv/bin/python bench/create_rate_bench.py
"""

import argparse
import concurrent.futures
import os
import signal
import subprocess
import time

import density_bench as d
from paddock_harness import Paddock, pct


def cpu_times() -> list[int]:
    return [int(x) for x in open("/proc/stat").readline().split()[1:]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--tag", default="paddock")
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    p = Paddock(pool_size=a.pool_size)
    made_all = []
    try:
        time.sleep(3)  # the pool fills
        for b in range(a.batches):
            perf = None
            if os.environ.get("PERF") and b in (0, a.batches - 1):
                perf = subprocess.Popen(
                    ["perf", "record", "-a", "-g", "-F", "999", "-o", f"/tmp/{a.tag}-b{b}.perf.data"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            s0 = cpu_times()
            made, errs, wall, ms, _ = d.create_all(a.batch, a.clients, "http")
            s1 = cpu_times()
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait()
            total = sum(s1) - sum(s0)
            idle = (s1[3] + s1[4]) - (s0[3] + s0[4])
            per = (total - idle) / os.sysconf("SC_CLK_TCK") / max(1, len(made)) * 1000
            made_all += made
            print(f"{a.tag} batch {b} ({b * a.batch} existing): {len(made)} ok, {len(errs)} failed, "
                  f"{len(made) / wall:.1f} creates/s, create p50 {pct(ms, 50):.0f} p90 {pct(ms, 90):.0f} "
                  f"p99 {pct(ms, 99):.0f} ms, CPUs busy {100 * (total - idle) / total:.0f}%, "
                  f"host CPU per create {per:.1f} ms", flush=True)
            for e in errs[:3]:
                print("  ", e)
    finally:
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda s: s.kill(), made_all))
        p.stop()


if __name__ == "__main__":
    main()

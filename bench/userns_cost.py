#!/usr/bin/env python3
"""What a user namespace adds to the namespaces every sandbox gets.

Runs `unshare` with a sandbox's namespace set (pid, net, ipc, uts, mount, cgroup) and the same
set plus a user namespace mapping root (`--map-root-user`), interleaved so both see the same
machine load, and prints median and p90 of each and their ratio. Needs root.

    bench/userns_cost.py [N]
"""
import statistics
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
BASE = ["unshare", "--pid", "--fork", "--net", "--ipc", "--uts", "--mount", "--cgroup"]
VARIANTS = {
    "without userns": BASE + ["true"],
    "with userns": BASE + ["--user", "--map-root-user", "true"],
}


def once(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return (time.perf_counter() - t) * 1000


def main():
    samples = {name: [] for name in VARIANTS}
    for _ in range(N):
        for name, cmd in VARIANTS.items():
            samples[name].append(once(cmd))
    med = {}
    for name, xs in samples.items():
        xs.sort()
        med[name] = statistics.median(xs)
        p90 = xs[int(len(xs) * 0.9) - 1]
        print(f"{name:16} n={len(xs)} p50={med[name]:.2f} ms p90={p90:.2f} ms")
    print(f"ratio p50 with/without: {med['with userns'] / med['without userns']:.2f}")


if __name__ == "__main__":
    main()

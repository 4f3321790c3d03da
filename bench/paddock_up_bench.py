"""Time to interactive of `paddock up` with the unmodified E2B SDK:
`Sandbox.create()` -> `commands.run("true")` done, warm pool and cold, plus
a burst of concurrent creates. References measured in the same run:
`unshare -fmpnu true` (the namespace floor) and `commands.run("true")` on an
existing sandbox (the part of TTI that is not creation).

    sudo .venv/bin/python bench/paddock_up_bench.py [--runs 100] [--burst 100] [--only burst]

The burst section starts a `paddock up` per pool setup and sends two bursts: the first
finds the pool at its minimum, the second comes after the pool refilled to the size the
first one set. The reference is the pool as it was (fixed size, one refill at a time, cold
creates when empty: `--pool-max 4 --pool-fill-concurrency 1 --pool-on-empty cold`).
"""

import argparse
import concurrent.futures
import subprocess
import time

from e2b import Sandbox

from paddock_harness import Paddock, row


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def unshare_true():
    t0 = time.perf_counter()
    subprocess.run(["unshare", "-fmpnu", "true"], check=True)
    return ms(t0)


def tti():
    t0 = time.perf_counter()
    sbx = Sandbox.create()
    sbx.commands.run("true")
    took = ms(t0)
    return took, sbx


def run_burst(p, n, label, ref=None):
    """`n` concurrent create -> run('true'); prints the row and how many were served warm
    (ready in the pool when asked for). Returns the latencies."""
    claims = 'paddock_manager_claims_total{source="%s"}'
    before = {k: p.metric(claims % k) for k in ("warm", "cold", "failed")}
    errors, lat, sandboxes = [], [], []

    def one(_):
        try:
            took, sbx = tti()
            return took, sbx, None
        except Exception as e:  # noqa: BLE001 - the failure is what we count
            return None, None, e

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        for took, sbx, err in ex.map(one, range(n)):
            if err:
                errors.append(err)
            else:
                lat.append(took)
                sandboxes.append(sbx)
    wall = ms(t0)
    after = {k: p.metric(claims % k) for k in before}
    warm = int(after["warm"] - before["warm"])
    print(f"{label}: success {len(lat)}/{n}, served warm {warm}/{n}, wall {wall:.0f} ms, "
          f"{1000 * len(lat) / wall:.1f} sandboxes/s")
    for e in errors[:3]:
        print("  error:", repr(e)[:200])
    if lat:
        print(row(f"{label} TTI", lat, ref))
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda s: s.kill(), sandboxes))
    return lat


# The pool before this change: a fixed size, one refill at a time, cold creates when empty.
FIXED_POOL = ["--pool-max", "4", "--pool-fill-concurrency", "1", "--pool-on-empty", "cold"]


def bursts(a):
    """Two bursts back to back (the second after the pool refilled) for each pool setup, the
    fixed pool of before as the reference, the setups interleaved round by round."""
    setups = [("fixed pool of 4 (before)", FIXED_POOL), ("pool of 4, sizing itself", [])]
    if a.burst_cold:
        setups.append(("pool of 4, sizing itself, cold on empty", ["--pool-on-empty", "cold"]))
    results = {}
    for rnd in range(a.burst_rounds):
        for name, extra in setups:
            print(f"== burst round {rnd + 1}: {a.burst} concurrent create -> run('true'), {name} ==")
            p = Paddock(pool_size=4, extra=extra)
            try:
                p.wait_pool(at_least=4)
                first = run_burst(p, a.burst, "first burst")
                # The pool refills to the target the first burst set.
                target = p.metric('paddock_manager_pool_target{template="base"}')
                p.wait_pool(at_least=int(target), timeout=300)
                print(f"pool refilled: {int(target)} ready")
                second = run_burst(p, a.burst, "second burst")
                r = results.setdefault(name, ([], []))
                r[0].extend(first)
                r[1].extend(second)
            finally:
                p.stop()
    print(f"== bursts of {a.burst}, {a.burst_rounds} round(s) ==")
    ref = results[setups[0][0]]
    for name, (first, second) in results.items():
        if first:
            print(row(f"{name}: first", first, ref[0] or None))
        if second:
            print(row(f"{name}: second", second, ref[1] or None))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--burst-rounds", type=int, default=1)
    ap.add_argument("--burst-cold", action="store_true", help="also measure cold creates on an empty pool")
    ap.add_argument("--only", choices=["warm", "burst", "cold"], help="run one section only")
    a = ap.parse_args()

    if a.only in (None, "burst"):
        bursts(a)
    if a.only == "burst":
        return

    if a.only in (None, "warm"):
        warm_section(a)
    if a.only in (None, "cold"):
        cold_section(a)


def warm_section(a):
    print(f"== warm pool: {a.runs} sequential create -> run('true'), pool refilled before each ==")
    p = Paddock(pool_size=4)
    try:
        keeper = Sandbox.create()
        warm, exec_ref, floor = [], [], []
        for _ in range(a.runs):
            p.wait_pool()
            took, sbx = tti()
            warm.append(took)
            sbx.kill()
            t0 = time.perf_counter()
            keeper.commands.run("true")
            exec_ref.append(ms(t0))
            floor.append(unshare_true())
        keeper.kill()
        print(row("reference: unshare -fmpnu true", floor))
        print(row("reference: commands.run('true') only", exec_ref))
        print(row("TTI warm (create + run)", warm, exec_ref))
    finally:
        p.stop()


def cold_section(a):
    print(f"== cold: {a.runs} sequential create -> run('true'), no pool ==")
    p = Paddock(pool_size=0)
    try:
        cold, floor = [], []
        for _ in range(a.runs):
            took, sbx = tti()
            cold.append(took)
            sbx.kill()
            floor.append(unshare_true())
        print(row("reference: unshare -fmpnu true", floor))
        print(row("TTI cold (create + run)", cold, floor))
    finally:
        p.stop()


if __name__ == "__main__":
    main()

"""Time to interactive of `paddock up` with the unmodified E2B SDK:
`Sandbox.create()` -> `commands.run("true")` done, warm pool and cold, plus
a burst of concurrent creates. References measured in the same run:
`unshare -fmpnu true` (the namespace floor) and `commands.run("true")` on an
existing sandbox (the part of TTI that is not creation).

    sudo .venv/bin/python bench/paddock_up_bench.py [--runs 100] [--burst 100]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    a = ap.parse_args()

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

        print(f"== burst: {a.burst} concurrent create -> run('true') (pool of 4) ==")
        p.wait_pool(at_least=4)
        errors, lat, sandboxes = [], [], []

        def one(_):
            try:
                took, sbx = tti()
                return took, sbx, None
            except Exception as e:  # noqa: BLE001 - the failure is what we count
                return None, None, e

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(a.burst) as ex:
            for took, sbx, err in ex.map(one, range(a.burst)):
                if err:
                    errors.append(err)
                else:
                    lat.append(took)
                    sandboxes.append(sbx)
        wall = ms(t0)
        print(f"success {len(lat)}/{a.burst} ({100 * len(lat) / a.burst:.0f}%), wall {wall:.0f} ms, "
              f"{1000 * len(lat) / wall:.1f} sandboxes/s")
        for e in errors[:3]:
            print("  error:", repr(e)[:200])
        if lat:
            print(row("burst TTI", lat, warm))
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda s: s.kill(), sandboxes))
    finally:
        p.stop()

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

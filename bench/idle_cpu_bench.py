"""What idle sandboxes cost `paddock up` itself: N sandboxes made by bare `POST /sandboxes`,
then `paddock up`'s CPU time (its own, from /proc) and thread count over a quiet period.
Several builds side by side, rounds alternating; each `paddock up` gets its own bridge and
subnet, so this can run beside a test run.

    bench/idle_cpu_bench.py [--n 200] [--rounds 2] [--idle 30] NAME=PADDOCK:RUNTIME ...
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from paddock_testing import PaddockUp  # noqa: E402

ADMIN_KEY = "e2b_" + "ab" * 20


def one_round(paddock: str, runtime: str, n: int, idle: float, net: int) -> tuple[float, int]:
    up = PaddockUp(pathlib.Path(paddock), pathlib.Path(runtime), ADMIN_KEY, pool_size=2,
                   extra=["--bridge", f"pdkidle{net}", "--subnet", f"10.{225 + net}.0.0/16"],
                   prefix="paddock-idle-")
    up.start()
    try:
        host, port = up.listen.split(":")
        headers = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
        body = json.dumps({"templateID": "base", "timeout": 3600})

        def make(_):
            c = http.client.HTTPConnection(host, int(port), timeout=120)
            c.request("POST", "/sandboxes", body, headers)
            r = c.getresponse()
            r.read()
            return r.status

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            made = list(ex.map(make, range(n))).count(201)
        if made != n:
            raise SystemExit(f"only {made} of {n} sandboxes were created")
        pid = up.proc.pid
        time.sleep(15)  # the creates' own work (pool refills, blocking threads) ends first

        def cpu() -> int:
            f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])

        c0, t0 = cpu(), time.monotonic()
        time.sleep(idle)
        c1, t1 = cpu(), time.monotonic()
        threads = len(os.listdir(f"/proc/{pid}/task"))
        return (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100, threads
    finally:
        up.stop()
        up.remove_data()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds measured")
    ap.add_argument("setups", nargs="+", help="NAME=PADDOCK:RUNTIME")
    a = ap.parse_args()
    setups = [(s.split("=", 1)[0], *s.split("=", 1)[1].split(":", 1)) for s in a.setups]
    got = {name: [] for name, _, _ in setups}
    for r in range(a.rounds):
        for i, (name, paddock, runtime) in enumerate(setups):
            pct, threads = one_round(paddock, runtime, a.n, a.idle, i)
            got[name].append((pct, threads))
            print(f"round {r + 1}: {name:12} {pct:6.2f} % of a core, {threads} threads", flush=True)
    print(f"== paddock up with {a.n} idle sandboxes, {a.idle:.0f} s, {a.rounds} round(s) ==")
    first = None
    for name, xs in got.items():
        mean = sum(p for p, _ in xs) / len(xs)
        first = first or mean
        print(f"{name:12} CPU {', '.join(f'{p:.2f}' for p, _ in xs)} % of a core; threads "
              f"{', '.join(str(t) for _, t in xs)}; {mean / first:.2f}x")


if __name__ == "__main__":
    main()

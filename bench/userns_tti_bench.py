"""Cost of user namespaces on time to interactive (issue 14): two `paddock up`
side by side, one with `--userns on` (the default) and one with `--userns off`,
each on its own bridge, subnet and data dir; every round creates one sandbox
on each, in alternating order, `Sandbox.create()` -> `commands.run("true")`.

Cold: no pool (every create mounts the idmapped layers and starts a container
in a new user namespace). Warm: pool of 2, refilled before each create (the
claim path; the pool member was made cold in the background).

    sudo PADDOCK_BIN=.../release/paddock PADDOCK_RUNTIME_BIN=.../paddock-runtime \\
        .venv/bin/python bench/userns_tti_bench.py [--runs 40]
"""

import argparse
import os
import pathlib
import sys
import time

from e2b import Sandbox

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from paddock_testing import PaddockUp  # noqa: E402
from paddock_harness import ADMIN_KEY, row  # noqa: E402

SETUPS = {
    "userns on": ["--userns", "on", "--bridge", "pdkbnch1", "--subnet", "10.219.0.0/24"],
    "userns off": ["--userns", "off", "--bridge", "pdkbnch2", "--subnet", "10.219.1.0/24"],
}


def tti(p: PaddockUp) -> float:
    t0 = time.perf_counter()
    sbx = Sandbox.create(api_key=p.admin_key, api_url=p.url, sandbox_url=p.url)
    sbx.commands.run("true")
    took = (time.perf_counter() - t0) * 1000
    sbx.kill()
    return took


def phase(name: str, pool: int, runs: int) -> None:
    paddock = pathlib.Path(os.environ["PADDOCK_BIN"])
    runtime = pathlib.Path(os.environ["PADDOCK_RUNTIME_BIN"])
    ups = {k: PaddockUp(paddock, runtime, ADMIN_KEY, pool_size=pool, extra=v, prefix="paddock-bench-")
           for k, v in SETUPS.items()}
    try:
        for p in ups.values():
            p.start()
        times = {k: [] for k in ups}
        # One warm-up create each (template cache, page cache), not counted.
        for k, p in ups.items():
            if pool:
                p.wait_pool()
            tti(p)
        for i in range(runs):
            order = list(ups) if i % 2 == 0 else list(reversed(ups))
            for k in order:
                if pool:
                    ups[k].wait_pool()
                times[k].append(tti(ups[k]))
        print(f"== {name}: {runs} interleaved rounds ==")
        print(row(f"{name} TTI, userns off (reference)", times["userns off"]))
        print(row(f"{name} TTI, userns on", times["userns on"], times["userns off"]))
    finally:
        for p in ups.values():
            p.stop()
            p.remove_data()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    a = ap.parse_args()
    phase("cold", 0, a.runs)
    phase("warm", 2, a.runs)


if __name__ == "__main__":
    main()

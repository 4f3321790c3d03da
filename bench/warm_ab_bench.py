"""Warm time to interactive of two builds (or two settings) side by side (issue 16):
`Sandbox.create()` -> `commands.run("true")` done, Python SDK, warm pool refilled before
each create. Each setup is its own `paddock up` (own bridge, subnet and data dir); every
round creates one sandbox on each, in alternating order, so both see the same machine.
The reference, measured in the same rounds on each: `commands.run("true")` on an existing
sandbox. The servers' own per-phase times (claim, `/init`, record) come from their
"sandbox created" log lines.

    sudo .venv/bin/python bench/warm_ab_bench.py --runs 60 \\
        --setup before=/var/tmp/base/paddock:/var/tmp/base/paddock-runtime \\
        --setup "after=$T/release/paddock:$T/x86_64-unknown-linux-musl/release/paddock-runtime" \\
        --setup "after, userns off=$T/release/paddock:$T/.../paddock-runtime:--userns off"

A setup is `name=paddock:runtime[:extra arguments of paddock up]`; an empty binary pair is
this tree's release build. Without `--setup`: this tree's build with `--userns on` and
`--userns off` (the user namespace's share of warm TTI). Rounds rotate the order.
"""

import argparse
import pathlib
import re
import shlex
import sys
import time

from e2b import Sandbox

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from paddock_testing import PaddockUp  # noqa: E402
from paddock_harness import ADMIN_KEY, build_release, pct, row  # noqa: E402

def ms(t0):
    return (time.perf_counter() - t0) * 1000


def setup(spec, default_bins):
    """`name=paddock:runtime[:extra args]` (`name` or `name=::extra`: this tree's build)."""
    name, _, rest = spec.partition("=")
    paddock, runtime, extra = (rest.split(":", 2) + ["", "", ""])[:3]
    if not paddock:
        paddock, runtime = default_bins
    return name, pathlib.Path(paddock), pathlib.Path(runtime), shlex.split(extra)


def phases(log_path):
    """claim/init/record ms of every warm create in a server's log."""
    out = {"claim_ms": [], "init_ms": [], "record_ms": [], "ms": []}
    for line in open(log_path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "sandbox created" not in line or 'source="warm"' not in line:
            continue
        for k in out:
            m = re.search(rf"\b{k}=([0-9.]+)", line)
            if m:
                out[k].append(float(m.group(1)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--setup", action="append", default=[],
                    help="name=paddock:runtime[:extra args]; default: userns on vs off")
    a = ap.parse_args()
    specs = a.setup or ["userns on=::--userns on", "userns off=::--userns off"]
    bins = build_release() if any(not s.partition("=")[2].split(":")[0] for s in specs) else None
    setups = [setup(s, bins) for s in specs]
    ups = {}
    try:
        for i, (name, paddock, runtime, extra) in enumerate(setups):
            net = ["--bridge", f"pdkwab{i + 1}", "--subnet", f"10.219.{4 + i}.0/24"]
            p = PaddockUp(paddock, runtime, ADMIN_KEY, pool_size=a.pool, extra=[*extra, *net],
                          prefix=f"paddock-wab-{i}-")
            ups[name] = p.start()
        keepers = {}
        kw = lambda p: dict(api_key=p.admin_key, api_url=p.url, sandbox_url=p.url)  # noqa: E731
        for name, p in ups.items():
            p.wait_pool(at_least=a.pool)
            keepers[name] = Sandbox.create(**kw(p))
            # One warm-up create each (page cache, connections), not counted.
            p.wait_pool(at_least=a.pool)
            s = Sandbox.create(**kw(p))
            s.commands.run("true")
            s.kill()
        tti = {k: [] for k in ups}
        ref = {k: [] for k in ups}
        create = {k: [] for k in ups}
        first_run = {k: [] for k in ups}
        second_run = {k: [] for k in ups}
        for i in range(a.runs):
            order = list(ups)[i % len(ups):] + list(ups)[:i % len(ups)]
            if (i // len(ups)) % 2:
                order.reverse()
            for name in order:
                p = ups[name]
                p.wait_pool(at_least=a.pool)
                t0 = time.perf_counter()
                sbx = Sandbox.create(**kw(p))
                create[name].append(ms(t0))
                t1 = time.perf_counter()
                sbx.commands.run("true")
                tti[name].append(ms(t0))
                first_run[name].append(ms(t1))
                t1 = time.perf_counter()
                sbx.commands.run("true")
                second_run[name].append(ms(t1))
                sbx.kill()
                t0 = time.perf_counter()
                keepers[name].commands.run("true")
                ref[name].append(ms(t0))
        for k in keepers.values():
            k.kill()
        first = setups[0][0]
        print(f"== warm TTI, {a.runs} interleaved rounds, pool {a.pool} ==")
        for name in ups:
            print(row(f"{name}: commands.run('true') only", ref[name]))
            print(row(f"{name}: Sandbox.create() only", create[name]))
            print(row(f"{name}: its first commands.run", first_run[name], second_run[name]))
            print(row(f"{name}: its second commands.run", second_run[name]))
            print(row(f"{name}: TTI warm (create + run)", tti[name], tti[first] if name != first else None))
        print("server-side per phase (p50 / p90 / p99, ms, warm creates incl. warm-up):")
        for name, p in ups.items():
            ph = phases(p.log_path)
            print(f"  {name:30} " + "  ".join(
                f"{k} {pct(v, 50):.2f} / {pct(v, 90):.2f} / {pct(v, 99):.2f}" for k, v in ph.items() if v))
    finally:
        for p in ups.values():
            p.stop()
            p.remove_data()


if __name__ == "__main__":
    main()

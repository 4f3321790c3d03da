"""`paddock up`'s own memory (the process's RSS, not its sandboxes'): started, then with N
idle `base` sandboxes, then after gateway traffic to them. Two builds side by side, each on
a bridge and subnet of its own, so that a change of allocator or of the data plane's
bookkeeping shows as a difference per sandbox between them in one run.

    sudo .venv/bin/python bench/rss_bench.py --paddock BIN --runtime BIN \\
        --baseline BIN --baseline-runtime BIN [--sandboxes 40]
"""

import argparse
import pathlib
import subprocess

from e2b import Sandbox

from paddock_harness import ADMIN_KEY
from paddock_testing import PaddockUp

NETS = {
    "paddock": ["--bridge", "pdkrss1", "--subnet", "10.219.16.0/24"],
    "baseline": ["--bridge", "pdkrss2", "--subnet", "10.219.17.0/24"],
}


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paddock", required=True)
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--baseline-runtime", required=True)
    ap.add_argument("--sandboxes", type=int, default=40)
    a = ap.parse_args()
    builds = {"paddock": (a.paddock, a.runtime), "baseline": (a.baseline, a.baseline_runtime)}
    ups = {k: PaddockUp(pathlib.Path(b), pathlib.Path(r), ADMIN_KEY, pool_size=0, extra=NETS[k],
                        prefix=f"paddock-rss-{k}-") for k, (b, r) in builds.items()}
    rows = {}
    try:
        for p in ups.values():
            p.start()
        for k, p in ups.items():
            started = rss_mib(p.proc.pid)
            boxes = [Sandbox.create(api_key=ADMIN_KEY, api_url=p.url, sandbox_url=p.url, timeout=600)
                     for _ in range(a.sandboxes)]
            idle = rss_mib(p.proc.pid)
            # Gateway traffic to every sandbox: pools, routes and breakers get their entries.
            for s in boxes:
                subprocess.run(["wrk", "-t1", "-c4", "-d1s", "-H", f"E2b-Sandbox-Id: {s.sandbox_id}",
                                f"{p.url}/health"], check=True, capture_output=True)
            served = rss_mib(p.proc.pid)
            for s in boxes:
                s.kill()
            rows[k] = (started, idle, served)
    finally:
        for p in ups.values():
            p.stop()
            p.remove_data()
    print(f"paddock up RSS, MiB ({a.sandboxes} idle base sandboxes)")
    print(f"{'build':10} {'started':>9} {'+sandboxes':>11} {'+traffic':>9} {'per sandbox':>12}")
    for k, (started, idle, served) in rows.items():
        print(f"{k:10} {started:9.1f} {idle:11.1f} {served:9.1f} {(served - started) / a.sandboxes:12.3f}")


if __name__ == "__main__":
    main()

"""Starts and stops a `paddock up` for the benchmarks (root; embedded mode),
with release builds; the start/wait/stop logic is tests/paddock_testing.py's."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from paddock_testing import TARGET, PaddockUp  # noqa: E402

ADMIN_KEY = "e2b_" + "be" * 20


def build_release():
    """Release builds of paddock and the static runtime (cached by cargo)."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "-p", "paddock"],
                   cwd=ROOT, check=True, env=env)
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "--target",
                    "x86_64-unknown-linux-musl", "-p", "paddock-runtime"], cwd=ROOT, check=True, env=env)
    return (TARGET / "release/paddock", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime")


class Paddock(PaddockUp):
    """A started `paddock up` on a free port; the SDKs in this process point at it."""

    def __init__(self, pool_size: int, extra=()):
        paddock, runtime = build_release()
        super().__init__(paddock, runtime, ADMIN_KEY, pool_size=pool_size, extra=extra,
                         prefix="paddock-bench-")
        self.start()
        os.environ.update(self.sdk_env())

    def stop(self, timeout: float = 120) -> int:
        code = super().stop(timeout)
        self.remove_data()
        return code


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def row(name, xs, ref=None):
    p50 = pct(xs, 50)
    ratio = f"{p50 / pct(ref, 50):7.2f}x" if ref else "        "
    return (f"{name:44} n={len(xs):4}  p50 {p50:8.2f}  p90 {pct(xs, 90):8.2f}  "
            f"p99 {pct(xs, 99):8.2f}  max {max(xs):8.2f} ms {ratio}")

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
    """Release builds of paddock and the static runtime (cached by cargo); or the two binaries
    named by PADDOCK_BENCH_BIN and PADDOCK_BENCH_RUNTIME_BIN (another build to compare with)."""
    given = os.environ.get("PADDOCK_BENCH_BIN"), os.environ.get("PADDOCK_BENCH_RUNTIME_BIN")
    if all(given):
        return tuple(pathlib.Path(p) for p in given)
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "-p", "paddock"],
                   cwd=ROOT, check=True, env=env)
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "--target",
                    "x86_64-unknown-linux-musl", "-p", "paddock-runtime"], cwd=ROOT, check=True, env=env)
    return (TARGET / "release/paddock", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime")


def in_cgroup(binary: pathlib.Path, cgroup: pathlib.Path) -> pathlib.Path:
    """A launcher script that joins `cgroup` (its `cgroup.procs`) and execs `binary`."""
    launcher = pathlib.Path("/tmp") / f"paddock-launch-{cgroup.name}.sh"
    launcher.write_text(f'#!/bin/sh\necho $$ > "{cgroup}/cgroup.procs" || exit 1\nexec "{binary}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


class Paddock(PaddockUp):
    """A started `paddock up` on a free port; the SDKs in this process point at it."""

    def __init__(self, pool_size: int, extra=(), memory_cgroup: pathlib.Path | None = None):
        paddock, runtime = build_release()
        if memory_cgroup is not None:
            # Started inside a cgroup of the bench's own, so that paddock, its sandboxes
            # (nested under it) and the kernel memory they allocate are charged there.
            paddock = in_cgroup(paddock, memory_cgroup)
        super().__init__(paddock, runtime, ADMIN_KEY, pool_size=pool_size, extra=extra,
                         prefix="paddock-bench-")
        try:
            self.start()
        except BaseException:
            # Refused (another instance on the bridge, a bad binary): nothing of it may stay.
            self.remove_data()
            raise
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

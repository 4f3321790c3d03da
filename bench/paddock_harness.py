"""Starts and stops a `paddock up` for the benchmarks (root; embedded mode)."""

import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/paddock/target"))
ADMIN_KEY = "e2b_" + "be" * 20


def build_release():
    """Release builds of paddock and the static runtime (cached by cargo)."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "-p", "paddock"],
                   cwd=ROOT, check=True, env=env)
    subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "--locked", "--target",
                    "x86_64-unknown-linux-musl", "-p", "paddock-runtime"], cwd=ROOT, check=True, env=env)
    return (TARGET / "release/paddock", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime")


class Paddock:
    def __init__(self, listen: str, pool_size: int, extra=()):
        self.url = f"http://{listen}"
        self.data = tempfile.mkdtemp(prefix="paddock-bench-", dir="/var/tmp")
        paddock, runtime = build_release()
        env = dict(os.environ)
        env.setdefault("PADDOCK_TEMPLATE_CACHE", "/var/tmp/paddock-test-templates")
        self.log = open(f"/tmp/paddock-bench-{listen.replace(':', '-')}.log", "w")
        self.proc = subprocess.Popen(
            [str(paddock), "up", "--listen", listen, "--data-dir", self.data, "--admin-api-key", ADMIN_KEY,
             "--runtime", str(runtime), "--pool-size", str(pool_size), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 900
        while True:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"paddock up did not start; see {self.log.name}")
            time.sleep(0.2)
        os.environ.update({"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": ADMIN_KEY})

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers={"X-API-Key": ADMIN_KEY}).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_pool(self, template="base", at_least=1, timeout=60.0):
        deadline = time.monotonic() + timeout
        while self.metric(f'paddock_manager_pool_ready{{template="{template}"}}') < at_least:
            if time.monotonic() > deadline:
                raise RuntimeError("warm pool did not refill")
            time.sleep(0.02)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def row(name, xs, ref=None):
    p50 = pct(xs, 50)
    ratio = f"{p50 / pct(ref, 50):7.2f}x" if ref else "        "
    return (f"{name:44} n={len(xs):4}  p50 {p50:8.2f}  p90 {pct(xs, 90):8.2f}  "
            f"p99 {pct(xs, 99):8.2f}  max {max(xs):8.2f} ms {ratio}")

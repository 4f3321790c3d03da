"""Fixtures: a real `paddock up` (manager + gateway + embedded sandboxes)
on 127.0.0.1:3100, driven by the unmodified E2B SDKs."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/paddock/target"))
ADMIN_KEY = "e2b_" + "ad" * 20
LISTEN = "127.0.0.1:3100"
URL = f"http://{LISTEN}"


def binary(env: str, default: pathlib.Path) -> str:
    path = pathlib.Path(os.environ.get(env, default))
    if not path.exists():
        pytest.exit(f"{path} missing: build it with hack/test or set {env}", 2)
    return str(path)


STATE = {}


def _start(data):
    env = dict(os.environ)
    # Share the template cache with the embedded tests: built once per machine.
    env.setdefault("PADDOCK_TEMPLATE_CACHE", "/var/tmp/paddock-test-templates")
    log = open("/tmp/paddock-e2e.log", "a")
    proc = subprocess.Popen(
        [
            binary("PADDOCK_BIN", TARGET / "debug/paddock"),
            "up",
            "--listen", LISTEN,
            "--data-dir", data,
            "--admin-api-key", ADMIN_KEY,
            "--runtime", binary("PADDOCK_RUNTIME_BIN", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime"),
            "--pool-size", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 900  # a cold machine builds both templates first
    while True:
        try:
            if httpx.get(f"{URL}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("paddock up did not start; see /tmp/paddock-e2e.log")
        time.sleep(0.2)
    STATE["proc"] = proc
    return proc


def crash_and_restart():
    """SIGKILLs `paddock up` (no cleanup runs) and starts it again on the same data dir."""
    proc = STATE["proc"]
    proc.kill()
    proc.wait()
    _start(STATE["data"])


@pytest.fixture(scope="session")
def paddock():
    data = tempfile.mkdtemp(prefix="paddock-e2e-", dir="/var/tmp")
    STATE["data"] = data
    open("/tmp/paddock-e2e.log", "w").close()
    _start(data)
    os.environ.update({"E2B_API_URL": URL, "E2B_SANDBOX_URL": URL, "E2B_API_KEY": ADMIN_KEY})
    os.environ.pop("E2B_DEBUG", None)
    yield URL
    proc = STATE["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    shutil.rmtree(data, ignore_errors=True)
    assert proc.returncode == 0, "paddock up must shut down cleanly; see /tmp/paddock-e2e.log"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    # Ours are the bridge and `pdk<8 hex>` veths (the test bed's `pdktb0` is not ours).
    assert "pdkbr0" not in links and not re.search(r" pdk[0-9a-f]{8}[@:]", links), (
        f"network devices left behind:\n{links}")
    assert "/var/tmp/paddock-e2e-" not in open("/proc/mounts").read(), "mounts left behind"


def admin(path, method="GET", headers=None, **kw):
    headers = {"X-API-Key": ADMIN_KEY, **(headers or {})}
    return httpx.request(method, f"{URL}{path}", headers=headers, timeout=120, **kw)

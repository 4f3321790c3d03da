"""Fixtures: a real paddock-runtime on 127.0.0.1:49983, driven by the
unmodified E2B SDK in debug mode (which talks to localhost:49983 directly)."""

import os
import pathlib
import signal
import subprocess
import sys

import httpx
import pytest

# tests/paddock_testing.py (wait_until) for this suite too.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from paddock_testing import GiveUp, WaitTimeout, wait_until  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Where hack/test builds the static runtime.
DEFAULT_BIN = (
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/paddock/target"))
    / "x86_64-unknown-linux-musl/release/paddock-runtime"
)
PORT = 49983
# The code interpreter listens 16 ports above envd (49983 -> 49999, as the SDK expects).
INTERPRETER_OFFSET = 16
DEFAULT_KERNEL_PYTHON = pathlib.Path(os.environ.get("PADDOCK_KERNEL_VENV", "/var/cache/paddock/kernel-venv")) / "bin/python"


def runtime_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("PADDOCK_RUNTIME_BIN", DEFAULT_BIN))
    if not path.exists():
        pytest.exit(f"{path} does not exist: build it with hack/test or set PADDOCK_RUNTIME_BIN", 2)
    return path


class RuntimeProcess:
    def __init__(self, port: int, *flags: str):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.interpreter_url = f"http://127.0.0.1:{port + INTERPRETER_OFFSET}"
        log = open(f"/tmp/paddock-runtime-{port}.log", "w")
        self.proc = subprocess.Popen(
            [
                str(ROOT / "hack/scratch-runtime"),
                str(runtime_bin()),
                "--listen",
                f"127.0.0.1:{port}",
                "--code-interpreter-listen",
                f"127.0.0.1:{port + INTERPRETER_OFFSET}",
                "--kernel-python",
                os.environ.get("PADDOCK_KERNEL_PYTHON", str(DEFAULT_KERNEL_PYTHON)),
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self.proc

        def healthy():
            if proc.poll() is not None:
                raise GiveUp(f"the runtime exited with status {proc.returncode}")
            return httpx.get(f"{self.url}/health").status_code == 204

        try:
            wait_until(healthy, 30, f"{self.url}/health")
        except (WaitTimeout, GiveUp) as e:
            raise RuntimeError(f"runtime did not start ({e}); see /tmp/paddock-runtime-{port}.log") from None

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def runtime():
    os.environ["E2B_DEBUG"] = "true"
    rt = RuntimeProcess(PORT)
    yield rt
    rt.stop()


@pytest.fixture(scope="session")
def secured_runtime():
    """A second runtime that requires an access token, for auth tests."""
    rt = RuntimeProcess(PORT + 100, "--access-token", "s3cret-token")
    yield rt
    rt.stop()


@pytest.fixture()
def sbx(runtime):
    from e2b import Sandbox

    return Sandbox.create()


@pytest.fixture()
def fresh_runtime():
    """A runtime of its own, for tests that change its global settings."""
    rt = RuntimeProcess(PORT + 200)
    yield rt
    rt.stop()


def runtime_pid(port: int) -> int:
    """The host pid of the runtime serving `port`."""
    out = subprocess.run(["pgrep", "-f", f"paddock-runtime --listen 127.0.0.1:{port}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    # The shell wrapper's command line names the binary too; the runtime is
    # the process whose executable is the runtime.
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/exe").endswith("paddock-runtime"):
                return pid
        except OSError:
            continue
    raise RuntimeError(f"no runtime process for port {port}")


@pytest.fixture()
def ci(runtime):
    """A code-interpreter sandbox handle (the SDK's debug mode: localhost:49999)."""
    from e2b_code_interpreter import Sandbox

    return Sandbox.create()

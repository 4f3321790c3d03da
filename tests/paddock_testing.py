"""Test seams shared by the Python suites (tests/e2e, tests/e2e_legacy) and
the benchmarks (bench/): starting and stopping a real `paddock up`, and
polling for a condition with a deadline instead of sleeping.

Import it after putting this directory on `sys.path`:

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # from tests/e2e
    from paddock_testing import PaddockUp, wait_until
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable, Iterable, TypeVar

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/paddock/target"))
# Built once per machine and shared with the embedded cargo tests.
TEMPLATE_CACHE = "/var/tmp/paddock-test-templates"
# A cold machine builds both templates before /health answers.
START_TIMEOUT = 900.0

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline. An AssertionError,
    so pytest reports it as a test failure with its message."""


class GiveUp(Exception):
    """Raised by a predicate when waiting longer cannot help (the process it
    waits for has exited): wait_until lets it through at once."""


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Calls `pred` until it returns something truthy and returns that.

    Raises WaitTimeout after `timeout` seconds, saying `what` was awaited and
    what the last attempt returned or raised, so a failure explains itself.
    Exceptions from `pred` count as "not yet" (a server that is still coming
    up refuses connections), but the last one is kept for the message;
    GiveUp ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = pred()
            if value:
                return value
            last = value
        except GiveUp:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is "not yet"; reported below
            last = e
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last attempt: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(env: str, default: pathlib.Path) -> pathlib.Path:
    """The binary named by `env`, else `default`; it must exist."""
    path = pathlib.Path(os.environ.get(env, default))
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: build it with hack/test or set {env}")
    return path


def debug_binaries() -> tuple[pathlib.Path, pathlib.Path]:
    """`paddock` and the static runtime as hack/test builds them (or $PADDOCK_BIN, $PADDOCK_RUNTIME_BIN)."""
    return (binary("PADDOCK_BIN", TARGET / "debug/paddock"),
            binary("PADDOCK_RUNTIME_BIN", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime"))


def tail(path: str | os.PathLike, lines: int = 60) -> str:
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


class PaddockUp:
    """One `paddock up` (root; embedded mode) on its own data dir.

    `start()` returns once `/health` answers; `crash()` is a SIGKILL of the
    paddock process alone (no cleanup runs, sandboxes and helpers live on);
    `restart()` starts it again on the same data dir and port; `stop()` is a
    clean SIGTERM shutdown and returns the exit code.
    """

    def __init__(self, paddock: pathlib.Path, runtime: pathlib.Path, admin_key: str, *,
                 pool_size: int = 1, listen: str | None = None, log_path: str | None = None,
                 extra: Iterable[str] = (), env: dict[str, str] | None = None, prefix: str = "paddock-test-"):
        self.paddock, self.runtime, self.admin_key = paddock, runtime, admin_key
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.listen}"
        self.pool_size = pool_size
        self.extra = list(extra)
        self.data = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
        self.log_path = log_path or f"/tmp/{prefix}{self.listen.replace(':', '-')}.log"
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PADDOCK_TEMPLATE_CACHE", TEMPLATE_CACHE)
        self.proc: subprocess.Popen | None = None
        open(self.log_path, "w").close()

    def sdk_env(self) -> dict[str, str]:
        """What the E2B SDKs need to talk to this paddock."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.admin_key}

    def start(self) -> "PaddockUp":
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(self.paddock), "up", "--listen", self.listen, "--data-dir", self.data,
                 "--admin-api-key", self.admin_key, "--runtime", str(self.runtime),
                 "--pool-size", str(self.pool_size), *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        proc = self.proc

        def healthy():
            if proc.poll() is not None:
                raise GiveUp(f"paddock up exited with status {proc.returncode}")
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200

        try:
            wait_until(healthy, START_TIMEOUT, f"{self.url}/health", interval=0.1)
        except (WaitTimeout, GiveUp) as e:
            self._kill_group()
            raise RuntimeError(f"paddock up did not start ({e}); last lines of {self.log_path}:\n"
                               f"{tail(self.log_path)}") from None
        return self

    def crash(self) -> None:
        """SIGKILL of the paddock process only, as a crash would be."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "PaddockUp":
        return self.start()

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM to the process group and wait; SIGKILL if it hangs. Returns the exit code."""
        assert self.proc is not None, "not started"
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
        return self.proc.returncode

    def remove_data(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def admin(self, path: str, method: str = "GET", headers=None, **kw) -> httpx.Response:
        """A request with the admin key."""
        headers = {"X-API-Key": self.admin_key, **(headers or {})}
        kw.setdefault("timeout", 120)
        return httpx.request(method, f"{self.url}{path}", headers=headers, **kw)

    def metric(self, name: str) -> float:
        """One sample of /metrics by its full name with labels (0 when absent)."""
        for line in self.admin("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_pool(self, template: str = "base", at_least: int = 1, timeout: float = 120.0) -> None:
        """Until `template`'s warm pool holds `at_least` ready sandboxes."""
        wait_until(lambda: self.metric(f'paddock_manager_pool_ready{{template="{template}"}}') >= at_least,
                   timeout, f"{at_least} ready sandbox(es) in the {template} pool", interval=0.02)


"""Fixtures: a real `paddock up` (manager + gateway + embedded sandboxes)
on a free port of 127.0.0.1, driven by the unmodified E2B SDKs."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from paddock_testing import PaddockUp, debug_binaries, free_port  # noqa: E402

ADMIN_KEY = "e2b_" + "ad" * 20
LISTEN = f"127.0.0.1:{free_port()}"
URL = f"http://{LISTEN}"
# hack/test prints the end of this log when the suite fails.
LOG = "/tmp/paddock-e2e.log"

STATE = {}


def up() -> PaddockUp:
    """The session's `paddock up` (the `paddock` fixture must be active)."""
    return STATE["up"]


def crash_and_restart():
    """SIGKILLs `paddock up` (no cleanup runs) and starts it again on the same data dir."""
    up().crash()
    up().restart()


@pytest.fixture(scope="session")
def paddock():
    try:
        paddock_bin, runtime = debug_binaries()
    except FileNotFoundError as e:
        pytest.exit(str(e), 2)
    srv = PaddockUp(paddock_bin, runtime, ADMIN_KEY, pool_size=1, listen=LISTEN, log_path=LOG,
                    prefix="paddock-e2e-")
    STATE["up"] = srv
    srv.start()
    os.environ.update(srv.sdk_env())
    os.environ.pop("E2B_DEBUG", None)
    yield URL
    code = srv.stop(60)
    srv.remove_data()
    assert code == 0, f"paddock up must shut down cleanly; see {LOG}"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    # Ours are the bridge and `pdk<8 hex>` veths (the test bed's `pdktb0` is not ours).
    assert "pdkbr0" not in links and not re.search(r" pdk[0-9a-f]{8}[@:]", links), (
        f"network devices left behind:\n{links}")
    assert srv.data not in open("/proc/mounts").read(), "mounts left behind"


def admin(path, method="GET", headers=None, **kw):
    return up().admin(path, method, headers, **kw)

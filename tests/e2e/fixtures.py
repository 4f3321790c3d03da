"""Fixtures: the product the unmodified E2B SDKs are driven against, in one of two modes
(PADDOCK_E2E_MODE):

- `embedded` (default): a real `paddock up` (manager + gateway + embedded sandboxes) on a free
  port of 127.0.0.1; the control and data plane share its address.
- `kubernetes`: `paddock manager`, `paddock gateway` and `paddock controller` on the host over a
  fresh namespace of the test bed (tests/paddock_testing.py's PaddockKube); the control plane
  is the manager's address (URL), the data plane the gateway's (DATA_URL).

Tests use URL for the E2B API, DATA_URL / GATEWAY_LISTEN for data-plane requests and DOMAIN
for host routing, and mark what one mode cannot do with `embedded_only(reason)` or
`kubernetes_only(reason)`. A test that needs an embedded instance of its own (no warm pools,
a small subnet) takes the `second_paddock` fixture."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from paddock_testing import DEFAULT_DOMAIN, PaddockKube, PaddockUp, debug_binaries, free_port  # noqa: E402

MODE = os.environ.get("PADDOCK_E2E_MODE", "embedded")
if MODE not in ("embedded", "kubernetes"):
    raise RuntimeError(f"PADDOCK_E2E_MODE={MODE!r}: expected `embedded` or `kubernetes`")
KUBE = MODE == "kubernetes"

ADMIN_KEY = "e2b_" + "ad" * 20
LISTEN = f"127.0.0.1:{free_port()}"
URL = f"http://{LISTEN}"
# The data plane: paddock up serves it on its one address; on Kubernetes the gateway does.
GATEWAY_LISTEN = f"127.0.0.1:{free_port()}" if KUBE else LISTEN
DATA_URL = f"http://{GATEWAY_LISTEN}"
DOMAIN = DEFAULT_DOMAIN
# hack/test prints the end of this log when the suite fails (Kubernetes mode: the manager's,
# beside /tmp/paddock-kube-{gateway,controller}-<namespace>.log).
LOG = "/tmp/paddock-e2e.log"

STATE = {}


def embedded_only(reason: str):
    """Skips a test in Kubernetes mode, saying why it cannot apply there."""
    return pytest.mark.skipif(KUBE, reason=f"embedded mode only: {reason}")


def kubernetes_only(reason: str):
    return pytest.mark.skipif(not KUBE, reason=f"Kubernetes mode only: {reason}")


def up():
    """The session's PaddockUp or PaddockKube (the `paddock` fixture must be active)."""
    return STATE["up"]


def crash_and_restart():
    """SIGKILLs `paddock up` (no cleanup runs) and starts it again on the same data dir."""
    up().crash()
    up().restart()


def hostname_of(sandbox_id: str) -> str:
    """What `hostname` prints in a sandbox: its id in embedded mode, the Pod's name (the
    Sandbox resource's, the part after `<namespace>--`) on Kubernetes."""
    return sandbox_id.split("--", 1)[1] if KUBE else sandbox_id


def _embedded(paddock_bin, runtime):
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


def _kubernetes(paddock_bin, runtime):
    kube = PaddockKube(paddock_bin, runtime, ADMIN_KEY, listen=LISTEN, gateway_listen=GATEWAY_LISTEN,
                       domain=DOMAIN)
    STATE["up"] = kube
    kube.start()
    os.environ.update(kube.sdk_env())
    os.environ.pop("E2B_DEBUG", None)
    yield URL
    # Ends the processes (each must exit cleanly on SIGTERM), deletes the namespace and checks
    # that no Sandbox or Pod of it is left.
    kube.stop()


@pytest.fixture(scope="session")
def paddock():
    try:
        paddock_bin, runtime = debug_binaries()
    except FileNotFoundError as e:
        pytest.exit(str(e), 2)
    yield from (_kubernetes if KUBE else _embedded)(paddock_bin, runtime)


def admin(path, method="GET", headers=None, **kw):
    return up().admin(path, method, headers, **kw)


@pytest.fixture
def second_paddock(paddock, request, monkeypatch):
    """A second `paddock up`, with no warm pools, on the bridge and subnet the test module names
    in BRIDGE and SUBNET (each module its own, so that tests never share addresses), the SDKs
    pointed at it for this test. It must shut down cleanly and take its bridge with it."""
    bridge, subnet = request.module.BRIDGE, request.module.SUBNET
    paddock_bin, runtime = debug_binaries()
    srv = PaddockUp(paddock_bin, runtime, ADMIN_KEY, pool_size=0, prefix=f"paddock-e2e-{bridge}-",
                    extra=["--bridge", bridge, "--subnet", subnet])
    srv.start()
    for k, v in srv.sdk_env().items():
        monkeypatch.setenv(k, v)
    try:
        yield srv
    finally:
        code = srv.stop(60)
        srv.remove_data()
        assert code == 0, f"the second paddock must shut down cleanly; see {srv.log_path}"
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not re.search(rf"\b{bridge}\b", links), f"bridge left behind:\n{links}"

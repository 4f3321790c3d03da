"""The product end to end: the unmodified E2B SDKs against `paddock up` (E2B_API_URL and
E2B_SANDBOX_URL both point at it) or, with PADDOCK_E2E_MODE=kubernetes, against `paddock
manager` (E2B_API_URL) and `paddock gateway` (E2B_SANDBOX_URL) on the test bed."""

import shutil
import subprocess
import tempfile
import time

import httpx
import pytest
from e2b import AuthenticationException, NotFoundException, Sandbox, SandboxException
from e2b.sandbox.sandbox_api import SandboxQuery

from fixtures import ADMIN_KEY, DATA_URL, URL, admin, embedded_only, hostname_of, up
from paddock_testing import debug_binaries, free_port, wait_until


def counter(sbx) -> int:
    """The value a background `echo $i > /tmp/n` loop wrote last. Raises while the file is
    missing or half-written, which wait_until takes as "not yet"."""
    return int(sbx.files.read("/tmp/n"))


def test_create_run_files_kill(paddock):
    sbx = Sandbox.create()
    try:
        r = sbx.commands.run("echo hi; whoami; hostname")
        assert r.stdout.split() == ["hi", "user", hostname_of(sbx.sandbox_id)]
        sbx.files.write("/home/user/a.txt", "through the gateway")
        assert sbx.files.read("/home/user/a.txt") == "through the gateway"
        info = sbx.get_info()
        assert info.state.value == "running" and info.template_id == "base"
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    r = httpx.get(f"{DATA_URL}/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"})
    assert r.status_code == 502 and "was not found" in r.json()["message"]


def test_code_interpreter(paddock):
    from e2b_code_interpreter import Sandbox as CodeSandbox

    sbx = CodeSandbox.create()
    try:
        assert sbx.run_code("1+1", timeout=120).text == "2"
        assert sbx.run_code("import pandas; pandas.__name__").text == "pandas"
    finally:
        sbx.kill()


def test_env_vars_and_metadata_filters_and_pagination(paddock):
    a = Sandbox.create(envs={"GREETING": "hello"}, metadata={"suite": "e2e", "n": "1"})
    b = Sandbox.create(metadata={"suite": "e2e", "n": "2"})
    try:
        assert a.commands.run("echo $GREETING").stdout == "hello\n"
        found = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2e", "n": "2"})).next_items()
        assert [s.sandbox_id for s in found] == [b.sandbox_id]
        pager = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2e"}), limit=1)
        ids = []
        while pager.has_next:
            ids += [s.sandbox_id for s in pager.next_items()]
        assert sorted(ids) == sorted([a.sandbox_id, b.sandbox_id])
    finally:
        a.kill()
        b.kill()


def test_timeout_expires_and_set_timeout_extends(paddock):
    short = Sandbox.create(timeout=2)
    kept = Sandbox.create(timeout=2)
    kept_would_end = time.monotonic() + 2
    kept.set_timeout(60)

    def short_is_gone():
        # get_info only reads; connect would extend the timeout this waits for.
        try:
            Sandbox.get_info(short.sandbox_id)
            return False
        except NotFoundException:
            return True

    wait_until(short_is_gone, 30, "the 2 s timeout to kill the sandbox", interval=0.2)
    with pytest.raises(NotFoundException):
        Sandbox.connect(short.sandbox_id)
    # Letting kept's original timeout pass is the behaviour under test; one more
    # second covers a reaper pass that began just before it.
    time.sleep(max(0.0, kept_would_end + 1 - time.monotonic()))
    assert kept.is_running()
    kept.kill()


@embedded_only("pausing on Kubernetes deletes the Pod (spec.paused): its processes end, and its files "
               "survive only on a volume; tests/e2e/test_kubernetes.py covers pause/resume there")
def test_pause_keeps_files_and_processes(paddock):
    sbx = Sandbox.create()
    try:
        sbx.files.write("/home/user/keep.txt", "kept")
        sbx.commands.run("sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done'", background=True)
        wait_until(lambda: counter(sbx) >= 2, 30, "the counter to start")
        assert sbx.pause() is True
        assert sbx.pause() is False, "pausing a paused sandbox is a 409"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.files.read("/home/user/keep.txt") == "kept"
        n1 = wait_until(lambda: counter(resumed), 30, "the counter's value after resume")
        wait_until(lambda: counter(resumed) > n1, 30, "the counter to run again after resume")
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_bad_key_and_bad_input(paddock):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "00" * 20)
    assert admin("/sandboxes", "POST", json={"templateID": "nope"}).status_code == 404
    r = admin("/v2/sandboxes", "POST", json={"templateID": "base", "timeout": 10**9})
    assert r.status_code == 400 and "maximum" in r.json()["message"]
    r = admin("/v2/sandboxes", "POST", content=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == 400
    assert admin("/no/such/route").status_code == 404


def test_teams_are_isolated_and_quotas_hold(paddock):
    blue = admin("/api-keys", "POST", json={"team": "blue", "maxSandboxes": 1}).json()["key"]
    red = admin("/api-keys", "POST", json={"team": "red"}).json()["key"]
    sbx = Sandbox.create(api_key=blue)
    try:
        with pytest.raises(SandboxException) as exc:
            Sandbox.create(api_key=blue)
        assert "quota" in str(exc.value)
        assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list(api_key=red).next_items()]
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list(api_key=ADMIN_KEY).next_items()]
        with pytest.raises(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=red)
        assert httpx.post(f"{URL}/api-keys", headers={"X-API-Key": red}, json={"team": "x"}).status_code == 403
    finally:
        sbx.kill()


def test_data_plane_requires_the_sandbox_token(paddock):
    sbx = Sandbox.create()
    try:
        h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
        r = httpx.post(f"{DATA_URL}/filesystem.Filesystem/Stat", json={"path": "/"}, headers=h)
        assert r.status_code == 401
        r = httpx.post(f"{DATA_URL}/filesystem.Filesystem/Stat", json={"path": "/"},
                       headers={**h, "X-Access-Token": sbx._envd_access_token})
        assert r.status_code == 200
    finally:
        sbx.kill()


def test_metrics_info_and_state_filter(paddock):
    from e2b import SandboxState

    sbx = Sandbox.create(metadata={"suite": "state-filter"})
    other = Sandbox.create(metadata={"suite": "state-filter"})
    try:
        sbx.commands.run("head -c 20000000 /dev/zero > /home/user/blob")
        metrics = sbx.get_metrics()
        assert metrics and metrics[-1].cpu_count >= 1
        assert 0 < metrics[-1].mem_used <= metrics[-1].mem_total
        # The sandbox's own memory limit, not the host's (or the node's, in a Pod).
        assert metrics[-1].mem_total == Sandbox.get_info(sbx.sandbox_id).memory_mb << 20
        assert metrics[-1].disk_used >= 20_000_000
        other.pause()
        q = lambda *states: {s.sandbox_id for s in Sandbox.list(  # noqa: E731
            query=SandboxQuery(metadata={"suite": "state-filter"}, state=list(states))).next_items()}
        assert q(SandboxState.PAUSED) == {other.sandbox_id}
        assert q(SandboxState.RUNNING) == {sbx.sandbox_id}
        assert q(SandboxState.RUNNING, SandboxState.PAUSED) == {sbx.sandbox_id, other.sandbox_id}
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.metadata == {"suite": "state-filter"} and info.template_id == "base"
    finally:
        sbx.kill()
        Sandbox.kill(other.sandbox_id)


@embedded_only("the network set (bridge, subnet) belongs to `paddock up`")
def test_a_second_instance_on_the_same_network_is_refused(paddock):
    """One instance per network set: a second `paddock up` with the default bridge and subnet
    (its own data dir and port) exits at once, naming the running instance's pid and the
    flags that pick another set, and leaves the first one serving."""
    paddock_bin, runtime = debug_binaries()
    data = tempfile.mkdtemp(prefix="paddock-e2e-second-", dir="/var/tmp")
    try:
        second = subprocess.run(
            [
                str(paddock_bin), "up",
                "--listen", f"127.0.0.1:{free_port()}",
                "--data-dir", data,
                "--admin-api-key", ADMIN_KEY,
                "--runtime", str(runtime),
            ],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert second.returncode != 0, second.stderr
    assert f"pid {up().proc.pid}" in second.stderr and "--bridge" in second.stderr, second.stderr
    assert httpx.get(f"{URL}/health").status_code == 200

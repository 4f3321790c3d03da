"""Pause modes and wake on traffic (issue 15), with the unmodified E2B SDK against `paddock up`:

- filesystem-only pause (`pause(keep_memory=False)`, `on_timeout: {"action": "pause", "mode":
  "filesystem"}`): the processes end and release their memory, the files stay, and resume boots
  the sandbox again (a new /proc/sys/kernel/random/boot_id), with the same id and token;
- the freezer pause (the default) keeps the processes and the boot id;
- `lifecycle={"on_timeout": "pause", "auto_resume": True}`: a request through the gateway
  resumes the paused sandbox and is answered; without auto-resume it gets the paused 502.
"""

import concurrent.futures
import os

import httpx
import pytest
from e2b import Sandbox

from fixtures import ADMIN_KEY, DATA_URL, URL, crash_and_restart, embedded_only
from paddock_testing import wait_until

pytestmark = embedded_only("pause modes and wake on traffic are implemented for embedded sandboxes; "
                           "the Kubernetes backend answers the filesystem-only mode with 501")

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def boot_id(sbx) -> str:
    out = sbx.commands.run(BOOT_ID).stdout.strip()
    assert len(out) == 36 and out.count("-") == 4, out
    return out


def host_pids_of(sandbox_id: str) -> list[int]:
    """Host processes whose cgroup is the sandbox's (its cgroup path ends in its id)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                cgroups = f.read()
        except OSError:
            continue
        if sandbox_id in cgroups:
            pids.append(int(entry))
    return pids


def state(sandbox_id: str) -> str:
    return Sandbox.get_info(sandbox_id).state.value


def data(sbx, port: int, path: str = "/", **headers) -> httpx.Response:
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port), **headers}
    return httpx.get(f"{DATA_URL}{path}", headers=h, timeout=120)


def start_server(sbx):
    sbx.files.write("/home/user/site/hello.txt", "hello from the sandbox")
    sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
    wait_until(lambda: data(sbx, 8000, "/hello.txt").status_code == 200, 30, "the sandbox's server")


def test_filesystem_pause_frees_processes_keeps_files_and_reboots(paddock):
    sbx = Sandbox.create(envs={"GREETING": "hi"})
    try:
        first_boot = boot_id(sbx)
        sbx.files.write("/home/user/kept.txt", "written before the pause")
        sbx.commands.run("sleep 1000", background=True)
        assert host_pids_of(sbx.sandbox_id), "a running sandbox has processes"
        assert sbx.pause(keep_memory=False) is True
        assert state(sbx.sandbox_id) == "paused"
        # Nothing of the sandbox runs while it is paused filesystem-only: its memory is freed.
        assert host_pids_of(sbx.sandbox_id) == []
        m = httpx.get(f"{URL}/sandboxes/{sbx.sandbox_id}/metrics", headers={"X-API-Key": ADMIN_KEY})
        assert m.status_code == 200
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert state(sbx.sandbox_id) == "running"
        assert boot_id(resumed) != first_boot, "a filesystem-only resume is a new boot"
        assert resumed.files.read("/home/user/kept.txt") == "written before the pause"
        # A new boot: the processes of the old one are gone; the creator's env vars are back.
        assert resumed.commands.run("pgrep -x sleep || true").stdout.strip() == ""
        assert resumed.commands.run("echo $GREETING").stdout.strip() == "hi"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_freezer_pause_keeps_the_boot(paddock):
    sbx = Sandbox.create()
    try:
        first_boot = boot_id(sbx)
        sbx.commands.run("sleep 1000", background=True)
        assert sbx.pause() is True
        assert host_pids_of(sbx.sandbox_id), "a frozen sandbox keeps its processes"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert boot_id(resumed) == first_boot
        assert resumed.commands.run("pgrep -x sleep").stdout.strip() != ""
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_each_sandbox_has_its_own_boot_id(paddock):
    a, b = Sandbox.create(), Sandbox.create()
    try:
        host = open("/proc/sys/kernel/random/boot_id").read().strip()
        ids = {boot_id(a), boot_id(b), host}
        assert len(ids) == 3
        # It cannot be changed from inside.
        r = a.commands.run(f"echo x > /proc/sys/kernel/random/boot_id 2>&1 || echo refused",
                           user="root")
        assert "refused" in r.stdout
    finally:
        a.kill()
        b.kill()


def test_timeout_pauses_filesystem_only(paddock):
    sbx = Sandbox.create(timeout=3, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    try:
        first_boot = boot_id(sbx)
        sbx.files.write("/home/user/kept.txt", "kept")
        wait_until(lambda: state(sbx.sandbox_id) == "paused", 30, "the timeout to pause the sandbox")
        wait_until(lambda: host_pids_of(sbx.sandbox_id) == [], 30, "the sandbox's processes to end")
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert boot_id(resumed) != first_boot
        assert resumed.files.read("/home/user/kept.txt") == "kept"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_filesystem_pause_survives_a_restart(paddock):
    sbx = Sandbox.create()
    try:
        first_boot = boot_id(sbx)
        sbx.files.write("/home/user/kept.txt", "across a restart")
        assert sbx.pause(keep_memory=False) is True
        crash_and_restart()
        assert state(sbx.sandbox_id) == "paused"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.files.read("/home/user/kept.txt") == "across a restart"
        assert boot_id(resumed) != first_boot
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_checkpoint_mode_is_refused_clearly(paddock):
    sbx = Sandbox.create()
    try:
        r = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/pause", json={"mode": "checkpoint"},
                       headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 501, r.text
        assert "checkpoint" in r.json()["message"]
        assert state(sbx.sandbox_id) == "running"
        bad = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/pause", json={"mode": "deep"},
                         headers={"X-API-Key": ADMIN_KEY})
        assert bad.status_code == 400
        clash = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/pause",
                           json={"mode": "filesystem", "memory": True}, headers={"X-API-Key": ADMIN_KEY})
        assert clash.status_code == 400
        assert sbx.commands.run("echo alive").stdout.strip() == "alive"
    finally:
        sbx.kill()


def test_auto_resume_and_filesystem_mode_do_not_mix(paddock):
    r = httpx.post(f"{URL}/sandboxes", headers={"X-API-Key": ADMIN_KEY},
                   json={"templateID": "base", "autoPause": True, "autoPauseMemory": False,
                         "autoResume": {"enabled": True}})
    assert r.status_code == 400, r.text


def test_traffic_wakes_a_sandbox_with_auto_resume(paddock):
    sbx = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        start_server(sbx)
        assert sbx.pause() is True
        # An unauthenticated request must not wake it: the runtime's port wants the token.
        r = httpx.post(f"{DATA_URL}/filesystem.Filesystem/Stat", json={"path": "/"},
                       headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"})
        assert r.status_code == 401
        assert state(sbx.sandbox_id) == "paused"
        # Concurrent requests are held and answered once the sandbox is back.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: data(sbx, 8000, "/hello.txt"), range(8)))
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        assert all(a.text == "hello from the sandbox" for a in answers)
        assert state(sbx.sandbox_id) == "running"
        # It pauses again and the SDK's own host name for the port wakes it too.
        assert sbx.pause() is True
        host = sbx.get_host(8000)
        r = httpx.get(f"{DATA_URL}/hello.txt", headers={"Host": host}, timeout=120)
        assert r.status_code == 200 and r.text == "hello from the sandbox"
        assert state(sbx.sandbox_id) == "running"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_timeout_pause_then_traffic_wakes(paddock):
    sbx = Sandbox.create(timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        start_server(sbx)
        wait_until(lambda: state(sbx.sandbox_id) == "paused", 30, "the timeout to pause the sandbox")
        r = data(sbx, 8000, "/hello.txt")
        assert r.status_code == 200 and r.text == "hello from the sandbox"
        assert state(sbx.sandbox_id) == "running"
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_without_auto_resume_a_paused_sandbox_answers_502(paddock):
    sbx = Sandbox.create(lifecycle={"on_timeout": "pause"})
    try:
        start_server(sbx)
        assert sbx.pause() is True
        r = data(sbx, 8000, "/hello.txt")
        assert r.status_code == 502 and "paused" in r.json()["message"]
        assert state(sbx.sandbox_id) == "paused"
    finally:
        Sandbox.kill(sbx.sandbox_id)


@pytest.mark.parametrize("keep_memory", [True, False])
def test_resume_through_connect_after_either_pause(paddock, keep_memory):
    sbx = Sandbox.create()
    try:
        assert sbx.pause(keep_memory=keep_memory) is True
        assert sbx.pause(keep_memory=keep_memory) is False, "pausing a paused sandbox is a 409"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.commands.run("echo back").stdout.strip() == "back"
    finally:
        Sandbox.kill(sbx.sandbox_id)

"""`paddock up` killed with SIGKILL (no cleanup at all) and started again on
the same data dir: the sandboxes it ran keep running and are served again,
with their files, processes and tokens."""

import httpx
from e2b import Sandbox

from fixtures import URL, admin, crash_and_restart, embedded_only
from paddock_testing import wait_until

pytestmark = embedded_only("restarts `paddock up` on its data dir; the Kubernetes manager keeps no state of its own")


def test_sandboxes_survive_a_crash_of_paddock(paddock):
    sbx = Sandbox.create(timeout=300, metadata={"survivor": "yes"})
    paused = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/home/user/before.txt", "written before the crash")
        counter = sbx.commands.run(
            "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done", background=True)
        paused.pause()
        crash_and_restart()
        listed = admin("/v2/sandboxes", params={"metadata": "survivor=yes"}).json()
        assert [s["sandboxID"] for s in listed] == [sbx.sandbox_id]
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.files.read("/home/user/before.txt") == "written before the crash"
        assert counter.pid in [p.pid for p in again.commands.list()]
        n1 = int(again.files.read("/tmp/n"))
        wait_until(lambda: int(again.files.read("/tmp/n")) > n1, 30, "the counter to go on after the restart")
        # The token issued before the crash is still the one the data plane checks.
        h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
        assert httpx.post(f"{URL}/filesystem.Filesystem/Stat", json={"path": "/"}, headers=h).status_code == 401
        assert Sandbox.get_info(paused.sandbox_id).state.value == "paused"
        assert Sandbox.connect(paused.sandbox_id).commands.run("echo back").stdout == "back\n"
    finally:
        Sandbox.kill(sbx.sandbox_id)
        Sandbox.kill(paused.sandbox_id)

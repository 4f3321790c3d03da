"""Snapshots and fork through the unmodified E2B SDK against `paddock up`: a snapshot is the
sandbox's filesystem at one moment; sandboxes made from it, and forks, each get their own copy
of it; snapshots belong to a team, count against its quota, outlive a restart of paddock and
are gone (files too) when deleted."""

import pathlib

import httpx
import pytest
from e2b import Sandbox

from fixtures import ADMIN_KEY, URL, admin, crash_and_restart, embedded_only, up

pytestmark = embedded_only("snapshots are kept by the embedded backend (Kubernetes answers 501)")


ADMIN = {"X-API-Key": ADMIN_KEY}


def snapshot_dir(snapshot_id: str) -> pathlib.Path:
    return pathlib.Path(up().data) / "embedded" / "snapshots" / snapshot_id


def read(sbx: Sandbox, path: str) -> str:
    return sbx.commands.run(f"cat {path}").stdout


def test_sandboxes_from_one_snapshot_are_independent(paddock):
    orig = Sandbox.create(timeout=300)
    made = []
    try:
        orig.files.write("/home/user/state.txt", "captured")
        # A file of the template deleted (an overlay whiteout) and one made as root.
        assert orig.commands.run("test -e /etc/motd; echo $?").stdout == "0\n"
        orig.commands.run("rm /etc/motd && mkdir -p /opt/deep && echo root-file > /opt/deep/f", user="root")
        snap = orig.create_snapshot(name="e2e-checkpoint")
        assert snap.snapshot_id.startswith("snap-") and snap.names == ["e2e-checkpoint"]
        assert snapshot_dir(snap.snapshot_id).is_dir()
        assert oct(snapshot_dir(snap.snapshot_id).parent.stat().st_mode & 0o777) == "0o700"
        info = admin("/snapshots", params={"name": "e2e-checkpoint"}).json()
        assert [s["snapshotID"] for s in info] == [snap.snapshot_id]
        assert info[0]["kind"] == "filesystem" and info[0]["memory"] is False, info
        # The original changes after the snapshot; that is not in it.
        orig.files.write("/home/user/state.txt", "after")
        # By id and by name.
        a = Sandbox.create(snap.snapshot_id, timeout=120)
        made.append(a)
        b = Sandbox.create("e2e-checkpoint", timeout=120)
        made.append(b)
        assert a.sandbox_id != b.sandbox_id
        for s in (a, b):
            assert read(s, "/home/user/state.txt") == "captured"
            assert s.commands.run("test -e /etc/motd; echo $?").stdout == "1\n", "a deletion is kept"
            assert read(s, "/opt/deep/f") == "root-file\n"
            assert Sandbox.get_info(s.sandbox_id).template_id == snap.snapshot_id
        a.files.write("/home/user/state.txt", "written in a")
        a.files.write("/home/user/only-a.txt", "a")
        assert read(b, "/home/user/state.txt") == "captured"
        assert read(orig, "/home/user/state.txt") == "after"
        assert not b.files.exists("/home/user/only-a.txt")
        assert not orig.files.exists("/home/user/only-a.txt")
        # A snapshot of a sandbox made from a snapshot carries both layers.
        a_snap = a.create_snapshot()
        assert a_snap.names == []
        c = Sandbox.create(a_snap.snapshot_id, timeout=120)
        made.append(c)
        assert read(c, "/home/user/state.txt") == "written in a"
        assert c.commands.run("test -e /etc/motd; echo $?").stdout == "1\n"
        # Listing: all, per sandbox, by name.
        ids = lambda page: [s.snapshot_id for s in page.next_items()]  # noqa: E731
        assert {snap.snapshot_id, a_snap.snapshot_id} <= set(ids(Sandbox.list_snapshots()))
        assert ids(orig.list_snapshots()) == [snap.snapshot_id]
        assert ids(Sandbox.list_snapshots(sandbox_id=a.sandbox_id)) == [a_snap.snapshot_id]
        assert ids(Sandbox.list_snapshots(name="e2e-checkpoint")) == [snap.snapshot_id]
        # In use: not deleted, and the answer says by whom.
        busy = httpx.delete(f"{URL}/templates/{snap.snapshot_id}", headers=ADMIN)
        assert busy.status_code == 409 and a.sandbox_id in busy.text, busy.text
        for s in made:
            s.kill()
        assert Sandbox.delete_snapshot(a_snap.snapshot_id) is True
        assert Sandbox.delete_snapshot("e2e-checkpoint") is True, "by name"
        assert not snapshot_dir(snap.snapshot_id).exists(), "the files are gone"
        assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        gone = httpx.post(f"{URL}/sandboxes", headers=ADMIN,
                          json={"templateID": snap.snapshot_id})
        assert gone.status_code == 404 and snap.snapshot_id in gone.text, gone.text
    finally:
        for s in made + [orig]:
            s.kill()


def test_fork_keeps_the_original_running(paddock):
    orig = Sandbox.create(timeout=300)
    forks = []
    try:
        orig.files.write("/home/user/f.txt", "before the fork")
        ticker = orig.commands.run("while true; do date +%s%N > /tmp/tick; sleep 0.1; done", background=True)
        forks = orig.fork(count=2, timeout=120)
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
        assert len({f.sandbox_id for f in forks} | {orig.sandbox_id}) == 3
        # The original runs on, its process too.
        assert Sandbox.get_info(orig.sandbox_id).state.value == "running"
        assert ticker.pid in [p.pid for p in orig.commands.list()]
        t1 = read(orig, "/tmp/tick")
        orig.commands.run("sleep 0.3")
        assert read(orig, "/tmp/tick") != t1
        for f in forks:
            assert read(f, "/home/user/f.txt") == "before the fork"
        forks[0].files.write("/home/user/f.txt", "fork 0")
        orig.files.write("/home/user/f.txt", "original")
        assert read(forks[1], "/home/user/f.txt") == "before the fork"
        assert read(orig, "/home/user/f.txt") == "original"
        # The class form, on a paused original (allowed; it stays paused).
        orig.pause()
        more = Sandbox.fork(orig.sandbox_id, count=1)
        forks += more
        assert read(more[0], "/home/user/f.txt") == "original"
        assert Sandbox.get_info(orig.sandbox_id).state.value == "paused"
        # A fork of a fork sees its parent's files.
        grand = forks[0].fork()
        forks += grand
        assert read(grand[0], "/home/user/f.txt") == "fork 0"
    finally:
        for s in forks + [orig]:
            if isinstance(s, Sandbox):
                s.kill()


def test_bad_input_is_refused_clearly(paddock):
    h = ADMIN
    sbx = Sandbox.create(timeout=120)
    try:
        for count in (0, 21, "2"):
            r = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/fork", headers=h, json={"count": count})
            assert r.status_code == 400, (count, r.text)
        r = httpx.post(f"{URL}/sandboxes/nope/fork", headers=h, json={})
        assert r.status_code == 404
        r = httpx.post(f"{URL}/sandboxes/nope/snapshots", headers=h, json={})
        assert r.status_code == 404
        for name, status in (("base", 409), ("snap-x", 400), ("has space", 400)):
            r = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/snapshots", headers=h, json={"name": name})
            assert r.status_code == status, (name, r.text)
        r = httpx.delete(f"{URL}/templates/no-such-snapshot", headers=h)
        assert r.status_code == 404 and "no-such-snapshot" in r.text
        r = httpx.delete(f"{URL}/templates/base", headers=h)
        assert r.status_code == 400 and "template" in r.text
        r = httpx.post(f"{URL}/sandboxes", headers=h, json={"templateID": "snap-missing"})
        assert r.status_code == 404 and "snap-missing" in r.text
        r = httpx.get(f"{URL}/snapshots", headers=h, params={"limit": 0})
        assert r.status_code == 400
        # A name is taken once per team.
        first = sbx.create_snapshot(name="twice")
        r = httpx.post(f"{URL}/sandboxes/{sbx.sandbox_id}/snapshots", headers=h, json={"name": "twice"})
        assert r.status_code == 409, r.text
        assert Sandbox.delete_snapshot(first.snapshot_id)
    finally:
        sbx.kill()


def test_snapshots_belong_to_their_team_and_count_against_its_quota(paddock):
    red = admin("/api-keys", "POST", json={"team": "snap-red", "maxSnapshots": 1}).json()["key"]
    blue = admin("/api-keys", "POST", json={"team": "snap-blue"}).json()["key"]
    sbx = Sandbox.create(timeout=120, api_key=red)
    try:
        snap = sbx.create_snapshot(name="red-one")
        with pytest.raises(Exception, match="at most 1 snapshots"):
            sbx.create_snapshot()
        # Blue sees nothing of red's, by id or by name.
        assert Sandbox.list_snapshots(api_key=blue).next_items() == []
        assert Sandbox.delete_snapshot(snap.snapshot_id, api_key=blue) is False
        for key in (snap.snapshot_id, "red-one"):
            r = httpx.post(f"{URL}/sandboxes", headers={"X-API-Key": blue}, json={"templateID": key})
            assert r.status_code == 404, r.text
        # Blue may use the same name for its own.
        blue_sbx = Sandbox.create(timeout=120, api_key=blue)
        try:
            assert blue_sbx.create_snapshot(name="red-one").names == ["red-one"]
        finally:
            blue_sbx.kill()
        assert [s.snapshot_id for s in Sandbox.list_snapshots(api_key=red).next_items()] == [snap.snapshot_id]
        assert Sandbox.delete_snapshot(snap.snapshot_id, api_key=red) is True
        sbx.create_snapshot()  # back under the quota
    finally:
        sbx.kill()
        for k in (red, blue):
            for s in Sandbox.list_snapshots(api_key=k).next_items():
                Sandbox.delete_snapshot(s.snapshot_id, api_key=k)


def test_snapshots_survive_a_restart_of_paddock(paddock):
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/user/durable.txt", "kept")
        snap = sbx.create_snapshot(name="durable")
    finally:
        sbx.kill()
    crash_and_restart()
    assert [s.snapshot_id for s in Sandbox.list_snapshots(name="durable").next_items()] == [snap.snapshot_id]
    again = Sandbox.create("durable", timeout=120)
    try:
        assert read(again, "/home/user/durable.txt") == "kept"
    finally:
        again.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id)
    assert not snapshot_dir(snap.snapshot_id).exists()

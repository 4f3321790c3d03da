"""`paddock up` killed with SIGKILL in the middle of 50 concurrent creates, then
started again on the same data dir. Every create that got its 201 must have
a live sandbox that answers with the token the 201 carried; every other one
must have left nothing behind: no mount, veth, cgroup, process, state dir or
record. (Except a create paddock finished and recorded whose 201 died on the way
out: that one is kept whole, like any sandbox whose client went away.)"""

import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import threading
import uuid

import httpx
from e2b import Sandbox

from fixtures import ADMIN_KEY, embedded_only, up
from paddock_testing import wait_until

pytestmark = embedded_only("SIGKILLs `paddock up` itself and checks its host resources (mounts, veths, "
                           "cgroups); tests/e2e/test_kubernetes.py kills a manager replica instead")

CREATES = 50
# Kill once this many creates have their 201 (the rest are in flight).
KILL_AFTER = 3
ID = re.compile(r"[a-z0-9]{20}")
# Sandbox cgroups live in `<our cgroup>/paddock/<id>` (paddock up's default parent).
CGROUP = re.compile(r"/paddock/([a-z0-9]{20})(?:/|$)", re.M)
TEMPLATES = ("base", "code-interpreter-v1")


def test_a_crash_under_load_keeps_the_created_and_leaks_nothing(paddock):
    srv = up()
    run = uuid.uuid4().hex[:12]
    created: dict[str, str] = {}  # sandbox id -> access token of its 201
    lock = threading.Lock()

    def create(i):
        try:
            r = httpx.post(f"{srv.url}/v2/sandboxes", headers={"X-API-Key": ADMIN_KEY}, timeout=600,
                           json={"templateID": "base", "timeout": 600, "metadata": {"crash": run}})
        except httpx.TransportError as e:
            return f"transport error: {e!r}"
        if r.status_code == 201:
            body = r.json()
            with lock:
                created[body["sandboxID"]] = body["envdAccessToken"]
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(CREATES) as pool:
        futures = [pool.submit(create, i) for i in range(CREATES)]
        wait_until(lambda: len(created) >= KILL_AFTER, 600, f"{KILL_AFTER} creates to answer 201")
        srv.crash()
        outcomes = [f.result() for f in futures]
    # Cut off: the request reached paddock but no answer came back (a refused connection
    # never reached it).
    cut_off = sum(1 for o in outcomes if isinstance(o, str) and "ConnectError" not in o)
    # Shown with a failure: how far the creates had got when paddock died.
    print(f"{len(created)} creates answered 201 before the kill, {cut_off} were cut off: "
          f"{sorted(map(str, outcomes))}")
    assert cut_off > 0, f"no create was in flight when paddock died: {outcomes}"

    srv.restart()
    try:
        # Settle: the warm pools refill after a restart; once each holds its one sandbox no
        # more are being made, so what exists now is exactly the listed ones plus the pools.
        for t in TEMPLATES:
            srv.wait_pool(t, at_least=1, timeout=300)
        listed = list_all(srv)
        mine = {s["sandboxID"] for s in listed if s["metadata"].get("crash") == run}

        # Every 201 is a live sandbox, reachable with the token it was given.
        assert set(created) <= mine, f"created but gone after the restart: {set(created) - mine}"
        # A create whose record was written while its 201 was still on the way out is kept,
        # as for any client that goes away after asking (its timeout reaps it): paddock cannot
        # know the answer was lost. Only a create cut off mid-answer can be one; it must be
        # whole (running and usable), and the resource checks below hold it like the others.
        unanswered = mine - set(created)
        assert len(unanswered) <= cut_off, (
            f"listed although their create never answered 201: {unanswered} "
            f"(only {cut_off} creates were cut off)")
        for sid in unanswered:
            assert Sandbox.connect(sid).commands.run("echo whole").stdout == "whole\n", sid
        for sid, token in created.items():
            assert next(s for s in listed if s["sandboxID"] == sid)["state"] == "running"
            stat = httpx.post(f"{srv.url}/filesystem.Filesystem/Stat", json={"path": "/"},
                              headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
                                       "X-Access-Token": token}, timeout=60)
            assert stat.status_code == 200, (sid, stat.status_code, stat.text)
            assert Sandbox.connect(sid).commands.run("echo alive").stdout == "alive\n"

        # Nothing else: resources exist for exactly the listed sandboxes and the two pooled ones.
        live = {s["sandboxID"] for s in listed}
        data = pathlib.Path(srv.data)
        cgroups = sandbox_cgroups()
        assert live <= cgroups, f"listed sandboxes without a cgroup: {live - cgroups}"
        pooled = cgroups - live
        assert len(pooled) == len(TEMPLATES), (
            f"cgroups of sandboxes that are neither listed nor pooled: {sorted(pooled)} "
            f"(listed: {sorted(live)})")
        everything = live | pooled
        assert overlay_mounts(data) == everything, "overlay mounts"
        assert stray_mounts(data, everything) == [], "mounts of sandboxes that are gone"
        assert dir_ids(data / "embedded/sandboxes") == everything, "sandbox state dirs"
        assert dir_ids(data / "embedded/run/sandboxes") == everything, "sandbox run dirs"
        assert dir_ids(data / "embedded/run/containers") == everything, "container state dirs"
        veths = sandbox_veths()
        assert len(veths) == len(everything), f"veths on pdkbr0: {veths} for {len(everything)} sandboxes"
        pinned = pinned_neighbours()
        assert len(pinned) == len(everything), (
            f"pinned neighbour entries on pdkbr0: {pinned} for {len(everything)} sandboxes")
        records = {r["id"] for r in json.loads((data / "sandboxes.json").read_text())}
        assert records == live, f"records of sandboxes that are not live: {records - live}"
        # The check below must see what it looks for: every live sandbox's processes.
        every_process = stray_processes(data, set(), srv.proc.pid)
        unseen = {sid for sid in everything if not any(sid in p for p in every_process)}
        assert not unseen, f"the process check sees no process of the live sandboxes {unseen}"
        strays = stray_processes(data, everything, srv.proc.pid)
        assert strays == [], f"processes of sandboxes that are gone: {strays}"
    finally:
        for sid in {s["sandboxID"] for s in list_all(srv) if s["metadata"].get("crash") == run}:
            srv.admin(f"/sandboxes/{sid}", "DELETE")


def list_all(srv):
    """Every sandbox of every team, running or paused (all pages)."""
    out, token = [], None
    while True:
        params = {"limit": 100, **({"nextToken": token} if token else {})}
        r = srv.admin("/v2/sandboxes", params=params)
        assert r.status_code == 200, r.text
        out += r.json()
        token = r.headers.get("x-next-token")
        if not token:
            return out


def sandbox_cgroups() -> set[str]:
    """Ids of the sandbox cgroups under `paddock/` in any hierarchy, v1 or v2."""
    own = [line.split(":", 2)[2].strip().lstrip("/") for line in open("/proc/self/cgroup")]
    root = pathlib.Path("/sys/fs/cgroup")
    mounts = [root] + [d for d in root.iterdir() if d.is_dir() and not d.is_symlink()]
    ids = set()
    for m in mounts:
        for o in own:
            parent = m / o / "paddock"
            if parent.is_dir():
                ids |= {d.name for d in parent.iterdir() if d.is_dir() and ID.fullmatch(d.name)}
    return ids


def mount_points() -> list[str]:
    return [line.split()[1] for line in open("/proc/mounts")]


def overlay_mounts(data: pathlib.Path) -> set[str]:
    """Ids whose overlay root is mounted at `<data>/embedded/run/sandboxes/<id>/rootfs`."""
    pat = re.compile(re.escape(str(data / "embedded/run/sandboxes")) + r"/([a-z0-9]{20})/rootfs$")
    return {m.group(1) for p in mount_points() if (m := pat.match(p))}


def stray_mounts(data: pathlib.Path, keep: set[str]) -> list[str]:
    """Mounts under the data dir that belong to no kept sandbox (templates are shared, not here;
    the run tmpfs itself is Paddock's while it runs)."""
    run = str(data / "embedded/run")
    sandboxes = run + "/sandboxes/"
    return [p for p in mount_points()
            if p.startswith(str(data)) and p != run
            and not any(p.startswith(sandboxes + k + "/") for k in keep)]


def dir_ids(d: pathlib.Path) -> set[str]:
    return {e.name for e in d.iterdir()} if d.is_dir() else set()


def sandbox_veths() -> list[str]:
    """The host ends of sandbox veths: `pdk<8 hex>` on the bridge pdkbr0."""
    out = subprocess.run(["ip", "-o", "link", "show", "master", "pdkbr0"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^\d+: (pdk[0-9a-f]{8})[@:]", out, re.M)


def pinned_neighbours() -> list[str]:
    """The host's permanent neighbour entries on pdkbr0: one per sandbox (its pinned address)."""
    out = subprocess.run(["ip", "-4", "neigh", "show", "dev", "pdkbr0", "nud", "permanent"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def parent_of(pid: str) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def stray_processes(data: pathlib.Path, keep: set[str], paddock_pid: int) -> list[str]:
    """Processes that belong to a sandbox not in `keep`: by their cgroup, or by a root file
    system that is a sandbox's overlay (its upper dir is in the run tmpfs); and container
    helpers of this data dir left running, but the fork server of the live `paddock_pid`."""
    upper = re.compile(re.escape(str(data / "embedded/run/sandboxes")) + r"/([a-z0-9]{20})/")
    strays = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cg = open(f"/proc/{pid}/cgroup").read()
            # The last mount on "/" is the process's root; a sandbox's names its overlay dirs.
            roots = [line for line in open(f"/proc/{pid}/mountinfo") if line.split()[4] == "/"]
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        owners = set(CGROUP.findall(cg))
        if roots and (m := upper.search(roots[-1])):
            owners.add(m.group(1))
        if owners - keep:
            strays.append(f"{pid} {cmd[:120]!r} of {sorted(owners - keep)}")
        if "__paddock-container relay " in cmd and str(data) in cmd:
            # A sandbox's log relay lives as long as its sandbox, in the sandbox's cgroup (so a
            # relay of a sandbox that is gone is caught above); outside any, it has leaked.
            if not owners:
                strays.append(f"{pid} {cmd[:120]!r}: a log relay outside any sandbox's cgroup")
        elif "__paddock-container" in cmd and str(data) in cmd:
            if "__paddock-container serve " in cmd and parent_of(pid) == paddock_pid:
                continue  # the running paddock's own fork server
            strays.append(f"{pid} {cmd[:120]!r}: a container helper outlived its paddock")
    return strays

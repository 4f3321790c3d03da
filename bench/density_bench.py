"""Density of `paddock up`: N idle `base` sandboxes on this host.

Creates N sandboxes with the unmodified E2B SDK from concurrent clients, reports the host
memory each one costs and the creation rate, runs `commands.run("true")` once in every one of
them (p50/p99), kills them all and checks that nothing is left: no record, veth, overlay mount,
cgroup, state dir or process.

Memory is read from a memory cgroup of the bench's own that `paddock up` is started in: the
sandboxes' cgroups nest under it, so it holds paddock, every sandbox process and the kernel
memory they allocate (namespaces, veths, page tables, slab). MemAvailable is printed beside
it, but other work on the host moves that one. The reference, measured the same way in the
same run: N bare `unshare -fmpnu sleep` (new mount, pid, net and uts namespaces holding one
sleeping process, what any container costs at least).

    sudo flock /var/lock/paddock-suites.lock .venv/bin/python bench/density_bench.py [--n 500]

`--n 1000` is the issue's goal. Run it under the suites lock: it fills the host's bridge.
"""

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

from e2b import Sandbox

from paddock_harness import ROOT, Paddock, pct

sys.path.insert(0, str(ROOT / "tests/e2e"))
# The leak checks of the crash test: the same definitions of "left behind".
from test_crash_under_load import (  # noqa: E402
    dir_ids, overlay_mounts, pinned_neighbours, sandbox_veths, stray_processes)

from paddock_testing import wait_until  # noqa: E402

MIB = 1 << 20
V2 = pathlib.Path("/sys/fs/cgroup/cgroup.controllers").is_file()
MEMORY_ROOT = pathlib.Path("/sys/fs/cgroup") if V2 else pathlib.Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """A memory cgroup of this bench (v1 or v2), removed with its children at the end."""

    def __init__(self, name: str):
        self.path = MEMORY_ROOT / name
        self.path.mkdir()

    def usage(self) -> int:
        return int((self.path / ("memory.current" if V2 else "memory.usage_in_bytes")).read_text())

    def stat(self) -> dict[str, int]:
        """anon / file / kernel bytes of the whole subtree."""
        st = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        st = {k: int(v) for k, v in st.items()}
        if V2:
            return {"anon": st["anon"], "file": st["file"], "kernel": st.get("kernel", 0),
                    "shmem": st["shmem"], "file_dirty": st["file_dirty"]}
        kmem = int((self.path / "memory.kmem.usage_in_bytes").read_text())
        return {"anon": st["total_rss"], "file": st["total_cache"], "kernel": kmem,
                "shmem": st["total_shmem"], "file_dirty": st["total_dirty"]}

    def pids(self) -> list[int]:
        out = []
        # os.walk skips a directory that goes while it walks (a sandbox's cgroup removed by
        # a teardown); Path.rglob raised instead.
        for d, _, _ in os.walk(self.path, onerror=lambda e: None):
            try:
                out += [int(x) for x in (pathlib.Path(d) / "cgroup.procs").read_text().split()]
            except OSError:
                continue
        return out

    def remove(self) -> None:
        remove_tree(self.path)


def sandbox_usage(cg: MemoryCgroup, ids: set[str] | None) -> int:
    """Memory charged to the cgroups of the sandboxes `ids` (None: all of them)."""
    total = 0
    for d in (cg.path / "paddock").glob("*"):
        if d.is_dir() and (ids is None or d.name in ids):
            try:
                total += int((d / ("memory.current" if V2 else "memory.usage_in_bytes")).read_text())
            except OSError:
                continue
    return total


def files_of(sandbox_dir: pathlib.Path) -> list[tuple[int, str]]:
    """Files a sandbox holds on the host (its state dir, overlay upper included, not crossing
    into its mounted root), largest first."""
    out = []
    dev = sandbox_dir.stat().st_dev
    for root, dirs, files in os.walk(sandbox_dir):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(root, d)).st_dev == dev]
        for f in files:
            st = os.lstat(os.path.join(root, f))
            out.append((st.st_blocks * 512, os.path.relpath(os.path.join(root, f), sandbox_dir)))
    return sorted(out, reverse=True)


def remove_tree(path: pathlib.Path) -> None:
    """Removes a cgroup subtree, deepest first (sandbox cgroups left behind count as leaks
    in `leftovers`; here they only must not outlive the bench)."""
    dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, path]:
        try:
            d.rmdir()
        except OSError:
            pass


def other_cgroup_trees(name: str) -> list[pathlib.Path]:
    """On cgroup v1, paddock makes its sandboxes' cgroups under the same path in every
    controller (pids, cpu, ...); those trees go too."""
    return [] if V2 else [d / name for d in pathlib.Path("/sys/fs/cgroup").iterdir() if (d / name).is_dir()]


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def slab() -> dict[str, int]:
    """Bytes per slab cache, host-wide (/proc/slabinfo)."""
    out = {}
    for line in open("/proc/slabinfo").readlines()[2:]:
        f = line.split()
        out[f[0]] = int(f[2]) * int(f[3])
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    out = {}
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()
        out[pid] = int(f[11]) + int(f[12])
    return out


def idle_cpu(pids: list[int], paddock_pid: int, seconds: float) -> tuple[float, float]:
    """CPU used while idle, in % of one core: (paddock up itself, everything else)."""
    a = cpu_ticks(pids)
    time.sleep(seconds)
    b = cpu_ticks(pids)
    hz = os.sysconf("SC_CLK_TCK")
    used = {p: b[p] - a[p] for p in b if p in a}
    own = used.pop(paddock_pid, 0)
    return own / hz / seconds * 100, sum(used.values()) / hz / seconds * 100


def fd_kinds(pid: int) -> collections.Counter:
    """Open files of `pid` by kind: socket, pipe, anon_inode:[pidfd], /dev/loop, ..."""
    kinds = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target and not target.startswith("anon_inode")
              else target.rstrip("0123456789") if target.startswith("/dev/") else
              target if target.startswith("anon_inode") else "file"] += 1
    return kinds


def processes(pids: list[int]) -> dict[str, list[int]]:
    """Per command name: [processes, threads, RSS KiB, PSS KiB]."""
    by = collections.defaultdict(lambda: [0, 0, 0, 0])
    for pid in pids:
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
            rollup = dict(line.split(":", 1) for line in open(f"/proc/{pid}/smaps_rollup").readlines()[1:])
        except (OSError, ValueError):
            continue  # exited meanwhile, or a kernel thread
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        if comm == "paddock" and b"relay" in cmd:
            comm = "paddock (log relay)"
        row = by[comm]
        row[0] += 1
        row[1] += int(status["Threads"])
        row[2] += int(rollup["Rss"].split()[0])
        row[3] += int(rollup["Pss"].split()[0])
    return dict(by)


def print_processes(title: str, by: dict[str, list[int]], n: int) -> None:
    print(f"   {title}")
    print(f"   {'command':24} {'procs':>6} {'threads':>8} {'RSS MiB':>9} {'PSS MiB':>9} {'PSS KiB/sandbox':>16}")
    for comm, (procs, threads, rss, pss) in sorted(by.items(), key=lambda kv: -kv[1][3]):
        print(f"   {comm:24} {procs:6} {threads:8} {rss / 1024:9.1f} {pss / 1024:9.1f} {pss / max(n, 1):16.0f}")


def reference(n: int, name: str) -> dict:
    """N `unshare -fmpnu sleep` in a memory cgroup of their own: its usage per namespace set."""
    cg = MemoryCgroup(name)
    procs = []
    try:
        before, avail = cg.usage(), mem_available()
        join = f"echo $$ > {cg.path}/cgroup.procs && exec unshare -fmpnu sleep infinity"
        for _ in range(n):
            procs.append(subprocess.Popen(["sh", "-c", join], start_new_session=True))
        # unshare forks: each holds itself and its sleeping child.
        wait_until(lambda: len(cg.pids()) >= 2 * n, 300, f"{n} unshare namespaces", interval=0.2)
        time.sleep(2)
        per = (cg.usage() - before) / n
        per_avail = (avail - mem_available()) / n
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait()
        wait_until(lambda: not cg.pids(), 120, "the unshare namespaces to end", interval=0.2)
        cg.remove()
    return {"per": per, "per_avail": per_avail}


def create_all(n: int, clients: int, client: str = "sdk") -> tuple[list[Sandbox], list[str], float, list[float], list[float]]:
    """`client` "sdk": each create is `Sandbox.create()`. "http": a bare `POST /sandboxes` on a
    kept-alive connection per client thread, so the clients' own CPU (the SDK's is several ms
    of Python per create, on the same cores as the server) does not bound the rate measured;
    the SDK connects to each sandbox afterwards, outside the timing."""
    local = threading.local()
    url = urllib.parse.urlparse(os.environ["E2B_API_URL"])
    body = json.dumps({"templateID": "base", "timeout": 3600})
    headers = {"X-API-Key": os.environ["E2B_API_KEY"], "Content-Type": "application/json"}

    def post() -> str:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        try:
            local.conn.request("POST", "/sandboxes", body, headers)
            r = local.conn.getresponse()
            text = r.read()
        except (OSError, http.client.HTTPException):
            local.conn.close()
            local.conn = None
            raise
        if r.status != 201:
            raise RuntimeError(f"POST /sandboxes: {r.status} {text[:200]!r}")
        return json.loads(text)["sandboxID"]

    done_at: list[float] = []

    def one(_):
        t0 = time.perf_counter()
        try:
            made = Sandbox.create(timeout=3600) if client == "sdk" else post()
            end = time.perf_counter()
            done_at.append(end - start)
            return made, None, (end - t0) * 1000
        except Exception as e:  # noqa: BLE001 - the failure is what we report
            return None, f"{type(e).__name__}: {e}", None

    start = t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, range(n)))
    wall = time.perf_counter() - t0
    made = [s for s, _, _ in results if s]
    if client == "http":
        with concurrent.futures.ThreadPoolExecutor(clients) as ex:
            made = list(ex.map(Sandbox.connect, made))
    return (made, [e for _, e, _ in results if e], wall, [ms for _, _, ms in results if ms is not None],
            sorted(done_at))


def host_busy() -> float:
    """CPU seconds all of this host's cores spent busy so far (/proc/stat: all but idle and
    iowait). The memory cgroup is no CPU account on cgroup v1, so the server's share is the
    host's minus this process's (the clients): read it on a quiet host."""
    ticks = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def rate_by_tenths(done_at: list[float]) -> str:
    """Creates/s in each tenth of the run (by count): a rate that falls as sandboxes pile up
    shows a cost that grows with their number."""
    n = len(done_at)
    if n < 10:
        return ""
    cuts = [0.0] + [done_at[n * k // 10 - 1] for k in range(1, 11)]
    return ", ".join(f"{(n * (k + 1) // 10 - n * k // 10) / max(cuts[k + 1] - cuts[k], 1e-9):.0f}"
                     for k in range(10))


def leftovers(p: Paddock, cg: MemoryCgroup, ours: set[str]) -> dict[str, int]:
    """What is left of the sandboxes in `ours`, by kind; sandboxes paddock keeps on its own
    (the warm pool) are no leak."""
    data = pathlib.Path(p.data)
    sandboxes_dir = data / "embedded/sandboxes"
    others = dir_ids(sandboxes_dir) - ours
    listed = {s["sandboxID"] for s in p.admin("/v2/sandboxes").json()}
    cgroups = {d.name for d in (cg.path / "paddock").glob("*") if d.is_dir()} if (cg.path / "paddock").is_dir() else set()
    return {
        "records": len(listed & ours),
        "state dirs": len(dir_ids(sandboxes_dir) & ours),
        "run dirs": len(dir_ids(data / "embedded/run/sandboxes") & ours),
        "container state dirs": len(dir_ids(data / "embedded/run/containers") & ours),
        "overlay mounts": len(overlay_mounts(data) & ours),
        "cgroups": len(cgroups & ours),
        "veths": max(0, len(sandbox_veths()) - len(others)),
        "neighbour entries": max(0, len(pinned_neighbours()) - len(others)),
        "processes": len(stray_processes(data, others, p.proc.pid)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="idle sandboxes (the issue's goal: 1000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent SDK clients creating them")
    ap.add_argument("--pool-size", type=int, default=4)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before memory is read")
    ap.add_argument("--client", choices=["sdk", "http"], default="sdk",
                    help="create with Sandbox.create() (sdk) or a bare POST /sandboxes (http)")
    a = ap.parse_args()
    tag = f"pdk-density-{os.getpid()}"

    print(f"== reference: {a.n} x `unshare -fmpnu sleep infinity` ==")
    ref = reference(a.n, f"{tag}-ref")
    print(f"   {ref['per'] / 1024:8.0f} KiB each (cgroup), {ref['per_avail'] / 1024:8.0f} KiB each (MemAvailable)")

    print(f"== paddock up: {a.n} idle `base` sandboxes, {a.clients} {a.client} clients, pool of {a.pool_size} ==")
    cg = MemoryCgroup(f"{tag}-up")
    p = None
    sandboxes: list[Sandbox] = []
    try:
        p = Paddock(pool_size=a.pool_size, memory_cgroup=cg.path)
        if a.pool_size:
            p.wait_pool(at_least=a.pool_size)
        time.sleep(a.settle)
        paddock_pid = p.proc.pid
        before = {"usage": cg.usage(), "stat": cg.stat(), "avail": mem_available(), "slab": slab(),
                  "procs": processes(cg.pids()), "rest": cg.usage() - sandbox_usage(cg, None)}

        cpu0 = host_busy(), os.times()
        sandboxes, errors, wall, create_ms, done_at = create_all(a.n, a.clients, a.client)
        cpu1 = host_busy(), os.times()
        ok = len(sandboxes)
        print(f"   created {ok}/{a.n} in {wall:.1f} s: {ok / wall:.1f} creates/s; "
              f"create p50 {pct(create_ms, 50):.0f} ms, p99 {pct(create_ms, 99):.0f} ms")
        print(f"   creates/s by tenths of the run: {rate_by_tenths(done_at)}")
        clients_cpu = (cpu1[1].user + cpu1[1].system) - (cpu0[1].user + cpu0[1].system)
        print(f"   host CPU per create: {(cpu1[0] - cpu0[0]) / max(ok, 1) * 1000:.1f} ms, of it the clients "
              f"(this process) {clients_cpu / max(ok, 1) * 1000:.1f} ms")
        for e, count in collections.Counter(errors).most_common(5):
            print(f"   error x{count}: {e[:300]}")
        if a.pool_size:
            p.wait_pool(at_least=a.pool_size, timeout=600)
        own_cpu, sandboxes_cpu = idle_cpu(cg.pids(), paddock_pid, a.settle)
        after = {"usage": cg.usage(), "stat": cg.stat(), "avail": mem_available(), "slab": slab(),
                 "procs": processes(cg.pids()), "rest": cg.usage() - sandbox_usage(cg, None)}
        ours = {s.sandbox_id for s in sandboxes}
        charged = sandbox_usage(cg, ours)
        n = max(ok, 1)
        per = (after["usage"] - before["usage"]) / n
        per_avail = (before["avail"] - after["avail"]) / n
        print(f"   host memory per sandbox: {per / MIB:.2f} MiB (cgroup: "
              + ", ".join(f"{k} {(after['stat'][k] - before['stat'][k]) / n / 1024:.0f} KiB"
                          for k in ("anon", "file", "kernel", "shmem", "file_dirty"))
              + f"); MemAvailable: {per_avail / MIB:.2f} MiB")
        # The warm pools' sandboxes come and go meanwhile: counting only our sandboxes'
        # cgroups, plus what grew outside any sandbox's (paddock itself, kernel objects it
        # made), leaves them out.
        own = (charged + after["rest"] - before["rest"]) / n
        print(f"   our sandboxes only: {own / MIB:.2f} MiB each = their cgroups {charged / n / MIB:.2f} MiB "
              f"+ outside them {(after['rest'] - before['rest']) / n / MIB:.2f} MiB")
        print(f"   reference: {ref['per'] / MIB:.2f} MiB each; paddock / reference: {own / ref['per']:.1f}x")
        if sandboxes:
            sid = sandboxes[0].sandbox_id
            embedded = pathlib.Path(p.data) / "embedded"
            # On disk (image, log) and on the run tmpfs (bundle, boot id, libcontainer's state).
            held = sorted(
                [(b, f"{where}/{f}") for where, d in [("sandboxes", embedded / "sandboxes" / sid),
                                                       ("run", embedded / "run/sandboxes" / sid),
                                                       ("run", embedded / "run/containers" / sid)]
                 if d.is_dir() for b, f in files_of(d)], reverse=True)
            print(f"   files of one sandbox on the host: {sum(b for b, _ in held) / 1024:.0f} KiB; largest: "
                  + ", ".join(f"{f} {b / 1024:.0f} KiB" for b, f in held[:6]))
        with open(f"/proc/{paddock_pid}/status") as f:
            st = dict(line.split(":", 1) for line in f)
        print(f"   paddock up itself: {int(st['VmRSS'].split()[0]) / 1024:.1f} MiB RSS, {int(st['Threads'])} threads, "
              f"{len(os.listdir(f'/proc/{paddock_pid}/fd'))} fds ("
              + ", ".join(f"{k} {v}" for k, v in fd_kinds(paddock_pid).most_common(5)) + ")")
        print(f"   CPU while idle: paddock up {own_cpu:.1f} % of a core, the sandboxes' processes {sandboxes_cpu:.1f} %")
        print_processes("processes in the cgroup before", before["procs"], 1)
        print_processes(f"processes in the cgroup with {ok} sandboxes", after["procs"], n)
        grown = sorted(((after["slab"].get(k, 0) - v, k) for k, v in before["slab"].items()), reverse=True)[:8]
        print("   slab growth, host-wide: " + ", ".join(f"{k} {d / n / 1024:.1f} KiB" for d, k in grown))

        lat = []
        failed = 0
        for sbx in sandboxes:
            t0 = time.perf_counter()
            try:
                sbx.commands.run("true")
                lat.append((time.perf_counter() - t0) * 1000)
            except Exception as e:  # noqa: BLE001 - counted
                failed += 1
                print(f"   run failed in {sbx.sandbox_id}: {e}")
        if lat:
            print(f"   commands.run('true') in each: p50 {pct(lat, 50):.1f} ms, p90 {pct(lat, 90):.1f} ms, "
                  f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms, {failed} failed")

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(a.clients) as ex:
            list(ex.map(lambda s: s.kill(), sandboxes))
        print(f"   killed {len(sandboxes)} in {time.perf_counter() - t0:.1f} s")
        sandboxes = []
        left = {}

        def clean():
            left.update(leftovers(p, cg, ours))
            return not any(left.values())

        try:
            wait_until(clean, 120, "every killed sandbox's resources to go", interval=0.5)
        except Exception:  # noqa: BLE001 - reported below
            pass
        print("   left after kill: " + ", ".join(f"{k} {v}" for k, v in left.items())
              + ("  (nothing left)" if not any(left.values()) else "  LEAK"))
    finally:
        with concurrent.futures.ThreadPoolExecutor(a.clients) as ex:
            list(ex.map(lambda s: s.kill(), sandboxes))
        if p is not None:
            p.stop()
        cg.remove()
        for d in other_cgroup_trees(f"{tag}-up"):
            remove_tree(d)


if __name__ == "__main__":
    main()

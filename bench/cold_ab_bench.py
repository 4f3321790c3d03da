"""Cold creates, builds side by side: for each build a `paddock up` with no pool, N
sequential Sandbox.create() -> commands.run('true') -> kill; `paddock up`'s CPU per create
(utime + stime of it and of the children it reaped, e.g. `nft`, and of its live children
with theirs, e.g. the container fork server, from /proc/PID/stat) and
the create phases from its debug log (`phase: ... ms=`). Builds alternate round by round;
`--perf` records `perf record -a -g` around each build's first round
(/var/tmp/cold-ab-perf-NAME.data).

    sudo PADDOCK_BENCH_RUNTIME_BIN=<runtime> .venv/bin/python bench/cold_ab_bench.py \
        --runs 30 --rounds 2 main=<paddock of main> new=<paddock of this build>[,<its runtime>]

(a build given as PADDOCK,RUNTIME runs its own runtime; the others PADDOCK_BENCH_RUNTIME_BIN's)
"""
import argparse, os, pathlib, re, statistics, subprocess, sys, time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
os.environ.setdefault("RUST_LOG", "info,paddock_embedded::infra::create=debug,paddock_embedded::network=debug")
from paddock_harness import Paddock, row, pct  # noqa
from e2b import Sandbox

TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_RUNTIME = os.environ.get("PADDOCK_BENCH_RUNTIME_BIN")

def own_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    # fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return int(f[1]), sum(int(x) for x in f[11:15]) / TCK

def cpu(pid):
    """`paddock up`'s CPU and its reaped children's, plus that of its live children (a
    long-lived helper such as the container fork server reaps its own children)."""
    total = own_cpu(pid)[1]
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid, c = own_cpu(p)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            total += c
    return total

def phases(lines):
    out = {}
    for line in lines:
        line = re.sub(r'\x1b\[[0-9;]*m', '', line)
        m = re.search(r'phase: (.*?)\s+ms=([0-9.]+)', line)
        if m:
            out.setdefault(m.group(1).strip(), []).append(float(m.group(2)))
    return out

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=30)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--perf", action="store_true", help="perf record -a -g around each run")
ap.add_argument("builds", nargs="+")
a = ap.parse_args()
builds = [b.split("=", 1) for b in a.builds]
res = {n: {"tti": [], "cpu": [], "ph": {}} for n, _ in builds}
for rnd in range(a.rounds):
    for name, binary in builds:
        binary, _, runtime = binary.partition(",")
        os.environ["PADDOCK_BENCH_BIN"] = binary
        if runtime or DEFAULT_RUNTIME:
            os.environ["PADDOCK_BENCH_RUNTIME_BIN"] = runtime or DEFAULT_RUNTIME
        else:
            os.environ.pop("PADDOCK_BENCH_RUNTIME_BIN", None)
        p = Paddock(pool_size=0)
        perf = None
        try:
            # one warm-up create (first create loads caches)
            s = Sandbox.create(); s.commands.run("true"); s.kill()
            open(p.log_path, "a").write("=== measured ===\n")
            if a.perf and rnd == 0:
                perf = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o",
                                         f"/var/tmp/cold-ab-perf-{name}.data"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            c0 = cpu(p.proc.pid)
            for _ in range(a.runs):
                t0 = time.perf_counter()
                s = Sandbox.create(); s.commands.run("true")
                res[name]["tti"].append((time.perf_counter() - t0) * 1000)
                s.kill()
            c1 = cpu(p.proc.pid)
            if perf:
                perf.send_signal(2); perf.wait()
            res[name]["cpu"].append((c1 - c0) * 1000 / a.runs)
            text = open(p.log_path, errors="replace").read().split("=== measured ===\n", 1)[1]
            for k, v in phases(text.splitlines()).items():
                res[name]["ph"].setdefault(k, []).extend(v)
            print(f"round {rnd+1} {name}: paddock CPU/create {(c1-c0)*1000/a.runs:.1f} ms, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            p.stop()
print("== summary ==")
ref = res[builds[0][0]]
for name, _ in builds:
    r = res[name]
    print(row(f"{name}: TTI cold", r["tti"], ref["tti"]))
    print(f"{name}: paddock CPU per create (ms, per round): {[round(x,1) for x in r['cpu']]}")
    for k in sorted(r["ph"]):
        v = r["ph"][k]
        print(f"  {name}: phase {k:50} n={len(v):3} p50 {statistics.median(v):8.2f} p90 {pct(v,90):8.2f} ms")

"""Gateway throughput and latency: wrk against an HTTP server inside a
sandbox (the runtime's `GET /health` on port 49983), three ways in the same
run with the same load: directly, through nginx (Debian's package, keepalive
upstream), and through Paddock's gateway (header routing). Rounds alternate
so that noise on this shared machine hits all three alike.

    sudo .venv/bin/python bench/gateway_bench.py [--duration 10] [--connections 32] [--rounds 3]

`--paddock BIN --runtime BIN` measure those builds instead of building release ones;
`--baseline BIN --baseline-runtime BIN` add a second `paddock up` of another build (the one
before a change) on a bridge and subnet of its own, measured in the same alternating rounds
(its sandbox is another one, made the same way), so before and after share the run's noise.
`--perf FILE` records a profile of `paddock up` (`perf record -g`) during its first round
(the baseline's goes to FILE.baseline).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import pathlib

from e2b import Sandbox

from paddock_harness import ADMIN_KEY, Paddock
from paddock_testing import PaddockUp

NGINX_PORT = 3390
# The baseline's own bridge and subnet: two instances on one host need their own.
BASELINE_NET = ["--bridge", "pdkgwbase", "--subnet", "10.219.8.0/24"]


def need(tool, package):
    if shutil.which(tool) is None:
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def nginx(upstream: str):
    d = pathlib.Path(tempfile.mkdtemp(prefix="paddock-nginx-"))
    (d / "nginx.conf").write_text(f"""
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream sandbox {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT};
    location / {{
      proxy_pass http://sandbox;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"])


def to_ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def cpu_seconds(pids) -> float:
    """User + system CPU time of `pids` and their threads, seconds (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def nginx_pids(master: subprocess.Popen) -> list[int]:
    """The master and its workers."""
    kids = pathlib.Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return [master.pid, *map(int, kids)]


def wrk(url, headers, duration, connections):
    cmd = ["wrk", "--latency", "-t2", f"-c{connections}", f"-d{duration}s"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: to_ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "90", "99")}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, lat, int(bad.group(1)) if bad else 0, errors.group(1) if errors else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paddock", help="a paddock binary to measure (else a release build)")
    ap.add_argument("--runtime", help="the paddock-runtime binary to go with --paddock")
    ap.add_argument("--baseline", help="another paddock binary to measure in the same rounds")
    ap.add_argument("--baseline-runtime", help="the paddock-runtime binary to go with --baseline")
    ap.add_argument("--perf", help="record a profile of paddock up to this file (first round)")
    a = ap.parse_args()
    if bool(a.paddock) != bool(a.runtime):
        ap.error("--paddock and --runtime go together")
    if bool(a.baseline) != bool(a.baseline_runtime):
        ap.error("--baseline and --baseline-runtime go together")
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    if a.paddock:
        # The harness measures given builds instead of building when these name them.
        os.environ.update(PADDOCK_BENCH_BIN=a.paddock, PADDOCK_BENCH_RUNTIME_BIN=a.runtime)
    p = Paddock(pool_size=1)
    base = None
    ng = None
    sandboxes = []
    try:
        sbx = Sandbox.create(timeout=3600)
        sandboxes.append(sbx)
        ip = sbx.commands.run("hostname -I").stdout.split()[0]
        ng = nginx(f"{ip}:49983")
        routed = ["E2b-Sandbox-Port: 49983"]
        # name: (url, headers, the paddock process to profile, its profile's file)
        ways = {
            "direct (no proxy)": (f"http://{ip}:49983/health", [], None, None),
            "nginx 1.22 (keepalive upstream)": (f"http://127.0.0.1:{NGINX_PORT}/health", [], None, None),
            "paddock gateway (header routing)": (
                f"{p.url}/health", [f"E2b-Sandbox-Id: {sbx.sandbox_id}", *routed], p.proc, a.perf),
        }
        if a.baseline:
            base = PaddockUp(pathlib.Path(a.baseline), pathlib.Path(a.baseline_runtime), ADMIN_KEY,
                             pool_size=1, extra=BASELINE_NET, prefix="paddock-bench-base-").start()
            other = Sandbox.create(timeout=3600, api_key=ADMIN_KEY, api_url=base.url, sandbox_url=base.url)
            sandboxes.append(other)
            ways["paddock baseline (header routing)"] = (
                f"{base.url}/health", [f"E2b-Sandbox-Id: {other.sandbox_id}", *routed], base.proc,
                f"{a.perf}.baseline" if a.perf else None)
        results = {k: [] for k in ways}
        for i in range(a.rounds):
            # Every other round in reverse, so no way always follows the same one.
            order = list(ways) if i % 2 == 0 else list(reversed(ways))
            for name in order:
                url, headers, proc, profile = ways[name]
                perf = None
                if profile and i == 0:
                    need("perf", "linux-perf")
                    perf = subprocess.Popen(["perf", "record", "-g", "-F", "1999", "-o", profile,
                                             "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
                pids = [proc.pid] if proc else nginx_pids(ng) if name.startswith("nginx") else []
                cpu = cpu_seconds(pids)
                rps, lat, bad, errors = wrk(url, headers, a.duration, a.connections)
                # The proxy's own CPU per request: robust to the noise that moves req/s on a
                # shared machine (the proxy's work per request does not change with it).
                cpu_us = (cpu_seconds(pids) - cpu) / (rps * a.duration) * 1e6 if pids else None
                results[name].append((rps, lat, bad, errors, cpu_us))
                if perf:
                    perf.send_signal(2)
                    perf.wait()
        print(f"wrk -t2 -c{a.connections} -d{a.duration}s, {a.rounds} alternating rounds; medians over rounds")
        print(f"{'path':36} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
              f"{'CPU us/req':>10}  vs nginx")
        ref = statistics.median(r[0] for r in results["nginx 1.22 (keepalive upstream)"])
        for name, rs in results.items():
            rps = statistics.median(r[0] for r in rs)
            med = {q: statistics.median(r[1][q] for r in rs) for q in ("50", "90", "99")}
            bad = sum(r[2] for r in rs)
            cpu = statistics.median(r[4] for r in rs) if rs[0][4] is not None else None
            cpu_text = f"{cpu:10.1f}" if cpu is not None else f"{'-':>10}"
            print(f"{name:36} {rps:9.0f} {med['50']:8.2f} {med['90']:8.2f} {med['99']:8.2f} {bad:8} "
                  f"{cpu_text}  {rps / ref:5.2f}x throughput")
            for r in rs:
                if r[3]:
                    print(f"  socket errors: {r[3]}")
        for s in sandboxes:
            s.kill()
    finally:
        if ng:
            ng.terminate()
            ng.wait()
        p.stop()
        if base:
            base.stop()
            base.remove_data()


if __name__ == "__main__":
    main()

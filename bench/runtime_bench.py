"""Runtime benchmark: the unmodified E2B Python SDK against paddock-runtime.

1. Round trip of commands.run("true"), next to spawning `sh -c true`
   directly from this process (the floor: no protocol, no network), and
   `bash -l -c true` (the shell the SDK asks the runtime for).
2. Upload and download of a 100 MiB file, next to `cat FILE > /dev/null`.

Run: .venv/bin/python bench/runtime_bench.py [--runs 200]
(starts its own runtime with hack/scratch-runtime; needs root).
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/sdk"))
os.environ["E2B_DEBUG"] = "true"

from conftest import RuntimeProcess  # noqa: E402


def pct(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def row(name, samples_ms):
    return f"| {name:<46} | {pct(samples_ms, 50):>9.2f} | {pct(samples_ms, 99):>9.2f} | {statistics.mean(samples_ms):>9.2f} |"


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()

    from e2b import Sandbox

    rt = RuntimeProcess(49983)
    try:
        sbx = Sandbox.create()
        for _ in range(10):  # warm connections
            sbx.commands.run("true")
        # Interleave the two so machine noise hits both alike.
        sdk, floor, login = [], [], []
        clean_env = {"HOME": "/tmp", "PATH": "/usr/bin:/bin"}
        for _ in range(args.runs):
            sdk += timed(lambda: sbx.commands.run("true"), 1)
            floor += timed(lambda: subprocess.run(["sh", "-c", "true"], check=True), 1)
            # What the SDK actually asks for: a login bash (reads /etc/profile).
            login += timed(lambda: subprocess.run(["bash", "-l", "-c", "true"], env=clean_env, check=True), 1)
        print(f"\n## commands.run(\"true\") round trip, {args.runs} runs (ms)\n")
        print(f"| {'case':<46} | {'p50':>9} | {'p99':>9} | {'mean':>9} |")
        print(f"|{'-' * 48}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
        print(row("SDK commands.run('true') via paddock-runtime", sdk))
        print(row("local subprocess sh -c true (floor)", floor))
        print(row("local subprocess bash -l -c true (same shell)", login))
        print(f"\nratio p50 runtime/floor: {pct(sdk, 50) / pct(floor, 50):.2f}x, "
              f"runtime/same-shell: {pct(sdk, 50) / pct(login, 50):.2f}x")

        size = args.mib * 1024 * 1024
        data = os.urandom(size)
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
            local = f.name
        up, down, cat = [], [], []
        for _ in range(3):
            t = time.perf_counter()
            with open(local, "rb") as fh:
                sbx.files.write("/tmp/bench.bin", fh)
            up.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = sbx.files.read("/tmp/bench.bin", format="bytes")
            down.append(time.perf_counter() - t)
            assert len(got) == size
            t = time.perf_counter()
            subprocess.run(f"cat {local} > /dev/null", shell=True, check=True)
            cat.append(time.perf_counter() - t)
        os.unlink(local)
        mb = size / 1e6
        print(f"\n## {args.mib} MiB transfer, median of 3 (MB/s)\n")
        print(f"| {'case':<46} | {'MB/s':>9} |")
        print(f"|{'-' * 48}|{'-' * 11}|")
        print(f"| {'upload   files.write (octet-stream)':<46} | {mb / statistics.median(up):>9.0f} |")
        print(f"| {'download files.read':<46} | {mb / statistics.median(down):>9.0f} |")
        print(f"| {'cat FILE > /dev/null (floor)':<46} | {mb / statistics.median(cat):>9.0f} |")
    finally:
        rt.stop()


if __name__ == "__main__":
    main()

"""Code interpreter benchmark: run_code("1+1") through the unmodified
e2b-code-interpreter SDK and paddock-runtime, next to the same execution
sent with jupyter_client straight to the same kernel (the floor).

Run: .venv/bin/python bench/code_interpreter_bench.py [--runs 200]
(starts its own runtime with hack/scratch-runtime; needs root).
"""

import argparse
import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/sdk"))
os.environ["E2B_DEBUG"] = "true"

from conftest import DEFAULT_KERNEL_PYTHON, RuntimeProcess  # noqa: E402

FLOOR = r"""
import json, sys, time
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=30)
out = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    msg_id = kc.execute("1+1")
    while True:
        m = kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status" \
                and m["content"]["execution_state"] == "idle":
            break
    out.append((time.perf_counter() - t) * 1000)
kc.stop_channels()
print(json.dumps(out))
"""


def pct(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def kernel_connection_file():
    """The default kernel's connection file, seen through its process's root
    (the runtime keeps it in a private /tmp)."""
    for proc in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = open(proc).read().split("\0")
        except OSError:
            continue
        if "ipykernel_launcher" in args:
            pid = proc.split("/")[2]
            path = args[args.index("-f") + 1]
            return f"/proc/{pid}/root{path}"
    raise RuntimeError("no kernel process found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    from e2b_code_interpreter import Sandbox

    rt = RuntimeProcess(49983)
    try:
        sbx = Sandbox.create()
        assert sbx.run_code("1+1").text == "2"
        conn = kernel_connection_file()
        sdk = []
        for _ in range(args.runs):
            t = time.perf_counter()
            assert sbx.run_code("1+1").text == "2"
            sdk.append((time.perf_counter() - t) * 1000)
        floor = json.loads(subprocess.run(
            [os.environ.get("PADDOCK_KERNEL_PYTHON", str(DEFAULT_KERNEL_PYTHON)), "-c", FLOOR, conn, str(args.runs)],
            check=True, capture_output=True, text=True).stdout)
        print(f"\n## run_code(\"1+1\"), {args.runs} runs (ms)\n")
        print(f"| {'case':<48} | {'p50':>8} | {'p99':>8} | {'mean':>8} |")
        print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
        for name, xs in [("SDK run_code via paddock-runtime", sdk),
                         ("jupyter_client direct to the same kernel (floor)", floor)]:
            print(f"| {name:<48} | {pct(xs, 50):>8.2f} | {pct(xs, 99):>8.2f} | {statistics.mean(xs):>8.2f} |")
        print(f"\nratio p50 runtime/floor: {pct(sdk, 50) / pct(floor, 50):.2f}x")
    finally:
        rt.stop()


if __name__ == "__main__":
    main()

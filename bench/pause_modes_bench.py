"""Pause and resume times of each pause mode of `paddock up`, with the unmodified E2B SDK:
the freezer pause (memory kept; the reference) next to the filesystem-only pause (processes
ended, memory freed; resume boots the sandbox again). Each resume is timed up to the first
`commands.run("true")` that succeeds, i.e. until the sandbox is usable again. A third row
times a request through the gateway that wakes an auto-resume sandbox (freezer pause).

    sudo .venv/bin/python bench/pause_modes_bench.py [--runs 30]

Builds release binaries (bench/paddock_harness.py); with PADDOCK_BIN and PADDOCK_RUNTIME_BIN
set it uses those instead (say so next to the figures: a debug `paddock` is slower).
"""

import argparse
import os
import pathlib
import time

import httpx
from e2b import Sandbox

from paddock_harness import ADMIN_KEY, Paddock, row
from paddock_testing import PaddockUp


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def start():
    if os.environ.get("PADDOCK_BIN") and os.environ.get("PADDOCK_RUNTIME_BIN"):
        p = PaddockUp(pathlib.Path(os.environ["PADDOCK_BIN"]), pathlib.Path(os.environ["PADDOCK_RUNTIME_BIN"]),
                      ADMIN_KEY, pool_size=2, prefix="paddock-bench-")
        p.start()
        os.environ.update(p.sdk_env())
        return p
    return Paddock(pool_size=2)


def cycle(sbx, keep_memory):
    t0 = time.perf_counter()
    assert sbx.pause(keep_memory=keep_memory) is True
    paused = ms(t0)
    t0 = time.perf_counter()
    back = Sandbox.connect(sbx.sandbox_id)
    back.commands.run("true")
    return paused, ms(t0), back


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    p = start()
    try:
        results = {}
        for name, keep in (("memory (freezer)", True), ("filesystem-only", False)):
            sbx = Sandbox.create()
            # Something to stop: a process with some memory in use.
            sbx.commands.run("python3 -c 'import time; b = bytearray(64 << 20); time.sleep(1e6)'",
                             background=True)
            pauses, resumes = [], []
            for _ in range(a.runs):
                paused, resumed, sbx = cycle(sbx, keep)
                pauses.append(paused)
                resumes.append(resumed)
            sbx.kill()
            results[name] = (pauses, resumes)
        ref_p, ref_r = results["memory (freezer)"]
        for name, (pauses, resumes) in results.items():
            print(row(f"pause, {name}", pauses, ref_p))
            print(row(f"resume to first command, {name}", resumes, ref_r))

        sbx = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
        sbx.files.write("/home/user/site/hello.txt", "hi")
        sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
        url = f"{os.environ['E2B_SANDBOX_URL']}/hello.txt"
        h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        deadline = time.monotonic() + 30
        while httpx.get(url, headers=h).status_code != 200:
            assert time.monotonic() < deadline, "the sandbox's server did not start"
            time.sleep(0.1)
        served, woken = [], []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            assert httpx.get(url, headers=h).status_code == 200
            served.append(ms(t0))
            sbx.pause()
            t0 = time.perf_counter()
            r = httpx.get(url, headers=h, timeout=120)
            assert r.status_code == 200, r.text
            woken.append(ms(t0))
        sbx.kill()
        print(row("request to a running sandbox", served))
        print(row("request that wakes a paused sandbox", woken, served))
    finally:
        p.stop(120)
        p.remove_data()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The E2B Python SDKs against the manager chart's Services (tests/charts/run.sh).

The SDK reads E2B_API_URL (the manager Service), E2B_SANDBOX_URL (the gateway Service) and
E2B_API_KEY from the environment, as a user's program would.

    sdk.py check DOMAIN
        A code-interpreter-v1 sandbox: the create answer's `domain` is DOMAIN (e2b.domain);
        a command runs, a file is written and read back, code runs; the sandbox is killed.

    sdk.py loop SANDBOX_ID OUT STOP_FILE [WORKERS]
        WORKERS threads (default 2), each calling as soon as its last call ended, until
        STOP_FILE exists: even workers commands.run("echo ok") on the sandbox (the gateway),
        odd ones Sandbox.get_info (the manager's API). Every call appends a JSON line to OUT:
        worker, what, start, end (seconds since the epoch), ok, error.

    sdk.py judge OUT STOPS WORKERS
        Compares the loop's failures with the manager and gateway pods that stopped
        meanwhile. STOPS holds `<pod> <deletionTimestamp>` lines (run.sh polls them while the
        loop runs); a terminating pod had its grace period (GRACE seconds) before that
        timestamp. Passes when every failed call overlaps a pod's termination and there are
        at most WORKERS failures per stopped pod (one call in flight per worker). Prints the
        counts.
"""

# terminationGracePeriodSeconds of the chart's manager and gateway pods
GRACE = 30

import json
import os
import sys
import threading
import time

import httpx


def check(domain: str) -> None:
    from e2b_code_interpreter import Sandbox

    # The raw create answer, as the SDK's own would see it: `domain` is the chart's.
    r = httpx.post(f"{os.environ['E2B_API_URL']}/sandboxes", timeout=120,
                   headers={"X-API-Key": os.environ["E2B_API_KEY"]},
                   json={"templateID": "code-interpreter-v1", "timeout": 120})
    assert r.status_code == 201, f"create: {r.status_code} {r.text}"
    created = r.json()
    assert created["domain"] == domain, f"domain {created['domain']!r}, expected {domain!r}"
    assert httpx.delete(f"{os.environ['E2B_API_URL']}/sandboxes/{created['sandboxID']}", timeout=60,
                        headers={"X-API-Key": os.environ["E2B_API_KEY"]}).status_code == 204

    sbx = Sandbox.create(timeout=300)
    try:
        print(f"sandbox {sbx.sandbox_id}")
        out = sbx.commands.run("echo hello from $(whoami)")
        assert out.exit_code == 0 and out.stdout == "hello from user\n", out
        sbx.files.write("/home/user/chart.txt", "written through the gateway Service")
        assert sbx.files.read("/home/user/chart.txt") == "written through the gateway Service"
        execution = sbx.run_code("x = 6 * 7\nx")
        assert execution.error is None, execution.error
        assert execution.text == "42", execution.text
        print("command, file write and read, run_code: ok")
    finally:
        sbx.kill()


def loop(sandbox_id: str, out_path: str, stop_file: str, workers: int) -> None:
    from e2b import Sandbox

    sbx = Sandbox.connect(sandbox_id)
    lock = threading.Lock()
    out = open(out_path, "a", buffering=1)

    def worker(n: int) -> None:
        while not os.path.exists(stop_file):
            start = time.time()
            rec = {"worker": n, "what": "api" if n % 2 else "run", "start": start}
            try:
                if n % 2:
                    info = Sandbox.get_info(sandbox_id)
                    rec["ok"] = info.sandbox_id == sandbox_id
                    got = info.sandbox_id
                else:
                    got = sbx.commands.run("echo ok", timeout=60, request_timeout=60).stdout
                    rec["ok"] = got == "ok\n"
                if not rec["ok"]:
                    rec["error"] = f"got {got!r}"
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                rec["ok"] = False
                rec["error"] = f"{type(e).__name__}: {e}"[:300]
            rec["end"] = time.time()
            with lock:
                out.write(json.dumps(rec) + "\n")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()


def judge(out_path: str, stops_path: str, workers: int) -> None:
    import datetime

    calls = [json.loads(line) for line in open(out_path) if line.strip()]
    stops = {}
    for line in open(stops_path):
        parts = line.split()
        if len(parts) == 2:
            ts = datetime.datetime.fromisoformat(parts[1].replace("Z", "+00:00")).timestamp()
            stops[parts[0]] = (ts - GRACE, ts)
    failed = [c for c in calls if not c["ok"]]
    kinds = {w: sum(1 for c in calls if c.get("what") == w) for w in ("run", "api")}
    print(f"{len(calls)} calls ({kinds['run']} commands.run, {kinds['api']} get_info), {len(failed)} failed; "
          f"{len(stops)} pod(s) stopped: {sorted(stops)}")
    for c in failed[:10]:
        print(f"  failed: worker {c['worker']} {c['start']:.3f}-{c['end']:.3f}: {c['error']}")
    assert min(kinds.values()) >= 5, "the loop made too few calls to say anything"
    stray = [c for c in failed if not any(c["start"] <= b and c["end"] >= a for a, b in stops.values())]
    assert not stray, f"{len(stray)} failure(s) while no manager or gateway pod was stopping"
    assert len(failed) <= workers * len(stops), (
        f"{len(failed)} failures: more than the {workers} call(s) in flight per stopped pod")


if __name__ == "__main__":
    cmd = sys.argv[1:2]
    if cmd == ["check"] and len(sys.argv) == 3:
        check(sys.argv[2])
    elif cmd == ["loop"] and len(sys.argv) in (5, 6):
        loop(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) == 6 else 2)
    elif cmd == ["judge"] and len(sys.argv) == 5:
        judge(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)

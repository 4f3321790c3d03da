"""Kubernetes mode on the test bed (hack/testbed; root): `paddock manager` + `paddock gateway`
(tests/paddock_testing.py's PaddockKube) over one SandboxSet `base` filled to --pool members.

1. `Sandbox.create()` -> first `commands.run("true")` through the gateway, --iterations
   sequential creates, each from a full pool (the one before is killed and refilled first);
2. --pool concurrent creates from a full pool: how many succeed, p50/p99 of create -> run;
3. the reference, in the same run and from the same full pool: the controller-only claim of
   today, a SandboxClaim -> its Sandbox claimed and `/init` done (phase Completed, timed by a
   watch on the claim);
4. requests/s through the gateway (header routing) next to nginx proxying the same pod and the
   pod directly, with wrk, as bench/gateway_bench.py does for embedded mode (--no-gateway-bench
   skips it).

Prints a table with the reference and the ratios beside it; asserts nothing about time.

    sudo .venv/bin/python bench/kube_create.py [--pool 100] [--iterations 50] [--debug]

Binaries: $PADDOCK_BIN / $PADDOCK_RUNTIME_BIN, else release builds (--debug: the debug build of
hack/test). The pool is created once per run; when the test bed cannot hold --pool members
(110 pods per node, shared with whoever else runs), the largest pool that filled is used and
the table says so.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import statistics
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from paddock_testing import (CLAIMED_LABEL, SANDBOX_IMAGES, KubeApi, PaddockKube, WaitTimeout,  # noqa: E402
                             debug_binaries, wait_until)

ADMIN_KEY = "e2b_" + "kb" * 20
# Stop waiting for the pool to grow once it has made no progress for this long.
STALL = 180.0


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def binaries(debug: bool):
    if os.environ.get("PADDOCK_BIN") and os.environ.get("PADDOCK_RUNTIME_BIN"):
        return pathlib.Path(os.environ["PADDOCK_BIN"]), pathlib.Path(os.environ["PADDOCK_RUNTIME_BIN"])
    if debug:
        return debug_binaries()
    from paddock_harness import build_release
    return build_release()


def fill(kube: PaddockKube, want: int) -> int:
    """Scales SandboxSet base to `want` and waits until that many are available; when the pool
    stops growing short of it, settles for what it reached (scaled down to that) and returns it."""
    kube.kubectl.run("scale", "sandboxset/base", f"--replicas={want}")
    best, since = -1, time.monotonic()
    while True:
        n = kube.available("base")
        if n >= want:
            return want
        if n > best:
            best, since = n, time.monotonic()
        elif time.monotonic() - since > STALL:
            print(f"the pool stopped at {best} of {want} available members: using {best}", flush=True)
            kube.kubectl.run("scale", "sandboxset/base", f"--replicas={best}")
            return best
        time.sleep(1)


def unclaimed_ready(kube: PaddockKube) -> int:
    """Pool members that are ready now (the set's status lags a claim by a reconcile)."""
    n = 0
    for s in kube.kubectl.items("sandboxes", f"{CLAIMED_LABEL}=false"):
        conds = s.get("status", {}).get("conditions", [])
        if not s["metadata"].get("deletionTimestamp") and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conds):
            n += 1
    return n


SHORT = []


def wait_full(kube: PaddockKube, pool: int, timeout: float = 90):
    """Until the pool is full again. The node's pods are shared with whoever else uses the test
    bed (110 per node): a refill with no room is waited for `timeout` s, then the run goes on
    from a pool one short, counted in SHORT and said under the table."""
    try:
        wait_until(lambda: unclaimed_ready(kube) >= pool, timeout, f"the pool to refill to {pool}", interval=0.2)
    except WaitTimeout:
        SHORT.append(unclaimed_ready(kube))


def create_and_run():
    from e2b import Sandbox
    t = time.perf_counter()
    sbx = Sandbox.create(template="base", timeout=600)
    sbx.commands.run("true")
    return (time.perf_counter() - t) * 1000, sbx


def sequential(kube, pool, n):
    ms = []
    for _ in range(n):
        wait_full(kube, pool)
        took, sbx = create_and_run()
        ms.append(took)
        sbx.kill()
    return ms


def burst(kube, pool):
    wait_full(kube, pool)
    ok, failed, made = [], [], []
    with concurrent.futures.ThreadPoolExecutor(pool) as ex:
        for f in [ex.submit(create_and_run) for _ in range(pool)]:
            try:
                took, sbx = f.result()
                ok.append(took)
                made.append(sbx)
            except Exception as e:  # noqa: BLE001 - counted and shown, not fatal
                failed.append(repr(e)[:200])
    for sbx in made:
        sbx.kill()
    return ok, failed


def claims(kube: PaddockKube, api: KubeApi, pool, n):
    """The controller-only path: a SandboxClaim -> phase Completed (claimed, /init done)."""
    ns = kube.namespace
    base = f"/apis/agents.kruise.io/v1alpha1/namespaces/{ns}/sandboxclaims"
    ms = []
    for i in range(n):
        wait_full(kube, pool)
        name = f"bench-{uuid.uuid4().hex[:8]}"
        rv = api.request("GET", base).json()["metadata"]["resourceVersion"]
        body = {"apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": name},
                "spec": {"templateName": "base"}}
        with api.client.stream("GET", base, params={"watch": "1", "resourceVersion": rv,
                                                    "fieldSelector": f"metadata.name={name}"},
                               timeout=None) as watch:
            t = time.perf_counter()
            r = api.request("POST", base, json=body)
            assert r.status_code == 201, r.text
            for line in watch.iter_lines():
                ev = json.loads(line)
                if ev["object"].get("status", {}).get("phase") == "Completed":
                    ms.append((time.perf_counter() - t) * 1000)
                    break
        # The claimed sandbox goes (the claim names it in a label), then the claim.
        for s in kube.kubectl.items("sandboxes", f"agents.kruise.io/claim-name={name}"):
            kube.kubectl.run("delete", "sandbox", s["metadata"]["name"], "--wait=false")
        api.request("DELETE", f"{base}/{name}")
    return ms


def row(name, xs, ref=None):
    if not xs:
        return f"{name:52} (no samples)"
    ratio = f"{pct(xs, 50) / pct(ref, 50):6.2f}x / {pct(xs, 99) / pct(ref, 99):6.2f}x" if ref else ""
    return (f"{name:52} n={len(xs):4}  p50 {pct(xs, 50):8.1f}  p90 {pct(xs, 90):8.1f}  p99 {pct(xs, 99):8.1f}"
            f"  max {max(xs):8.1f}  {ratio}")


def gateway_vs_nginx(kube, duration, connections, rounds):
    """bench/gateway_bench.py's three ways, with the kube gateway and a pool member's pod IP."""
    from e2b import Sandbox
    from gateway_bench import NGINX_PORT, need, nginx, wrk
    need("wrk", "wrk")
    need("nginx", "nginx-light")
    sbx = Sandbox.create(template="base", timeout=3600)
    ng = None
    try:
        name = sbx.sandbox_id.split("--", 1)[1]
        ip = kube.kubectl.json("get", "sandbox", name)["status"]["podInfo"]["podIP"]
        ng = nginx(f"{ip}:49983")
        wait_until(lambda: __import__("httpx").get(f"http://127.0.0.1:{NGINX_PORT}/health").status_code == 204,
                   30, "nginx to answer")
        ways = {
            "direct to the pod (no proxy)": (f"http://{ip}:49983/health", []),
            "nginx (keepalive upstream)": (f"http://127.0.0.1:{NGINX_PORT}/health", []),
            "paddock gateway (header routing)": (
                f"{kube.gateway_url}/health", [f"E2b-Sandbox-Id: {sbx.sandbox_id}", "E2b-Sandbox-Port: 49983"]),
        }
        results = {k: [] for k in ways}
        for _ in range(rounds):
            for name_, (url, headers) in ways.items():
                results[name_].append(wrk(url, headers, duration, connections))
        lines = [f"wrk -t2 -c{connections} -d{duration}s, {rounds} alternating rounds; medians over rounds",
                 f"{'path':36} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  vs nginx"]
        ref = statistics.median(r[0] for r in results["nginx (keepalive upstream)"])
        for name_, rs in results.items():
            rps = statistics.median(r[0] for r in rs)
            med = {q: statistics.median(r[1][q] for r in rs) for q in ("50", "90", "99")}
            lines.append(f"{name_:36} {rps:9.0f} {med['50']:8.2f} {med['90']:8.2f} {med['99']:8.2f} "
                         f"{sum(r[2] for r in rs):8}  {rps / ref:5.2f}x throughput")
        return lines
    finally:
        if ng:
            ng.terminate()
            ng.wait()
        sbx.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--claims", type=int, default=0, help="reference claims (default: --iterations)")
    ap.add_argument("--debug", action="store_true", help="debug builds instead of release")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-gateway-bench", action="store_true")
    a = ap.parse_args()
    paddock, runtime = binaries(a.debug)
    kube = PaddockKube(paddock, runtime, ADMIN_KEY, pool_size=1, templates={"base": SANDBOX_IMAGES["base"]},
                       log_prefix="/tmp/paddock-kube-bench-", namespace=f"pdk-bench-{uuid.uuid4().hex[:8]}")
    api = None
    try:
        kube.start()
        os.environ.update(kube.sdk_env())
        api = KubeApi(kube.kubeconfig, kube.kubectl.bin)
        t = time.monotonic()
        pool = fill(kube, a.pool)
        print(f"pool of {pool} filled in {time.monotonic() - t:.0f}s", flush=True)
        # One warm-up create each way (connections, the SDK's imports), not counted.
        wait_full(kube, pool)
        create_and_run()[1].kill()
        seq = sequential(kube, pool, a.iterations)
        print(row("create -> run(true), sequential", seq), flush=True)
        ref = claims(kube, api, pool, a.claims or a.iterations)
        print(row("reference: SandboxClaim -> Completed", ref), flush=True)
        ok, failed = burst(kube, pool)
        print(f"concurrent: {len(ok)} of {pool} succeeded", flush=True)
        gw = [] if a.no_gateway_bench else gateway_vs_nginx(kube, a.duration, a.connections, a.rounds)
        # Named by the binary's target dir (target/debug, target/release).
        build = pathlib.Path(paddock).parent.name
        print()
        print(f"Kubernetes mode on the test bed ({build} build), pool of {pool}"
              f"{'' if pool == a.pool else f' (asked for {a.pool}: the test bed held {pool})'}; ms;"
              f" ratios = p50 / p99 against the controller-only claim")
        print(row("create -> run(true), sequential", seq, ref))
        print(row(f"create -> run(true), {pool} concurrent", ok, ref))
        print(row("reference: SandboxClaim -> claimed + /init", ref))
        print(f"concurrent creates: {len(ok)} of {pool} succeeded")
        if SHORT:
            print(f"{len(SHORT)} measurement(s) started from a pool short of {pool} (the node had no room for"
                  f" the refill): {SHORT}")
        for f in failed[:5]:
            print(f"  failed: {f}")
        if gw:
            print()
            print("\n".join(gw))
    except WaitTimeout as e:
        print(f"gave up: {e}")
        raise
    finally:
        if api:
            api.close()
        kube.stop(check=False)


if __name__ == "__main__":
    main()

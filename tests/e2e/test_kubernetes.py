"""Kubernetes mode only: what `paddock manager` + `paddock gateway` do on the test bed beyond the
shared SDK suite. Bad input (unknown template, an empty pool that may not create, the API
server gone), a manager replica killed in the middle of a burst of creates, `<namespace>--<name>`
ids in host routing, and pause/resume through `spec.paused` (the Pod is deleted and made again:
files survive on a volume)."""

import concurrent.futures
import os
import shutil
import threading
import uuid

import httpx
import pytest
from e2b import Sandbox

from fixtures import ADMIN_KEY, DATA_URL, DOMAIN, admin, kubernetes_only, up
from paddock_testing import (CLAIMED_LABEL, LOCK_ANNOTATION, TcpProxy, kubeconfig_via, sandboxset_manifest,
                             wait_until)

pytestmark = kubernetes_only("manager + gateway over SandboxSets on the test bed")

CREATE_ON_NO_STOCK = "e2b.agents.kruise.io/create-on-no-stock"
# Concurrent creates against the replica that is killed.
BURST = 20
# Kill it once this many of them have their 201 (the rest are in flight).
KILL_AFTER = 2


def create(url: str, template: str = "base", metadata=None, timeout: float = 300, **body) -> httpx.Response:
    return httpx.post(f"{url}/v2/sandboxes", headers={"X-API-Key": ADMIN_KEY}, timeout=timeout,
                      json={"templateID": template, "timeout": 300, "metadata": metadata or {}, **body})


def test_sandbox_id_is_namespace_and_name_and_routes_by_host(paddock):
    kube = up()
    sbx = Sandbox.create(metadata={"suite": "kube-id"})
    try:
        ns, name = sbx.sandbox_id.split("--", 1)
        assert ns == kube.namespace and name
        obj = kube.kubectl.json("get", "sandbox", name)
        assert obj["metadata"]["labels"][CLAIMED_LABEL] == "true"
        assert obj["metadata"]["annotations"].get(LOCK_ANNOTATION), "a claimed Sandbox carries its lock"
        assert sbx.commands.run("hostname").stdout.strip() == name
        sbx.files.write("/home/user/site/id.txt", sbx.sandbox_id)
        sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)

        def by_host():
            r = httpx.get(f"{DATA_URL}/id.txt", headers={"Host": f"8000-{sbx.sandbox_id}.{DOMAIN}"})
            return r.status_code == 200 and r.text

        assert wait_until(by_host, 30, "the sandbox's server through host routing") == sbx.sandbox_id
        # Host names are case-insensitive: the gateway lowercases the id it parses.
        r = httpx.get(f"{DATA_URL}/id.txt", headers={"Host": f"8000-{sbx.sandbox_id.upper()}.{DOMAIN}"})
        assert r.status_code == 200 and r.text == sbx.sandbox_id
        # Another namespace's sandbox of the same name is not this one.
        r = httpx.get(f"{DATA_URL}/id.txt", headers={"Host": f"8000-{ns}x--{name}.{DOMAIN}"})
        assert r.status_code == 502 and "was not found" in r.json()["message"]
    finally:
        sbx.kill()
    wait_until(lambda: kube.kubectl.run("get", "sandbox", name, check=False).returncode != 0, 120,
               f"Sandbox {name} to be deleted by the kill")


def test_unknown_template_is_a_404_naming_it(paddock):
    r = admin("/v2/sandboxes", "POST", json={"templateID": "no-such-set"})
    assert r.status_code == 404 and "no-such-set" in r.json()["message"], r.text
    r = admin("/sandboxes", "POST", json={"templateID": "no-such-set"})
    assert r.status_code == 404 and "no-such-set" in r.json()["message"], r.text


@pytest.fixture
def empty_set(paddock):
    """A SandboxSet of 0 members (no stock), deleted afterwards with whatever it made."""
    kube = up()
    name = f"empty-{uuid.uuid4().hex[:6]}"
    kube.kubectl.apply(sandboxset_manifest(name, kube.templates["base"], 0))
    wait_until(lambda: kube.kubectl.json("get", "sandboxset", name).get("status") is not None, 60,
               f"SandboxSet {name} to be reconciled")
    yield name
    for s in kube.sandboxes():
        if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-template") == name or \
                s["metadata"]["name"].startswith(f"{name}-"):
            admin(f"/sandboxes/{kube.sandbox_id(s)}", "DELETE")
    kube.kubectl.run("delete", "sandboxset", name, "--wait=true", "--timeout=120s", check=False)


def test_empty_pool_without_create_on_no_stock_is_a_clear_503(empty_set):
    kube = up()
    before = {s["metadata"]["name"] for s in kube.sandboxes()}
    r = admin("/v2/sandboxes", "POST", timeout=60,
              json={"templateID": empty_set, "metadata": {CREATE_ON_NO_STOCK: "false"}})
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert empty_set in message, f"the 503 names the template: {message!r}"
    # The refused create made and locked nothing.
    after = kube.sandboxes()
    assert {s["metadata"]["name"] for s in after} == before
    assert not [s for s in after if LOCK_ANNOTATION in s["metadata"].get("annotations", {})
                and s["metadata"]["name"] not in before]


def test_empty_pool_creates_on_no_stock_by_default(empty_set):
    """E2B's default: with no member available, a new Sandbox is made from the set's template."""
    r = admin("/v2/sandboxes", "POST", timeout=300, json={"templateID": empty_set, "timeout": 120})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    try:
        assert sid.startswith(f"{up().namespace}--")
        assert Sandbox.connect(sid).commands.run("echo made-on-demand").stdout == "made-on-demand\n"
    finally:
        admin(f"/sandboxes/{sid}", "DELETE")


def test_api_server_unreachable_is_a_fast_503(paddock, tmp_path):
    """A manager whose API server goes away (its own TCP proxy to the test bed's, cut) answers a
    create with a 503 that says so, and does not hang: the request's own timeout is the bound
    that turns a hang into a failure here."""
    kube = up()
    host, port = kube.kubectl.run("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}",
                                  namespaced=False).stdout.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    cfg = kubeconfig_via(kube.kubeconfig, kube.kubectl.bin, f"https://127.0.0.1:{proxy.port}",
                         str(tmp_path / "via-proxy.kubeconfig"))
    mgr = kube.start_manager(kubeconfig=cfg, name="manager-unreachable")
    try:
        proxy.cut()
        for _ in range(3):
            try:
                r = create(mgr.url, timeout=60)
            except httpx.TimeoutException:
                pytest.fail("a create against a manager whose API server is gone hung for 60 s")
            assert r.status_code == 503, r.text
            assert r.json()["code"] == 503 and r.json()["message"], r.text
        # It stays up, and says it cannot serve: /health answers (not a hang) either way.
        assert mgr.alive(), f"the manager exited; see {mgr.log_path}"
        httpx.get(f"{mgr.url}/health", timeout=60)
    finally:
        proxy.cut()
        mgr.stop()


def list_all(**params) -> list[dict]:
    """Every sandbox `GET /v2/sandboxes` lists (all pages of 100)."""
    out, token = [], None
    while True:
        r = admin("/v2/sandboxes", params={**params, "limit": 100, **({"nextToken": token} if token else {})})
        assert r.status_code == 200, r.text
        out += r.json()
        token = r.headers.get("x-next-token")
        if not token:
            return out


def locked(obj: dict) -> bool:
    return bool(obj["metadata"].get("annotations", {}).get(LOCK_ANNOTATION))


def test_a_manager_killed_mid_burst_leaves_no_locked_or_orphaned_sandbox(paddock):
    """SIGKILL of a second manager replica while BURST creates run against it (more than the pool
    holds, so some wait for a Sandbox made on no stock). Every create that got its 201 is a live,
    usable sandbox, served by the session's manager; once the survivors have had their grace
    period, no Sandbox is locked or claimed without the API listing it."""
    kube = up()
    run = uuid.uuid4().hex[:10]
    victim = kube.start_manager(name="manager-victim")
    created: dict[str, str] = {}
    sent = []
    lock = threading.Lock()
    before = {s["metadata"]["name"] for s in kube.sandboxes()}

    def one(i):
        with lock:
            sent.append(i)
        try:
            r = create(victim.url, metadata={"burst": run})
        except httpx.TransportError as e:
            return f"transport error: {e!r}"
        if r.status_code == 201:
            with lock:
                created[r.json()["sandboxID"]] = r.json()["envdAccessToken"]
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        futures = [pool.submit(one, i) for i in range(BURST)]
        def mid_burst():
            # Some creates are answered, every one is on its way, and Sandboxes are being made
            # for those the pool could not serve: the kill lands in the middle of claims.
            made = [s for s in kube.sandboxes() if s["metadata"]["name"] not in before]
            return len(created) >= KILL_AFTER and len(sent) == BURST and made

        wait_until(mid_burst, 300, f"{KILL_AFTER} creates to answer 201 while the rest are in flight", interval=0.02)
        victim.kill()
        outcomes = [f.result() for f in futures]
    print(f"{len(created)} of {BURST} creates answered 201 before the kill: {sorted(map(str, outcomes))}")
    try:
        # Every 201 is a live sandbox the session's manager knows (once its informer has seen
        # the other replica's claim), and it runs a command.
        for sid, token in created.items():
            wait_until(lambda: admin(f"/sandboxes/{sid}").status_code == 200, 30,
                       f"the session's manager to know {sid}", interval=0.1)
            sbx = Sandbox.connect(sid)
            assert sbx._envd_access_token == token, f"{sid}: the token of its 201 is the one in force"
            assert sbx.commands.run("echo alive").stdout == "alive\n", sid

        def listed() -> set[str]:
            return {s["sandboxID"] for s in list_all()}

        def leftovers():
            """Locked or claimed Sandboxes the API does not list (empty when all is well)."""
            known = listed()
            bad = []
            for s in kube.sandboxes():
                sid = kube.sandbox_id(s)
                gone = s["metadata"].get("deletionTimestamp")
                claimed = s["metadata"].get("labels", {}).get(CLAIMED_LABEL) == "true"
                if not gone and (locked(s) or claimed) and sid not in known:
                    bad.append(f"{sid} (locked={locked(s)}, claimed={claimed})")
            return bad

        # The kill may leave a claim half done; the managers left running clean it up within
        # their grace period, which this polls for.
        wait_until(lambda: not leftovers(), 600, "no locked or orphaned Sandbox without a live record",
                   interval=2)
        assert set(created) <= listed()
    finally:
        for s in list_all(metadata=f"burst={run}"):
            admin(f"/sandboxes/{s['sandboxID']}", "DELETE")
        for sid in created:
            admin(f"/sandboxes/{sid}", "DELETE")


VOLUME_ROOT = "/var/tmp/paddock-kube-volumes"


def persistent_set_manifest(name: str, image: str, host_dir: str) -> str:
    """A SandboxSet of 1 whose /data is a host directory per Pod name: a paused sandbox's
    recreated Pod (same name) finds it again. An init container opens it to the sandbox user."""
    env = "[{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]"
    mount = "[{name: data, mountPath: /data, subPathExpr: $(POD_NAME)}]"
    return f"""apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {{name: {name}}}
spec:
  replicas: 1
  template:
    spec:
      terminationGracePeriodSeconds: 1
      volumes: [{{name: data, hostPath: {{path: {host_dir}, type: DirectoryOrCreate}}}}]
      initContainers:
        - name: open-data
          image: {image}
          imagePullPolicy: Never
          command: [/bin/sh, -c, chmod 1777 /data]
          env: {env}
          volumeMounts: {mount}
      containers:
        - name: main
          image: {image}
          imagePullPolicy: Never
          env: {env}
          volumeMounts: {mount}
          readinessProbe:
            httpGet: {{path: /health, port: 49983}}
            periodSeconds: 1
"""


def test_pause_deletes_the_pod_and_resume_keeps_files_on_a_volume(paddock):
    kube = up()
    name = f"persist-{uuid.uuid4().hex[:6]}"
    host_dir = os.path.join(VOLUME_ROOT, kube.namespace, name)
    kube.kubectl.apply(persistent_set_manifest(name, kube.templates["base"], host_dir))
    sid = None
    try:
        kube.wait_pool(name, 1)
        sbx = Sandbox.create(template=name, timeout=300)
        sid = sbx.sandbox_id
        pod = sid.split("--", 1)[1]
        sbx.files.write("/data/keep.txt", "kept on the volume")
        sbx.files.write("/home/user/lost.txt", "in the Pod's own filesystem")
        uid = kube.kubectl.json("get", "pod", pod)["metadata"]["uid"]
        assert sbx.pause() is True
        assert sbx.pause() is False, "pausing a paused sandbox is a 409"
        assert Sandbox.get_info(sid).state.value == "paused"
        assert kube.kubectl.json("get", "sandbox", pod)["spec"].get("paused") is True

        def pod_gone():
            p = kube.kubectl.run("get", "pod", pod, "-o", "jsonpath={.metadata.uid}", check=False)
            return p.returncode != 0 or p.stdout != uid

        wait_until(pod_gone, 120, f"the paused sandbox's Pod {pod} to be deleted", interval=0.5)
        # Paused: no traffic reaches it.
        r = httpx.get(f"{DATA_URL}/health", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"})
        assert r.status_code == 502, r.text
        resumed = Sandbox.connect(sid, timeout=300)
        assert Sandbox.get_info(sid).state.value == "running"
        assert kube.kubectl.json("get", "pod", pod)["metadata"]["uid"] != uid, "a new Pod"
        assert resumed.files.read("/data/keep.txt") == "kept on the volume"
        assert "lost.txt" not in resumed.commands.run("ls /home/user").stdout
        # The runtime got its /init again: the token of the create still opens the data plane.
        assert resumed.commands.run("echo back").stdout == "back\n"
    finally:
        if sid:
            admin(f"/sandboxes/{sid}", "DELETE")
        kube.kubectl.run("delete", "sandboxset", name, "--wait=true", "--timeout=120s", check=False)
        wait_until(lambda: not [s for s in kube.sandboxes() if s["metadata"]["name"].startswith(name)], 120,
                   f"the Sandboxes of {name} to be deleted", interval=0.5)
        shutil.rmtree(os.path.join(VOLUME_ROOT, kube.namespace), ignore_errors=True)


def test_timeout_sets_shutdown_time_and_kill_deletes_the_sandbox(paddock):
    kube = up()
    sbx = Sandbox.create(timeout=120)
    name = sbx.sandbox_id.split("--", 1)[1]
    try:
        spec = kube.kubectl.json("get", "sandbox", name)["spec"]
        assert spec.get("shutdownTime") or spec.get("pauseTime"), spec
        first = spec.get("shutdownTime")
        sbx.set_timeout(600)
        wait_until(lambda: kube.kubectl.json("get", "sandbox", name)["spec"].get("shutdownTime") != first, 30,
                   f"set_timeout to move spec.shutdownTime (it was {first}, with spec {spec})")
    finally:
        assert sbx.kill() is True
    wait_until(lambda: kube.kubectl.run("get", "sandbox", name, check=False).returncode != 0, 120,
               f"Sandbox {name} to be deleted")
    assert Sandbox.kill(sbx.sandbox_id) is False

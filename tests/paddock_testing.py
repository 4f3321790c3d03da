"""Test seams shared by the Python suites (tests/e2e, tests/e2e_legacy) and
the benchmarks (bench/): starting and stopping a real `paddock up`, and
polling for a condition with a deadline instead of sleeping.

Import it after putting this directory on `sys.path`:

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # from tests/e2e
    from paddock_testing import PaddockUp, wait_until
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable, Iterable, TypeVar

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/paddock/target"))
# Built once per machine and shared with the embedded cargo tests.
TEMPLATE_CACHE = "/var/tmp/paddock-test-templates"
# A cold machine builds both templates before /health answers.
START_TIMEOUT = 900.0

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline. An AssertionError,
    so pytest reports it as a test failure with its message."""


class GiveUp(Exception):
    """Raised by a predicate when waiting longer cannot help (the process it
    waits for has exited): wait_until lets it through at once."""


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Calls `pred` until it returns something truthy and returns that.

    Raises WaitTimeout after `timeout` seconds, saying `what` was awaited and
    what the last attempt returned or raised, so a failure explains itself.
    Exceptions from `pred` count as "not yet" (a server that is still coming
    up refuses connections), but the last one is kept for the message;
    GiveUp ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = pred()
            if value:
                return value
            last = value
        except GiveUp:
            raise
        except Exception as e:  # noqa: BLE001 - any failure is "not yet"; reported below
            last = e
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last attempt: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(env: str, default: pathlib.Path) -> pathlib.Path:
    """The binary named by `env`, else `default`; it must exist."""
    path = pathlib.Path(os.environ.get(env, default))
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: build it with hack/test or set {env}")
    return path


def debug_binaries() -> tuple[pathlib.Path, pathlib.Path]:
    """`paddock` and the static runtime as hack/test builds them (or $PADDOCK_BIN, $PADDOCK_RUNTIME_BIN)."""
    return (binary("PADDOCK_BIN", TARGET / "debug/paddock"),
            binary("PADDOCK_RUNTIME_BIN", TARGET / "x86_64-unknown-linux-musl/release/paddock-runtime"))


def tail(path: str | os.PathLike, lines: int = 60) -> str:
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def stop_group(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM to `proc`'s process group, wait up to `timeout`, then SIGKILL the group.
    Returns the exit code. Every process we start here leads its own group
    (`start_new_session`), so this also stops what it spawned."""
    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
    proc.wait()
    return proc.returncode


class PaddockUp:
    """One `paddock up` (root; embedded mode) on its own data dir.

    `start()` returns once `/health` answers; `crash()` is a SIGKILL of the
    paddock process alone (no cleanup runs, sandboxes and helpers live on);
    `restart()` starts it again on the same data dir and port; `stop()` is a
    clean SIGTERM shutdown and returns the exit code.
    """

    def __init__(self, paddock: pathlib.Path, runtime: pathlib.Path, admin_key: str, *,
                 pool_size: int = 1, listen: str | None = None, log_path: str | None = None,
                 extra: Iterable[str] = (), env: dict[str, str] | None = None, prefix: str = "paddock-test-"):
        self.paddock, self.runtime, self.admin_key = paddock, runtime, admin_key
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.listen}"
        self.pool_size = pool_size
        self.extra = list(extra)
        # PADDOCK_DATA_PARENT: another file system for the data dir (a benchmark's choice).
        self.data = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("PADDOCK_DATA_PARENT", "/var/tmp"))
        self.log_path = log_path or f"/tmp/{prefix}{self.listen.replace(':', '-')}.log"
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PADDOCK_TEMPLATE_CACHE", TEMPLATE_CACHE)
        self.proc: subprocess.Popen | None = None
        open(self.log_path, "w").close()

    def sdk_env(self) -> dict[str, str]:
        """What the E2B SDKs need to talk to this paddock."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.admin_key}

    def start(self) -> "PaddockUp":
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(self.paddock), "up", "--listen", self.listen, "--data-dir", self.data,
                 "--admin-api-key", self.admin_key, "--runtime", str(self.runtime),
                 "--pool-size", str(self.pool_size), *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        proc = self.proc

        def healthy():
            if proc.poll() is not None:
                raise GiveUp(f"paddock up exited with status {proc.returncode}")
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200

        try:
            wait_until(healthy, START_TIMEOUT, f"{self.url}/health", interval=0.1)
        except (WaitTimeout, GiveUp) as e:
            self._kill_group()
            raise RuntimeError(f"paddock up did not start ({e}); last lines of {self.log_path}:\n"
                               f"{tail(self.log_path)}") from None
        return self

    def crash(self) -> None:
        """SIGKILL of the paddock process only, as a crash would be."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "PaddockUp":
        return self.start()

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM to the process group and wait; SIGKILL if it hangs. Returns the exit code."""
        assert self.proc is not None, "not started"
        return stop_group(self.proc, timeout)

    def remove_data(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def admin(self, path: str, method: str = "GET", headers=None, **kw) -> httpx.Response:
        """A request with the admin key."""
        headers = {"X-API-Key": self.admin_key, **(headers or {})}
        kw.setdefault("timeout", 120)
        return httpx.request(method, f"{self.url}{path}", headers=headers, **kw)

    def metric(self, name: str) -> float:
        """One sample of /metrics by its full name with labels (0 when absent)."""
        for line in self.admin("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_pool(self, template: str = "base", at_least: int = 1, timeout: float = 120.0) -> None:
        """Until `template`'s warm pool holds `at_least` ready sandboxes."""
        wait_until(lambda: self.metric(f'paddock_manager_pool_ready{{template="{template}"}}') >= at_least,
                   timeout, f"{at_least} ready sandbox(es) in the {template} pool", interval=0.02)



# ------------------------------------------------------------------ Kubernetes mode ----

TESTBED = ROOT / "hack/testbed"
# `paddock up`'s host-routing domain; the Kubernetes harness gives its gateway the same one, so a
# test builds `<port>-<id>.<domain>` the same way in both modes.
DEFAULT_DOMAIN = "localhost"
VERSION = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
               if line.startswith("version = "))
SANDBOX_IMAGES = {
    "base": f"paddock.local/sandbox-base:{VERSION}",
    "code-interpreter-v1": f"paddock.local/sandbox-code-interpreter-v1:{VERSION}",
}
RUNTIME_IMAGE = f"paddock.local/paddock-runtime:{VERSION}"
# Annotation of a Sandbox held by a claim (paddock_crds::keys::ANNOTATION_LOCK).
LOCK_ANNOTATION = "agents.kruise.io/lock"
CLAIMED_LABEL = "agents.kruise.io/sandbox-claimed"


def testbed_env() -> dict[str, str]:
    """`hack/testbed env` as a dict (KUBECONFIG_ADMIN, BIN, CONTAINERD_SOCK, NODE_IP, ...)."""
    out = subprocess.run([str(TESTBED), "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def random_suffix(n: int = 8) -> str:
    return os.urandom(n // 2).hex()


class Kubectl:
    """The test bed's pinned kubectl with the admin kubeconfig."""

    def __init__(self, kubeconfig: str, bin_dir: str, namespace: str | None = None):
        self.kubeconfig, self.bin, self.namespace = kubeconfig, str(pathlib.Path(bin_dir) / "kubectl"), namespace

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300,
            namespaced: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.bin, "--kubeconfig", self.kubeconfig]
        if namespaced and self.namespace:
            cmd += ["-n", self.namespace]
        p = subprocess.run(cmd + list(args), input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def json(self, *args: str, **kw) -> dict:
        import json
        return json.loads(self.run(*args, "-o", "json", **kw).stdout)

    def items(self, kind: str, selector: str | None = None) -> list[dict]:
        """Objects of `kind` in the namespace (an empty list once the namespace is gone)."""
        args = ["get", kind] + (["-l", selector] if selector else [])
        p = self.run(*args, "-o", "json", check=False)
        if p.returncode != 0:
            if "NotFound" in p.stderr or "not found" in p.stderr:
                return []
            raise RuntimeError(f"kubectl get {kind} failed: {p.stderr.strip()}")
        import json
        return json.loads(p.stdout)["items"]

    def apply(self, manifest: str) -> None:
        self.run("apply", "-f", "-", input=manifest)


class KubeApi:
    """Direct HTTPS to the test bed's API server with the admin client certificate, for what
    kubectl is too slow for: watches whose events are timed (bench/kube_create.py)."""

    def __init__(self, kubeconfig: str, kubectl_bin: str):
        import base64
        import json
        cfg = json.loads(subprocess.run([kubectl_bin, "--kubeconfig", kubeconfig, "config", "view", "--raw",
                                         "--minify", "-o", "json"], capture_output=True, text=True,
                                        check=True).stdout)
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.dir = tempfile.mkdtemp(prefix="paddock-kubeapi-")
        files = {}
        for name, key in (("ca", "certificate-authority-data"), ("crt", "client-certificate-data"),
                          ("key", "client-key-data")):
            path = os.path.join(self.dir, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(base64.b64decode(cluster[key] if name == "ca" else user[key]))
            files[name] = path
        self.server = cluster["server"]
        import ssl
        ctx = ssl.create_default_context(cafile=files["ca"])
        ctx.load_cert_chain(files["crt"], files["key"])
        self.client = httpx.Client(base_url=self.server, verify=ctx, timeout=60)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self.client.request(method, path, **kw)

    def close(self) -> None:
        self.client.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class HostProcess:
    """One of the harness's host processes (controller, gateway, manager) with its log."""

    def __init__(self, name: str, argv: list[str], log_path: str, env: dict[str, str]):
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HostProcess":
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout: float, ok=(200, 204)) -> None:
        """Until `url` answers one of `ok`; a process that exits meanwhile fails at once with its log."""
        def ready():
            if not self.alive():
                raise GiveUp(f"{self.name} exited with status {self.proc.returncode}")
            return httpx.get(url, timeout=5).status_code in ok

        try:
            wait_until(ready, timeout, f"{url} ({self.name})", interval=0.1)
        except (WaitTimeout, GiveUp) as e:
            self.kill()
            raise RuntimeError(f"{self.name} did not become ready ({e}); last lines of {self.log_path}:\n"
                               f"{tail(self.log_path)}") from None

    def kill(self) -> None:
        """SIGKILL, as a crash would be."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL when it hangs); the exit code, None if never started."""
        if self.proc is None:
            return None
        return stop_group(self.proc, timeout)


def sandboxset_manifest(name: str, image: str, replicas: int) -> str:
    """A SandboxSet of `replicas` pool members running one of hack/images' sandbox images
    (the runtime on 49983 as the entrypoint; ready once /health answers). Their limits are
    embedded mode's defaults (2 CPUs, 512 MiB); the requests are small, so a pool of 100
    fits the test bed's 2-core node."""
    return f"""apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: {image}
          imagePullPolicy: Never
          resources:
            requests: {{cpu: 5m, memory: 16Mi}}
            limits: {{cpu: "2", memory: 512Mi}}
          readinessProbe:
            httpGet: {{path: /health, port: 49983}}
            periodSeconds: 1
"""


class PaddockKube:
    """Paddock's Kubernetes mode on the test bed (hack/testbed; root): `paddock controller`,
    `paddock gateway` and `paddock manager` as host processes with the admin kubeconfig, over a
    fresh namespace holding the SandboxSets `base` and `code-interpreter-v1`.

    The same surface as PaddockUp where the e2e fixtures use it: `url` (the manager's E2B API),
    `gateway_url` (the data plane), `sdk_env()`, `admin()`, `metric()`, `domain`. `start()`
    returns once the gateway's /readyz and the manager's /health answer and both pools have
    their members available; `stop()` ends the processes, deletes the namespace, waits until it
    is gone and checks that no Sandbox or Pod of it is left.

    Env: PADDOCK_KUBE_POOL_SIZE (members per SandboxSet, default 2), PADDOCK_KUBE_NAMESPACE
    (default pdk-e2e-<random>), PADDOCK_KUBE_IMAGES=rebuild (run hack/images --import even when
    the images are in the test bed already).
    """

    def __init__(self, paddock: pathlib.Path, runtime: pathlib.Path, admin_key: str, *,
                 pool_size: int | None = None, namespace: str | None = None, domain: str = DEFAULT_DOMAIN,
                 listen: str | None = None, gateway_listen: str | None = None,
                 templates: dict[str, str] | None = None, log_prefix: str = "/tmp/paddock-kube-",
                 ready_timeout: float = 300.0):
        self.paddock, self.runtime, self.admin_key = str(paddock), str(runtime), admin_key
        self.pool_size = pool_size if pool_size is not None else int(os.environ.get("PADDOCK_KUBE_POOL_SIZE", "2"))
        self.namespace = namespace or os.environ.get("PADDOCK_KUBE_NAMESPACE") or f"pdk-e2e-{random_suffix()}"
        self.domain = domain
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.listen}"
        self.gateway_listen = gateway_listen or f"127.0.0.1:{free_port()}"
        self.gateway_url = f"http://{self.gateway_listen}"
        self.peer_listen = f"127.0.0.1:{free_port()}"
        self.peer_url = f"http://{self.peer_listen}"
        self.templates = dict(templates or SANDBOX_IMAGES)
        self.log_prefix = log_prefix
        self.ready_timeout = ready_timeout
        self.peer_token = "peer-" + random_suffix(32)
        tb = testbed_env()
        self.tb = tb
        self.kubeconfig = tb["KUBECONFIG_ADMIN"]
        self.kubectl = Kubectl(self.kubeconfig, tb["BIN"], self.namespace)
        self.env = dict(os.environ)
        self.env.update(KUBECONFIG=self.kubeconfig, PADDOCK_PEER_TOKEN=self.peer_token,
                        PATH=f"{tb['BIN']}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.env.setdefault("RUST_LOG", "info")
        self.env.pop("PADDOCK_ADMIN_API_KEY", None)
        self.controller: HostProcess | None = None
        self.gateway: HostProcess | None = None
        self.manager: HostProcess | None = None
        self.extra_managers: list[HostProcess] = []
        self.created_namespace = False

    # ---- the SDK-facing surface (as PaddockUp) ----

    def sdk_env(self) -> dict[str, str]:
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.gateway_url, "E2B_API_KEY": self.admin_key}

    def admin(self, path: str, method: str = "GET", headers=None, **kw) -> httpx.Response:
        headers = {"X-API-Key": self.admin_key, **(headers or {})}
        kw.setdefault("timeout", 120)
        return httpx.request(method, f"{self.url}{path}", headers=headers, **kw)

    def metric(self, name: str, gateway: bool = False) -> float:
        """One sample by its full name with labels (0 when absent), from the manager's /metrics
        (admin key) or the gateway's (its peer listener)."""
        text = (httpx.get(f"{self.peer_url}/metrics", timeout=30).text if gateway
                else self.admin("/metrics").text)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_path(self, what: str) -> str:
        return f"{self.log_prefix}{what}-{self.namespace}.log"

    # ---- start ----

    def start(self) -> "PaddockKube":
        try:
            self.ensure_testbed()
            self.ensure_images()
            self.apply_crds()
            self.create_namespace()
            self.start_controller()
            self.create_pools()
            self.start_gateway()
            self.manager = self.start_manager()
            self.wait_pools()
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def ensure_testbed(self) -> None:
        """`hack/testbed up` unless every component runs (idempotent; a running one is left so)."""
        if subprocess.run([str(TESTBED), "status"], capture_output=True).returncode != 0:
            subprocess.run([str(TESTBED), "up"], check=True, stdout=subprocess.DEVNULL)
        wait_until(lambda: self.kubectl.run("get", "--raw", "/readyz", namespaced=False).stdout == "ok",
                   120, "the test bed's API server /readyz")

    def images_present(self) -> set[str]:
        out = subprocess.run(["ctr", "--address", self.tb["CONTAINERD_SOCK"], "-n", "k8s.io", "images", "ls", "-q"],
                             capture_output=True, text=True, check=True).stdout.split()
        return set(out)

    def ensure_images(self) -> None:
        """hack/images --import when an image is missing from the test bed (or when asked to)."""
        want = {RUNTIME_IMAGE, *self.templates.values()}
        if os.environ.get("PADDOCK_KUBE_IMAGES") != "rebuild" and want <= self.images_present():
            return
        with open(self.log_path("images"), "w") as log:
            subprocess.run([str(ROOT / "hack/images"), "--import", "--runtime", self.runtime],
                           check=True, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        missing = want - self.images_present()
        assert not missing, f"hack/images --import left out {missing}; see {self.log_path('images')}"

    def apply_crds(self) -> None:
        crds = subprocess.run([self.paddock, "crds"], capture_output=True, text=True, check=True).stdout
        self.kubectl.run("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds, namespaced=False)
        self.kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/sandboxes.agents.kruise.io", "crd/sandboxsets.agents.kruise.io",
                         "crd/sandboxclaims.agents.kruise.io", namespaced=False)

    def create_namespace(self) -> None:
        self.kubectl.run("create", "namespace", self.namespace, namespaced=False)
        self.created_namespace = True

    def start_controller(self) -> None:
        health, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.controller = HostProcess("paddock controller", [
            self.paddock, "controller", "--namespace", self.namespace, "--log-level", "info",
            "--disable-webhooks", "--runtime-image", RUNTIME_IMAGE,
            "--health-probe-bind-address", health, "--metrics-bind-address", metrics,
        ], self.log_path("controller"), self.env).start()
        self.controller.wait_http(f"http://{health}/readyz", 60)

    def create_pools(self) -> None:
        for name, image in self.templates.items():
            self.kubectl.apply(sandboxset_manifest(name, image, self.pool_size))

    def start_gateway(self) -> None:
        self.gateway = HostProcess("paddock gateway", [
            self.paddock, "gateway", "--listen", self.gateway_listen, "--peer-listen", self.peer_listen,
            "--namespace", self.namespace, "--domain", self.domain, "--kubeconfig", self.kubeconfig,
        ], self.log_path("gateway"), self.env).start()
        self.gateway.wait_http(f"{self.peer_url}/readyz", 120)

    def manager_argv(self, listen: str, kubeconfig: str | None = None, extra=()) -> list[str]:
        return [self.paddock, "manager", "--listen", listen, "--namespace", self.namespace,
                "--system-namespace", self.namespace, "--domain", self.domain,
                "--gateway-peer", self.peer_url, "--kubeconfig", kubeconfig or self.kubeconfig, *extra]

    def start_manager(self, kubeconfig: str | None = None, extra=(), wait: bool = True,
                      name: str = "manager") -> HostProcess:
        """A `paddock manager`: the session's on `self.listen`, or another replica for a test on a
        free port (stopped by stop() too). Its URL is `proc.url`."""
        listen = self.listen if self.manager is None else f"127.0.0.1:{free_port()}"
        env = dict(self.env, PADDOCK_ADMIN_API_KEY=self.admin_key)
        if kubeconfig:
            env["KUBECONFIG"] = kubeconfig
        proc = HostProcess(f"paddock {name}", self.manager_argv(listen, kubeconfig, extra),
                           self.log_path(name), env)
        proc.url = f"http://{listen}"
        if self.manager is not None:
            self.extra_managers.append(proc)
        proc.start()
        if wait:
            proc.wait_http(f"{proc.url}/health", 120)
        return proc

    def available(self, template: str) -> int:
        sets = {s["metadata"]["name"]: s for s in self.kubectl.items("sandboxsets")}
        return int(sets.get(template, {}).get("status", {}).get("availableReplicas") or 0)

    def wait_pool(self, template: str = "base", at_least: int = 1, timeout: float | None = None) -> None:
        """Until `template`'s SandboxSet has `at_least` available members."""
        wait_until(lambda: self.available(template) >= at_least, timeout or self.ready_timeout,
                   f"{at_least} available member(s) of SandboxSet {template} in {self.namespace}", interval=0.5)

    def wait_pools(self) -> None:
        for name in self.templates:
            self.wait_pool(name, self.pool_size)

    # ---- inspection ----

    def sandboxes(self) -> list[dict]:
        return self.kubectl.items("sandboxes")

    def claimed(self) -> list[dict]:
        return self.kubectl.items("sandboxes", f"{CLAIMED_LABEL}=true")

    @staticmethod
    def sandbox_id(obj: dict) -> str:
        return f"{obj['metadata']['namespace']}--{obj['metadata']['name']}"

    # ---- stop ----

    def stop(self, check: bool = True, timeout: float = 180) -> list[str]:
        """Ends the processes, deletes the namespace while the controller still runs (it
        releases the Sandboxes' finalizers), waits until it is gone, then stops the controller.
        Returns what went wrong (unclean exits, leftovers); with `check`, raises on any."""
        problems = []
        for p in [*self.extra_managers, self.manager, self.gateway]:
            if p is None:
                continue
            code = p.stop()
            # A replica a test SIGKILLed has a negative code; only a SIGTERM must end cleanly.
            if code not in (0, -signal.SIGKILL):
                problems.append(f"{p.name} exited with {code} on SIGTERM; see {p.log_path}")
        if self.created_namespace:
            self.kubectl.run("delete", "namespace", self.namespace, "--wait=false", check=False, namespaced=False)
            try:
                wait_until(lambda: self.kubectl.run("get", "namespace", self.namespace, check=False,
                                                    namespaced=False).returncode != 0,
                           timeout, f"namespace {self.namespace} to be deleted", interval=0.5)
            except WaitTimeout as e:
                left = self.kubectl.run("get", "sandboxes,pods", "-o", "name", check=False).stdout.split()
                problems.append(f"{e}; left in it: {left}")
                # Finalizers of a controller that is gone would keep it forever: release them.
                for obj in left:
                    if obj.startswith("sandbox"):
                        self.kubectl.run("patch", obj, "--type", "merge", "-p",
                                         '{"metadata":{"finalizers":null}}', check=False)
            pods = self.kubectl.run("get", "pods", "-A", "--field-selector", f"metadata.namespace={self.namespace}",
                                    "-o", "name", check=False, namespaced=False).stdout.split()
            if pods:
                problems.append(f"pods of {self.namespace} left: {pods}")
        if self.controller is not None:
            code = self.controller.stop()
            if code != 0:
                problems.append(f"paddock controller exited with {code}; see {self.controller.log_path}")
        if check and problems:
            raise AssertionError("; ".join(problems))
        return problems


class TcpProxy:
    """A TCP forwarder on a free port of 127.0.0.1 to `target` (host, port), in threads.
    `cut()` closes the listener and every open connection: from then on the port refuses
    connections, as an API server that went away would. Used to take the API server away from
    one manager process without touching anything shared."""

    def __init__(self, target: tuple[str, int]):
        import threading
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            self.closed = True
            self.listener.close()
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()


def kubeconfig_via(kubeconfig: str, kubectl_bin: str, server: str, path: str) -> str:
    """A copy of `kubeconfig` (credentials inlined) whose API server is `server`; written to
    `path` (mode 0600, it holds the admin key) and returned."""
    import json
    cfg = json.loads(subprocess.run([kubectl_bin, "--kubeconfig", kubeconfig, "config", "view", "--raw",
                                     "--minify", "-o", "json"], capture_output=True, text=True, check=True).stdout)
    cfg["clusters"][0]["cluster"]["server"] = server
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(cfg, f)
    return path


def _kube_up_main(argv: list[str]) -> int:
    """The shell face of PaddockKube:

        python3 tests/paddock_testing.py kube-up --env-file FILE [--pool N] [--namespace NS]

    stands the stack up, writes `KEY=VALUE` lines to FILE (E2B_API_URL = the manager,
    E2B_SANDBOX_URL = the gateway, E2B_API_KEY = the admin key, PADDOCK_KUBE_NAMESPACE,
    PADDOCK_KUBE_DOMAIN, PADDOCK_KUBE_PEER_URL) once it is ready, then runs until SIGTERM or
    SIGINT and tears it down; exits 1 when the teardown found something wrong (an unclean
    exit, leftovers). Binaries: $PADDOCK_BIN / $PADDOCK_RUNTIME_BIN or hack/test's builds."""
    import argparse
    ap = argparse.ArgumentParser(prog="paddock_testing.py kube-up")
    ap.add_argument("--env-file", required=True)
    ap.add_argument("--pool", type=int, default=None)
    ap.add_argument("--namespace", default=None)
    a = ap.parse_args(argv)
    key = os.environ.get("E2B_API_KEY") or "e2b_" + random_suffix(40)
    paddock, runtime = debug_binaries()
    kube = PaddockKube(paddock, runtime, key, pool_size=a.pool, namespace=a.namespace)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    kube.start()
    values = {**kube.sdk_env(), "PADDOCK_KUBE_NAMESPACE": kube.namespace, "PADDOCK_KUBE_DOMAIN": kube.domain,
              "PADDOCK_KUBE_PEER_URL": kube.peer_url}
    tmp = a.env_file + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    os.rename(tmp, a.env_file)
    print(f"paddock kube-up: ready in namespace {kube.namespace}; environment in {a.env_file}", flush=True)
    while not stopping:
        for p in (kube.controller, kube.gateway, kube.manager):
            if not p.alive():
                print(f"{p.name} exited with {p.proc.returncode}; see {p.log_path}", flush=True)
                stopping.append(1)
        time.sleep(0.5)
    problems = kube.stop(check=False)
    for p in problems:
        print(f"teardown: {p}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] != ["kube-up"]:
        sys.exit("usage: paddock_testing.py kube-up --env-file FILE [--pool N] [--namespace NS]")
    sys.exit(_kube_up_main(sys.argv[2:]))

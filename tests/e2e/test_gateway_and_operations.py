"""The product beyond the SDK calls (`paddock up`, or manager + gateway on Kubernetes): the
gateway in front of a user's own servers (HTTP and WebSocket, by header, host and path),
private ports, the OpenAPI document, Prometheus metrics, logs, idempotent creates and limits."""

import base64
import datetime
import json
import os
import pathlib
import socket
import struct
import subprocess
import uuid

import httpx
import pytest
from e2b import Sandbox

from fixtures import ADMIN_KEY, DATA_URL, DOMAIN, GATEWAY_LISTEN, KUBE, URL, admin, up
from paddock_testing import wait_until

ASSETS = pathlib.Path(__file__).parent / "assets"


def wait_for_port(sbx, port):
    """Polls through the gateway until the sandbox's server answers."""
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}

    def opened():
        r = httpx.get(f"{DATA_URL}/", headers=h)
        return r.status_code != 502 or "port is not open" not in r.json()["message"]

    wait_until(opened, 30, f"port {port} of {sbx.sandbox_id} to open")


@pytest.fixture
def web(paddock):
    """A sandbox running `python3 -m http.server 8000` over a known file."""
    sbx = Sandbox.create()
    sbx.files.write("/home/user/site/hello.txt", "hello from the sandbox")
    sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
    wait_for_port(sbx, 8000)
    yield sbx
    sbx.kill()


def test_user_server_by_header_host_and_path(web):
    sid = web.sandbox_id
    by_header = httpx.get(f"{DATA_URL}/hello.txt", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000"})
    assert by_header.status_code == 200 and by_header.text == "hello from the sandbox"
    by_host = httpx.get(f"{DATA_URL}/hello.txt", headers={"Host": f"8000-{sid}.{DOMAIN}"})
    assert by_host.status_code == 200 and by_host.text == "hello from the sandbox"
    # The SDK's own host name for the port routes the same way.
    assert web.get_host(8000).startswith(f"8000-{sid}")
    by_path = httpx.get(f"{DATA_URL}/kruise/{sid}/8000/hello.txt")
    assert by_path.status_code == 200 and by_path.text == "hello from the sandbox"
    missing = httpx.get(f"{DATA_URL}/nope.txt", headers={"Host": f"8000-{sid}.{DOMAIN}"})
    assert missing.status_code == 404, "the sandbox server's own status passes through"
    closed = httpx.get(f"{DATA_URL}/", headers={"Host": f"8001-{sid}.{DOMAIN}"})
    assert closed.status_code == 502 and "port is not open" in closed.json()["message"]
    gone = httpx.get(f"{DATA_URL}/", headers={"Host": f"8000-{'z' * 20}.{DOMAIN}"})
    assert gone.status_code == 502 and gone.json() == {
        "sandboxId": "z" * 20, "message": "The sandbox was not found", "code": 502}


def ws_frame(payload: bytes, opcode=1) -> bytes:
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def ws_read(f) -> tuple[int, bytes]:
    b0, b1 = f.read(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", f.read(2))[0]
    return b0 & 0x0F, f.read(n)


def test_websocket_echo_through_the_gateway(paddock):
    sbx = Sandbox.create()
    try:
        sbx.files.write("/home/user/ws_echo.py", (ASSETS / "ws_echo.py").read_text())
        sbx.commands.run("python3 /home/user/ws_echo.py 8765", background=True)
        wait_for_port(sbx, 8765)
        host, port = GATEWAY_LISTEN.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((
                "GET /chat HTTP/1.1\r\n"
                f"Host: 8765-{sbx.sandbox_id}.{DOMAIN}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode())
            f = s.makefile("rb")
            status = f.readline()
            assert b" 101 " in status, status
            while f.readline() not in (b"\r\n", b""):
                pass
            for msg in [b"hello", b"x" * 5000, "ünïcode".encode()]:
                s.sendall(ws_frame(msg))
                assert ws_read(f) == (1, msg)
            s.sendall(ws_frame(b"", opcode=8))
            assert ws_read(f)[0] == 8
    finally:
        sbx.kill()


def test_private_ports_need_the_traffic_token(paddock):
    r = admin("/v2/sandboxes", "POST", json={"templateID": "base", "network": {"allowPublicTraffic": False}})
    assert r.status_code == 201
    body = r.json()
    sid, traffic = body["sandboxID"], body["trafficAccessToken"]
    assert traffic and traffic != body["envdAccessToken"]
    try:
        sbx = Sandbox.connect(sid)
        sbx.files.write("/home/user/site/x.txt", "private")
        sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
        h = {"Host": f"8000-{sid}.{DOMAIN}"}

        def served():
            r = httpx.get(f"{DATA_URL}/x.txt", headers={**h, "E2B-Traffic-Access-Token": traffic})
            return r.status_code == 200 and r.text

        assert wait_until(served, 30, "the private server to answer with the traffic token") == "private"
        r = httpx.get(f"{DATA_URL}/x.txt", headers=h)
        assert r.status_code == 401 and "trafficAccessToken" in r.json()["message"]
        r = httpx.get(f"{DATA_URL}/x.txt", headers={**h, "E2B-Traffic-Access-Token": "wrong"})
        assert r.status_code == 401
    finally:
        admin(f"/sandboxes/{sid}", "DELETE")


def test_openapi_document_covers_every_route(paddock):
    doc = httpx.get(f"{URL}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    sdk_routes = {
        ("post", "/sandboxes"), ("post", "/v2/sandboxes"), ("get", "/v2/sandboxes"), ("get", "/sandboxes"),
        ("get", "/sandboxes/{sandboxID}"), ("delete", "/sandboxes/{sandboxID}"),
        ("post", "/sandboxes/{sandboxID}/connect"), ("post", "/v2/sandboxes/{sandboxID}/connect"),
        ("post", "/sandboxes/{sandboxID}/timeout"), ("post", "/sandboxes/{sandboxID}/pause"),
        ("post", "/sandboxes/{sandboxID}/resume"), ("get", "/sandboxes/{sandboxID}/metrics"),
        ("get", "/sandboxes/{sandboxID}/logs"), ("get", "/v2/sandboxes/{sandboxID}/logs"),
        ("post", "/sandboxes/{sandboxID}/refreshes"), ("get", "/templates"), ("get", "/templates/aliases/{alias}"),
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert sdk_routes <= documented, sdk_routes - documented
    schemas = doc["components"]["schemas"]
    for ref in set(_refs(doc)):
        assert ref.split("/")[-1] in schemas, f"dangling {ref}"
    # Every documented operation is served (not the fallback, not 405) ...
    for method, path in documented:
        concrete = path.replace("{sandboxID}", "nosuchsandbox00000000").replace("{alias}", "nosuch").replace(
            "{apiKeyID}", "nosuchkey")
        body = {} if method == "post" else None
        r = admin(concrete, method.upper(), json=body) if body is not None else admin(concrete, method.upper())
        assert r.status_code != 405, (method, path)
        if r.status_code == 404:
            assert r.json()["message"] != "no such route", (method, path)
    # ... and an undocumented one is the JSON 404.
    r = admin("/sandboxes/x/undocumented")
    assert r.status_code == 404 and r.json() == {"code": 404, "message": "no such route"}


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_prometheus_metrics(paddock):
    sbx = Sandbox.create()
    try:
        sbx.commands.run("true")
    finally:
        sbx.kill()
    assert httpx.get(f"{URL}/metrics").status_code == 401
    team = admin("/api-keys", "POST", json={"team": "metrics-team"}).json()["key"]
    assert httpx.get(f"{URL}/metrics", headers={"X-API-Key": team}).status_code == 403
    r = httpx.get(f"{URL}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200
    text = r.text
    samples = _samples(text)

    def total(prefix, samples=samples):
        return sum(v for k, v in samples.items() if k.startswith(prefix))

    assert total("paddock_manager_claims_total") >= 1
    assert total('paddock_manager_requests_total{method="POST",route="/v2/sandboxes",status="201"}') >= 1
    assert text.rstrip().endswith("# EOF")
    if KUBE:
        # The pools are SandboxSets (the controller's), and the gateway is a process of its own
        # that serves its metrics on its peer listener.
        gateway_text = httpx.get(f"{up().peer_url}/metrics").text
        assert gateway_text.rstrip().endswith("# EOF")
        gateway = _samples(gateway_text)
    else:
        # The pool's minimum is 1; it grows with demand (never past its ceiling).
        assert samples['paddock_manager_pool_target{template="base"}'] >= 1
        assert 'paddock_manager_pool_ready{template="base"}' in text
        gateway = samples
    assert total('paddock_gateway_requests_total{port="runtime",class="2xx"}', gateway) >= 1
    assert total("paddock_gateway_response_header_seconds_count", gateway) >= 1


def _samples(text):
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_logs_routes(paddock):
    sbx = Sandbox.create()
    try:
        sbx.commands.run("echo logged-marker")
        v1 = admin(f"/sandboxes/{sbx.sandbox_id}/logs").json()
        assert any("process started" in e["message"] and "logged-marker" in e["message"] for e in v1["logEntries"])
        assert len(v1["logs"]) == len(v1["logEntries"]) and all("line" in x for x in v1["logs"])
        v2 = admin(f"/v2/sandboxes/{sbx.sandbox_id}/logs", params={"search": "logged-marker", "limit": 5}).json()
        assert v2["logs"] and all("logged-marker" in e["message"] for e in v2["logs"])
        assert {"timestamp", "level", "message", "fields"} <= set(v2["logs"][0])
        back = admin(f"/v2/sandboxes/{sbx.sandbox_id}/logs", params={"direction": "backward", "limit": 2}).json()
        stamps = [datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in back["logs"]]
        assert len(stamps) == 2 and stamps[0] >= stamps[1], "backward is newest first"
        bad = admin(f"/v2/sandboxes/{sbx.sandbox_id}/logs", params={"level": "loud"})
        assert bad.status_code == 400 and "level" in bad.json()["message"]
        other = admin("/api-keys", "POST", json={"team": "logs-other"}).json()["key"]
        r = httpx.get(f"{URL}/sandboxes/{sbx.sandbox_id}/logs", headers={"X-API-Key": other})
        assert r.status_code == 404
    finally:
        sbx.kill()


def test_idempotency_key_creates_once(paddock):
    key = f"retry-{uuid.uuid4()}"
    body = {"templateID": "base", "timeout": 60, "metadata": {"idem": key}}
    first = admin("/v2/sandboxes", "POST", json=body, headers={"Idempotency-Key": key})
    second = admin("/v2/sandboxes", "POST", json=body, headers={"Idempotency-Key": key})
    try:
        assert first.status_code == second.status_code == 201
        assert first.json()["sandboxID"] == second.json()["sandboxID"]
        listed = admin("/v2/sandboxes", params={"metadata": f"idem={key}"}).json()
        assert len(listed) == 1
        changed = admin("/v2/sandboxes", "POST", json={**body, "timeout": 61}, headers={"Idempotency-Key": key})
        assert changed.status_code == 422
        bad = admin("/v2/sandboxes", "POST", json=body, headers={"Idempotency-Key": "has space"})
        assert bad.status_code == 400
    finally:
        admin(f"/sandboxes/{first.json()['sandboxID']}", "DELETE")


def test_limits_and_oversized_bodies(paddock):
    r = admin("/v2/sandboxes", "POST", content=b'{"metadata": {"a": "' + b"x" * (3 << 20) + b'"}}',
              headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == 413
    small = admin("/api-keys", "POST", json={"team": "tiny", "maxMemoryMB": 64}).json()["key"]
    r = httpx.post(f"{URL}/v2/sandboxes", headers={"X-API-Key": small}, json={"templateID": "base"})
    assert r.status_code == 403 and "MiB of memory" in r.json()["message"]
    cpu = admin("/api-keys", "POST", json={"team": "onecpu", "maxCpu": 0}).json()
    assert cpu["maxCpu"] == 0
    r = httpx.post(f"{URL}/v2/sandboxes", headers={"X-API-Key": cpu["key"]}, json={"templateID": "base"})
    assert r.status_code == 403 and "vCPUs" in r.json()["message"]
    assert admin("/v2/sandboxes", "POST", json={"templateID": "no-such-template"}).json()["message"].count(
        "no-such-template") == 1
    # Nothing was left running by the refused creates.
    for k in (small, cpu["key"]):
        assert httpx.get(f"{URL}/v2/sandboxes", headers={"X-API-Key": k}).json() == []
    assert json.loads(admin("/v2/sandboxes", params={"state": "bogus"}).text)["code"] == 400


def test_h2c_and_grpc_through_the_gateway(paddock):
    """HTTP/2 without TLS (prior knowledge) reaches the runtime, and a gRPC
    call stays HTTP/2 to the sandbox so its trailers come back."""
    sbx = Sandbox.create()
    try:
        no_token = ["curl", "-sS", "--http2-prior-knowledge", "-H", f"E2b-Sandbox-Id: {sbx.sandbox_id}",
                    "-H", "E2b-Sandbox-Port: 49983"]
        base = no_token + ["-H", f"X-Access-Token: {sbx._envd_access_token}"]
        out = subprocess.run(base + ["-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"{DATA_URL}/health"],
                             capture_output=True, text=True, check=True).stdout
        assert out == "2 204", out
        # An empty gRPC message (5-byte frame header) to Process.List.
        out = subprocess.run(
            base + ["-D", "-", "-o", "/dev/null", "-H", "content-type: application/grpc", "-H", "te: trailers",
                    "--data-binary", "@-", f"{DATA_URL}/process.Process/List"],
            input=b"\x00\x00\x00\x00\x00", capture_output=True, check=True).stdout.decode()
        assert "grpc-status: 0" in out.lower(), out
        # Refused from its headers while the body is still on its way: the answer must arrive
        # as an answer. (Answering before reading the body reset the stream, and curl reported
        # a framing error, exit 92, on about one call in ten: 50 calls catch that.)
        for _ in range(50):
            r = subprocess.run(no_token + ["-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/grpc",
                                           "--data-binary", "@-", f"{DATA_URL}/process.Process/List"],
                               input=b"\x00\x00\x00\x00\x00", capture_output=True)
            assert (r.returncode, r.stdout.decode()) == (0, "401"), r.stderr.decode()
    finally:
        sbx.kill()


def test_timeout_pauses_when_the_lifecycle_says_so(paddock):
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/home/user/survives.txt", "yes")
        wait_until(lambda: Sandbox.get_info(sbx.sandbox_id).state.value == "paused", 30,
                   "the timeout to pause the sandbox", interval=0.2)
        assert not sbx.is_running()
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        if KUBE:
            # Paused on Kubernetes, the Pod is deleted: files survive only on a volume, and the
            # base SandboxSet has none. The recreated Pod runs commands again.
            assert resumed.commands.run("echo resumed").stdout == "resumed\n"
        else:
            assert resumed.files.read("/home/user/survives.txt") == "yes"
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
    finally:
        Sandbox.kill(sbx.sandbox_id)

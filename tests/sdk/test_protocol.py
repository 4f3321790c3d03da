"""Protocol edges and bad input, spoken raw over HTTP (no SDK in the way)."""

import base64
import json
import struct

import httpx
import pytest


def envelope(msg: dict, flags: int = 0) -> bytes:
    body = json.dumps(msg).encode()
    return struct.pack(">BI", flags, len(body)) + body


def read_envelopes(data: bytes):
    out = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        out.append((flags, json.loads(data[5 : 5 + length])))
        data = data[5 + length :]
    return out


def start(url, cmd, headers=None):
    h = {"Content-Type": "application/connect+json", **(headers or {})}
    body = envelope({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": False})
    return httpx.post(f"{url}/process.Process/Start", content=body, headers=h, timeout=30)


def test_stream_framing_and_exact_content_type(runtime):
    r = start(runtime.url, "echo hi")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/connect+json"
    frames = read_envelopes(r.content)
    assert "start" in frames[0][1]["event"]
    assert frames[-1] == (2, {}), "stream must end with an end-of-stream envelope"
    end = frames[-2][1]["event"]["end"]
    assert end["exited"] is True and end.get("exitCode", 0) == 0
    data = [f[1]["event"]["data"]["stdout"] for f in frames if "data" in f[1].get("event", {})]
    assert base64.b64decode("".join(data)) == b"hi\n"


def test_keepalive_events(runtime):
    r = start(runtime.url, "sleep 2.5", {"Keepalive-Ping-Interval": "1"})
    kinds = [next(iter(f[1]["event"])) for f in read_envelopes(r.content) if f[0] == 0]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("keepalive") >= 1


def test_proto_json_mapping(runtime):
    # snake_case and lowerCamel field names are both accepted on input,
    # int64 goes out as a string, enums by name.
    url = runtime.url
    httpx.post(f"{url}/filesystem.Filesystem/MakeDir", json={"path": "/tmp/pj"})
    body = envelope({"process": {"cmd": "/bin/sh", "args": ["-c", "printf 12345 > /tmp/pj/f"]}})
    httpx.post(f"{url}/process.Process/Start", content=body, headers={"Content-Type": "application/connect+json"})
    r = httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/tmp/pj/f"})
    entry = r.json()["entry"]
    assert entry["size"] == "5"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert "modifiedTime" in entry and entry["modifiedTime"].endswith("Z")
    r = httpx.post(
        f"{url}/filesystem.Filesystem/CreateWatcher",
        json={"path": "/tmp/pj", "include_entry": True},
    )
    assert r.status_code == 200 and r.json()["watcherId"]
    wid = r.json()["watcherId"]
    r = httpx.post(f"{url}/filesystem.Filesystem/GetWatcherEvents", json={"watcher_id": wid})
    assert r.status_code == 200
    r = httpx.post(f"{url}/process.Process/SendSignal", json={"process": {"pid": 999999}, "signal": 9})
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_protobuf_codec(runtime):
    # ListRequest is empty: an empty protobuf body is a valid message.
    r = httpx.post(
        f"{runtime.url}/process.Process/List", content=b"", headers={"Content-Type": "application/proto"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/proto"


@pytest.mark.parametrize(
    "path,body,ctype,status,code",
    [
        ("/process.Process/Nope", b"{}", "application/json", 404, "unimplemented"),
        ("/nosuch.Service/Method", b"{}", "application/json", 404, "unimplemented"),
        ("/filesystem.Filesystem/Stat", b"{not json", "application/json", 400, "invalid_argument"),
        ("/filesystem.Filesystem/Stat", b'{"path": ""}', "application/json", 400, "invalid_argument"),
        ("/filesystem.Filesystem/Stat", b'{"path": "/nope"}', "application/json", 404, "not_found"),
        ("/filesystem.Filesystem/ListDir", b'{"path": "/etc/hostname"}', "application/json", 400, "invalid_argument"),
        ("/filesystem.Filesystem/MakeDir", b'{"path": "/tmp"}', "application/json", 409, "already_exists"),
        # (Removing a missing path succeeds, as with envd: test_files.py.)
        ("/filesystem.Filesystem/Remove", b'{"path": "/"}', "application/json", 400, "invalid_argument"),
        ("/filesystem.Filesystem/GetWatcherEvents", b'{"watcherId": "x"}', "application/json", 404, "not_found"),
        ("/process.Process/SendInput", b'{"process": {"tag": "none"}}', "application/json", 404, "not_found"),
    ],
)
def test_bad_unary_input(runtime, path, body, ctype, status, code):
    r = httpx.post(f"{runtime.url}{path}", content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert r.json()["message"]


def test_wrong_content_type_is_refused(runtime):
    r = httpx.post(f"{runtime.url}/filesystem.Filesystem/Stat", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_malformed_envelope(runtime):
    # A length prefix that promises more bytes than arrive.
    body = struct.pack(">BI", 0, 1000) + b"{}"
    r = httpx.post(
        f"{runtime.url}/process.Process/Start", content=body, headers={"Content-Type": "application/connect+json"}
    )
    frames = read_envelopes(r.content) if r.status_code == 200 else [(2, {"error": r.json()})]
    err = frames[-1][1]["error"]
    assert err["code"] in ("invalid_argument", "internal", "unknown")
    assert err["message"]


def test_unknown_user_is_unauthenticated(runtime):
    h = {"Authorization": "Basic " + base64.b64encode(b"ghost:").decode()}
    r = httpx.post(f"{runtime.url}/filesystem.Filesystem/Stat", json={"path": "/tmp"}, headers=h)
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert "ghost" in r.json()["message"]


def test_files_http_errors(runtime):
    url = runtime.url
    assert httpx.get(f"{url}/files", params={"path": "/nope"}).status_code == 404
    r = httpx.get(f"{url}/files", params={"path": "/tmp"})
    assert r.status_code == 400 and "directory" in r.json()["message"]
    r = httpx.post(f"{url}/files", params={"path": "/tmp/x"}, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(f"{url}/files", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "path" in r.json()["message"]


def test_init_envs_and_health(runtime):
    url = runtime.url
    assert httpx.post(f"{url}/init", json={"envVars": {"FROM_INIT": "yes"}}).status_code == 204
    assert httpx.get(f"{url}/envs").json()["FROM_INIT"] == "yes"
    r = start(url, "echo $FROM_INIT")
    data = [f[1]["event"]["data"]["stdout"] for f in read_envelopes(r.content) if "data" in f[1].get("event", {})]
    assert base64.b64decode("".join(data)) == b"yes\n"
    assert httpx.post(f"{url}/init", content=b"{bad").status_code == 400
    m = httpx.get(f"{url}/metrics").json()
    assert m["cpu_count"] >= 1 and m["mem_total"] > 0 and m["disk_total"] > 0


def test_access_token_is_required_once_set(secured_runtime):
    url = secured_runtime.url
    assert httpx.get(f"{url}/health").status_code == 204
    r = httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/tmp"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/tmp"}, headers={"X-Access-Token": "wrong"})
    assert r.status_code == 401
    ok = {"X-Access-Token": "s3cret-token"}
    assert httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/tmp"}, headers=ok).status_code == 200
    assert httpx.get(f"{url}/files", params={"path": "/etc/hostname"}).status_code == 401
    assert httpx.get(f"{url}/files", params={"path": "/etc/hostname"}, headers=ok).status_code == 200
    assert httpx.get(f"{url}/envs").status_code == 401
    assert httpx.post(f"{url}/init", json={"envVars": {"A": "1"}}).status_code == 401


def test_signed_file_urls(secured_runtime):
    import hashlib
    import time

    url = secured_runtime.url

    def sign(path, op, user, exp=None):
        raw = f"{path}:{op}:{user}:s3cret-token" + (f":{exp}" if exp else "")
        return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")

    p = "/etc/hostname"
    assert httpx.get(f"{url}/files", params={"path": p, "signature": sign(p, "read", "")}).status_code == 200
    assert httpx.get(f"{url}/files", params={"path": p, "signature": sign(p, "write", "")}).status_code == 401
    old = int(time.time()) - 10
    r = httpx.get(f"{url}/files", params={"path": p, "signature": sign(p, "read", "", old), "signature_expiration": old})
    assert r.status_code == 401 and "expired" in r.json()["message"]

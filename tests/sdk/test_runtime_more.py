"""Runtime behaviour beyond what the SDK exposes: h2c, tags, signals,
/init, and resource hygiene."""

import base64
import json
import os
import struct

import httpx

from conftest import runtime_pid
from paddock_testing import wait_until
from test_protocol import envelope, read_envelopes, start


def test_h2c_prior_knowledge(runtime):
    with httpx.Client(http1=False, http2=True) as c:
        r = c.post(f"{runtime.url}/filesystem.Filesystem/Stat", json={"path": "/tmp"})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200 and r.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
        body = envelope({"process": {"cmd": "/bin/echo", "args": ["h2"]}, "stdin": False})
        r = c.post(f"{runtime.url}/process.Process/Start", content=body,
                   headers={"Content-Type": "application/connect+json"})
        frames = read_envelopes(r.content)
        assert frames[-1][0] == 2
        out = b"".join(base64.b64decode(f[1]["event"]["data"]["stdout"]) for f in frames
                       if "data" in f[1].get("event", {}))
        assert out == b"h2\n"


def test_chunked_request_body(runtime):
    body = envelope({"process": {"cmd": "/bin/echo", "args": ["chunked"]}, "stdin": False})

    def chunks():
        yield body[:3]
        yield body[3:]

    r = httpx.post(f"{runtime.url}/process.Process/Start", content=chunks(),
                   headers={"Content-Type": "application/connect+json"})
    assert r.status_code == 200
    assert read_envelopes(r.content)[-1] == (2, {})


def test_tags_list_connect_and_sigterm(runtime):
    url = runtime.url
    body = envelope({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "my-job", "stdin": False})
    with httpx.stream("POST", f"{url}/process.Process/Start", content=body,
                      headers={"Content-Type": "application/connect+json"}, timeout=30) as r:
        first = next(r.iter_raw())
        pid = json.loads(first[5:5 + struct.unpack(">I", first[1:5])[0]])["event"]["start"]["pid"]
    listed = httpx.post(f"{url}/process.Process/List", json={}).json()["processes"]
    mine = [p for p in listed if p.get("tag") == "my-job"]
    assert len(mine) == 1 and mine[0]["pid"] == pid and mine[0]["config"]["cmd"] == "/bin/sleep"
    r = httpx.post(f"{url}/process.Process/SendSignal",
                   json={"process": {"tag": "my-job"}, "signal": "SIGNAL_SIGTERM"})
    assert r.status_code == 200
    # Connect by tag to the ended process: start + end from the exit cache.
    def ends():
        r = httpx.post(f"{url}/process.Process/Connect", content=envelope({"process": {"tag": "my-job"}}),
                       headers={"Content-Type": "application/connect+json"}, timeout=10)
        frames = read_envelopes(r.content)
        return [f[1]["event"]["end"] for f in frames if "end" in f[1].get("event", {})]

    ends = wait_until(ends, 5, "the ended process's end event from the exit cache", interval=0.1)
    assert ends[0]["status"] == "signal: terminated"
    assert "exited" not in ends[0], "false is the proto3 default and is omitted"


def test_init_sets_user_workdir_env_and_token(fresh_runtime):
    url = fresh_runtime.url
    r = httpx.post(f"{url}/init", json={
        "envVars": {"GREETING": "hello"}, "defaultUser": "agent", "defaultWorkdir": "/tmp",
        "timestamp": "2026-01-01T00:00:00Z", "hyperloopIP": "ignored",
    })
    assert r.status_code == 204
    r = start(url, "echo $GREETING $(whoami) $(pwd) $HOME")
    out = b"".join(base64.b64decode(f[1]["event"]["data"]["stdout"]) for f in read_envelopes(r.content)
                   if "data" in f[1].get("event", {}))
    assert out == b"hello agent /tmp /home/agent\n"
    assert httpx.post(f"{url}/init", json={"defaultUser": "bad:name"}).status_code == 400
    assert httpx.post(f"{url}/init", json={"defaultWorkdir": "relative"}).status_code == 400
    # Setting a token locks the runtime; only the holder may change it again.
    assert httpx.post(f"{url}/init", json={"accessToken": "t1"}).status_code == 204
    assert httpx.post(f"{url}/process.Process/List", json={}).status_code == 401
    assert httpx.post(f"{url}/init", json={"accessToken": "t2"}).status_code == 401
    h = {"X-Access-Token": "t1"}
    assert httpx.post(f"{url}/init", json={"accessToken": "t2"}, headers=h).status_code == 204
    assert httpx.post(f"{url}/process.Process/List", json={}, headers={"X-Access-Token": "t2"}).status_code == 200


def test_no_fd_or_process_leaks(fresh_runtime):
    url = fresh_runtime.url
    pid = runtime_pid(fresh_runtime.port)

    def fds():
        return len(os.listdir(f"/proc/{pid}/fd"))

    def work():
        for _ in range(5):
            start(url, "echo x; echo y >&2")
            httpx.post(f"{url}/filesystem.Filesystem/Stat", json={"path": "/nope"})
            httpx.post(f"{url}/files", params={"path": "/tmp/leak.txt"}, content=b"data",
                       headers={"Content-Type": "application/octet-stream"})
            httpx.get(f"{url}/files", params={"path": "/tmp/leak.txt"})
            httpx.get(f"{url}/files", params={"path": "/nope"})
            w = httpx.post(f"{url}/filesystem.Filesystem/CreateWatcher", json={"path": "/tmp"}).json()["watcherId"]
            httpx.post(f"{url}/filesystem.Filesystem/RemoveWatcher", json={"watcherId": w})
            # A streaming client that hangs up mid-stream.
            with httpx.stream("POST", f"{url}/process.Process/Start",
                              content=envelope({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 0.3"]}}),
                              headers={"Content-Type": "application/connect+json"}) as r:
                next(r.iter_raw(5))
            with httpx.stream("POST", f"{url}/filesystem.Filesystem/WatchDir",
                              content=envelope({"path": "/tmp"}),
                              headers={"Content-Type": "application/connect+json"}) as r:
                next(r.iter_raw(5))

    def children():
        # The code interpreter's pre-started kernel is the one expected child.
        out = set()
        for p in os.listdir("/proc"):
            try:
                if p.isdigit() and open(f"/proc/{p}/stat").read().split(") ")[1].split()[1] == str(pid):
                    out.add(open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip())
            except OSError:
                continue
        return out

    work()
    # The work's short-lived commands are gone once only the kernel is left.
    kids = wait_until(lambda: (k := children()) and all("kernel" in c for c in k) and k, 10,
                      "only the pre-started kernel to be left as a child")
    baseline = fds()
    work()
    wait_until(lambda: children() == kids, 10, "the second round's processes to exit (none left behind)")
    wait_until(lambda: fds() <= baseline + 2, 10, "file descriptors to come back to the baseline")

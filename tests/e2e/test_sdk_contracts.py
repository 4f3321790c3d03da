"""The smaller contracts the E2B SDK relies on (issue 15), with the unmodified SDK against
`paddock up` (or the manager and gateway on Kubernetes): list ordering and filters, metrics
sampled at a fixed interval and read by range, set_timeout shortening the deadline, file
URLs at the one sandbox address, and a stream cut by a kill."""

import statistics
import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from e2b import Sandbox, SandboxNotRunningException, SandboxQuery

from fixtures import up
from paddock_testing import wait_until


def ids(paginator):
    out = []
    while paginator.has_next:
        out += [s.sandbox_id for s in paginator.next_items()]
    return out


def test_list_order_start_time_and_template_filters(paddock):
    tag = {"suite": "list-filters"}
    made = []
    try:
        for _ in range(3):
            made.append(Sandbox.create(metadata=tag))
        a, b, c = (s.sandbox_id for s in made)
        q = SandboxQuery(metadata=tag)
        assert ids(Sandbox.list(query=q, order="asc")) == [a, b, c]
        assert ids(Sandbox.list(query=q, order="desc")) == [c, b, a]
        # Ordering applies to the whole result before paging.
        assert ids(Sandbox.list(query=q, order="asc", limit=2)) == [a, b, c]
        assert ids(Sandbox.list(query=q)) == [c, b, a], "newest first by default"

        started = {s.sandbox_id: s.started_at for s in Sandbox.list(query=q).next_items()}
        after_b = SandboxQuery(metadata=tag, started_after=started[b])
        assert ids(Sandbox.list(query=after_b, order="asc")) == [b, c]
        later = SandboxQuery(metadata=tag, started_after=started[c] + timedelta(seconds=1))
        assert ids(Sandbox.list(query=later)) == []

        assert ids(Sandbox.list(query=SandboxQuery(metadata=tag, template="base"), order="asc")) == [a, b, c]
        assert ids(Sandbox.list(query=SandboxQuery(metadata=tag, template="nosuch"))) == []

        # startedBefore (the API's counterpart of startedAfter; the SDK does not send it).
        raw = up().admin("/v2/sandboxes", params={"metadata": "suite=list-filters", "order": "asc"}).json()
        b_started = next(s["startedAt"] for s in raw if s["sandboxID"] == b)
        r = up().admin("/v2/sandboxes", params={"metadata": "suite=list-filters", "order": "asc",
                                                "startedBefore": b_started})
        assert [s["sandboxID"] for s in r.json()] == [a, b]
        for bad in ({"order": "up"}, {"startedAfter": "yesterday"}, {"startedBefore": "2024-13-01T00:00:00Z"}):
            r = up().admin("/v2/sandboxes", params=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["code"] == 400
    finally:
        for s in made:
            s.kill()


def test_metrics_are_sampled_every_five_seconds_and_read_by_range(paddock):
    sbx = Sandbox.create()
    try:
        created = datetime.now(timezone.utc)
        samples = wait_until(lambda: (m := sbx.get_metrics()) and len(m) >= 4 and m, 120,
                             "four metric samples")
        stamps = [m.timestamp.timestamp() for m in samples]
        assert stamps == sorted(stamps)
        # After the first (taken when the sandbox was first seen) samples fall on the 5 s grid.
        gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
        assert 4.5 <= statistics.median(gaps) <= 5.5, stamps
        assert all(m.mem_total > 0 and m.cpu_count >= 1 for m in samples)

        # A range holds exactly the samples inside it (bounds are whole seconds, inclusive).
        start = datetime.fromtimestamp(int(stamps[1]), timezone.utc)
        end = datetime.fromtimestamp(int(stamps[2]) + 1, timezone.utc)
        inside = sbx.get_metrics(start=start, end=end)
        assert [m.timestamp.timestamp() for m in inside] == [
            t for t in stamps if int(start.timestamp()) <= t <= int(end.timestamp())]
        assert len(inside) >= 2
        # Before the sandbox existed there is nothing.
        assert sbx.get_metrics(start=created - timedelta(hours=1), end=created - timedelta(minutes=1)) == []
        assert len(sbx.get_metrics(start=created - timedelta(hours=1))) >= 4
        r = up().admin(f"/sandboxes/{sbx.sandbox_id}/metrics", params={"start": 20, "end": 10})
        assert r.status_code == 400 and "start" in r.json()["message"]
        r = up().admin(f"/sandboxes/{sbx.sandbox_id}/metrics", params={"start": -1})
        assert r.status_code == 400
    finally:
        sbx.kill()


def test_set_timeout_can_shorten_the_deadline(paddock):
    sbx = Sandbox.create(timeout=600)
    try:
        sbx.set_timeout(3)
        left = (sbx.get_info().end_at - datetime.now(timezone.utc)).total_seconds()
        assert left <= 4, f"the deadline must move to now + 3 s, {left:.1f} s left"
        wait_until(lambda: sbx.sandbox_id not in ids(Sandbox.list()), 120,
                   "the sandbox to end at its shortened timeout")
        assert not sbx.is_running()
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_file_urls_work_at_the_one_sandbox_address(paddock):
    """download_url()/upload_url() carry no sandbox id (the SDK builds them from
    E2B_SANDBOX_URL); the signature, made with one sandbox's token, picks the sandbox."""
    one, two = Sandbox.create(), Sandbox.create()
    try:
        for s in (one, two):
            s.files.write("/home/user/who.txt", s.sandbox_id)
        for s in (one, two):
            url = s.download_url("/home/user/who.txt")
            assert "signature=" in url and s.sandbox_id not in url
            r = httpx.get(url)
            assert r.status_code == 200, r.text
            assert r.text == s.sandbox_id
            expiring = s.download_url("/home/user/who.txt", use_signature_expiration=120)
            assert httpx.get(expiring).text == s.sandbox_id
        up_url = two.upload_url("/home/user/up.bin")
        r = httpx.post(up_url, files={"file": ("up.bin", b"uploaded bytes")})
        assert r.status_code == 200, r.text
        assert two.files.read("/home/user/up.bin") == "uploaded bytes"
        assert not one.files.exists("/home/user/up.bin")
        r = httpx.post(two.upload_url("/home/user/root.txt", user="root", use_signature_expiration=60),
                       files={"file": ("root.txt", b"r")})
        assert r.status_code == 200, r.text
        assert two.commands.run("stat -c %U /home/user/root.txt").stdout.strip() == "root"

        # A signature for another path, a changed signature, and one for reading used to
        # write find no sandbox.
        url = one.download_url("/home/user/who.txt")
        r = httpx.get(url.replace("who.txt", "other.txt"))
        assert r.status_code == 404 and "signed" in r.json()["message"]
        assert httpx.post(url, files={"file": ("x", b"x")}).status_code == 404
        # An expired signature reaches its sandbox, which refuses it.
        expired = one.download_url("/home/user/who.txt", use_signature_expiration=-10)
        r = httpx.get(expired)
        assert r.status_code == 401 and "expired" in r.text
    finally:
        one.kill()
        two.kill()
    # The URLs of a killed sandbox lead nowhere.
    r = httpx.get(url)
    assert r.status_code == 404


def test_a_kill_ends_a_streaming_command_with_the_not_running_error(paddock):
    sbx = Sandbox.create()
    handle = sbx.commands.run("echo started; sleep 600", background=True)
    killed = []

    def kill_once_started(line):
        # Killed from another thread once the stream is known to be flowing.
        if "started" in line and not killed:
            killed.append(threading.Thread(target=Sandbox.kill, args=(sbx.sandbox_id,)))
            killed[0].start()

    with pytest.raises(SandboxNotRunningException) as e:
        handle.wait(on_stdout=kill_once_started)
    killed[0].join()
    assert "killed or reached its" in str(e.value)
    assert not sbx.is_running()


def test_base_has_passwordless_sudo(paddock):
    sbx = Sandbox.create()
    try:
        r = sbx.commands.run("whoami; sudo -n whoami; sudo -n id -u")
        assert r.stdout.split() == ["user", "root", "0"], (r.stdout, r.stderr)
        r = sbx.commands.run("sudo -n sh -c 'echo from-root > /etc/sudo-test' && cat /etc/sudo-test")
        assert r.stdout == "from-root\n"
    finally:
        sbx.kill()


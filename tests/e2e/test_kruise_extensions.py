"""OpenKruise Agents' API extensions through a real `paddock up`, driven by the unmodified E2B
SDK: the create metadata keys (never-timeout, create-on-no-stock, return-sandbox-ip, label:),
team-scoped key admin and GET /teams, and the whole API under /kruise/api."""

import re

import httpx
import pytest
from e2b import NotFoundException, Sandbox, ServiceBusyException
from e2b.sandbox.sandbox_api import SandboxQuery

from fixtures import URL, admin, second_paddock  # noqa: F401 (a fixture)
from paddock_testing import wait_until

E2B = "e2b.agents.kruise.io/"
# A second instance with empty warm pools (the second_paddock fixture): its own bridge and a /29.
BRIDGE = "pdkxtbr0"
SUBNET = "10.215.78.0/29"


def gone(sandbox_id):
    try:
        Sandbox.get_info(sandbox_id)
        return False
    except NotFoundException:
        return True


def test_never_timeout_outlives_its_timeout_and_the_sdk_parses_it(paddock):
    never = Sandbox.create(timeout=2, metadata={f"{E2B}never-timeout": "true", "suite": "never"})
    timed = Sandbox.create(timeout=2)
    try:
        # The reaper looks at every sandbox on each pass: once the timed one is gone, the
        # never-timeout one (created first, with the same timeout) has been passed over.
        wait_until(lambda: gone(timed.sandbox_id), 30, "the 2 s timeout to kill the timed sandbox",
                   interval=0.2)
        assert never.is_running()
        assert never.commands.run("echo alive").stdout == "alive\n"
        info = Sandbox.get_info(never.sandbox_id)
        assert info.end_at.year == 1, info.end_at
        assert info.metadata == {"suite": "never"}, "the extension key is not metadata"
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "never"})).next_items()
        assert [s.sandbox_id for s in listed] == [never.sandbox_id]
        assert listed[0].end_at.year == 1
        # set_timeout does not turn it into a timed sandbox.
        never.set_timeout(1)
        assert Sandbox.get_info(never.sandbox_id).end_at.year == 1
    finally:
        never.kill()


def test_return_sandbox_ip_gives_the_sandboxs_own_address(paddock):
    sbx = Sandbox.create(metadata={f"{E2B}return-sandbox-ip": "true"})
    try:
        ip = Sandbox.get_info(sbx.sandbox_id).metadata[f"{E2B}sandbox-ip"]
        own = sbx.commands.run("hostname -I 2>/dev/null || ip -o -4 addr show").stdout
        assert re.search(rf"\b{re.escape(ip)}\b", own), (ip, own)
        listed = Sandbox.list().next_items()
        assert [s.metadata.get(f"{E2B}sandbox-ip") for s in listed if s.sandbox_id == sbx.sandbox_id] == [ip]
        # Nobody sets it themselves.
        r = admin("/v2/sandboxes", "POST", json={"metadata": {f"{E2B}sandbox-ip": "6.6.6.6"}})
        assert r.status_code == 400 and f"{E2B}sandbox-ip" in r.json()["message"]
    finally:
        sbx.kill()


def test_label_keys_become_labels(paddock):
    sbx = Sandbox.create(metadata={"label:app": "web", "label:example.com/tier": "front", "plain": "x"})
    try:
        meta = Sandbox.get_info(sbx.sandbox_id).metadata
        assert meta == {"app": "web", "example.com/tier": "front", "plain": "x"}, meta
        found = Sandbox.list(query=SandboxQuery(metadata={"app": "web"})).next_items()
        assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
        assert sbx.commands.run("echo ok").stdout == "ok\n"
    finally:
        sbx.kill()
    r = admin("/v2/sandboxes", "POST", json={"metadata": {"label:bad key": "x"}})
    assert r.status_code == 400 and "bad key" in r.json()["message"]


def test_the_api_under_kruise_api_with_the_sdk(paddock):
    api = f"{URL}/kruise/api"
    sbx = Sandbox.create(api_url=api)
    try:
        assert sbx.commands.run("echo via-prefix").stdout == "via-prefix\n"
        ids = [s.sandbox_id for s in Sandbox.list(api_url=api).next_items()]
        assert sbx.sandbox_id in ids
        assert Sandbox.get_info(sbx.sandbox_id, api_url=api).sandbox_id == sbx.sandbox_id
    finally:
        Sandbox.kill(sbx.sandbox_id, api_url=api)
    assert gone(sbx.sandbox_id)
    assert httpx.get(f"{api}/v2/sandboxes").status_code == 401
    assert httpx.get(f"{api}/health").status_code == 200


def test_team_keys_manage_their_own_team_and_teams_lists_it(paddock):
    red = admin("/api-keys", "POST", json={"team": "ext-red", "maxSandboxes": 2}).json()["key"]
    blue = admin("/api-keys", "POST", json={"team": "ext-blue"}).json()["key"]
    as_red = {"X-API-Key": red}
    made = httpx.post(f"{URL}/api-keys", headers=as_red, json={"name": "second"})
    assert made.status_code == 201, made.text
    assert made.json()["team"] == "ext-red" and made.json()["maxSandboxes"] == 2
    second = made.json()["key"]
    sbx = Sandbox.create(api_key=second)
    try:
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list(api_key=red).next_items()]
    finally:
        sbx.kill()
    assert httpx.post(f"{URL}/api-keys", headers=as_red, json={"teamName": "ext-blue"}).status_code == 403
    listed = httpx.get(f"{URL}/api-keys", headers=as_red).json()
    assert {k["team"] for k in listed} == {"ext-red"} and len(listed) == 2
    blue_id = httpx.get(f"{URL}/api-keys", headers={"X-API-Key": blue}).json()[0]["id"]
    assert httpx.delete(f"{URL}/api-keys/{blue_id}", headers=as_red).status_code == 404
    assert Sandbox.list(api_key=blue).next_items() is not None, "blue's key still works"
    assert httpx.get(f"{URL}/teams", headers=as_red).json() == [
        {"teamID": "ext-red", "name": "ext-red", "apiKey": "", "isDefault": True}]
    names = [t["name"] for t in admin("/teams").json()]
    assert names[0] == "admin" and {"ext-red", "ext-blue"} <= set(names)


def test_create_on_no_stock_false_with_an_empty_pool_is_503(second_paddock):
    srv = second_paddock
    no_stock = {f"{E2B}create-on-no-stock": "false"}
    r = srv.admin("/v2/sandboxes", "POST", json={"templateID": "base", "metadata": no_stock})
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert '"base"' in message and "stock" in message, message
    # The SDK reports a 503 as "busy, retry": the pool may refill.
    with pytest.raises(ServiceBusyException) as exc:
        Sandbox.create(metadata=no_stock, retries=0)
    assert "base" in str(exc.value) and "stock" in str(exc.value)
    assert srv.admin("/v2/sandboxes").json() == [], "a refused create leaves no sandbox"
    # Without the extension the same create starts a sandbox cold.
    sbx = Sandbox.create()
    try:
        assert sbx.commands.run("echo cold").stdout == "cold\n"
    finally:
        sbx.kill()

"""Security review M2 (stale routes) end to end, through `paddock up`'s gateway: once a
sandbox has died on its own, its data-plane host name leads nowhere (502), even after
another team's sandbox has been given the dead sandbox's address."""

import httpx
from e2b import Sandbox

from fixtures import embedded_only, second_paddock  # noqa: F401 (a fixture)
from paddock_testing import wait_until

pytestmark = embedded_only("a second `paddock up` on its own /29 decides which sandbox gets which address")

# An instance of its own (the second_paddock fixture): a bridge and a /29 (the bridge plus
# five sandbox addresses), and no warm pools, so the test decides who gets which address.
BRIDGE = "pdkm2br0"
SUBNET = "10.215.77.0/29"
SANDBOX_ADDRESSES = 5


def serve(sbx, text):
    """Runs an HTTP server on port 8080 of `sbx` that answers `text`."""
    sbx.files.write("/home/user/www/index.html", text)
    sbx.commands.run("cd /home/user/www && python3 -m http.server 8080", background=True)


def get_8080(srv, sid):
    return httpx.get(f"{srv.url}/", headers={"Host": f"8080-{sid}.localhost"}, timeout=30)


def test_a_dead_sandboxs_route_is_502_after_another_team_takes_its_address(second_paddock):
    srv = second_paddock
    team_a = srv.admin("/api-keys", "POST", json={"team": "m2-a"}).json()["key"]
    team_b = srv.admin("/api-keys", "POST", json={"team": "m2-b"}).json()["key"]

    dead = Sandbox.create(api_key=team_a)
    serve(dead, "team A")
    wait_until(lambda: get_8080(srv, dead.sandbox_id).status_code == 200, 30,
               "team A's server to answer through the gateway")
    # Kill the runtime (tini's only child; not PID 2 since the boot id hook ran first): tini
    # exits and the sandbox dies on its own.
    # The command dies with the sandbox, so its own outcome does not matter.
    try:
        dead.commands.run("kill -9 $(cat /proc/1/task/1/children)", user="root", timeout=10)
    except Exception:  # noqa: BLE001 - the connection goes down with the sandbox
        pass

    def route_gone():
        r = get_8080(srv, dead.sandbox_id)
        return r.status_code == 502 and "not found" in r.json()["message"]

    wait_until(route_gone, 30, f"the route of dead sandbox {dead.sandbox_id} to go")

    # Team B takes every address of the /29, the dead sandbox's among them (addresses are
    # handed out round-robin, so it is the last), and serves on 8080 in each.
    others = []
    try:
        for _ in range(SANDBOX_ADDRESSES):
            sbx = Sandbox.create(api_key=team_b)
            others.append(sbx)
            serve(sbx, "team B")
        for sbx in others:
            wait_until(lambda: get_8080(srv, sbx.sandbox_id).status_code == 200, 30,
                       f"team B's server in {sbx.sandbox_id}")
        # The /29 is full: the dead sandbox's address now belongs to one of team B's.
        r = srv.admin("/sandboxes", "POST", json={"templateID": "base"})
        assert r.status_code >= 500, f"a sixth sandbox fit in the /29: {r.status_code} {r.text}"

        r = get_8080(srv, dead.sandbox_id)
        assert r.status_code == 502, f"the dead sandbox's route reached {r.status_code}: {r.text!r}"
        assert "team B" not in r.text
        assert r.json() == {"sandboxId": dead.sandbox_id, "message": "The sandbox was not found",
                            "code": 502}
    finally:
        for sbx in others:
            sbx.kill()

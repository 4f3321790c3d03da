"""A 2.45-era e2b SDK (v1 routes) against `paddock up`."""

import importlib.metadata

from e2b import Sandbox


def test_sdk_is_the_legacy_one():
    assert importlib.metadata.version("e2b") == "2.45.1"


def test_create_run_pause_connect_kill(paddock):
    sbx = Sandbox.create(timeout=60, metadata={"era": "2.45"})
    try:
        assert sbx.commands.run("echo legacy").stdout == "legacy\n"
        sbx.files.write("/home/user/l.txt", "v1")
        assert sbx.pause() is True
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.files.read("/home/user/l.txt") == "v1"
        assert again.get_info().metadata == {"era": "2.45"}
    finally:
        assert Sandbox.kill(sbx.sandbox_id) is True

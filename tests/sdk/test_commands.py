"""commands.* through the real Python SDK."""


import pytest
from e2b import CommandExitException, TimeoutException
from paddock_testing import wait_until


def test_stdout_stderr_and_exit_code(sbx):
    r = sbx.commands.run("echo out; echo err >&2")
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert r.exit_code == 0


def test_nonzero_exit_raises_with_output(sbx):
    with pytest.raises(CommandExitException) as exc:
        sbx.commands.run("echo partial; exit 7")
    assert exc.value.exit_code == 7
    assert exc.value.stdout == "partial\n"


def test_env_cwd_and_default_user(sbx):
    r = sbx.commands.run('echo "$FOO|$(pwd)|$(whoami)|$HOME|$E2B_SANDBOX"', envs={"FOO": "bar"}, cwd="/tmp")
    assert r.stdout == "bar|/tmp|user|/home/user|true\n"
    r = sbx.commands.run("pwd")
    assert r.stdout == "/home/user\n"


def test_root_user(sbx):
    assert sbx.commands.run("id -u", user="root").stdout == "0\n"
    assert sbx.commands.run("id -u").stdout.strip() != "0"


def test_missing_cwd_is_a_clear_error(sbx):
    with pytest.raises(Exception) as exc:
        sbx.commands.run("true", cwd="/does/not/exist")
    assert "does not exist" in str(exc.value)


def test_streaming_callbacks_arrive_in_order(sbx):
    seen = []
    sbx.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.05; done",
        on_stdout=lambda line: seen.append(line),
    )
    assert "".join(seen) == "1\n2\n3\n"
    assert len(seen) == 3, "each line must be delivered as it is produced"


def test_background_list_and_kill(sbx):
    h = sbx.commands.run("sleep 60", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert h.kill() is True
    wait_until(lambda: h.pid not in [p.pid for p in sbx.commands.list()], 5,
               "the killed process to leave the list")
    assert sbx.commands.kill(h.pid) is False


def test_stdin(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello stdin\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello stdin\n"


def test_connect_to_running_process(sbx):
    h = sbx.commands.run("for i in 1 2 3 4 5; do echo tick$i; sleep 0.2; done", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()], "connect must find it still running"
    again = sbx.commands.connect(h.pid)
    r = again.wait()
    assert r.exit_code == 0
    assert "tick5" in r.stdout


def test_timeout_kills_the_process(sbx):
    # No clock check: had the timeout not ended it, the command would have written the file.
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30; echo done > /tmp/not-reached", timeout=1)
    wait_until(lambda: "sleep 30" not in sbx.commands.run("ps -eo args").stdout, 10,
               "the timed-out process to be killed")
    assert not sbx.files.exists("/tmp/not-reached")


def test_disconnecting_client_does_not_kill_the_process(sbx):
    h = sbx.commands.run("sleep 2; echo survived > /tmp/survivor", background=True)
    h.disconnect()
    wait_until(lambda: sbx.files.exists("/tmp/survivor"), 10, "the process to finish after the disconnect",
               interval=0.1)
    assert sbx.files.read("/tmp/survivor") == "survived\n"


def test_large_output(sbx):
    r = sbx.commands.run("head -c 3145728 /dev/zero | tr '\\0' 'a'")
    assert len(r.stdout) == 3 * 1024 * 1024
    assert set(r.stdout) == {"a"}

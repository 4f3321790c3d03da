"""run_code and contexts through the unmodified e2b-code-interpreter SDK,
on real Jupyter kernels."""

import base64

import httpx
import pytest
from e2b import TimeoutException


def test_one_plus_one(ci):
    execution = ci.run_code("1+1")
    assert execution.text == "2"
    assert execution.error is None
    assert execution.execution_count >= 1


def test_streaming_callbacks_in_order(ci):
    seen = []
    execution = ci.run_code(
        "import sys, time\nfor i in range(3):\n    print(f'out{i}', flush=True)\n    time.sleep(0.05)\n"
        "print('err', file=sys.stderr, flush=True)",
        on_stdout=lambda m: seen.append(("out", m.line)),
        on_stderr=lambda m: seen.append(("err", m.line)),
    )
    assert [s for s in seen if s[0] == "out"] == [("out", "out0\n"), ("out", "out1\n"), ("out", "out2\n")]
    assert ("err", "err\n") in seen
    assert "".join(execution.logs.stdout) == "out0\nout1\nout2\n"


def test_state_is_kept_between_calls(ci):
    ci.run_code("kept = 21")
    assert ci.run_code("kept * 2").text == "42"


def test_errors_carry_name_value_and_traceback(ci):
    execution = ci.run_code("def f():\n    raise ValueError('bad value')\nf()")
    assert execution.error.name == "ValueError"
    assert execution.error.value == "bad value"
    assert "ValueError" in execution.error.traceback and "\x1b[" not in execution.error.traceback
    assert ci.run_code("1+2").text == "3", "the context keeps working after an error"


def test_contexts_are_isolated_and_restartable(ci):
    a = ci.create_code_context()
    b = ci.create_code_context(cwd="/tmp")
    assert a.language == "python" and b.cwd == "/tmp"
    ci.run_code("secret = 'a-only'", context=a)
    assert ci.run_code("secret", context=a).text == "a-only"
    assert ci.run_code("secret", context=b).error.name == "NameError"
    assert ci.run_code("import os; os.getcwd()", context=b).text == "/tmp"
    ids = [c.id for c in ci.list_code_contexts()]
    assert a.id in ids and b.id in ids
    ci.restart_code_context(a)
    assert ci.run_code("secret", context=a).error.name == "NameError"
    ci.remove_code_context(b)
    assert b.id not in [c.id for c in ci.list_code_contexts()]


def test_matplotlib_plot_returns_a_png(ci):
    execution = ci.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
    )
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert pngs, execution.results
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_pandas_dataframe_renders_html(ci):
    execution = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert execution.results[0].is_main_result
    assert "<table" in execution.results[0].html


def test_timeout_interrupts_a_busy_loop_and_the_context_stays_usable(ci):
    ci.run_code("before = 7")
    with pytest.raises(TimeoutException):
        ci.run_code("while True:\n    pass", timeout=2)
    # No clock check: a kernel still in the loop could not answer this one.
    execution = ci.run_code("before + 1", timeout=30)
    assert execution.text == "8", "state survives the interrupt"


def test_per_request_env_vars_are_set_then_removed(ci):
    assert ci.run_code("import os; os.environ.get('PADDOCK_X')", envs={"PADDOCK_X": "it's set"}).text == "it's set"
    assert ci.run_code("import os; os.environ.get('PADDOCK_X', 'gone')").text == "gone"


def test_bash_language(ci):
    execution = ci.run_code("echo from-bash; X=5; echo $((X*2))", language="bash")
    assert "".join(execution.logs.stdout) == "from-bash\n10\n"


def test_unknown_language_names_the_available_ones(ci):
    with pytest.raises(Exception) as exc:
        ci.run_code("x", language="cobol")
    msg = str(exc.value)
    assert "cobol" in msg and "python" in msg and "bash" in msg


def test_unknown_context_is_not_found(runtime):
    r = httpx.post(f"{runtime.interpreter_url}/execute", json={"code": "1", "context_id": "nope"})
    assert r.status_code == 404 and "nope" in r.text
    r = httpx.post(f"{runtime.interpreter_url}/execute", content=b"{bad json")
    assert r.status_code == 400
    r = httpx.post(f"{runtime.interpreter_url}/execute", json={"code": "1", "context_id": "x", "language": "python"})
    assert r.status_code == 400
    r = httpx.post(f"{runtime.interpreter_url}/contexts/nope/restart")
    assert r.status_code == 404
    assert httpx.delete(f"{runtime.interpreter_url}/contexts/nope").status_code == 404


def test_ndjson_has_no_blank_lines(runtime):
    r = httpx.post(f"{runtime.interpreter_url}/execute", json={"code": "print('a')\n'b'"})
    lines = r.text.split("\n")
    assert lines[-1] == ""
    assert all(line.strip() for line in lines[:-1])
    assert '"end_of_execution"' in lines[-2]


def test_a_dying_kernel_gives_a_clear_error_and_other_contexts_keep_working(ci):
    victim = ci.create_code_context()
    bystander = ci.create_code_context()
    ci.run_code("alive = 1", context=bystander)
    ci.run_code("state = 1", context=victim)
    execution = ci.run_code("import os; os._exit(3)", context=victim)
    assert execution.error is not None and execution.error.name == "KernelDied"
    assert "exit" in execution.error.value
    after = ci.run_code("'state' in dir()", context=victim)
    assert after.text == "False", "the context came back with fresh state"
    assert ci.run_code("alive", context=bystander).text == "1"


def test_execute_needs_the_token_but_contexts_do_not(secured_runtime):
    url = secured_runtime.interpreter_url
    r = httpx.post(f"{url}/execute", json={"code": "1+1"})
    assert r.status_code == 401
    r = httpx.post(f"{url}/execute", json={"code": "1+1"}, headers={"X-Access-Token": "s3cret-token"}, timeout=60)
    assert r.status_code == 200 and '"text":"2"' in r.text.replace(" ", "")
    assert httpx.get(f"{url}/contexts").status_code == 200

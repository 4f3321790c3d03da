"""pty.* through the real Python SDK."""

from e2b import PtySize
from paddock_testing import wait_until


def collect_until(buf, needle, timeout=10):
    wait_until(lambda: needle in b"".join(buf).decode(errors="replace"), timeout,
               f"{needle!r} in the pty output (so far {b''.join(buf)!r})")


def test_pty_create_input_resize_and_tty(sbx):
    out = []
    h = sbx.pty.create(size=PtySize(rows=24, cols=80), timeout=0)
    import threading

    t = threading.Thread(target=lambda: h.wait(on_pty=lambda d: out.append(d)), daemon=True)
    t.start()
    sbx.pty.send_stdin(h.pid, b"tty; stty size\n")
    collect_until(out, "24 80")
    collect_until(out, "/dev/pts/")
    sbx.pty.resize(h.pid, PtySize(rows=40, cols=120))
    sbx.pty.send_stdin(h.pid, b"stty size\n")
    collect_until(out, "40 120")
    sbx.pty.send_stdin(h.pid, b"exit\n")
    t.join(10)
    assert not t.is_alive()

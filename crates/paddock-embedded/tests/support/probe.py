#!/usr/bin/python3
# Stands in for the runtime in tests/hardening.rs: started by the sandbox's init like every
# process a user runs, it records which system calls the sandbox refuses and its resource
# limits in /tmp/probe.txt, then answers the readiness check on the runtime's port.
import ctypes
import http.server
import os
import resource
import socket
import subprocess
import threading

libc = ctypes.CDLL(None, use_errno=True)


def call(nr, *args):
    """errno of syscall `nr`, 0 when it succeeded."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()


lines = ["euid %d" % os.geteuid()]
for name, nr, args in [
    ("io_uring_setup", 425, (1, 0)),
    ("io_uring_enter", 426, (-1, 0, 0, 0, 0, 0)),
    ("io_uring_register", 427, (-1, 0, 0, 0)),
    ("open_tree", 428, (-1, 0, 0)),
    ("move_mount", 429, (-1, 0, -1, 0, 0)),
    ("fsopen", 430, (0, 0)),
    ("fsmount", 432, (-1, 0, 0)),
    ("mount_setattr", 442, (-1, 0, 0, 0, 0)),
    ("listmount", 458, (0, 0, 0, 0)),
    ("open_tree_attr", 467, (-1, 0, 0, 0, 0)),
    ("unshare", 272, (0x40000000,)),
]:
    lines.append("%s %d" % (name, call(nr, *args)))
try:
    socket.socket(40, socket.SOCK_STREAM).close()
    lines.append("vsock 0")
except OSError as e:
    lines.append("vsock %d" % e.errno)
t = threading.Thread(target=lambda: None)
t.start()
t.join()
lines.append("thread 0")
lines.append("child %d" % subprocess.run(["true"]).returncode)
for name, res in [("nofile", resource.RLIMIT_NOFILE), ("core", resource.RLIMIT_CORE)]:
    soft, hard = resource.getrlimit(res)
    lines.append("%s_soft %d" % (name, soft))
    lines.append("%s_hard %d" % (name, hard))
with open("/tmp/probe.txt", "w") as f:
    f.write("\n".join(lines) + "\n")


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("0.0.0.0", 49983), Health).serve_forever()

"""A WebSocket echo server from the standard library only (RFC 6455, text
and binary frames up to 64 KiB), run inside a sandbox by the gateway tests."""

import base64
import hashlib
import socketserver
import struct
import sys

MAGIC = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        headers = {}
        self.rfile.readline()
        while True:
            line = self.rfile.readline().decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + MAGIC).encode()).digest()).decode()
        self.wfile.write(
            ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()
        )
        try:
            while True:
                b0, b1 = read_exact(self.rfile, 2)
                opcode, n = b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", read_exact(self.rfile, 2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", read_exact(self.rfile, 8))[0]
                mask = read_exact(self.rfile, 4) if b1 & 0x80 else b"\0\0\0\0"
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(self.rfile, n)))
                if opcode == 8:
                    self.wfile.write(b"\x88\x00")
                    return
                head = bytes([0x80 | opcode])
                head += bytes([len(payload)]) if len(payload) < 126 else b"\x7e" + struct.pack(">H", len(payload))
                self.wfile.write(head + payload)
                self.wfile.flush()
        except EOFError:
            return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()

# A tiny admission webhook used by tests/testbed/run.sh: /mutate adds the label
# paddock.dev/mutated=yes, /validate rejects ConfigMaps that carry a key "forbidden".
import base64
import json
import ssl
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({"ok": True})

    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        obj = req.get("object") or {}
        resp = {"uid": req["uid"], "allowed": True}
        if self.path.startswith("/mutate"):
            patch = []
            if not (obj.get("metadata") or {}).get("labels"):
                patch.append({"op": "add", "path": "/metadata/labels", "value": {}})
            patch.append({"op": "add", "path": "/metadata/labels/paddock.dev~1mutated", "value": "yes"})
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        elif self.path.startswith("/validate") and "forbidden" in (obj.get("data") or {}):
            resp["allowed"] = False
            resp["status"] = {"code": 403, "message": 'paddock test webhook: key "forbidden" is not allowed'}
        self.reply({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})


server = HTTPServer(("0.0.0.0", 8443), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()

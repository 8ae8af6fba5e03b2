#!/usr/bin/env python3
"""A token endpoint that authenticates its clients by TLS client certificate (RFC 8705 2.1,
`tls_client_auth`) and answers RFC 8693 token exchanges, for bearward's tests: oidc-provider
in tests/interop runs without TLS, so its mTLS client authentication cannot be tried there.

    python3 tests/exchange/sts.py PORT   (0: a port the system picks)

Serves HTTPS with tests/fixtures/tls/server.pem and requires a client certificate signed by
tests/fixtures/tls/ca.pem (the TLS handshake refuses any other). POST /token with
grant_type=urn:ietf:params:oauth:grant-type:token-exchange, client_id=mtls-bearward (the one
client, whose certificate subject must be CN=bearward test client), a subject_token and an
audience answers {"access_token": "sts.<audience>.<n>", "token_type": "Bearer", ...}; a form
naming another client, or a certificate of another subject, is 401 invalid_client. Prints
"ready PORT" when listening. GET /stats: {"exchanges": N, "subject_tokens": [...]}.
"""
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mtls_server import require_client_certificates  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
CLIENT, SUBJECT_DN = "mtls-bearward", "bearward test client"
lock = threading.Lock()
stats = {"exchanges": 0, "subject_tokens": []}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                return self.answer(200, stats)
        self.answer(404, {"error": "not_found"})

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
        cert = self.connection.getpeercert() or {}
        cn = dict(x[0] for x in cert.get("subject", ())).get("commonName")
        if self.path != "/token":
            return self.answer(404, {"error": "not_found"})
        if form.get("client_id") != CLIENT or cn != SUBJECT_DN or "client_secret" in form:
            return self.answer(401, {"error": "invalid_client"})
        if form.get("grant_type") != GRANT or form.get("subject_token_type") != ACCESS:
            return self.answer(400, {"error": "unsupported_grant_type"})
        if not form.get("subject_token"):
            return self.answer(400, {"error": "invalid_request"})
        with lock:
            stats["exchanges"] += 1
            stats["subject_tokens"].append(form["subject_token"])
            n = stats["exchanges"]
        self.answer(200, {"access_token": f"sts.{form.get('audience', '-')}.{n}", "token_type": "Bearer",
                          "issued_token_type": ACCESS, "expires_in": 600})


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    require_client_certificates(server)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A policy decision point written to the OpenID AuthZEN Authorization API 1.0 text (final,
January 2026), for bearward's tests: the Access Evaluation API over the HTTPS JSON binding
(section 11.1, here over plain HTTP on loopback) and the PDP metadata (section 9).

    python3 tests/authzen/pdp.py PORT [--mode normal|slow|malformed|http_error] [--token T] [--mtls]

- POST /access/v1/evaluation: `Content-Type: application/json` required (400 otherwise); the
  body must be a JSON object with `subject` {type, id}, `action` {name} and `resource`
  {type, id} (400 when a required member is missing, 11.1.1); unknown members ignored. With
  `--token`, `Authorization: Bearer <T>` is required (401, section 11.1.2). `X-Request-ID` is
  echoed (11.1.3). The answer is `{"decision": bool}`, with `context.reason_user` on a deny.
- GET /.well-known/authzen-configuration: `policy_decision_point` (this server's base URL) and
  `access_evaluation_endpoint` (at /pdp/v1/evaluate, so a client that reads the metadata is
  told apart from one using the default path; both paths answer).
- GET /stats: the questions evaluated so far (for the tests' single-flight and cache counts),
  and the last question and headers received.

The policy is the interop's API gateway scenario ("medium-grained" route authorization over the
Todo application; authzen-interop.net, scenarios/api-gateway): subjects are the PIDs of the five
Rick & Morty users, resources `{type: "route", id: <route template>}`, actions the HTTP
methods; roles come from the scenario's PIP table below. decisions.json next to this file is the
scenario's own expected-decisions fixture.

With `--mtls` it serves HTTPS with tests/fixtures/tls/server.pem and requires a client
certificate signed by the fixtures' ca.pem (the transport security of section 12.1).

Modes: `slow` sleeps 3 s before answering; `malformed` answers `{"decision": "yes"}`;
`http_error` answers 500; `allow_all` allows every well-formed question (for benches).
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The scenario's PIP: roles by subject PID.
ROLES = {
    "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": ["admin", "evil_genius"],  # Rick
    "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": ["editor"],  # Morty
    "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": ["editor"],  # Summer
    "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": ["viewer"],  # Beth
    "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": ["viewer"],  # Jerry
}

# The gateway policy: which roles may call each (method, route template).
ROUTES = {
    ("GET", "/users/{userId}"): None,  # everyone
    ("GET", "/todos"): None,
    ("POST", "/todos"): {"admin", "editor"},
    ("PUT", "/todos/{todoId}"): {"evil_genius", "editor"},
    ("DELETE", "/todos/{todoId}"): {"admin", "editor"},
}


def decide(q):
    if q["subject"]["type"] != "identity" or q["resource"]["type"] != "route":
        return False
    roles = ROLES.get(q["subject"]["id"])
    if roles is None:
        return False
    key = (q["action"]["name"], q["resource"]["id"])
    if key not in ROUTES:
        return False
    needed = ROUTES[key]
    return needed is None or bool(needed & set(roles))


class State:
    lock = threading.Lock()
    evaluations = 0
    last = None
    last_headers = {}
    last_path = None


def make_handler(args):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, status, body, ctype="application/json"):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            rid = self.headers.get("X-Request-ID")
            if rid is not None:
                self.send_header("X-Request-ID", rid)
            self.end_headers()
            self.wfile.write(data)

        def base(self):
            return f"{'https' if args.mtls else 'http'}://127.0.0.1:{args.port}"

        def do_GET(self):
            if self.path == "/.well-known/authzen-configuration":
                self.send(200, json.dumps({
                    "policy_decision_point": self.base(),
                    "access_evaluation_endpoint": f"{self.base()}/pdp/v1/evaluate",
                }))
            elif self.path == "/stats":
                with State.lock:
                    self.send(200, json.dumps({"evaluations": State.evaluations, "last": State.last,
                                               "headers": State.last_headers, "path": State.last_path}))
            else:
                self.send(404, "not found", "text/plain")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path not in ("/access/v1/evaluation", "/pdp/v1/evaluate"):
                return self.send(404, "not found", "text/plain")
            if args.token and self.headers.get("Authorization") != f"Bearer {args.token}":
                return self.send(401, "unauthorized", "text/plain")
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                return self.send(400, "Content-Type must be application/json", "text/plain")
            try:
                q = json.loads(raw)
                assert isinstance(q, dict)
                for member, fields in (("subject", ("type", "id")), ("action", ("name",)),
                                       ("resource", ("type", "id"))):
                    assert isinstance(q[member], dict)
                    for f in fields:
                        assert isinstance(q[member][f], str)
            except Exception:
                return self.send(400, "a required member is missing", "text/plain")
            with State.lock:
                State.evaluations += 1
                State.last = q
                State.last_headers = {k.lower(): v for k, v in self.headers.items()}
                State.last_path = self.path
            if args.mode == "slow":
                time.sleep(3)
            if args.mode == "http_error":
                return self.send(500, "internal error", "text/plain")
            if args.mode == "malformed":
                return self.send(200, json.dumps({"decision": "yes"}))
            allowed = args.mode == "allow_all" or decide(q)
            answer = {"decision": allowed}
            if not allowed:
                answer["context"] = {
                    "reason_admin": {"403": "route policy: role not allowed"},
                    "reason_user": {"403": "Your role cannot do this."},
                }
            self.send(200, json.dumps(answer))

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int, help="0: a port the system picks")
    ap.add_argument("--mode", default="normal", choices=["normal", "slow", "malformed", "http_error", "allow_all"])
    ap.add_argument("--token")
    ap.add_argument("--mtls", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args))
    args.port = server.server_address[1]
    if args.mtls:
        import os
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from mtls_server import require_client_certificates
        require_client_certificates(server)
    server.daemon_threads = True
    print(f"ready {args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Smoke test of a built bearward image, for a release pipeline to run before it pushes one.

    docker build -f deploy/Dockerfile -t bearward .
    python3 deploy/image_check.py bearward

Runs the image (host network, Linux) locked down as deploy/kubernetes runs it (read-only root
file system, all capabilities dropped, no privilege escalation), with a config directory
mounted read-only where the image expects it, in front of an upstream and a JWKS served over
HTTP by this script on 127.0.0.1, and checks what a deployment relies on: the process runs as
uid 10001; /readyz turns 200 once the keys are fetched over the network; a valid token is
forwarded with its claim headers; a missing, tampered or under-scoped token is refused with 401
or 403 and never reaches the upstream; /metrics counts the refusals; SIGHUP (`docker kill -s
HUP`) reloads a changed config; SIGTERM (`docker stop`) ends it with status 0.
Needs docker and Python's `cryptography` (installed with pip if missing).
"""

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benches"))
import load  # noqa: E402

PROXY, ADMIN, UPSTREAM, IDP = 18480, 18481, 18482, 18483

CONFIG = f"""
[server]
listen = "127.0.0.1:{PROXY}"
admin_listen = "127.0.0.1:{ADMIN}"
log_format = "json"
# Reloads come from SIGHUP alone here, so the check below shows the signal reaches PID 1.
watch_config = false

[[issuers]]
issuer = "{load.ISSUER}"
jwks_uri = "http://127.0.0.1:{IDP}/jwks.json"
audiences = ["{load.AUDIENCE}"]
algorithms = ["RS256", "ES256"]

[upstreams.api]
url = "http://127.0.0.1:{UPSTREAM}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject" }}

[[routes]]
prefix = "/admin"
scopes = ["admin"]
upstream = "api"

[[routes]]
prefix = "/"
scopes = ["read"]
upstream = "api"
"""


def serve(port, handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(url, token=None):
    return load.request(url, {"Authorization": f"Bearer {token}"} if token else {})


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    image = sys.argv[1]
    if not shutil.which("docker"):
        sys.exit("image_check: needs the docker command")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        sys.exit(f"image_check: docker has no image {image!r} (or no daemon is reachable)")
    load.ensure_tools(packages=())
    keys = load.Keys()
    seen = []  # (path, X-Auth-Subject) of every request the upstream received

    class Upstream(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("X-Auth-Subject")))
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args):
            pass

    class Idp(Upstream):
        def do_GET(self):
            body = json.dumps(keys.jwks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [serve(UPSTREAM, Upstream), serve(IDP, Idp)]
    d = tempfile.mkdtemp(prefix="bearward-image-")
    open(f"{d}/bearward.toml", "w").write(CONFIG)
    os.chmod(d, 0o755)
    os.chmod(f"{d}/bearward.toml", 0o644)
    name = f"bearward-image-check-{os.getpid()}"
    # Locked down as deploy/kubernetes runs it: read-only root, no capabilities, no privilege
    # escalation, the config directory mounted read-only as a ConfigMap volume would be.
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host",
                    "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "-v", f"{d}:/etc/bearward:ro", image],
                   check=True, stdout=subprocess.DEVNULL)
    failures = []

    def expect(what, got, want):
        print(f"{'ok ' if got == want else 'FAIL'} {what}: {got}" + ("" if got == want else f" (expected {want})"))
        if got != want:
            failures.append(what)

    try:
        deadline = time.time() + 30
        while get(f"http://127.0.0.1:{ADMIN}/readyz")[0] != 200 and time.time() < deadline:
            time.sleep(0.2)
        expect("/readyz once the JWKS is fetched", get(f"http://127.0.0.1:{ADMIN}/readyz")[0], 200)
        uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        expect("uid in the container", uid, "10001")

        base = f"http://127.0.0.1:{PROXY}"
        good = keys.token("RS256", sub="alice")
        expect("RS256 token with scope read", get(f"{base}/orders/7", good)[0], 200)
        expect("ES256 token with scope read", get(f"{base}/orders/8", keys.token("ES256", sub="bob"))[0], 200)
        expect("forwarded with its claim header", list(seen), [("/orders/7", "alice"), ("/orders/8", "bob")])
        head, claims, sig = good.split(".")
        tampered = f"{head}.{load.b64(json.dumps({'iss': load.ISSUER, 'aud': load.AUDIENCE, 'sub': 'mallory', 'scope': 'admin', 'exp': int(time.time()) + 600}).encode())}.{sig}"
        expect("no token", get(f"{base}/orders/9")[0], 401)
        expect("tampered token", get(f"{base}/orders/10", tampered)[0], 401)
        expect("scope admin missing", get(f"{base}/admin/users", good)[0], 403)
        expect("refused requests reached the upstream", len(seen), 2)
        metrics = get(f"http://127.0.0.1:{ADMIN}/metrics")[1]
        refused = [line for line in metrics.splitlines()
                   if line.startswith("bearward_requests_total") and 'decision="deny"' in line]
        expect("/metrics counts refusals", sum(float(line.rsplit(" ", 1)[1]) for line in refused), 3.0)

        # Open /admin to scope read, and reload with SIGHUP (`docker kill -s HUP`).
        open(f"{d}/bearward.toml", "w").write(CONFIG.replace('scopes = ["admin"]', 'scopes = ["read"]'))
        subprocess.run(["docker", "kill", "-s", "HUP", name], check=True, capture_output=True)
        deadline = time.time() + 10
        while get(f"{base}/admin/users", good)[0] != 200 and time.time() < deadline:
            time.sleep(0.1)
        expect("scope admin no longer needed after SIGHUP", get(f"{base}/admin/users", good)[0], 200)
    finally:
        subprocess.run(["docker", "stop", "-t", "30", name], capture_output=True)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True).stdout.strip()
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        for s in servers:
            s.shutdown()
    expect("exit status after docker stop (SIGTERM)", code, "0")
    if failures:
        print(logs.stdout[-3000:] + logs.stderr[-3000:])
        sys.exit(f"image_check: {len(failures)} check(s) failed")
    print(f"image_check: {image} passed")


if __name__ == "__main__":
    main()

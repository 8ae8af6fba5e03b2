#!/usr/bin/env python3
"""Smoke test of a built bearward image: CI runs it on every change, a release pipeline before
it pushes one.

    deploy/image/build.sh localhost/bearward:ci        # buildah, FROM scratch (what CI builds)
    python3 deploy/image_check.py localhost/bearward:ci
    # or, with a registry and a Docker engine:
    docker build -f deploy/Dockerfile -t bearward . && python3 deploy/image_check.py --engine docker bearward

The engine is podman (run with Debian's runc and explicit rlimits, see the manual, docs/src/operations/deployment.md)
unless --engine docker is given. The check runs the image (host network, Linux) locked down as
deploy/kubernetes runs it (read-only root file system, all capabilities dropped, no privilege
escalation), with a config directory mounted read-only where the image expects it, in front of
an upstream and a JWKS served over HTTP by this script on 127.0.0.1, and checks what a
deployment relies on: the process runs as uid 10001; /readyz turns 200 once the keys are
fetched over the network; a valid token is forwarded with its claim headers; a missing,
tampered or under-scoped token is refused with 401 or 403 and never reaches the upstream;
/metrics counts the refusals; SIGHUP (`kill -s HUP`) reloads a changed config; SIGTERM (`stop`)
ends it with status 0. Then `IMAGE demo` serves the demo from the image alone (/public 200,
/api/orders 401). Every container it starts is stopped and removed by its id.
Needs Python's `cryptography` (installed with pip if missing).
"""

import http.server
import json
import os
import resource
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


def engine_command(engine):
    """The container command, and the flags `run` needs with it.

    podman: Debian's runc, because crun (podman's default) cannot set rlimits on these machines
    and does not support their hybrid cgroup layout; explicit --ulimit values, because the
    defaults podman would copy are above what an unprivileged runtime may set here. nofile is
    the hard limit this process has (at most 65536), so bearward's default max_connections
    has room; nproc bounds the threads a worker pool can start.
    """
    if engine == "docker":
        return ["docker"], []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    return ["podman", "--runtime", "runc"], ["--ulimit", f"nofile={nofile}:{nofile}",
                                              "--ulimit", "nproc=1024:1024"]


def container_uid(engine, ctr):
    """The uid the container's main process runs as, read from the host's /proc: a scratch
    image has no `id` to exec."""
    pid = subprocess.run([*engine, "inspect", "-f", "{{.State.Pid}}", ctr],
                         capture_output=True, text=True).stdout.strip()
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("Uid:"):
                return line.split()[1]
    except OSError:
        pass
    return "?"


def check_demo(engine, run_flags, image, expect):
    """`IMAGE demo`: the walkthrough from the image alone (its own IdP and echo API)."""
    ctr = subprocess.run([*engine, "run", "-d", "--network", "host", *run_flags, image, "demo"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        deadline = time.time() + 30
        while get("http://127.0.0.1:8080/public/status")[0] != 200 and time.time() < deadline:
            time.sleep(0.2)
        expect("demo: /public/status", get("http://127.0.0.1:8080/public/status")[0], 200)
        expect("demo: /api/orders without a token", get("http://127.0.0.1:8080/api/orders")[0], 401)
    finally:
        subprocess.run([*engine, "stop", "-t", "10", ctr], capture_output=True)
        subprocess.run([*engine, "rm", "-f", ctr], capture_output=True)


def main():
    args = sys.argv[1:]
    engine_name = "podman"
    if len(args) == 3 and args[0] == "--engine" and args[1] in ("docker", "podman"):
        engine_name, args = args[1], args[2:]
    if len(args) != 1:
        sys.exit(__doc__)
    image = args[0]
    engine, run_flags = engine_command(engine_name)
    if not shutil.which(engine[0]):
        sys.exit(f"image_check: needs the {engine[0]} command")
    if subprocess.run([*engine, "image", "inspect", image], capture_output=True).returncode != 0:
        sys.exit(f"image_check: {engine[0]} has no image {image!r}")
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
    # Locked down as deploy/kubernetes runs it: read-only root, no capabilities, no privilege
    # escalation, the config directory mounted read-only as a ConfigMap volume would be.
    name = subprocess.run([*engine, "run", "-d", "--network", "host", *run_flags,
                           "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                           "-v", f"{d}:/etc/bearward:ro", image],
                          check=True, capture_output=True, text=True).stdout.strip()
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
        expect("uid in the container", container_uid(engine, name), "10001")

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

        # Open /admin to scope read, and reload with SIGHUP (`kill -s HUP`).
        open(f"{d}/bearward.toml", "w").write(CONFIG.replace('scopes = ["admin"]', 'scopes = ["read"]'))
        subprocess.run([*engine, "kill", "-s", "HUP", name], check=True, capture_output=True)
        deadline = time.time() + 10
        while get(f"{base}/admin/users", good)[0] != 200 and time.time() < deadline:
            time.sleep(0.1)
        expect("scope admin no longer needed after SIGHUP", get(f"{base}/admin/users", good)[0], 200)
    finally:
        subprocess.run([*engine, "stop", "-t", "30", name], capture_output=True)
        code = subprocess.run([*engine, "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True).stdout.strip()
        logs = subprocess.run([*engine, "logs", name], capture_output=True, text=True)
        subprocess.run([*engine, "rm", "-f", name], capture_output=True)
        for s in servers:
            s.shutdown()
        shutil.rmtree(d, ignore_errors=True)
    expect("exit status after stop (SIGTERM)", code, "0")
    check_demo(engine, run_flags, image, expect)
    if failures:
        print(logs.stdout[-3000:] + logs.stderr[-3000:])
        sys.exit(f"image_check: {len(failures)} check(s) failed")
    print(f"image_check: {image} passed")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Requests per second with a route's `allow_if` against the same route without it (issue 39's
req/s figure; benches/instructions.py --policy gives the instruction counts).

    python3 benches/policy_load.py                  # builds bearward, 5 rounds of 10 s
    python3 benches/policy_load.py --no-build --duration 5 --rounds 5

Both configs have the route `prefix = "/{tenant}/"` (so load.py's wrk request, GET /api/check,
is tenant `api`) with `scopes = ["read"]`; one adds the typical expression
`claims.tenant == request.params.tenant && 'admin' in claims.roles`. One cached RS256 token with
`tenant` and `roles` claims; wrk (CPU 0) sends 32 connections; bearward and the nginx upstream
share CPU 1, as in load.py's shared layout. Each round runs both, interleaved, each against a
fresh bearward. Nothing asserts a timing; it prints figures.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM = 18300, 18301
POLICY = "allow_if = \"claims.tenant == request.params.tenant && 'admin' in claims.roles\""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target", "release", "bearward"))
    args = ap.parse_args()
    load.ensure_tools(packages=(("nginx", "nginx"), ("wrk", "wrk")))
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=load.ROOT)
    d = tempfile.mkdtemp(prefix="bearward-policy-load-")
    keys = load.Keys()
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    token = keys.token("RS256", extra={"tenant": "api", "roles": ["user", "admin"]})
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM))
    base = load.BEARWARD.format(port=PORT, cache=10000, issuer=load.ISSUER, audience=load.AUDIENCE,
                                dir=d, up=UPSTREAM).replace('prefix = "/"', 'prefix = "/{tenant}/"')
    configs = {"no allow_if": base,
               "allow_if": base.replace('scopes = ["read"]', 'scopes = ["read"]\n' + POLICY)}
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [load.start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], load.SERVER_CPU)]
    try:
        load.wait_port(UPSTREAM)
        load.compare(configs, args.bearward, d, PORT, token, args.rounds, args.duration, args.connections)
    finally:
        load.stop(procs, d)

if __name__ == "__main__":
    main()

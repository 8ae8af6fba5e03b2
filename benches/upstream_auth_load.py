#!/usr/bin/env python3
"""Requests per second with an identity assertion and with a token exchange on the upstream,
against plain forwarding (issue 40's figures; benches/instructions.py --upstream gives the
instruction counts).

    python3 benches/upstream_auth_load.py                  # builds bearward, 5 rounds of 10 s
    python3 benches/upstream_auth_load.py --no-build --duration 5 --rounds 5

load.py's config (one route, `scopes = ["read"]`, one cached RS256 token) four ways: as it is;
with `identity_assertion` (ES256, the test key; signed once per token, then kept); with
`request = "include"` (signed on every request); with `token_exchange` at the upstream nginx's
`/token` (one exchange, then kept). wrk (CPU 0) sends 32 connections; bearward and the nginx
upstream share CPU 1, as in load.py's shared layout. Each round runs all four, interleaved,
each against a fresh bearward. Nothing asserts a timing; it prints figures.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM = 18310, 18311


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
    d = tempfile.mkdtemp(prefix="bearward-upstream-auth-load-")
    keys = load.Keys()
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    token = keys.token("RS256")
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM))
    base = load.BEARWARD.format(port=PORT, cache=10000, issuer=load.ISSUER, audience=load.AUDIENCE,
                                dir=d, up=UPSTREAM)
    configs = load.upstream_auth_configs(base, d, UPSTREAM)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [load.start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], load.SERVER_CPU)]
    try:
        load.wait_port(UPSTREAM)
        load.compare(configs, args.bearward, d, PORT, token, args.rounds, args.duration, args.connections)
    finally:
        load.stop(procs, d)


if __name__ == "__main__":
    main()

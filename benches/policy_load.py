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
import statistics
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
    results = {name: [] for name in configs}
    try:
        load.wait_port(UPSTREAM)
        for rnd in range(args.rounds):
            for name, conf in configs.items():
                open(f"{d}/bearward.toml", "w").write(conf)
                b = load.start([args.bearward, "--config", f"{d}/bearward.toml"], load.SERVER_CPU,
                               env={**os.environ, "RUST_LOG": "warn"})
                try:
                    load.wait_port(PORT)
                    if load.status(PORT, token) != 200:
                        raise SystemExit(f"{name}: the request is not allowed")
                    load.wrk(PORT, args.connections, 1, header=f"Authorization: Bearer {token}")
                    before = load.cpu_counters(b.pid)
                    r = load.wrk(PORT, args.connections, args.duration, header=f"Authorization: Bearer {token}")
                    after = load.cpu_counters(b.pid)
                    ticks = (after[0] - before[0]) + (after[1] - before[1])
                    r["us"] = ticks / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1) * 1e6
                    results[name].append(r)
                    print(f"round {rnd + 1} {name:12} {r['rps']:9.0f} req/s  bearward cpu {r['us']:.1f} us/req"
                          + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else ""), flush=True)
                finally:
                    load.stop([b], d + "/none")
        print()
        for name, runs in results.items():
            print(f"{name:12} {statistics.median(r['rps'] for r in runs):9.0f} req/s  "
                  f"{statistics.median(r['us'] for r in runs):.1f} us/req (medians of {args.rounds})")
        ratios = [a["rps"] / b["rps"] for a, b in zip(results["allow_if"], results["no allow_if"])]
        print(f"allow_if / none: {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})")
    finally:
        load.stop(procs, d)


if __name__ == "__main__":
    main()

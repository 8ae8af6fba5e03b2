#!/usr/bin/env python3
"""Decision checks per second on one core: Envoy's gRPC ext_authz (`[decision] grpc_listen`,
`Authorization/Check`) against the HTTP decision listener (Envoy's HTTP ext_authz shape: the
original path as the request's own), both with a cached RS256 token on a scoped route.

    python3 benches/ext_authz_load.py                  # builds bearward, 3 rounds of 10 s
    python3 benches/ext_authz_load.py --no-build --duration 5 --rounds 3

h2load (CPU 0) sends both over h2c with --clients connections of --streams concurrent streams,
as Envoy does: for gRPC, POST /envoy.service.auth.v3.Authorization/Check with one framed
CheckRequest (made with Envoy's protos from xds-protos, tests/ext_authz/.xds); for HTTP, GET
/api/x with the same headers. bearward runs on CPU 1. Each round runs both, interleaved; the
ratio is gRPC checks/s over HTTP checks/s. Nothing asserts a timing; it prints figures.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

sys.path.append(os.path.join(load.ROOT, "tests", "ext_authz", ".xds"))
PORTS = {"proxy": 18280, "decision": 18281, "grpc": 18282}

CONFIG = """
[server]
listen = "127.0.0.1:{proxy}"
access_log = false

[decision]
listen = "127.0.0.1:{decision}"
grpc_listen = "127.0.0.1:{grpc}"
ingress = "envoy"

[[issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
audiences = ["{audience}"]
algorithms = ["RS256"]

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/api"
scopes = ["read"]
"""


def h2load(url, clients, streams, duration, headers, body=None, requests=None):
    cmd = ["taskset", "-c", load.WRK_CPU, "h2load", "-c", str(clients), "-m", str(streams)]
    # A count of requests, for a counter that must see exactly those; else a time after a warm-up.
    cmd += ["-n", str(requests)] if requests else ["-D", str(duration), "--warm-up-time=1"]
    if body:
        cmd += ["-d", body]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {"rps": rps, "requests": done, "non2xx": sum(int(x) for x in codes.groups()[1:])}


def instructions(args, d, pid, cases):
    """Each listener's checks: warmed, counters zeroed, h2load for --duration, dumped; the
    dump's total over the checks done."""
    import instructions as instr
    totals = {}
    for n, (name, url, hdrs, body) in enumerate(cases, start=1):
        h2load(url, args.clients, args.streams, 2, hdrs, body)
        subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
        r = h2load(url, args.clients, args.streams, None, hdrs, body, requests=args.checks)
        subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
        dump = f"{d}/cg.out.{n}"
        for _ in range(50):
            if os.path.exists(dump) and os.path.getsize(dump) > 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        total, _ = instr.annotate(dump)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            shutil.copy(dump, os.path.join(args.keep, f"callgrind.{name}.out"))
        totals[name] = total / max(r["requests"], 1)
        print(f"{name:5} {r['requests']:8d} checks  {totals[name]:8.0f} instructions/check", flush=True)
    print(f"gRPC / HTTP, in instructions per check: {totals['grpc'] / totals['http']:.2f}x "
          f"(the HTTP check's throughput over the gRPC one's on one core: {totals['http'] / totals['grpc']:.2f}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--instructions", action="store_true",
                    help="instead: instructions per check under callgrind (a figure the machine's load does not move), "
                         "each listener's checks counted apart")
    ap.add_argument("--keep", metavar="DIR", help="with --instructions: copy each callgrind dump here")
    ap.add_argument("--checks", type=int, default=20000, help="with --instructions: checks counted per listener")
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target", "release", "bearward"))
    args = ap.parse_args()

    from envoy.service.auth.v3 import external_auth_pb2 as pb

    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--quiet", "--bin", "bearward"], cwd=load.ROOT)
    d = tempfile.mkdtemp(prefix="bearward-ext-authz-load-")
    keys = load.Keys()
    import json
    json.dump({"keys": keys.jwks["keys"][:1]}, open(f"{d}/jwks.json", "w"))
    token = keys.token()
    open(f"{d}/bearward.toml", "w").write(CONFIG.format(dir=d, issuer=load.ISSUER, audience=load.AUDIENCE, **PORTS))
    check = pb.CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host, http.scheme, http.protocol = "GET", "/api/x", "api.bench", "http", "HTTP/1.1"
    http.headers["authorization"] = f"Bearer {token}"
    http.headers["x-request-id"] = "bench"
    check.attributes.source.address.socket_address.address = "10.0.0.7"
    msg = check.SerializeToString()
    open(f"{d}/check", "wb").write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    grpc_headers = ["content-type: application/grpc", "te: trailers"]
    http_headers = [f"authorization: Bearer {token}", "x-request-id: bench", "x-forwarded-for: 10.0.0.7"]
    grpc_url = f"http://127.0.0.1:{PORTS['grpc']}/envoy.service.auth.v3.Authorization/Check"
    http_url = f"http://127.0.0.1:{PORTS['decision']}/api/x"
    procs = {}
    try:
        under = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out"] if args.instructions else []
        procs["bearward"] = load.start([*under, args.bearward, "--config", f"{d}/bearward.toml"], load.SERVER_CPU,
                                       env={**os.environ, "RUST_LOG": "warn"})
        for p in PORTS.values():
            load.wait_port(p, timeout=60)
        # h2load shows no trailers: the answer is checked with the tests' Envoy client.
        case = json.dumps([{"path": "/api/x", "host": "api.bench", "headers": {"authorization": f"Bearer {token}"}}])
        out = subprocess.run([sys.executable, os.path.join(load.ROOT, "tests", "ext_authz", "client.py"),
                              f"127.0.0.1:{PORTS['grpc']}"], input=case, capture_output=True, text=True)
        if out.returncode or json.loads(out.stdout)[0]["code"] != 0:
            raise SystemExit(f"the gRPC check is not allowed: {out.stdout} {out.stderr[-1000:]}")
        r = h2load(http_url, 1, 1, 1, http_headers)
        if not r["requests"] or r["non2xx"]:
            raise SystemExit("the HTTP check is not allowed")
        print("checks: gRPC grpc-status 0, HTTP 200")
        pid = procs["bearward"].pid
        if args.instructions:
            instructions(args, d, pid, (("http", http_url, http_headers, None),
                                        ("grpc", grpc_url, grpc_headers, f"{d}/check")))
            return
        results = {}
        for rnd in range(args.rounds):
            for name, url, hdrs, body in (("http", http_url, http_headers, None),
                                          ("grpc", grpc_url, grpc_headers, f"{d}/check")):
                before = load.cpu_counters(pid)
                r = h2load(url, args.clients, args.streams, args.duration, hdrs, body)
                after = load.cpu_counters(pid)
                r["us"] = ((after[0] - before[0]) + (after[1] - before[1])) / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1) * 1e6
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:5} {r['rps']:9.0f} checks/s  cpu {r['us']:.1f} us/check"
                      + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else ""), flush=True)
        ratios = [g["rps"] / h["rps"] for g, h in zip(results["grpc"], results["http"])]
        print()
        for name in ("http", "grpc"):
            runs = results[name]
            print(f"{name:5} {statistics.median(r['rps'] for r in runs):9.0f} checks/s  "
                  f"{statistics.median(r['us'] for r in runs):.1f} us/check")
        print(f"gRPC / HTTP: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"(h2load on CPU {load.WRK_CPU}, {args.clients} connections x {args.streams} streams, h2c; bearward on "
              f"CPU {load.SERVER_CPU}; {args.duration} s runs; medians of {args.rounds} rounds)")
    finally:
        load.stop(procs.values(), d)


if __name__ == "__main__":
    main()

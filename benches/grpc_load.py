#!/usr/bin/env python3
"""HTTP/2 and gRPC load: h2load (h2c, many streams per connection) -> proxy -> h2c upstream.

    python3 benches/grpc_load.py                      # builds bearward, 3 rounds of 10 s
    python3 benches/grpc_load.py --no-build --duration 5 --rounds 4

The upstream is nginx (one worker) on a cleartext HTTP/2 port (`listen ... http2`) answering
every request with a small fixed body. In front of it, on one shared core (as in load.py):

    nginx      `grpc_pass grpc://upstream` (nginx's HTTP/2 proxy; its `proxy_pass` speaks only
               HTTP/1.x upstream), no token check: the bare HTTP/2 proxy hop. nginx gives each
               stream its own upstream connection; `keepalive 1024` keeps one per stream in
               flight, so none is opened per request
    bearward   `protocol = "h2c"` to the same upstream; a `grpc_service` route with a scope, a
               cached RS256 token checked on every request

The load is gRPC-shaped: POST `/bench.Echo/Call` with `content-type: application/grpc`,
`te: trailers` and a 5-byte-framed 32-byte message, from h2load with --clients connections and
--streams concurrent streams on each (100 by default, the issue's figure). Requests/s are
h2load's; CPU figures are the candidate's own per request, as in load.py. Nothing here asserts a
timing; it prints figures.
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

PORTS = {"upstream": 18180, "nginx": 18181, "bearward": 18182}

UPSTREAM = """
worker_processes 1;
pid {dir}/h2-upstream.pid;
error_log {dir}/h2-upstream.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1000;
  server {{
    listen 127.0.0.1:{port} http2 reuseport backlog=4096;
    location / {{ default_type application/grpc; return 200 "upstream ok\\n"; }}
  }}
}}
"""

NGINX = """
worker_processes 1;
pid {dir}/h2-nginx.pid;
error_log {dir}/h2-nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1000;
  # nginx sends each stream on its own upstream connection (it does not multiplex upstream
  # HTTP/2): enough idle ones kept for every stream in flight, so none is opened per request.
  upstream app {{ server 127.0.0.1:{up}; keepalive 1024; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    location / {{ grpc_pass grpc://app; }}
  }}
}}
"""

BEARWARD = """
[server]
listen = "127.0.0.1:{port}"
access_log = false
watch_config = false
http2_max_concurrent_streams = 1000

[[issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
audiences = ["{audience}"]
algorithms = ["RS256"]

[upstreams.app]
url = "http://127.0.0.1:{up}"
protocol = "h2c"

[[routes]]
grpc_service = "bench.Echo"
scopes = ["read"]
upstream = "app"
"""


def h2load(port, clients, streams, duration, headers, body):
    cmd = ["taskset", "-c", load.WRK_CPU, "h2load", "-c", str(clients), "-m", str(streams),
           "-D", str(duration), "--warm-up-time=1", "-d", body]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}/bench.Echo/Call")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {"rps": rps, "requests": done, "non2xx": sum(int(x) for x in codes.groups()[1:]),
            "mean": mean.group(1) if mean else "-"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4, help="h2load connections")
    ap.add_argument("--streams", type=int, default=100, help="concurrent streams per connection")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target", "release", "bearward"))
    args = ap.parse_args()

    load.ensure_tools((("nginx", "nginx"), ("nghttp2-client", "h2load")))
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--quiet", "--bin", "bearward"], cwd=load.ROOT)
    d = tempfile.mkdtemp(prefix="bearward-grpc-load-")
    keys = load.Keys()
    import json
    json.dump({"keys": keys.jwks["keys"][:1]}, open(f"{d}/jwks.json", "w"))
    token = keys.token()
    # One gRPC message: flag 0, length 32, 32 bytes.
    open(f"{d}/body", "wb").write(b"\x00\x00\x00\x00\x20" + b"x" * 32)
    open(f"{d}/upstream.conf", "w").write(UPSTREAM.format(dir=d, port=PORTS["upstream"]))
    open(f"{d}/nginx.conf", "w").write(NGINX.format(dir=d, port=PORTS["nginx"], up=PORTS["upstream"]))
    open(f"{d}/bearward.toml", "w").write(BEARWARD.format(dir=d, port=PORTS["bearward"], up=PORTS["upstream"],
                                                           issuer=load.ISSUER, audience=load.AUDIENCE))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = {}
    try:
        procs["upstream"] = load.start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], load.SERVER_CPU)
        procs["nginx"] = load.start([nginx, "-c", f"{d}/nginx.conf", "-g", "daemon off;"], load.SERVER_CPU)
        procs["bearward"] = load.start([args.bearward, "--config", f"{d}/bearward.toml"], load.SERVER_CPU,
                                       env={**os.environ, "RUST_LOG": "warn"})
        for p in PORTS.values():
            load.wait_port(p)
        time.sleep(0.5)
        grpc = ["content-type: application/grpc", "te: trailers"]
        auth = [f"authorization: Bearer {token}"]
        # Checks: bearward passes the token and refuses its absence in gRPC's form.
        for name, hdrs, want in (("bearward", grpc + auth, 200), ("nginx", grpc, 200)):
            r = h2load(PORTS[name], 1, 1, 1, hdrs, f"{d}/body")
            print(f"check {name:9} {r['requests']} requests, non-2xx {r['non2xx']}")
            # nginx's grpc_pass now and then answers 502 when the upstream closes a kept connection
            # under it (seen 2 in 6,000); a proxy that fails more than that is not measured.
            if not r["requests"] or r["non2xx"] > r["requests"] / 1000:
                err = open(f"{d}/h2-nginx.err").read()[-2000:] if name == "nginx" else ""
                raise SystemExit(f"{name} does not pass the load's requests\n{err}")
        out = subprocess.run(["h2load", "-n", "1", "-d", f"{d}/body", *sum((["-H", h] for h in grpc), []), "-v",
                              f"http://127.0.0.1:{PORTS['bearward']}/bench.Echo/Call"], capture_output=True, text=True).stdout
        if "grpc-status: 16" not in out:
            raise SystemExit("bearward does not refuse a gRPC call without a token with UNAUTHENTICATED")
        print("check bearward  no token -> grpc-status 16")
        results = {}
        for rnd in range(args.rounds):
            for name, hdrs in (("nginx", grpc + auth), ("bearward", grpc + auth)):
                pid = procs[name].pid
                before = load.cpu_counters(pid)
                r = h2load(PORTS[name], args.clients, args.streams, args.duration, hdrs, f"{d}/body")
                after = load.cpu_counters(pid)
                per = lambda i: (after[i] - before[i]) / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1) * 1e6
                r["usr"], r["sys"] = per(0), per(1)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:9} {r['rps']:10.0f} req/s  mean {r['mean']:>9}  usr {r['usr']:.1f} sys {r['sys']:.1f} us/req"
                      + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else ""), flush=True)
        print()
        print(f"{'candidate':9} {'req/s':>9} {'usr us':>7} {'sys us':>7} {'vs nginx':>9} {'(range)':>12}")
        for name, runs in results.items():
            ratios = [r["rps"] / b["rps"] for r, b in zip(runs, results["nginx"])]
            med = lambda k: statistics.median(r[k] for r in runs)
            print(f"{name:9} {med('rps'):9.0f} {med('usr'):7.1f} {med('sys'):7.1f} {statistics.median(ratios):8.2f}x"
                  f"  ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"(h2load on CPU {load.WRK_CPU}, {args.clients} connections x {args.streams} streams; upstream and proxies "
              f"on CPU {load.SERVER_CPU}; {args.duration} s runs; medians of {args.rounds} rounds)")
    finally:
        load.stop(procs.values(), d)


if __name__ == "__main__":
    main()

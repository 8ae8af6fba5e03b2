#!/usr/bin/env python3
"""MCP tool calls per second through an `mcp` route, against the same calls straight to the
upstream and through the same route without `mcp` rules (whose body streams unread): what the
body read, the JSON-RPC parse and the per-tool check cost (issue 38's figure), for a 1 KiB and
a 64 KiB `tools/call` body.

    python3 benches/mcp_load.py                  # builds bearward, 3 rounds of 5 s
    python3 benches/mcp_load.py --no-build --duration 5 --rounds 3

h2load (--h1, CPU 0) POSTs the body on --clients keep-alive connections to nginx (the
upstream of benches/load.py, CPU 0, answering 200) directly, or through bearward (CPU 1) with a
cached RS256 token holding the route's and the tool's scopes. Each round runs every case, in
turn. Nothing asserts a timing; it prints figures.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORTS = {"upstream": 18380, "bearward": 18384}

CONFIG = """
[server]
listen = "127.0.0.1:{bearward}"
access_log = false

[[issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
audiences = ["{audience}"]
algorithms = ["RS256"]

[upstreams.mcp]
url = "http://127.0.0.1:{upstream}"

[[routes]]
prefix = "/mcp"
upstream = "mcp"
scopes = ["mcp"]
mcp = {{ tools = {{ delete_repo = ["repo:admin"], "*" = ["tools:call"] }} }}

[[routes]]
prefix = "/plain"
upstream = "mcp"
scopes = ["mcp"]
"""


def h1load(url, clients, duration, headers, body):
    """h2load over HTTP/1.1 keep-alive connections, one request at a time on each."""
    cmd = ["taskset", "-c", load.WRK_CPU, "h2load", "--h1", "-c", str(clients), "-m", "1",
           "-D", str(duration), "--warm-up-time=1", "-d", body]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {"rps": rps, "requests": done, "non2xx": sum(int(x) for x in codes.groups()[1:])}


def body(size):
    """A tools/call of `echo` padded to `size` bytes with its argument."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": ""}}}
    pad = size - len(json.dumps(call, separators=(",", ":")))
    call["params"]["arguments"]["text"] = "x" * pad
    out = json.dumps(call, separators=(",", ":")).encode()
    assert len(out) == size
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target", "release", "bearward"))
    args = ap.parse_args()
    load.ensure_tools((("nginx", "nginx"), ("nghttp2-client", "h2load")))
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--quiet", "--bin", "bearward"], cwd=load.ROOT)
    d = tempfile.mkdtemp(prefix="bearward-mcp-load-")
    keys = load.Keys()
    json.dump({"keys": keys.jwks["keys"][:1]}, open(f"{d}/jwks.json", "w"))
    token = keys.token(scope="mcp tools:call")
    open(f"{d}/bearward.toml", "w").write(CONFIG.format(dir=d, issuer=load.ISSUER, audience=load.AUDIENCE, **PORTS))
    open(f"{d}/nginx.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=PORTS["upstream"]))
    sizes = {"1KiB": 1024, "64KiB": 65536}
    for name, size in sizes.items():
        open(f"{d}/{name}", "wb").write(body(size))
    headers = ["content-type: application/json", "accept: application/json, text/event-stream"]
    auth = headers + [f"authorization: Bearer {token}"]
    procs = {}
    try:
        procs["upstream"] = load.start(["nginx", "-c", f"{d}/nginx.conf", "-g", "daemon off;"], load.WRK_CPU)
        procs["bearward"] = load.start([args.bearward, "--config", f"{d}/bearward.toml"], load.SERVER_CPU,
                                       env={**os.environ, "RUST_LOG": "warn"})
        for p in PORTS.values():
            load.wait_port(p)
        cases = {
            "direct": (f"http://127.0.0.1:{PORTS['upstream']}/mcp", headers),
            "bearward-mcp": (f"http://127.0.0.1:{PORTS['bearward']}/mcp", auth),
            "bearward-plain": (f"http://127.0.0.1:{PORTS['bearward']}/plain", auth),
        }
        # Every case answers 200, and the mcp route does refuse a tool the token lacks.
        for name, (url, hdrs) in cases.items():
            r = h1load(url, 1, 1, hdrs, f"{d}/1KiB")
            if not r["requests"] or r["non2xx"]:
                raise SystemExit(f"{name}: not 200")
        refused = body(1024).replace(b'"name":"echo"', b'"name":"delete_repo"')
        hdrs = dict(h.split(": ", 1) for h in auth)
        status, _ = load.request(cases["bearward-mcp"][0], hdrs, refused)
        if status != 403:
            raise SystemExit(f"delete_repo was not refused: {status}")
        print("checks: every case 200, delete_repo refused")
        pid = procs["bearward"].pid
        results = {}
        for rnd in range(args.rounds):
            for size in sizes:
                for name, (url, hdrs) in cases.items():
                    before = load.cpu_counters(pid)
                    r = h1load(url, args.clients, args.duration, hdrs, f"{d}/{size}")
                    after = load.cpu_counters(pid)
                    r["us"] = ((after[0] - before[0]) + (after[1] - before[1])) / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1) * 1e6
                    results.setdefault((size, name), []).append(r)
                    print(f"round {rnd + 1} {size:6} {name:15} {r['rps']:9.0f} req/s  bearward cpu {r['us']:.1f} us/req"
                          + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else ""), flush=True)
        print()
        for size in sizes:
            med = {n: statistics.median(x["rps"] for x in results[(size, n)]) for n in cases}
            us = {n: statistics.median(x["us"] for x in results[(size, n)]) for n in cases}
            print(f"{size}: direct {med['direct']:.0f} req/s; bearward mcp {med['bearward-mcp']:.0f} "
                  f"({med['bearward-mcp'] / med['direct']:.2f}x of direct, {us['bearward-mcp']:.1f} us/req); "
                  f"bearward plain {med['bearward-plain']:.0f} ({us['bearward-plain']:.1f} us/req): "
                  f"the mcp rules {med['bearward-mcp'] / med['bearward-plain']:.2f}x of the plain route")
    finally:
        load.stop(procs.values(), d)


if __name__ == "__main__":
    main()

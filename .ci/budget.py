#!/usr/bin/env python3
"""The request path's instruction budget, kept by CI: instructions per request counted by
callgrind, which do not move with the machine's load the way times do.

    python3 .ci/budget.py target/release/bearward      # exit 1 when a scenario is over budget

The release build runs under `valgrind --tool=callgrind` in front of an nginx upstream (the
config of benches/load.py). One client on one keep-alive connection sends each scenario's
requests one after another, so every request takes the same way through the event loop (wrk's
parallel connections would batch wake-ups differently from run to run); the counters are zeroed
after a warm-up, dumped after the counted requests, and divided by their number. Three
processes count, and the lowest count is kept (see `main`).

The budgets are today's figures plus a margin under 3,000 instructions: a change that adds
3,000 to the path fails here. They are ratchets toward issue 41's goal (20,000 for a cached
token, 14,000 for the 401): lower them when the path gets cheaper. `--print` shows the figures
only.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benches"))
import load  # noqa: E402

# Instructions per request, sequential client (see above).
# 2026-12-05: cached 30,288-30,471 (three runs); the 401 15,357 after its last cut.
# Then request ids (on by default, about 1,150) and the tracing hooks with [telemetry] off
# (about 230): cached 31,754-31,784, the 401 16,306-16,309. The cached budget was raised from
# 31,800 for them, on purpose and once; lower it again as the path gets cheaper.
# 2026-12-06: hyper writes each answer from one buffer (`writev(false)`): lowest of three
# 31,592 cached (32,037 before), 16,011 for the 401 (16,468); budgets lowered by 400. Then the
# request path's future boxed and each route's answer to a missing token made when the config
# loads: 31,431-31,491 cached, 15,327 for the 401.
# 2026-12-06 (session 27): framing headers noted in the response parse, and the prepared 401's
# request-id line replaced in place: 31,098-31,245 cached, 14,702-14,793 for the 401; the 401's
# budget lowered by 400.
# 2026-12-07 (session 34): tokens in cookies, sign-in redirects and source_ranges exceptions cost
# routes without them nothing measurable (31,579-31,801 across the session's builds, ±100-200
# from layout alone); the identity headers and Upgrade/Via looked for in one pass over the
# client's names instead of hashed lookups: 31,415-31,516 cached, 14,716 for the 401 (CI).
# 2026-12-07 (session 37): connections served on worker threads of their own, each a
# current-thread runtime (server::workers), instead of tokio's work-stealing scheduler: its
# per-park poll-time average (a powf and clock reads) and the waking of the idle worker were
# 1.2k of a cached request. 30,147-30,156 cached, 14,114-14,121 for the 401 (three runs, which
# now agree within 10: the scheduler was the noise); both budgets lowered.
BUDGET = {
    "cached RS256 token": 30_800,
    "no token (401)": 14_750,
}
PORT, UPSTREAM = 18294, 18290
WARM, COUNTED = 300, 2000


def exchange(sock, request):
    """Sends one request and reads its answer; returns the status."""
    sock.sendall(request)
    return load.read_http1(sock)


def count(pid, dump, request, expect):
    sock = socket.create_connection(("127.0.0.1", PORT))
    for _ in range(WARM):
        if exchange(sock, request) != expect:
            raise SystemExit(f"expected {expect} from bearward")
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    for _ in range(COUNTED):
        exchange(sock, request)
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    sock.close()
    for _ in range(100):
        if os.path.exists(dump) and os.path.getsize(dump) > 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    out = subprocess.run(["callgrind_annotate", "--threshold=100", dump], capture_output=True, text=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
    return total // COUNTED


def measure(binary, extra, keys, token):
    """One bearward process under callgrind: each scenario's instructions per request."""
    d = tempfile.mkdtemp(prefix="bearward-budget-")
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM))
    open(f"{d}/bearward.toml", "w").write(load.BEARWARD.format(
        port=PORT, cache=10000, issuer=load.ISSUER, audience=load.AUDIENCE, dir=d, up=UPSTREAM)
        + "".join("\n" + e for e in extra))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = []
    try:
        procs.append(subprocess.Popen([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"]))
        bw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out", binary,
                               "--config", f"{d}/bearward.toml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(bw)
        load.wait_port(UPSTREAM)
        load.wait_port(PORT, timeout=120)
        host = f"Host: 127.0.0.1:{PORT}\r\n"
        scenarios = (("cached RS256 token", f"GET / HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n", 200),
                     ("no token (401)", f"GET / HTTP/1.1\r\n{host}\r\n", 401))
        return {name: count(bw.pid, f"{d}/cg.out.{n}", request.encode(), expect)
                for n, (name, request, expect) in enumerate(scenarios, start=1)}
    finally:
        load.stop(procs, d, wait=10)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only_print = "--print" in sys.argv
    # --append=FILE: more config for the measured bearward (a [telemetry] table, say), with
    # --print: what a setting costs (benches/README.md).
    extra = [open(a.split("=", 1)[1]).read() for a in sys.argv[1:] if a.startswith("--append=")]
    binary = args[0] if args else os.path.join(load.ROOT, "target/release/bearward")
    for tool in ("valgrind", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", tool], check=True, stdout=subprocess.DEVNULL)
    keys = load.Keys()
    token = keys.token("RS256")
    # Three processes, the lowest count of each kept. The same build counts up to 250 more in
    # one process than in another (hash seeds, which differ per process, and how often a worker
    # parks between requests and is woken again): noise that only ever adds, and that the
    # budgets' margins (a few hundred) cannot absorb. A change to the path raises every count.
    runs = [measure(binary, extra, keys, token) for _ in range(3)]
    print(f"{'scenario':22} {'instr/req':>10} {'budget':>8}   runs")
    over = []
    for name in runs[0]:
        got = min(r[name] for r in runs)
        print(f"{name:22} {got:10d} {BUDGET[name]:8d}   {', '.join(str(r[name]) for r in runs)}", flush=True)
        if got > BUDGET[name]:
            over.append(name)
    if over and not only_print:
        print(f"over the instruction budget: {', '.join(over)} (.ci/budget.py says how it counts)")
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Instructions per request through bearward, counted by callgrind: a figure that does not
move with the machine's load, unlike requests/s.

    python3 benches/instructions.py            # installs valgrind if missing, builds bearward

bearward runs under `valgrind --tool=callgrind` in front of the load benchmark's nginx upstream
(same config as benches/load.py, verified-token cache on). Scenarios: one cached RS256 token,
1,000 rotated ones (the cache is warmed first, so both count cache hits only), and no token;
then, for scale, nginx's bare proxy hop (load.py's `nginx` candidate, one process).
For each, the counters are zeroed, wrk sends requests for --duration seconds over 8
connections, and the dump is divided by the requests wrk completed. SHA-256 (now computed only
when a token is validated, for its log id) is reported apart: valgrind hides SHA-NI from the
program, so it runs a software path there that costs far more than it does natively.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM, NGINX_PORT, REDIS_PORT = 18094, 18090, 18095, 18096


def annotate(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
    sha = sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) \(.*sha256_block_data_order\w* \[", out, re.M))
    return total, sha


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target/release/bearward"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--limits", action="store_true",
                    help="instead: a rate limit that never trips (key = subject), per process and through a "
                         "redis-server, against none; one cached token and 1,000 rotated ones")
    ap.add_argument("--policy", action="store_true",
                    help="instead: a route's allow_if (claims.tenant == request.params.tenant && 'admin' in "
                         "claims.roles, on prefix /t/{tenant}/), and its authzen with a cached answer, against "
                         "the same route without either")
    ap.add_argument("--upstream", action="store_true",
                    help="instead: an identity assertion on the upstream (kept per token, and signed per "
                         "request) and a token exchange (kept), against plain forwarding")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy each scenario's callgrind dump here, for callgrind_annotate --inclusive=yes")
    args = ap.parse_args()

    load.ensure_tools()
    if not shutil.which("valgrind"):
        print("installing valgrind with apt-get", flush=True)
        load.sh(["apt-get", "update", "-qq"])
        load.sh(["apt-get", "install", "-y", "-qq", "valgrind"], stdout=subprocess.DEVNULL)
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=load.ROOT)

    d = tempfile.mkdtemp(prefix="bearward-instr-")
    keys = load.Keys()
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    token = keys.token("RS256")
    with open(f"{d}/tokens1000.txt", "w") as f:
        for i in range(1000):
            f.write(keys.token("RS256", sub=f"user-{i}") + "\n")
    open(f"{d}/rotate1000.lua", "w").write(load.WRK_ROTATE % f"{d}/tokens1000.txt")
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM))
    open(f"{d}/bearward.toml", "w").write(load.BEARWARD.format(
        port=PORT, cache=10000, issuer=load.ISSUER, audience=load.AUDIENCE, dir=d, up=UPSTREAM))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = []
    if args.policy or args.limits or args.upstream:
        try:
            procs.append(subprocess.Popen([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"]))
            if args.policy:
                policy(args, d, keys, procs)
            elif args.upstream:
                upstream_auth(args, d, token, procs)
            else:
                limits(args, d, token, procs)
        finally:
            load.stop(procs, d, wait=10)
        return
    try:
        procs.append(subprocess.Popen([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"]))
        bearward = subprocess.Popen(
            ["taskset", "-c", load.SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out", args.bearward, "--config", f"{d}/bearward.toml"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(bearward)
        load.wait_port(UPSTREAM)
        load.wait_port(PORT, timeout=60)
        if load.status(PORT, token) != 200 or load.status(PORT, None) != 401:
            raise SystemExit("bearward under valgrind does not answer as expected")

        print(f"{'scenario':34} {'requests':>9} {'instr/req':>10} {'of which SHA-256':>17}")
        scenarios = (("bearer, cached RS256 token", "bearer", ["-H", f"Authorization: Bearer {token}"]),
                     ("1,000 rotated RS256 tokens", "rotated", ["-s", f"{d}/rotate1000.lua"]),
                     ("no token (401)", "no-token", []))
        for n, (name, short, extra) in enumerate(scenarios, start=1):
            count(args, bearward.pid, f"{d}/cg.out.{n}", PORT, name, short, extra)
        bearward.terminate()
        bearward.wait(10)

        # For scale: nginx's bare proxy hop (no token check), one process, counted the same way.
        open(f"{d}/proxy.conf", "w").write(load.NGINX_PROXY.format(dir=d, port=NGINX_PORT, up=UPSTREAM)
                                           .replace("worker_processes 1;", "worker_processes 1;\nmaster_process off;"))
        proxy = subprocess.Popen(
            ["taskset", "-c", load.SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/nginx.out", nginx, "-c", f"{d}/proxy.conf", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proxy)
        load.wait_port(NGINX_PORT, timeout=60)
        count(args, proxy.pid, f"{d}/nginx.out.1", NGINX_PORT, "nginx bare proxy (for scale)", "nginx", [])
    finally:
        load.stop(procs, d, wait=10)


def policy(args, d, keys, procs):
    """The same request (GET /t/acme/x, a cached RS256 token with tenant and roles claims) on a
    templated route with a typical allow_if, and on the plain route of load.py's config."""
    token = keys.token("RS256", extra={"tenant": "acme", "roles": ["user", "admin"]})
    base = open(f"{d}/bearward.toml").read()
    templated = base.replace('prefix = "/"', 'prefix = "/t/{tenant}/"')
    with_policy = templated.replace(
        'scopes = ["read"]', 'scopes = ["read"]\nallow_if = "claims.tenant == request.params.tenant && \'admin\' in claims.roles"')
    # A cached AuthZEN answer: the tests' spec-written PDP, allowing every question.
    pdp_port = PORT + 7
    procs.append(subprocess.Popen([sys.executable, os.path.join(load.ROOT, "tests", "authzen", "pdp.py"), str(pdp_port),
                                   "--mode", "allow_all"], stdout=subprocess.DEVNULL))
    load.wait_port(pdp_port)
    with_pdp = templated.replace("[[routes]]", f'[authzen.bench]\nurl = "http://127.0.0.1:{pdp_port}"\n\n[[routes]]', 1) \
        .replace('scopes = ["read"]', 'scopes = ["read"]\nauthzen = "bench"')
    scenarios = (("no allow_if", base), ("{tenant} route, no allow_if", templated),
                 ("{tenant} route, allow_if", with_policy), ("{tenant} route, authzen (cached)", with_pdp))
    each_config(args, d, procs, scenarios, token, "policy", path="/t/acme/x")


def each_config(args, d, procs, scenarios, token, short, path="/"):
    """Counts instructions per request of one bearward per (label, config text), in turn, the
    same request (`path` with `token`) each time."""
    print(f"{'scenario':34} {'requests':>9} {'instr/req':>10} {'of which SHA-256':>17}")
    for i, (label, conf) in enumerate(scenarios):
        open(f"{d}/{short}.toml", "w").write(conf)
        bearward = subprocess.Popen(
            ["taskset", "-c", load.SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/{short}{i}.out",
             args.bearward, "--config", f"{d}/{short}.toml"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(bearward)
        load.wait_port(PORT, timeout=60)
        if load.status(PORT, token, path=path) != 200:
            raise SystemExit(f"bearward under valgrind ({label}) does not answer as expected")
        count(args, bearward.pid, f"{d}/{short}{i}.out.1", PORT, label, f"{short}{i}",
              ["-H", f"Authorization: Bearer {token}"], path=path)
        bearward.terminate()
        bearward.wait(10)
        procs.remove(bearward)


def upstream_auth(args, d, token, procs):
    """One cached RS256 token on load.py's route: plain, with an identity assertion (kept per
    token; signed per request), with a token exchange at nginx's /token (kept)."""
    base = open(f"{d}/bearward.toml").read()
    load.wait_port(UPSTREAM)
    scenarios = load.upstream_auth_configs(base, d, UPSTREAM).items()
    each_config(args, d, procs, scenarios, token, "upstream", path="/api/check")


def limits(args, d, token, procs):
    """Load.py's bearward-rl and bearward-rlr configs (a limit that never trips) against none."""
    redis = shutil.which("redis-server")
    if not redis:
        load.sh(["apt-get", "install", "-y", "-qq", "redis-server"], stdout=subprocess.DEVNULL)
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    procs.append(subprocess.Popen([redis, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL))
    base = open(f"{d}/bearward.toml").read()
    limited = base.replace('scopes = ["read"]', 'scopes = ["read"]\nrate_limit = { key = "subject", rate = "1000000/s" }')
    stored = limited.replace("[[issuers]]", f'[cache]\nredis_url = "redis://127.0.0.1:{REDIS_PORT}/0"\n\n[[issuers]]', 1)
    print(f"{'scenario':34} {'requests':>9} {'instr/req':>10} {'of which SHA-256':>17}")
    for i, (label, conf) in enumerate((("no limit", base), ("local limit", limited), ("Redis-backed limit", stored))):
        open(f"{d}/limit.toml", "w").write(conf)
        bearward = subprocess.Popen(
            ["taskset", "-c", load.SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/limit{i}.out",
             args.bearward, "--config", f"{d}/limit.toml"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(bearward)
        load.wait_port(PORT, timeout=60)
        if load.status(PORT, token) != 200:
            raise SystemExit(f"bearward under valgrind ({label}) does not answer as expected")
        scenarios = ((f"{label}, cached token", "one", ["-H", f"Authorization: Bearer {token}"]),
                     (f"{label}, 1,000 subjects", "rotated", ["-s", f"{d}/rotate1000.lua"]))
        for n, (name, short, extra) in enumerate(scenarios, start=1):
            count(args, bearward.pid, f"{d}/limit{i}.out.{n}", PORT, name, f"{label.split()[0].lower()}-{short}", extra)
        bearward.terminate()
        bearward.wait(10)
        procs.remove(bearward)


def count(args, pid, dump, port, name, short, extra, path="/"):
    """Zeroes the counters of process `pid`, runs wrk, and prints instructions per request."""
    # Warm first (the verified-token cache, for bearward), so each scenario counts steady state
    # only: 1,000 RS256 verifications would add several thousand instructions per request.
    # By count, not time: under valgrind on a busy machine 2 s may not reach all 1,000 tokens
    # of the rotated scenario, and the misses' signatures would be counted as steady state.
    warmed = 0
    for _ in range(15):
        out = subprocess.run(["wrk", "-t1", "-c8", "-d2s", *extra, f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True).stdout
        m = re.search(r"(\d+) requests in", out)
        warmed += int(m.group(1)) if m else 0
        if warmed >= 3000:
            break
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    cmd = ["wrk", "-t1", "-c8", f"-d{args.duration}s", *extra]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    for _ in range(50):
        if os.path.exists(dump) and os.path.getsize(dump) > 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    total, sha = annotate(dump)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copy(dump, os.path.join(args.keep, f"callgrind.{short}.out"))
    print(f"{name:34} {requests:9d} {total // requests:10d} {sha // requests:17d}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds bearward with profile-guided optimization (PGO): an instrumented build serves a
training load, and the release build is then compiled with the profile it recorded.

    python3 deploy/pgo.py                  # prints the path of the optimized binary
    python3 deploy/pgo.py --out /usr/local/bin/bearward

Same source, same Cargo.lock, same features as `cargo build --release`; only the compiler's
choices of what to inline and how to lay out code follow the profile. On the load benchmark's
machine this cut instructions per cached request from 25.7k to 20.2k and per 401 from 14.7k to
10.9k (benches/instructions.py); see benches/README.md.

What it does:
  * installs the rustup `llvm-tools` component (for `llvm-profdata`) if missing, and nginx,
    wrk and h2load (apt, nghttp2-client) for the training load;
  * builds bearward with `-Cprofile-generate` (target/pgo/generate);
  * trains it: a fixed nginx upstream, and bearward with access logs on, several routes and
    claim headers, in front of it, once with one worker thread (tokio's current-thread runtime,
    what a sidecar on one CPU runs) and once with one per CPU; wrk and h2load send a mix of
    traffic (the `training` list below): cached and rotated RS256 tokens, ES256, a missing
    token, a missing scope, an unknown route, a public route, request bodies, HTTP/2, and a run
    with the verified-token cache off so that validation itself is profiled; every response
    code is checked;
  * merges the profile and builds with `-Cprofile-use` (target/pgo/use/release/bearward);
  * runs the mix once more, 1 s a run, against that optimized build, every status checked.

The training mix is broader than benches/load.py's scenarios on purpose: a path PGO never sees
is compiled as cold, so what production traffic takes must be in the mix, not just what the
benchmark measures. Two builds take about 4 minutes each on 2 cores (fat LTO), and the
training 2 minutes.
"""

import argparse
import glob
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches"))
import load  # noqa: E402

ROOT = load.ROOT
PORT, UP = 18394, 18390

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
watch_config = false
token_cache_entries = {cache}
{workers}

[[issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
audiences = ["{audience}"]
algorithms = ["RS256", "ES256"]

[upstreams.app]
url = "http://127.0.0.1:{up}"

[forward]
claim_headers = {{ sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }}

[[routes]]
prefix = "/public"
upstream = "app"
auth = "none"

[[routes]]
prefix = "/api/admin"
scopes = ["admin"]
upstream = "app"

[[routes]]
prefix = "/api"
scopes = ["read"]
upstream = "app"
"""

POST = """
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Authorization"] = "Bearer %s"
"""


def note(text):
    """Progress goes to stderr: stdout is only the optimized binary's path, for scripts."""
    print(text, file=sys.stderr, flush=True)


def llvm_profdata():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    found = glob.glob(os.path.join(sysroot, "lib", "rustlib", "*", "bin", "llvm-profdata"))
    if not found:
        note("installing the rustup component llvm-tools (for llvm-profdata)")
        load.sh(["rustup", "component", "add", "llvm-tools"])
        found = glob.glob(os.path.join(sysroot, "lib", "rustlib", "*", "bin", "llvm-profdata"))
    if not found:
        sys.exit("pgo: no llvm-profdata in the toolchain, and `rustup component add llvm-tools` did not add one")
    return found[0]


def tools():
    load.ensure_tools((("nginx", "nginx"), ("wrk", "wrk"), ("nghttp2-client", "h2load")))


def build(flags, target_dir):
    env = {**os.environ, "RUSTFLAGS": f"{os.environ.get('RUSTFLAGS', '')} {flags}".strip()}
    load.sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward", "--target-dir", target_dir], cwd=ROOT, env=env)
    return os.path.join(target_dir, "release", "bearward")


def free_or_exit(port):
    """A training load sent to some other server on the port would profile nothing."""
    import socket
    with socket.socket() as sock:
        # As servers do, so that connections of an earlier run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            sys.exit(f"pgo: 127.0.0.1:{port} is taken ({e}); stop what listens there")


def listening(port, proc, timeout=10):
    import socket
    import time
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def run(cmd, expect):
    """Runs a load generator; fails unless every response was in the class of `expect`."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"pgo: {cmd[0]} failed:\n{text}")
    if cmd[0] == "h2load":
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        counts = [int(n) for n in m.groups()] if m else []
        if not counts or sum(counts) != counts[expect // 100 - 2] or sum(counts) == 0:
            sys.exit(f"pgo: h2load expected {expect} everywhere:\n{text}")
        return
    total = int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    bad = int(m.group(1)) if m else 0
    if total == 0 or (expect == 200 and bad) or (expect != 200 and bad != total):
        sys.exit(f"pgo: wrk expected {expect} everywhere:\n{text}")


def train(binary, profiles, seconds):
    d = tempfile.mkdtemp(prefix="bearward-pgo-")
    keys = load.Keys()
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UP))
    with open(f"{d}/tokens.txt", "w") as f:
        for i in range(1000):
            f.write(keys.token("RS256", sub=f"user-{i}") + "\n")
    open(f"{d}/rotate.lua", "w").write(load.WRK_ROTATE % f"{d}/tokens.txt")
    rs, es = keys.token("RS256"), keys.token("ES256")
    open(f"{d}/post.lua", "w").write(POST % rs)
    base = f"http://127.0.0.1:{PORT}"
    wrk = ["wrk", "-t1", "-c32", f"-d{seconds}s"]
    auth = {"Authorization": f"Bearer {rs}"}
    # (what, a request like the load's, the load, the status every response must have)
    training = [
        ("one cached RS256 token", ("/api/items", auth), wrk + ["-H", f"Authorization: Bearer {rs}", f"{base}/api/items"], 200),
        ("1,000 rotated RS256 tokens", ("/api/items?page=2", auth), wrk + ["-s", f"{d}/rotate.lua", f"{base}/api/items?page=2"], 200),
        ("ES256 token", ("/api/items", {"Authorization": f"Bearer {es}"}), wrk + ["-H", f"Authorization: Bearer {es}", f"{base}/api/items"], 200),
        ("no token", ("/api/items", {}), wrk + [f"{base}/api/items"], 401),
        ("a scope missing", ("/api/admin/users", auth), wrk + ["-H", f"Authorization: Bearer {rs}", f"{base}/api/admin/users"], 403),
        ("public route", ("/public/status", {}), wrk + [f"{base}/public/status"], 200),
        ("unknown route", ("/other", {}), wrk + [f"{base}/other"], 404),
        ("POST with a 2 KiB body", ("/api/upload", auth, b"x" * 2048), wrk + ["-s", f"{d}/post.lua", f"{base}/api/upload"], 200),
        ("HTTP/2", ("/api/items", auth), ["h2load", "-D", str(seconds), "-c", "8", "-m", "16", "-H", f"authorization: Bearer {rs}", f"{base}/api/items"], 200),
    ]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    free_or_exit(UP)
    upstream = load.start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], "1")
    try:
        load.wait_port(UP)
        # One worker thread serves the connections on the main thread (a sidecar on one CPU); the
        # default is a worker thread per CPU, connections handed to them (a gateway). Both are
        # trained, since the code one of them runs would otherwise be compiled as cold.
        for cache, workers, runs in ((10000, 1, training), (10000, 0, training), (0, 0, training[:1])):
            workers = f"worker_threads = {workers}" if workers else ""
            open(f"{d}/bearward.toml", "w").write(CONFIG.format(port=PORT, cache=cache, workers=workers, issuer=load.ISSUER, audience=load.AUDIENCE, dir=d, up=UP))
            env = {**os.environ, "LLVM_PROFILE_FILE": os.path.join(profiles, "bearward-%p.profraw"), "RUST_LOG": "info"}
            free_or_exit(PORT)
            log = open(f"{d}/bearward.log", "w")
            gw = subprocess.Popen([binary, "--config", f"{d}/bearward.toml"], stdout=log, stderr=log, env=env)
            try:
                if not listening(PORT, gw):
                    sys.exit(f"pgo: bearward did not start:\n{open(log.name).read()[-2000:]}")
                for what, (path, headers, *body), cmd, expect in runs:
                    note(f"  training: {what}{'' if cache else ', token cache off'}{', one worker thread' if workers else ''}")
                    got = load.request(base + path, headers, *body)[0]
                    if got != expect:
                        sys.exit(f"pgo: {what}: expected {expect}, got {got}")
                    run(cmd, expect)
            finally:
                # SIGTERM: bearward drains and exits 0, which is when the profile is written.
                gw.send_signal(signal.SIGTERM)
                gw.wait(40)
            if gw.returncode != 0:
                sys.exit(f"pgo: the instrumented bearward exited with {gw.returncode}")
    finally:
        load.stop([upstream], d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3, help="seconds per training run")
    ap.add_argument("--out", help="copy the optimized binary here")
    ap.add_argument("--check", metavar="BINARY",
                    help="only run the training mix against this (uninstrumented) build, 1 s per run, "
                         "and check every status: what CI does, so the mix keeps up with the config")
    args = ap.parse_args()

    if args.check:
        tools()
        with tempfile.TemporaryDirectory() as profiles:
            train(os.path.abspath(args.check), profiles, 1)
        note("pgo: every training run answered as expected")
        return
    profdata = llvm_profdata()
    tools()

    pgo = os.path.join(ROOT, "target", "pgo")
    profiles = os.path.join(pgo, "profiles")
    shutil.rmtree(profiles, ignore_errors=True)
    os.makedirs(profiles)
    note("building the instrumented bearward")
    # Build scripts are instrumented too and write under profiles/build; only the training's own
    # files (named by LLVM_PROFILE_FILE) are merged.
    instrumented = build(f"-Cprofile-generate={profiles}/build", os.path.join(pgo, "generate"))
    train(instrumented, profiles, args.seconds)
    merged = os.path.join(pgo, "bearward.profdata")
    load.sh([profdata, "merge", "-o", merged, *glob.glob(os.path.join(profiles, "bearward-*.profraw"))])
    note("building bearward with the profile")
    optimized = build(f"-Cprofile-use={merged}", os.path.join(pgo, "use"))
    # The instrumented build answered the mix; the one that ships is a different binary, so it
    # answers it too (1 s a run) before anything copies it.
    note("checking the optimized bearward against the training mix")
    with tempfile.TemporaryDirectory() as scratch:
        train(optimized, scratch, 1)
    if args.out:
        shutil.copy2(optimized, args.out)
        optimized = args.out
    print(optimized)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cost against the size of the route table: load, check and reload times, instructions per
request, and paired throughput, for configs of N `auth = "none"` prefix routes /r0 .. /rN-1.

    python3 benches/routes.py                       # builds the release binary first
    python3 benches/routes.py --no-build --bearward PATH [--sizes 1,10000,100000]

Times: `bearward check` on the file, a start until the listener answers, and a reload (SIGHUP)
until the last route of a rewritten file answers. Instructions (callgrind, like
benches/instructions.py): requests to the only route of a one-route table, and to the first
and the last route of a 10,000-route table. Throughput: the one-route and the 10,000-route
bearward side by side on the same core, each with its own wrk, requests to the last route,
`--rounds` times (the ratio is requests served in the same seconds, so the machine's drift
hits both alike)."""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402
from instructions import annotate  # noqa: E402

UPSTREAM, PORT, PORT_B = 18190, 18191, 18192


def config(n, port, up=UPSTREAM, reverse=False):
    head = f'[server]\nlisten = "127.0.0.1:{port}"\naccess_log = false\nwatch_config = false\n\n[upstreams.app]\nurl = "http://127.0.0.1:{up}"\n'
    order = range(n - 1, -1, -1) if reverse else range(n)
    routes = "".join(f'\n[[routes]]\nprefix = "/r{i}"\nupstream = "app"\nauth = "none"\n' for i in order)
    return head + routes


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def wait_status(port, path, want, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            status, _ = load.request(f"http://127.0.0.1:{port}{path}")
        except OSError:  # a request that waited past load.request's 5 s: ask again
            continue
        if status == want:
            return
        time.sleep(0.01)
    raise SystemExit(f"{path} did not answer {want} within {timeout} s")


def times(args, d, sizes):
    print(f"{'routes':>8} {'check s':>9} {'start s':>9} {'reload s':>9} {'slowest request during reload, ms':>34}")
    for n in sizes:
        path = f"{d}/routes{n}.toml"
        open(path, "w").write(config(n, PORT))
        check = timed(lambda: subprocess.run([args.bearward, "check", "--config", path], capture_output=True, check=True))
        # One runtime thread, as a sidecar pinned to one CPU: a reload built on it would stall
        # every request meanwhile.
        open(path, "w").write(config(n, PORT).replace("watch_config = false", "watch_config = false\nworker_threads = 1"))
        proc = subprocess.Popen([args.bearward, "--config", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            start = timed(lambda: wait_status(PORT, f"/r{n - 1}/x", 200, 600))
            # The same routes in reverse order, and one more: the new last route answers once
            # the reload has been applied.
            open(path, "w").write(config(n, PORT, reverse=True).replace("watch_config = false", "watch_config = false\nworker_threads = 1")
                                  + '\n[[routes]]\nprefix = "/new"\nupstream = "app"\nauth = "none"\n')
            slowest, done = [0.0], threading.Event()

            def probe():
                import urllib.request
                while not done.is_set():
                    t0 = time.monotonic()
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/r0/x", timeout=600).read()
                    except OSError:
                        pass
                    slowest[0] = max(slowest[0], time.monotonic() - t0)
                    time.sleep(0.005)
            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            t = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            wait_status(PORT, "/new/x", 200, 600)
            reload = time.monotonic() - t
            done.set()
            prober.join()
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"{n:8d} {check:9.2f} {start:9.2f} {reload:9.2f} {slowest[0] * 1000:34.1f}", flush=True)


def instructions(args, d):
    print(f"{'scenario':34} {'requests':>9} {'instr/req':>10}")
    for n, target, label in ((1, "/r0/x", "1 route"), (10000, "/r0/x", "10,000 routes, the first"),
                             (10000, "/r9999/x", "10,000 routes, the last")):
        open(f"{d}/cg{n}.toml", "w").write(config(n, PORT))
        dump = f"{d}/cg.{n}.{target.strip('/').replace('/', '_')}"
        proc = subprocess.Popen(["taskset", "-c", load.SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}",
                                 args.bearward, "--config", f"{d}/cg{n}.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_status(PORT, target, 200, 300)
            url = f"http://127.0.0.1:{PORT}{target}"
            subprocess.run(["wrk", "-t1", "-c8", "-d2s", url], capture_output=True)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
            out = subprocess.run(["wrk", "-t1", "-c8", f"-d{args.duration}s", url], capture_output=True, text=True).stdout
            requests = int(re.search(r"(\d+) requests in", out).group(1))
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            time.sleep(1)
            dumped = [f for f in os.listdir(d) if f.startswith(os.path.basename(dump) + ".")]
            total, _ = annotate(os.path.join(d, sorted(dumped)[-1]))
            print(f"{label:34} {requests:9d} {total // requests:10d}", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)


def paired(args, d):
    open(f"{d}/one.toml", "w").write(config(1, PORT))
    open(f"{d}/many.toml", "w").write(config(10000, PORT_B))
    procs = [load.start([args.bearward, "--config", f"{d}/one.toml"], load.SERVER_CPU),
             load.start([args.bearward, "--config", f"{d}/many.toml"], load.SERVER_CPU)]
    try:
        wait_status(PORT, "/r0/x", 200, 60)
        wait_status(PORT_B, "/r9999/x", 200, 60)
        ratios = []
        for r in range(args.rounds):
            got = {}

            def run(port, path, key):
                out = subprocess.run(["taskset", "-c", load.WRK_CPU, "wrk", "-t1", "-c16", f"-d{args.duration}s",
                                      f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
                got[key] = int(re.search(r"(\d+) requests in", out).group(1))
            threads = [threading.Thread(target=run, args=(PORT, "/r0/x", "one")),
                       threading.Thread(target=run, args=(PORT_B, "/r9999/x", "many"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ratios.append(got["many"] / got["one"])
            print(f"round {r + 1}: 1 route {got['one']} requests, last of 10,000 {got['many']}: {ratios[-1]:.3f}x", flush=True)
        ratios.sort()
        print(f"last of 10,000 routes vs the only route, paired: median {ratios[len(ratios) // 2]:.3f}x "
              f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target/release/bearward"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--sizes", default="1,10000,100000")
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--only", default="times,instructions,paired")
    args = ap.parse_args()
    load.ensure_tools((("nginx", "nginx"), ("wrk", "wrk")))
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=load.ROOT)
    d = tempfile.mkdtemp(prefix="bearward-routes-")
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [subprocess.Popen([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"])]
    try:
        load.wait_port(UPSTREAM)
        only = args.only.split(",")
        if "times" in only:
            times(args, d, [int(s) for s in args.sizes.split(",")])
        if "instructions" in only:
            instructions(args, d)
        if "paired" in only:
            paired(args, d)
    finally:
        load.stop(procs, d, wait=10)


if __name__ == "__main__":
    main()

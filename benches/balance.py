#!/usr/bin/env python3
"""Turns against the least busy instance, with one instance slowed down.

    python3 benches/balance.py                      # builds the release binary first
    python3 benches/balance.py --no-build --bearward PATH [--delay-ms 20] [--rounds 3]

Two instances of the same API (asyncio HTTP/1.1 keep-alive servers answering 200 `ok`), one of
them answering every request `--delay-ms` late (a pod on a noisy node, a GC pause that lasts, an
instance draining). bearward in front of both on an `auth = "none"` route, its upstream taking
them in turns (`balance = "round_robin"`, the default) or by fewest requests in flight
(`balance = "least_request"`), one after the other in alternating rounds of `--duration` s, wrk
with 32 connections. Reported per balance: requests per second, p50 and p99 latency, and the
share of requests the slow instance got."""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

FAST, SLOW, PORT = 18120, 18121, 18122

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
access_log = false

[upstreams.api]
url = "http://127.0.0.1:{fast}"
endpoints = ["127.0.0.1:{fast}", "127.0.0.1:{slow}"]
balance = "{balance}"

[[routes]]
prefix = "/"
auth = "none"
upstream = "api"
"""


def serve(port, delay, counter):
    """An HTTP/1.1 keep-alive server on `port`, answering each request after `delay` s."""

    async def client(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                counter[0] += 1
                if delay:
                    await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(client, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()


def round_of(bearward, balance, d, duration, counts):
    open(f"{d}/{balance}.toml", "w").write(CONFIG.format(port=PORT, fast=FAST, slow=SLOW, balance=balance))
    proc = load.start([bearward, "--config", f"{d}/{balance}.toml"], load.SERVER_CPU)
    try:
        load.wait_port(PORT)
        before = (counts["fast"][0], counts["slow"][0])
        out = load.wrk(PORT, 32, duration)
        fast, slow = counts["fast"][0] - before[0], counts["slow"][0] - before[1]
        out["slow_share"] = slow / max(1, fast + slow)
        return out
    finally:
        proc.terminate()
        proc.wait(5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target/release/bearward"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load.ensure_tools((("wrk", "wrk"),))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=load.ROOT, check=True)
    counts = {"fast": [0], "slow": [0]}
    serve(FAST, 0, counts["fast"])
    serve(SLOW, args.delay_ms / 1000, counts["slow"])
    load.wait_port(FAST)
    load.wait_port(SLOW)
    d = tempfile.mkdtemp(prefix="bearward-balance-")
    results = {"round_robin": [], "least_request": []}
    for r in range(args.rounds):
        order = ["round_robin", "least_request"] if r % 2 == 0 else ["least_request", "round_robin"]
        for balance in order:
            results[balance].append(round_of(args.bearward, balance, d, args.duration, counts))
    print(f"one of two instances {args.delay_ms:g} ms late; wrk 32 connections, {args.rounds} rounds of {args.duration} s (median, range)")
    print(f"{'balance':15} {'req/s':>22} {'p50 ms':>18} {'p99 ms':>18} {'to the slow one':>18}")
    for balance, runs in results.items():
        def col(key, fmt):
            vals = sorted(run[key] for run in runs)
            return f"{fmt(vals[len(vals) // 2])} ({fmt(vals[0])}-{fmt(vals[-1])})"
        print(f"{balance:15} {col('rps', lambda v: f'{v:,.0f}'):>22} {col('p50', lambda v: f'{v:.2f}'):>18} "
              f"{col('p99', lambda v: f'{v:.1f}'):>18} {col('slow_share', lambda v: f'{v:.1%}'):>18}")
    subprocess.run(["git", "log", "-1", "--format=commit %h"], cwd=load.ROOT)


if __name__ == "__main__":
    main()

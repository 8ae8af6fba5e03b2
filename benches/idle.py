#!/usr/bin/env python3
"""Memory per idle keep-alive connection: bearward against nginx, HTTP/1.1 and HTTP/2.

    python3 benches/idle.py                 # builds bearward (release) unless --no-build

For each candidate (bearward in front of the load benchmark's nginx upstream, its config with
`header_read_timeout = "300s"` so nothing closes during the count; nginx's bare proxy, one worker)
this opens --connections connections and leaves them idle, then sends one request on each in
turn and reads the whole answer, and leaves them idle again. The process's VmRSS is read after each step
(settled for 2 s); the figure is the growth over the process's RSS before the first connection,
divided by the number of connections. HTTP/2 (bearward only; h2c with prior knowledge): the
connections open with the preface and SETTINGS, then each sends one GET on stream 1.
"""

import argparse
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM, NGINX_PORT = 18194, 18190, 18195


def rss_kib(pid):
    """VmRSS of the process and its children (nginx's worker)."""
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids += [int(c) for c in out]
    total = 0
    for p in pids:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def settle(pid):
    time.sleep(2)
    return rss_kib(pid)


def hpack_int(value, prefix_bits, first):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(index, value):
    """A literal header field without indexing, its name from the static table (RFC 7541 6.2.2)."""
    v = value.encode()
    return hpack_int(index, 4, 0x00) + hpack_int(len(v), 7, 0x00) + v


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b"")


def h2_request(port, token):
    # :method GET (2), :scheme http (6), :path / (4), :authority (1), authorization (23)
    block = bytes([0x82, 0x86, 0x84]) + hpack_literal(1, f"127.0.0.1:{port}") + hpack_literal(23, f"Bearer {token}")
    return frame(0x1, 0x4 | 0x1, 1, block)  # END_HEADERS | END_STREAM


def read_h2(s):
    """Reads frames until stream 1 ends; acknowledges the server's SETTINGS. Returns the bytes of
    any ACK to send."""
    buf = b""
    done = False
    while not done:
        while len(buf) < 9:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("HTTP/2 connection closed before an answer")
            buf += chunk
        length = int.from_bytes(buf[:3], "big")
        while len(buf) < 9 + length:
            buf += s.recv(65536)
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        if kind == 0x4 and not flags & 0x1:
            s.sendall(frame(0x4, 0x1, 0, b""))
        if kind == 0x7:
            raise SystemExit("GOAWAY from the server")
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            done = True
        buf = buf[9 + length:]


def measure(pid, port, n, h2, token, label):
    base = settle(pid)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if h2:
            s.sendall(PREFACE)
        conns.append(s)
    opened = settle(pid)
    # One at a time, as the clients of a sidecar come and go: 4,000 requests at once would
    # measure the peak of 4,000 concurrent upstream exchanges instead.
    for s in conns:
        if h2:
            s.sendall(h2_request(port, token))
            read_h2(s)
        else:
            s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            status = load.read_http1(s)
            if status != 200:
                raise SystemExit(f"{label}: answer {status}")
    answered = settle(pid)
    for s in conns:
        s.close()
    print(f"{label:28} {base / 1024:8.1f} MiB {(opened - base) / n:9.2f} KiB {(answered - base) / n:9.2f} KiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--bearward", default=os.path.join(load.ROOT, "target/release/bearward"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-nginx", action="store_true", help="bearward only")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections * 2 + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    load.ensure_tools(packages=(("nginx", "nginx"),))
    if not args.no_build:
        load.sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=load.ROOT)

    d = tempfile.mkdtemp(prefix="bearward-idle-")
    keys = load.Keys()
    open(f"{d}/jwks.json", "w").write(load.json.dumps(keys.jwks))
    token = keys.token("RS256")
    # Both nginx processes may hold a connection per client at once (the proxy's keepalive pool
    # is 64): room for all of them.
    room = f"worker_connections {args.connections * 3 + 200}"
    open(f"{d}/upstream.conf", "w").write(load.NGINX_UPSTREAM.format(dir=d, port=UPSTREAM).replace("worker_connections 4096", room))
    conf = load.BEARWARD.format(port=PORT, cache=10000, issuer=load.ISSUER, audience=load.AUDIENCE, dir=d, up=UPSTREAM)
    conf = conf.replace("access_log = false", f'access_log = false\nheader_read_timeout = "300s"\nhttp2 = true\n'
                        f'max_connections = {args.connections + 100}')
    open(f"{d}/bearward.toml", "w").write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = []
    try:
        procs.append(subprocess.Popen([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"]))
        load.wait_port(UPSTREAM)
        print(f"{'candidate':28} {'RSS before':>12} {'idle, new':>13} {'idle, after 1':>13}")
        for h2 in (False, True):
            bw = subprocess.Popen([args.bearward, "--config", f"{d}/bearward.toml"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
            procs.append(bw)
            load.wait_port(PORT)
            if load.status(PORT, token) != 200:
                raise SystemExit("bearward does not answer as expected")
            measure(bw.pid, PORT, args.connections, h2, token, "bearward HTTP/2" if h2 else "bearward HTTP/1.1")
            bw.terminate()
            bw.wait(10)
            procs.remove(bw)
        if not args.no_nginx:
            proxy_conf = load.NGINX_PROXY.format(dir=d, port=NGINX_PORT, up=UPSTREAM).replace("worker_connections 4096", room)
            open(f"{d}/proxy.conf", "w").write(proxy_conf)
            px = subprocess.Popen([nginx, "-c", f"{d}/proxy.conf", "-g", "daemon off;"])
            procs.append(px)
            load.wait_port(NGINX_PORT)
            measure(px.pid, NGINX_PORT, args.connections, False, token, "nginx HTTP/1.1 (for scale)")
    finally:
        if os.environ.get("KEEP_IDLE_DIR"):
            print(open(f"{d}/nginx.err").read()[-2000:])
        load.stop(procs, d, wait=10)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""bearward load benchmark against nginx and HAProxy, on one machine, over loopback.

    sudo python3 benches/load.py                 # 3 interleaved rounds of 10 s per run
    python3 benches/load.py --duration 5 --rounds 1
    python3 benches/load.py --only rs256-one --candidates bearward,bearward-b --compare OLD --rounds 8
    python3 benches/load.py --only rate-limit --candidates bearward,bearward-rl --baseline bearward --paired
    python3 benches/load.py --only rate-limit,rate-limit-1000 --candidates bearward,bearward-rlr,bearward-rlc --baseline bearward --paired
    # the same with a control: a second no-limit bearward (a copy of the binary) beside the first
    python3 benches/load.py --only rate-limit --compare /tmp/bw-copy --candidates bearward,bearward-b,bearward-rl --baseline bearward --paired
    python3 benches/load.py --pgo --compare target/release/bearward   # a PGO build beside the plain one
    python3 benches/load.py --tls-upstream --only rs256-one --candidates bearward,bearward-tls
    python3 benches/load.py --only grpc          # HTTP/2 + gRPC with h2load (benches/grpc_load.py)

What it does:
  * installs nginx, haproxy and wrk from the distribution if missing (apt-get), and the Python
    `cryptography` package if missing (pip); builds bearward with `cargo build --release`;
  * makes an RSA-2048 and a P-256 key and mints tokens (one RS256, 1,000 distinct RS256 for a
    wrk Lua script to rotate, one ES256, 10,000 distinct RS256 for the memory run);
  * starts a fixed upstream (nginx, one worker, `return 200` with a small body, keep-alive) and
    the candidates in front of it:
      nginx     proxy_pass with upstream keep-alive, no token check (the bare proxy hop)
      haproxy   jwt_verify on the same key, plus exp/iss/aud/scope ACLs (one frontend per alg)
      bearward  the same route and scope; and bearward-nocache with token_cache_entries = 0;
                the issuer is `token_format = "auto"`, so the same process takes an opaque token
                (opaque-one: its answer from the upstream nginx's /introspect, then cached)
  * checks every candidate first (valid -> 200, none -> 401, tampered -> 401);
  * pins processes: wrk on CPU 0, upstream and proxies on CPU 1 (taskset), so a proxy and the
    upstream share one core, as the peers were measured; --layout isolated moves the upstream
    to CPU 0 beside wrk, so the proxy has a core to itself;
  * with --tls-upstream, adds `bearward-tls` (cache on) to the one-token RS256 scenario: the same
    bearward reaching the same upstream nginx over TLS (its `listen ... ssl` with the test
    certificate in tests/fixtures/tls), to measure what an https upstream costs;
  * with --compare OTHER_BINARY, runs a second bearward build (`bearward-b`, cache on) beside
    the first in every scenario, so two builds are compared within the same rounds;
  * runs each scenario for each candidate, interleaved, for --rounds rounds, and prints a table:
    requests/s, p50, p99, peak RSS (VmHWM), the candidate's user and system CPU time and context
    switches per request, and throughput as a ratio to nginx in the same round (medians over rounds).
Nothing here asserts a timing; it prints figures.
"""
import argparse
import concurrent.futures
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUER = "https://idp.bench"
AUDIENCE = "https://api.bench"
PORTS = {"upstream": 18080, "nginx": 18081, "haproxy": 18082, "haproxy-es": 18083, "bearward": 18084, "bearward-nocache": 18085,
         "bearward-b": 18086, "bearward-tls": 18087, "nginx-tls": 18089, "bearward-tlsl": 18090,
         "bearward-decision": 18091, "nginx-auth": 18092, "bearward-rl": 18093, "bearward-rlr": 18094,
         "bearward-rlc": 18099}
REDIS_PORT = 18095
# A three-master Redis Cluster for bearward-rlc (the rate limit through a cluster).
CLUSTER_PORTS = (18096, 18097, 18098)
UPSTREAM_TLS_PORT = 18088
TLS_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tls")
WRK_CPU, SERVER_CPU = "0", "1"
# Candidates that are another candidate's process under another load.
PROC_OF = {"direct": "upstream", "bearward-jwt": "bearward", "bearward-dpop": "bearward",
           "nginx-tls-close": "nginx-tls", "bearward-tlsl-close": "bearward-tlsl"}
# Candidates reached over TLS (wrk speaks https to them).
HTTPS = {"nginx-tls", "bearward-tlsl", "nginx-tls-close", "bearward-tlsl-close"}


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools(packages=(("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"))):
    """Installs the (package, binary) pairs whose binary is missing, and `cryptography`."""
    missing = [p for p, b in packages if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", flush=True)
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", *missing], stdout=subprocess.DEVNULL)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        sh([sys.executable, "-m", "pip", "install", "--quiet", "cryptography==48.0.0"])


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Keys:
    def __init__(self):
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        self.hashes, self.padding, self.decode = hashes, padding, decode_dss_signature
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ecmod = ec
        pub = lambda k: k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.rsa_pem, self.ec_pem = pub(self.rsa), pub(self.ec)
        n = self.rsa.public_key().public_numbers()
        e = self.ec.public_key().public_numbers()
        self.jwks = {"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig", "n": b64(n.n.to_bytes(256, "big")), "e": b64(n.e.to_bytes(3, "big"))},
            {"kty": "EC", "kid": "ec", "use": "sig", "crv": "P-256", "x": b64(e.x.to_bytes(32, "big")), "y": b64(e.y.to_bytes(32, "big"))},
        ]}

    def dpop_client(self):
        """A P-256 DPoP client key: its public JWK and RFC 7638 thumbprint."""
        import hashlib
        self.dpop = self.ecmod.generate_private_key(self.ecmod.SECP256R1())
        n = self.dpop.public_key().public_numbers()
        self.dpop_jwk = {"crv": "P-256", "kty": "EC", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
        canonical = json.dumps(self.dpop_jwk, separators=(",", ":"), sort_keys=True).encode()
        return b64(hashlib.sha256(canonical).digest())

    def proofs(self, path, count, htu, token):
        """`count` fresh ES256 proofs for GET `htu`, one per line, each with its own jti."""
        import hashlib
        header = b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.dpop_jwk}).encode())
        ath = b64(hashlib.sha256(token.encode()).digest())
        now = int(time.time())
        with open(path, "w") as f:
            for i in range(count):
                claims = b64(json.dumps({"jti": f"{os.getpid()}-{time.time_ns()}-{i}", "htm": "GET", "htu": htu, "iat": now, "ath": ath}).encode())
                signing = f"{header}.{claims}".encode()
                r, s_ = self.decode(self.dpop.sign(signing, self.ecmod.ECDSA(self.hashes.SHA256())))
                f.write(f"{signing.decode()}.{b64(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}\n")

    def token(self, alg="RS256", sub="user", scope="read", cnf=None, extra=None):
        kid = "rsa" if alg == "RS256" else "ec"
        header = {"alg": alg, "typ": "at+jwt", "kid": kid}
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "iat": now, "exp": now + 7200}
        if cnf:
            claims["cnf"] = cnf
        claims.update(extra or {})
        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
        if alg == "RS256":
            sig = self.rsa.sign(signing, self.padding.PKCS1v15(), self.hashes.SHA256())
        else:
            r, s = self.decode(self.ec.sign(signing, self.ecmod.ECDSA(self.hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing.decode()}.{b64(sig)}"


NGINX_UPSTREAM = """
worker_processes 1;
pid {dir}/upstream.pid;
error_log {dir}/upstream.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "upstream ok\\n"; }}
    # A token endpoint for the token exchange scenarios (RFC 8693): one fixed answer.
    location = /token {{
      default_type application/json;
      return 200 '{{"access_token":"exchanged.bench.token","token_type":"Bearer","expires_in":3600,"issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}}';
    }}
    # The introspection endpoint of the opaque-token scenario (RFC 7662): one fixed answer.
    location = /introspect {{
      default_type application/json;
      return 200 '{{"active":true,"scope":"read","sub":"opaque-user","aud":"https://api.bench"}}';
    }}
  }}
}}
"""

# nginx terminating TLS (the test certificate) in front of the same upstream, for tls-listener.
NGINX_TLS_PROXY = """
worker_processes 1;
pid {dir}/nginx-tls.pid;
error_log {dir}/nginx-tls.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {tls}/server.pem;
    ssl_certificate_key {tls}/server-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

NGINX_PROXY = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

# HAProxy 2.6: jwt_verify needs the key file named in the config so it is loaded at start.
HAPROXY = """
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
{frontends}
backend app
  http-reuse always
  server up 127.0.0.1:{up} maxconn 1000
"""

HAPROXY_FRONTEND = """
frontend {name}
  bind 127.0.0.1:{port}
  http-request deny status 401 unless {{ req.hdr(authorization) -m beg -i "bearer " }}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny status 401 unless {{ var(txn.alg) -m str {alg} }}
  http-request deny status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{key}") -m int 1 }}
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request deny status 401 unless {{ var(txn.iss) -m str {issuer} }}
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request deny status 401 unless {{ var(txn.aud) -m str {audience} }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny status 401 if {{ var(txn.exp),sub(txn.now) -m int le 0 }}
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')
  http-request deny status 403 unless {{ var(txn.scope) -m reg (^|\\ )read(\\ |$) }}
  default_backend app
"""

BEARWARD = """
[server]
listen = "127.0.0.1:{port}"
access_log = false
watch_config = false
token_cache_entries = {cache}

[[issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
audiences = ["{audience}"]
algorithms = ["RS256", "ES256"]

[upstreams.app]
url = "http://127.0.0.1:{up}"
max_idle_connections = 256

[[routes]]
prefix = "/"
scopes = ["read"]
upstream = "app"
"""

# Every load.py bearward takes opaque tokens too, from the upstream nginx's /introspect.
OPAQUE_ISSUER = """algorithms = ["RS256", "ES256"]
token_format = "auto"
introspection_endpoint = "http://127.0.0.1:{up}/introspect"
introspection_client_id = "bearward"
introspection_client_secret_file = "{dir}/introspection-secret"
"""

# DPoP: each request sends the next pre-made proof (a distinct jti each), with one bound token.
WRK_DPOP = """
local proofs = {}
for line in io.lines("%s") do proofs[#proofs + 1] = line end
local auth = "DPoP %s"
local i = 0
request = function()
  i = i %% #proofs + 1
  return wrk.format(nil, nil, { Authorization = auth, DPoP = proofs[i] })
end
"""

WRK_ROTATE = """
local tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = "Bearer " .. line end
local i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format(nil, nil, { Authorization = tokens[i] })
end
"""


def start(cmd, cpu, **kw):
    return subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def stop(procs, tmpdir, wait=5):
    """SIGTERM to every process, SIGKILL to any still up after `wait` s; then the temp dir."""
    procs = list(procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(tmpdir, ignore_errors=True)


def wait_port(port, timeout=10):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def request(url, headers=None, body=None):
    """One request: (status, body text); (None, "") when nothing answers. POST when there is a
    body. Shared by the scripts here and in deploy/."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None, ""


def read_http1(s):
    """Reads one HTTP/1.1 answer with a Content-Length body; returns its status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before an answer")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        rest += s.recv(65536)
    return int(head.split(b" ")[1])


def dpop_status(port, token, proof):
    return request(f"http://127.0.0.1:{port}/api/check", {"Authorization": f"DPoP {token}", "DPoP": proof})[0]


def status(port, token, path="/api/check"):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return request(f"http://127.0.0.1:{port}{path}", headers)[0]


def peak_rss_kib(pid):
    """VmHWM of the process and its children (nginx workers)."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            pass
    return total


def cpu_counters(pid):
    """CPU ticks (user + system) and context switches of the process, its children (nginx
    workers) and all their threads."""
    pids = [pid] + [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    user = system = switches = 0
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                stat = open(f"/proc/{p}/task/{t}/stat").read().rsplit(")", 1)[1].split()
                status = open(f"/proc/{p}/task/{t}/status").read()
            except OSError:
                continue
            user += int(stat[11])
            system += int(stat[12])
            switches += sum(int(n) for n in re.findall(r"voluntary_ctxt_switches:\s+(\d+)", status))
    return user, system, switches


def wrk(port, connections, duration, header=None, script=None, scheme="http"):
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for h in ([header] if isinstance(header, str) else header or []):
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(f"{scheme}://127.0.0.1:{port}/api/check")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": requests, "p50": pct(50), "p99": pct(99), "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else ""}


def upstream_auth_configs(base, d, up):
    """load.py's bearward config as is, with an identity assertion (cached per token, and bound
    to each request), and with a token exchange at the upstream nginx's /token (cached)."""
    key = os.path.join(ROOT, "tests", "fixtures", "keys", "p256.pem")
    open(f"{d}/exchange-secret", "w").write("bench-secret\n")
    upstream = "max_idle_connections = 256"
    assertion = f'identity_assertion = {{ signing_key_file = "{key}", issuer = "https://bearward.bench" }}'
    exchange = (f'token_exchange = {{ issuer = "{ISSUER}", token_endpoint = "http://127.0.0.1:{up}/token", '
                f'audience = "https://orders.bench", client_id = "bearward", client_secret_file = "{d}/exchange-secret" }}')
    return {
        "plain": base,
        "assertion": base.replace(upstream, upstream + "\n" + assertion),
        "assertion per request": base.replace(upstream, upstream + "\n" + assertion.replace(" }", ', request = "include" }')),
        "token exchange": base.replace(upstream, upstream + "\n" + exchange),
    }


def comparison_main(description, name, port, upstream, make_configs, claims=None):
    """A script comparing bearward configs on one cached RS256 token (with `claims`): its
    arguments, the build, the keys and the nginx upstream, then `compare`. `make_configs(base,
    d)` gives name -> config text from load.py's config."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--bearward", default=os.path.join(ROOT, "target", "release", "bearward"))
    args = ap.parse_args()
    ensure_tools(packages=(("nginx", "nginx"), ("wrk", "wrk")))
    if not args.no_build:
        sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=ROOT)
    d = tempfile.mkdtemp(prefix=f"bearward-{name}-")
    keys = Keys()
    open(f"{d}/jwks.json", "w").write(json.dumps(keys.jwks))
    token = keys.token("RS256", extra=claims)
    open(f"{d}/upstream.conf", "w").write(NGINX_UPSTREAM.format(dir=d, port=upstream))
    base = BEARWARD.format(port=port, cache=10000, issuer=ISSUER, audience=AUDIENCE, dir=d, up=upstream)
    configs = make_configs(base, d)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], SERVER_CPU)]
    try:
        wait_port(upstream)
        compare(configs, args.bearward, d, port, token, args.rounds, args.duration, args.connections)
    finally:
        stop(procs, d)


def compare(configs, bearward, d, port, token, rounds, duration, connections, path="/api/check"):
    """Requests per second of each config in `configs` (name -> bearward.toml text), in rounds,
    interleaved, each against a fresh bearward on SERVER_CPU with wrk on WRK_CPU; prints each run,
    the medians, and each config's ratio to the first. Nothing asserts a timing."""
    results = {name: [] for name in configs}
    header = f"Authorization: Bearer {token}"
    for rnd in range(rounds):
        for name, conf in configs.items():
            open(f"{d}/bearward.toml", "w").write(conf)
            b = start([bearward, "--config", f"{d}/bearward.toml"], SERVER_CPU,
                      env={**os.environ, "RUST_LOG": "warn"})
            try:
                wait_port(port)
                if status(port, token, path=path) != 200:
                    raise SystemExit(f"{name}: the request is not allowed")
                wrk(port, connections, 1, header=header)
                before = cpu_counters(b.pid)
                r = wrk(port, connections, duration, header=header)
                after = cpu_counters(b.pid)
                ticks = (after[0] - before[0]) + (after[1] - before[1])
                r["us"] = ticks / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1) * 1e6
                results[name].append(r)
                print(f"round {rnd + 1} {name:24} {r['rps']:9.0f} req/s  bearward cpu {r['us']:.1f} us/req"
                      + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else ""), flush=True)
            finally:
                stop([b], d + "/none")
    print()
    for name, runs in results.items():
        print(f"{name:24} {statistics.median(r['rps'] for r in runs):9.0f} req/s  "
              f"{statistics.median(r['us'] for r in runs):.1f} us/req (medians of {rounds})")
    first = next(iter(configs))
    for name in list(configs)[1:]:
        ratios = [a["rps"] / b["rps"] for a, b in zip(results[name], results[first])]
        print(f"{name} / {first}: {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})")
    return results


def source_state():
    """The commit the build measures, and whether the working tree differs from it: the build
    takes the working tree, so an edit made while a run is going ends up measured."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD") or "an unknown commit"
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "build.rs")
    return commit + (" plus uncommitted changes to src/ or Cargo.*" if dirty else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--bearward", default=os.path.join(ROOT, "target/release/bearward"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pgo", action="store_true",
                    help="measure a PGO build (deploy/pgo.py, about 9 minutes) as bearward; "
                         "with --compare target/release/bearward, the plain build runs beside it")
    ap.add_argument("--compare", metavar="OTHER_BINARY",
                    help="also run this bearward build (bearward-b, cache on) in every scenario")
    ap.add_argument("--tls-upstream", action="store_true",
                    help="add bearward-tls: bearward reaching the upstream over TLS, in rs256-one")
    ap.add_argument("--only", help="comma-separated scenarios to run")
    ap.add_argument("--baseline", default="nginx",
                    help="the candidate each round's requests/s is divided by (e.g. bearward, for what a limit costs)")
    ap.add_argument("--candidates", help="comma-separated candidates to run (nginx, the baseline, always runs); "
                                         "with --compare, 'bearward,bearward-b' makes a tight A/B")
    ap.add_argument("--paired", action="store_true",
                    help="run each candidate at the same time as the baseline (two wrk, same core each), "
                         "the ratio being the requests each served in the same seconds: the machine's "
                         "drift and steal hit both alike; for CPU-bound candidates only (one that waits "
                         "on a round trip gives its CPU share to the other)")
    ap.add_argument("--layout", choices=("shared", "isolated"), default="shared",
                    help="shared: upstream and proxy on CPU 1 (the issue's layout); isolated: upstream "
                         "with wrk on CPU 0, the proxy alone on CPU 1, so no proxy is preempted by the upstream")
    args = ap.parse_args()
    if args.only == "grpc":
        # HTTP/2 and gRPC load runs with h2load, not wrk: benches/grpc_load.py.
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_load.py")
        extra = ["--no-build"] if args.no_build else []
        os.execv(sys.executable, [sys.executable, script, "--duration", str(args.duration),
                                  "--rounds", str(args.rounds), "--bearward", args.bearward, *extra])

    ensure_tools()
    if args.pgo:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "pgo.py")], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        args.bearward = out.strip().splitlines()[-1]
    if not args.no_build:
        sh(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "bearward"], cwd=ROOT)
    # After the builds, so an edit made while they ran shows.
    built = source_state() if (args.pgo or not args.no_build) else None
    d = tempfile.mkdtemp(prefix="bearward-load-")
    keys = Keys()
    open(f"{d}/jwks.json", "w").write(json.dumps(keys.jwks))
    open(f"{d}/rsa.pem", "wb").write(keys.rsa_pem)
    open(f"{d}/ec.pem", "wb").write(keys.ec_pem)
    rs = keys.token("RS256")
    es = keys.token("ES256")
    tampered = rs[:-6] + ("AAAAAA" if not rs.endswith("AAAAAA") else "BBBBBB")
    with open(f"{d}/tokens1000.txt", "w") as f:
        for i in range(1000):
            f.write(keys.token("RS256", sub=f"user-{i}") + "\n")
    with open(f"{d}/tokens10000.txt", "w") as f:
        for i in range(10000):
            f.write(keys.token("RS256", sub=f"mem-{i}") + "\n")
    open(f"{d}/rotate1000.lua", "w").write(WRK_ROTATE % f"{d}/tokens1000.txt")
    dpop_token = keys.token("RS256", sub="dpop-client", cnf={"jkt": keys.dpop_client()})
    open(f"{d}/dpop.lua", "w").write(WRK_DPOP % (f"{d}/proofs.txt", dpop_token))
    open(f"{d}/rotate10000.lua", "w").write(WRK_ROTATE % f"{d}/tokens10000.txt")

    upstream_conf = NGINX_UPSTREAM.format(dir=d, port=PORTS["upstream"])
    open(f"{d}/introspection-secret", "w").write("bench-secret\n")
    opaque = "opq_" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    if args.tls_upstream:
        # The same server answers on a TLS port too.
        upstream_conf = upstream_conf.replace("    location /", f"""    listen 127.0.0.1:{UPSTREAM_TLS_PORT} ssl;
    ssl_certificate {TLS_FIXTURES}/server.pem;
    ssl_certificate_key {TLS_FIXTURES}/server-key.pem;
    location /""")
    open(f"{d}/upstream.conf", "w").write(upstream_conf)
    open(f"{d}/nginx.conf", "w").write(NGINX_PROXY.format(dir=d, port=PORTS["nginx"], up=PORTS["upstream"]))
    fronts = HAPROXY_FRONTEND.format(name="rs", port=PORTS["haproxy"], alg="RS256", key=f"{d}/rsa.pem", issuer=ISSUER, audience=AUDIENCE)
    fronts += HAPROXY_FRONTEND.format(name="es", port=PORTS["haproxy-es"], alg="ES256", key=f"{d}/ec.pem", issuer=ISSUER, audience=AUDIENCE)
    open(f"{d}/haproxy.cfg", "w").write(HAPROXY.format(frontends=fronts, up=PORTS["upstream"]))
    binaries = {"bearward": args.bearward, "bearward-nocache": args.bearward, "bearward-tlsl": args.bearward,
                "bearward-rl": args.bearward, "bearward-rlr": args.bearward, "bearward-rlc": args.bearward}
    open(f"{d}/nginx-tls.conf", "w").write(NGINX_TLS_PROXY.format(dir=d, port=PORTS["nginx-tls"], up=PORTS["upstream"], tls=TLS_FIXTURES))
    # nginx + auth_request to bearward's decision listener: deploy/decision/nginx.conf as shipped.
    os.makedirs(f"{d}/nginx-auth", exist_ok=True)
    auth_conf = (open(os.path.join(ROOT, "deploy", "decision", "nginx.conf")).read()
                 .replace("listen 8080;", f"listen 127.0.0.1:{PORTS['nginx-auth']} backlog=4096;")
                 .replace("127.0.0.1:8081", f"127.0.0.1:{PORTS['bearward-decision']}")
                 .replace("127.0.0.1:3000", f"127.0.0.1:{PORTS['upstream']}")
                 .replace("/var/run/nginx-bearward.pid", f"{d}/nginx-auth.pid")
                 .replace("/var/log/nginx/bearward-error.log", f"{d}/nginx-auth.err")
                 .replace("/var/lib/nginx/bearward", f"{d}/nginx-auth")
                 .replace("worker_connections 1024;", "worker_connections 4096;")
                 .replace("keepalive 16;", "keepalive 64;"))
    open(f"{d}/nginx-auth.conf", "w").write(auth_conf)
    if args.compare:
        binaries["bearward-b"] = args.compare
    else:
        del PORTS["bearward-b"]
    if args.tls_upstream:
        binaries["bearward-tls"] = args.bearward
    else:
        del PORTS["bearward-tls"]
    for name, binary in binaries.items():
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{name}: {binary} is not an executable file")
    for name in binaries:
        cache = 0 if name == "bearward-nocache" else 10000
        conf = BEARWARD.format(port=PORTS[name], cache=cache, issuer=ISSUER, audience=AUDIENCE, dir=d, up=PORTS["upstream"])
        conf = conf.replace('algorithms = ["RS256", "ES256"]\n', OPAQUE_ISSUER.format(dir=d, up=PORTS["upstream"]))
        if name == "bearward":
            conf = conf.replace("[[issuers]]", f'[decision]\nlisten = "127.0.0.1:{PORTS["bearward-decision"]}"\n\n[[issuers]]', 1)
        if name in ("bearward-rl", "bearward-rlr", "bearward-rlc"):
            # A limit that never trips: what counting every request costs.
            conf = conf.replace('scopes = ["read"]', 'scopes = ["read"]\nrate_limit = { key = "subject", rate = "1000000/s" }')
        if name == "bearward-rlr":
            conf = conf.replace("[[issuers]]", f'[cache]\nredis_url = "redis://127.0.0.1:{REDIS_PORT}/0"\n\n[[issuers]]', 1)
        if name == "bearward-rlc":
            nodes = ", ".join(f'"redis://127.0.0.1:{p}"' for p in CLUSTER_PORTS)
            conf = conf.replace("[[issuers]]", f'[cache]\nredis_cluster_urls = [{nodes}]\n\n[[issuers]]', 1)
        if name == "bearward-tlsl":
            conf = conf.replace("access_log = false", f'access_log = false\ntls_cert_file = "{TLS_FIXTURES}/server.pem"\ntls_key_file = "{TLS_FIXTURES}/server-key.pem"')
        if name == "bearward-tls":
            conf = conf.replace(f'url = "http://127.0.0.1:{PORTS["upstream"]}"',
                                f'url = "https://127.0.0.1:{UPSTREAM_TLS_PORT}"\ntls_ca_file = "{TLS_FIXTURES}/ca.pem"')
        open(f"{d}/{name}.toml", "w").write(conf)

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    procs = {}
    try:
        upstream_cpu = WRK_CPU if args.layout == "isolated" else SERVER_CPU
        procs["upstream"] = start([nginx, "-c", f"{d}/upstream.conf", "-g", "daemon off;"], upstream_cpu)
        procs["nginx"] = start([nginx, "-c", f"{d}/nginx.conf", "-g", "daemon off;"], SERVER_CPU)
        procs["haproxy"] = start([haproxy, "-f", f"{d}/haproxy.cfg"], SERVER_CPU)
        redis = shutil.which("redis-server")
        if not redis:
            sh(["apt-get", "install", "-y", "-qq", "redis-server"])
            redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        procs["redis"] = start([redis, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], WRK_CPU)
        for p in CLUSTER_PORTS:
            os.makedirs(f"{d}/cluster-{p}", exist_ok=True)
            procs[f"redis-{p}"] = start([redis, "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                         "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                         "--dir", f"{d}/cluster-{p}"], WRK_CPU)
        for p in CLUSTER_PORTS:
            wait_port(p)
        sh(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in CLUSTER_PORTS),
            "--cluster-replicas", "0", "--cluster-yes"], stdout=subprocess.DEVNULL)
        for _ in range(100):
            if all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                                         capture_output=True).stdout for p in CLUSTER_PORTS):
                break
            time.sleep(0.1)
        procs["nginx-tls"] = start([nginx, "-c", f"{d}/nginx-tls.conf", "-g", "daemon off;"], SERVER_CPU)
        procs["nginx-auth"] = start([nginx, "-c", f"{d}/nginx-auth.conf", "-g", "daemon off;"], SERVER_CPU)
        for name, binary in binaries.items():
            procs[name] = start([binary, "--config", f"{d}/{name}.toml"], SERVER_CPU, env={**os.environ, "RUST_LOG": "warn"})
        for name, p in PORTS.items():
            try:
                wait_port(p)
            except SystemExit:
                raise SystemExit(f"{name} did not start: nothing listens on {p}") from None
        time.sleep(0.5)

        print("checks (valid / none / tampered):")
        for name, port, tok in (("haproxy", PORTS["haproxy"], rs), ("haproxy-es", PORTS["haproxy-es"], es),
                                ("bearward", PORTS["bearward"], rs), ("bearward-es", PORTS["bearward"], es),
                                ("bearward-nocache", PORTS["bearward-nocache"], rs),
                                *((("bearward-b", PORTS["bearward-b"], rs),) if args.compare else ()),
                                *((("bearward-tls", PORTS["bearward-tls"], rs),) if args.tls_upstream else ())):
            got = (status(port, tok), status(port, None), status(port, tampered if tok == rs else es[:-6] + "AAAAAA"))
            print(f"  {name:18} {got}")
            if got != (200, 401, 401):
                raise SystemExit(f"{name} does not enforce the policy: {got}")
        got = (status(PORTS["bearward"], opaque), status(PORTS["bearward"], opaque[:-2] + "zz"))
        print(f"  {'bearward-opaque':18} {got}")
        if got != (200, 200):  # the bench endpoint says active for every token
            raise SystemExit(f"bearward-opaque does not introspect: {got}")
        htu = f"http://127.0.0.1:{PORTS['bearward']}/api/check"
        keys.proofs(f"{d}/one-proof.txt", 1, htu, dpop_token)
        proof = open(f"{d}/one-proof.txt").read().strip()
        got = (dpop_status(PORTS["bearward"], dpop_token, proof), dpop_status(PORTS["bearward"], dpop_token, proof))
        print(f"  {'bearward-dpop':18} {got} (fresh proof, then the same again)")
        if got != (200, 401):
            raise SystemExit(f"bearward-dpop does not check proofs: {got}")
        for name in ("nginx-tls", "bearward-tlsl"):
            r = wrk(PORTS[name], 1, 1, f"Authorization: Bearer {rs}", scheme="https")
            print(f"  {name:18} {r['requests']} requests over TLS, non-2xx {r['non2xx']}")
            if r["non2xx"] or not r["requests"]:
                raise SystemExit(f"{name} does not answer over TLS")
        got = (status(PORTS["nginx-auth"], rs), status(PORTS["nginx-auth"], None), status(PORTS["nginx-auth"], tampered))
        print(f"  {'nginx-auth':18} {got}")
        if got != (200, 401, 401):
            raise SystemExit(f"nginx + auth_request to bearward does not enforce the policy: {got}")
        print(f"  {'nginx (no check)':18} {(status(PORTS['nginx'], rs),)}")

        H = lambda t: f"Authorization: Bearer {t}"
        scenarios = {
            "rs256-one": [("direct", PORTS["upstream"], H(rs), None), ("nginx", PORTS["nginx"], H(rs), None),
                          ("haproxy", PORTS["haproxy"], H(rs), None), ("bearward", PORTS["bearward"], H(rs), None),
                          ("bearward-nocache", PORTS["bearward-nocache"], H(rs), None)],
            "rs256-1000": [("nginx", PORTS["nginx"], None, f"{d}/rotate1000.lua"), ("haproxy", PORTS["haproxy"], None, f"{d}/rotate1000.lua"),
                           ("bearward", PORTS["bearward"], None, f"{d}/rotate1000.lua"),
                           ("bearward-nocache", PORTS["bearward-nocache"], None, f"{d}/rotate1000.lua")],
            "es256-one": [("nginx", PORTS["nginx"], H(es), None), ("haproxy", PORTS["haproxy-es"], H(es), None),
                          ("bearward", PORTS["bearward"], H(es), None), ("bearward-nocache", PORTS["bearward-nocache"], H(es), None)],
            # An opaque token whose introspection answer is cached, against the cached JWT path
            # of the same process in the same round (bearward-jwt).
            "opaque-one": [("nginx", PORTS["nginx"], H(opaque), None), ("bearward", PORTS["bearward"], H(opaque), None),
                           ("bearward-jwt", PORTS["bearward"], H(rs), None)],
            # TLS termination with keep-alive, and one handshake per request (Connection: close).
            "tls-listener": [("nginx", PORTS["nginx"], H(rs), None), ("nginx-tls", PORTS["nginx-tls"], H(rs), None),
                             ("bearward-tlsl", PORTS["bearward-tlsl"], H(rs), None)],
            "tls-handshake": [("nginx", PORTS["nginx"], [H(rs), "Connection: close"], None),
                              ("nginx-tls-close", PORTS["nginx-tls"], [H(rs), "Connection: close"], None),
                              ("bearward-tlsl-close", PORTS["bearward-tlsl"], [H(rs), "Connection: close"], None)],
            # A fresh ES256 DPoP proof per request (pre-made, distinct jti), against the cached
            # JWT path of the same process in the same round.
            "dpop-es256": [("nginx", PORTS["nginx"], H(rs), None), ("bearward-dpop", PORTS["bearward"], None, f"{d}/dpop.lua"),
                           ("bearward-jwt", PORTS["bearward"], H(rs), None)],
            # nginx asking bearward's decision listener (auth_request) against nginx alone and
            # bearward in proxy mode; nginx-auth's CPU columns are nginx's only.
            "decision": [("nginx", PORTS["nginx"], H(rs), None), ("nginx-auth", PORTS["nginx-auth"], H(rs), None),
                         ("bearward", PORTS["bearward"], H(rs), None)],
            # A rate limit that never trips, per process and through Redis, against none.
            "rate-limit": [("nginx", PORTS["nginx"], H(rs), None), ("bearward", PORTS["bearward"], H(rs), None),
                           ("bearward-rl", PORTS["bearward-rl"], H(rs), None), ("bearward-rlr", PORTS["bearward-rlr"], H(rs), None),
                           ("bearward-rlc", PORTS["bearward-rlc"], H(rs), None)],
            # The same with 1,000 subjects in turn: 1,000 buckets, few repeats within a Redis batch.
            "rate-limit-1000": [("nginx", PORTS["nginx"], None, f"{d}/rotate1000.lua"),
                                ("bearward", PORTS["bearward"], None, f"{d}/rotate1000.lua"),
                                ("bearward-rl", PORTS["bearward-rl"], None, f"{d}/rotate1000.lua"),
                                ("bearward-rlr", PORTS["bearward-rlr"], None, f"{d}/rotate1000.lua"),
                                ("bearward-rlc", PORTS["bearward-rlc"], None, f"{d}/rotate1000.lua")],
            "no-token": [("nginx", PORTS["nginx"], None, None), ("haproxy", PORTS["haproxy"], None, None),
                         ("bearward", PORTS["bearward"], None, None)],
        }
        if args.tls_upstream:
            scenarios["rs256-one"].append(("bearward-tls", PORTS["bearward-tls"], H(rs), None))
        if args.compare:
            for cands in scenarios.values():
                at = next((i for i, c in enumerate(cands) if c[0] == "bearward"), None)
                if at is not None:  # the TLS and DPoP scenarios have no plain bearward
                    cands.insert(at + 1, ("bearward-b", PORTS["bearward-b"], *cands[at][2:]))
        if args.only:
            scenarios = {k: v for k, v in scenarios.items() if k in args.only.split(",")}
        if args.candidates:
            keep = {"nginx", *args.candidates.split(",")}
            scenarios = {k: [c for c in v if c[0] in keep] for k, v in scenarios.items()}
        results = {}
        for rnd in range(args.rounds):
            for scen, cands in scenarios.items():
                # Every other round in reverse order, so that a drift in the machine's speed
                # during a round does not favour whoever runs first.
                order = cands if rnd % 2 == 0 else cands[::-1]
                if args.paired:
                    base = next(c for c in cands if c[0] == args.baseline)
                    order = [(c, base) for c in order if c[0] != args.baseline]
                else:
                    order = [(c, None) for c in order]
                for (name, port, header, script), partner in order:
                    pid = procs[PROC_OF.get(name, name)].pid
                    if name == "bearward-dpop":
                        # Enough fresh proofs for the run; each is good for one request.
                        keys.proofs(f"{d}/proofs.txt", 40000 * args.duration, htu, dpop_token)
                    before = cpu_counters(pid)
                    run = lambda port, header, script, name: wrk(port, args.connections, args.duration, header, script,
                                                                 "https" if name in HTTPS else "http")
                    if partner:
                        with concurrent.futures.ThreadPoolExecutor(2) as pool:
                            theirs = pool.submit(run, partner[1], partner[2], partner[3], partner[0])
                            r = run(port, header, script, name)
                            theirs = theirs.result()
                        r["paired"] = r["requests"] / theirs["requests"]
                    else:
                        r = run(port, header, script, name)
                    after = cpu_counters(pid)
                    per_req = lambda i: (after[i] - before[i]) / os.sysconf("SC_CLK_TCK") / r["requests"] * 1e6
                    r["usr_us"], r["sys_us"] = per_req(0), per_req(1)
                    r["switches"] = (after[2] - before[2]) / r["requests"]
                    results.setdefault((scen, name), []).append(r)
                    print(f"round {rnd + 1} {scen:11} {name:17} {r['rps']:10.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms"
                          f"  usr {r['usr_us']:.1f} sys {r['sys_us']:.1f} us/req  {r['switches']:.2f} switches/req"
                          + (f"  {r['paired']:.3f}x of {partner[0]} beside it" if partner else "")
                          + (f"  non-2xx {r['non2xx']}" if r["non2xx"] else "") + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)

        # Memory: 100,000 requests or more over 10,000 distinct tokens.
        mem_run = wrk(PORTS["bearward"], args.connections, max(args.duration, 5), None, f"{d}/rotate10000.lua")
        mem_requests = mem_run["requests"]
        rss = {name: peak_rss_kib(p.pid) for name, p in procs.items()}

        print()
        print(f"{'scenario':11} {'candidate':17} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS':>9} {'usr us':>7} {'sys us':>7} {'sw/req':>6} {'vs ' + args.baseline:>9} {'(range)':>12}")
        for (scen, name), runs in results.items():
            base = results.get((scen, args.baseline))
            if args.paired:
                ratios = [r["paired"] for r in runs if "paired" in r]
            else:
                ratios = [r["rps"] / b["rps"] for r, b in zip(runs, base)] if base else []
            med = lambda k: statistics.median(r[k] for r in runs)
            proc = PROC_OF.get(name, name)
            print(f"{scen:11} {name:17} {med('rps'):9.0f} {med('p50'):8.3f} {med('p99'):8.3f} {rss.get(proc, 0) / 1024:8.1f}M"
                  f" {med('usr_us'):7.1f} {med('sys_us'):7.1f} {med('switches'):6.2f}" + (f" {statistics.median(ratios):8.2f}x  ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""))
        print(f"\nbearward peak RSS after the 10,000-token run ({mem_requests} requests): {rss['bearward'] / 1024:.1f} MiB")
        where = f"wrk and upstream on CPU {WRK_CPU}; proxies on CPU {SERVER_CPU}" if args.layout == "isolated" else f"wrk on CPU {WRK_CPU}; upstream and proxies on CPU {SERVER_CPU}"
        print(f"({where}; {args.connections} connections; {args.duration} s runs; medians of {args.rounds} rounds;"
              " usr/sys us and sw/req: the candidate's own user and system CPU time and context switches per request;"
              " range: the lowest and highest of the per-round ratios"
              + (f"; --paired: each candidate ran at the same time as {args.baseline}, on the same cores, and its"
                 f" ratio is the requests it served over {args.baseline}'s in those seconds; the other columns"
                 " are of those shared runs" if args.paired else "") + ")")
        if built:
            print(f"(bearward built from {built})")
    finally:
        stop(procs.values(), d)


if __name__ == "__main__":
    main()

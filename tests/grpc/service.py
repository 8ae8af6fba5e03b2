#!/usr/bin/env python3
"""A real gRPC server and client (grpcio, pinned in .ci/run) for tests/grpc.rs.

Messages are raw bytes (no protobuf): grpcio's generic handlers with no serializers, so the
test needs no generated code.

    service.py serve [--tls CERT KEY] [--max-age-ms N]  # prints "PORT n", serves until killed
    service.py check TARGET [--ca CA]                   # runs the checks, prints one JSON object
    service.py health TARGET SERVICE SERVING|NOT_SERVING  # sets what the server's health says
    service.py calls TARGET N                           # N unary calls (TOKEN_READ), then
                                                        # prints the codes as JSON
    service.py count TARGET                             # prints the server's own call count,
                                                        # this asking call included

The server also serves gRPC's health protocol (`grpc.health.v1.Health/Check`, the messages
encoded by hand: `HealthCheckRequest.service` is field 1, a string; `HealthCheckResponse.status`
field 1, SERVING = 1, NOT_SERVING = 2; a service it does not know is NOT_FOUND, as grpcio's own
health servicer answers). `test.Echo` and "" start SERVING; `test.Control/SetHealth` changes one.

`check` reads tokens from the environment: TOKEN_READ (scope `read`), TOKEN_OTHER (another
scope). The server's `--max-age-ms` is gRPC's own `grpc.max_connection_age_ms`: it sends GOAWAY
on every connection that old, gracefully (in-flight calls finish).
"""

import json
import os
import sys
import threading
from concurrent import futures

import grpc

CALLS = {"n": 0}
LOCK = threading.Lock()


def counted():
    with LOCK:
        CALLS["n"] += 1


def unary(request, context):
    counted()
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-upstream-trailer", "done"), ("x-seen-subject", md.get("x-auth-subject", "-"))))
    if request == b"count":
        with LOCK:
            return str(CALLS["n"]).encode()
    return request


def server_stream(request, context):
    counted()
    for i in range(int(request)):
        yield b"m%d" % i


def upload(request_iterator, context):
    counted()
    total = 0
    for chunk in request_iterator:
        total += len(chunk)
    return str(total).encode()


HEALTH = {"": 1, "test.Echo": 1}


def health_check(request, context):
    # HealthCheckRequest: field 1 (tag 0x0a), a length-delimited string; absent is "".
    service = ""
    if request[:1] == b"\x0a":
        service = request[2 : 2 + request[1]].decode()
    if service not in HEALTH:
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return bytes([0x08, HEALTH[service]])


def set_health(request, context):
    service, status = request.decode().split("=")
    HEALTH[service] = {"SERVING": 1, "NOT_SERVING": 2}[status]
    return b"ok"


def fail(request, context):
    counted()
    context.set_trailing_metadata((("x-why", "test"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(args):
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if "--max-age-ms" in args:
        age = int(args[args.index("--max-age-ms") + 1])
        options += [("grpc.max_connection_age_ms", age), ("grpc.max_connection_age_grace_ms", 10000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=options)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(health_check)}),
        grpc.method_handlers_generic_handler("test.Control", {"SetHealth": grpc.unary_unary_rpc_method_handler(set_health)}),
    ))
    if "--tls" in args:
        i = args.index("--tls")
        cert, key = open(args[i + 1], "rb").read(), open(args[i + 2], "rb").read()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def outcome(call):
    """Runs a call; returns (code, details, reply, trailing metadata, initial metadata)."""
    try:
        reply, c = call()
        return "OK", "", reply, dict(c.trailing_metadata() or ()), dict(c.initial_metadata() or ())
    except grpc.RpcError as e:
        return e.code().name, e.details(), None, dict(e.trailing_metadata() or ()), dict(e.initial_metadata() or ())


def check(args):
    target = args[0]
    if "--ca" in args:
        ca = open(args[args.index("--ca") + 1], "rb").read()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    raw = dict(request_serializer=None, response_deserializer=None)
    unary_call = channel.unary_unary("/test.Echo/Unary", **raw)
    stream_call = channel.unary_stream("/test.Echo/Stream", **raw)
    upload_call = channel.stream_unary("/test.Echo/Upload", **raw)
    fail_call = channel.unary_unary("/test.Echo/Fail", **raw)
    read = (("authorization", "Bearer " + os.environ["TOKEN_READ"]),)
    other = (("authorization", "Bearer " + os.environ["TOKEN_OTHER"]),)
    out = {}

    code, details, reply, trailing, _ = outcome(lambda: unary_call.with_call(b"hello", metadata=read, timeout=10))
    out["unary"] = {"code": code, "reply": reply.decode() if reply else None, "trailer": trailing.get("x-upstream-trailer"), "subject": trailing.get("x-seen-subject")}

    try:
        msgs = [m.decode() for m in stream_call(b"50", metadata=read, timeout=10)]
        out["stream"] = {"code": "OK", "count": len(msgs), "last": msgs[-1]}
    except grpc.RpcError as e:
        out["stream"] = {"code": e.code().name}

    code, details, _, trailing, initial = outcome(lambda: unary_call.with_call(b"hello", timeout=10))
    www = trailing.get("www-authenticate") or initial.get("www-authenticate")
    out["no_token"] = {"code": code, "details": details, "www_authenticate": www}

    code, details, _, trailing, initial = outcome(lambda: unary_call.with_call(b"hello", metadata=other, timeout=10))
    www = trailing.get("www-authenticate") or initial.get("www-authenticate")
    out["wrong_scope"] = {"code": code, "details": details, "www_authenticate": www}

    code, details, _, trailing, _ = outcome(lambda: fail_call.with_call(b"x", metadata=read, timeout=10))
    out["upstream_error"] = {"code": code, "details": details, "why": trailing.get("x-why")}

    # 20 MB in 64 KiB messages, generated as they are sent.
    size = 20 * 1024 * 1024
    chunks = (b"u" * (64 * 1024) for _ in range(size // (64 * 1024)))
    code, details, reply, _, _ = outcome(lambda: upload_call.with_call(chunks, metadata=read, timeout=60))
    out["upload"] = {"code": code, "details": details, "reply": reply.decode() if reply else None}

    # Many unary calls, 16 at a time, across the upstream's GOAWAYs.
    n = int(os.environ.get("LOAD_CALLS", "0"))
    if n:
        before = int(unary_call(b"count", metadata=read, timeout=10))
        codes = {}
        def one(i):
            try:
                r = unary_call(b"%d" % i, metadata=read, timeout=10)
                return "OK" if r == b"%d" % i else "WRONG_REPLY"
            except grpc.RpcError as e:
                return e.code().name
        with futures.ThreadPoolExecutor(max_workers=16) as pool:
            for c in pool.map(one, range(n)):
                codes[c] = codes.get(c, 0) + 1
        after = int(unary_call(b"count", metadata=read, timeout=10))
        out["load"] = {"codes": codes, "upstream_calls": after - before - 1}
    print(json.dumps(out), flush=True)


def control(args):
    channel = grpc.insecure_channel(args[1])
    raw = dict(request_serializer=None, response_deserializer=None)
    if args[0] == "health":
        channel.unary_unary("/test.Control/SetHealth", **raw)(f"{args[2]}={args[3]}".encode(), timeout=10)
        print("{}", flush=True)
    elif args[0] == "count":
        # The count includes the asking call itself.
        print(json.dumps({"count": int(channel.unary_unary("/test.Echo/Unary", **raw)(b"count", timeout=10))}), flush=True)
    else:
        call = channel.unary_unary("/test.Echo/Unary", **raw)
        read = (("authorization", "Bearer " + os.environ["TOKEN_READ"]),)
        codes = {}
        for i in range(int(args[2])):
            code = outcome(lambda: call.with_call(b"%d" % i, metadata=read, timeout=10))[0]
            codes[code] = codes.get(code, 0) + 1
        print(json.dumps(codes), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    elif sys.argv[1] == "check":
        check(sys.argv[2:])
    else:
        control(sys.argv[1:])

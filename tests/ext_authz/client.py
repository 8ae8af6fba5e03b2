"""Envoy's side of ext_authz v3 over gRPC, for tests/ext_authz.rs: sends CheckRequests built
as Envoy builds them (attributes.request.http with lower-cased headers, the path with its
query, attributes.source with the downstream address and, when Envoy verified one, its
URL-encoded PEM certificate) through stubs generated from Envoy's own protos (xds-protos on
PyPI), so nothing is shared with bearward's generated code.

Usage: client.py HOST:PORT < cases.json > answers.json
A case: {"method", "path", "host", "scheme", "headers": {..}, "source", "certificate"}, or
{"raw": METHOD, "payload": HEX, "gzip": BOOL} for a call with raw bytes.
An answer: {"code", "message", "metadata", "ok": {"set": [[k, v, action]], "remove": [..],
"response": [[k, v]]}} or {"denied": {"status", "headers": {..}, "body"}}.
"""
import json
import os
import sys

# xds-protos sits in a directory of its own (.ci/run: pip install --target tests/ext_authz/.xds):
# it ships its own `opentelemetry` package, which would replace opentelemetry-proto's in
# site-packages. Last on the path, so the site's `google.protobuf` is the one used.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".xds"))

import grpc
from google.protobuf import json_format
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as rpc


def check(stub, case):
    req = pb.CheckRequest()
    http = req.attributes.request.http
    http.id = "1"
    http.method = case.get("method", "GET")
    http.path = case["path"]
    http.host = case.get("host", "api.test")
    http.scheme = case.get("scheme", "http")
    http.protocol = "HTTP/1.1"
    for k, v in case.get("headers", {}).items():
        http.headers[k.lower()] = v
    src = req.attributes.source
    src.address.socket_address.address = case.get("source", "203.0.113.7")
    src.address.socket_address.port_value = 40000
    if case.get("certificate"):
        src.certificate = case["certificate"]
    resp = stub.Check(req, timeout=10)
    out = {
        "code": resp.status.code,
        "message": resp.status.message,
        "metadata": json_format.MessageToDict(resp.dynamic_metadata),
    }
    if resp.HasField("ok_response"):
        ok = resp.ok_response
        out["ok"] = {
            "set": [[o.header.key, o.header.value, o.append_action] for o in ok.headers],
            "remove": list(ok.headers_to_remove),
            "response": [[o.header.key, o.header.value] for o in ok.response_headers_to_add],
        }
    if resp.HasField("denied_response"):
        d = resp.denied_response
        out["denied"] = {
            "status": d.status.code,
            "headers": {o.header.key: o.header.value for o in d.headers},
            "body": d.body,
        }
    return out


def raw(channel, case):
    """A call with raw bytes: to another method, with a message that is no CheckRequest, or
    compressed. The gRPC status it ends with."""
    call = channel.unary_unary(case["raw"])
    gzip = grpc.Compression.Gzip if case.get("gzip") else None
    try:
        call(bytes.fromhex(case.get("payload", "")), timeout=10, compression=gzip)
        return {"error": None}
    except grpc.RpcError as e:
        return {"error": e.code().name, "details": e.details()}


def main():
    cases = json.load(sys.stdin)
    # TLS to a listener with [server] TLS keys: the CA to trust in BEARWARD_TEST_CA.
    ca = os.environ.get("BEARWARD_TEST_CA")
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
        channel = grpc.secure_channel(sys.argv[1], creds)
    else:
        channel = grpc.insecure_channel(sys.argv[1])
    with channel:
        stub = rpc.AuthorizationStub(channel)
        json.dump([raw(channel, c) if "raw" in c else check(stub, c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A real OTLP trace receiver for tests/traces.rs: the collector's TraceService over gRPC
(grpcio), or OTLP/HTTP with protobuf bodies on POST /v1/traces, both decoding with the
OpenTelemetry project's own protobuf definitions (opentelemetry-proto on PyPI).

    receiver.py grpc | receiver.py http

Listens on a loopback port the system picks and prints `ready PORT` once listening, then one JSON object per span received (ids in hex,
attributes as a dict, the resource's attributes too), flushed at once.
"""
import json
import sys
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def report(request):
    for rs in request.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                print(json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "scope": ss.scope.name,
                    "resource": resource,
                }), flush=True)


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        report(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        report(request)
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    mode = sys.argv[1]
    if mode == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"ready {port}", flush=True)
        server.wait_for_termination()
    else:
        server = HTTPServer(("127.0.0.1", 0), Http)
        print(f"ready {server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

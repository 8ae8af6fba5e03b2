#!/usr/bin/env python3
"""The Envoy configs bearward ships, parsed against Envoy's own protos (xds-protos, Envoy's
data-plane API for Python): every field name, enum and typed_config must be one Envoy takes.
Envoy itself is not in Debian, so this is the check short of running it.
Usage: check-envoy.py FILE..."""
import os
import sys

import yaml

# Envoy's protos from xds-protos, kept apart from site-packages (see tests/ext_authz/client.py).
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ext_authz", ".xds"))
from google.protobuf import json_format

# The typed_config types the files use, registered by importing their modules.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401

failed = False
for path in sys.argv[1:]:
    try:
        json_format.ParseDict(yaml.safe_load(open(path)), bootstrap_pb2.Bootstrap())
        print(f"{path}: a valid Envoy bootstrap")
    except (json_format.ParseError, yaml.YAMLError) as e:
        print(f"{path}: {e}")
        failed = True
sys.exit(1 if failed else 0)

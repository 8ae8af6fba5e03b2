#!/usr/bin/env python3
"""Requests per second with a route's `allow_if` against the same route without it (issue 39's
req/s figure; benches/instructions.py --policy gives the instruction counts).

    python3 benches/policy_load.py                  # builds bearward, 5 rounds of 10 s
    python3 benches/policy_load.py --no-build --duration 5 --rounds 5

Both configs have the route `prefix = "/{tenant}/"` (so load.py's wrk request, GET /api/check,
is tenant `api`) with `scopes = ["read"]`; one adds the typical expression
`claims.tenant == request.params.tenant && 'admin' in claims.roles`. One cached RS256 token with
`tenant` and `roles` claims; wrk (CPU 0) sends 32 connections; bearward and the nginx upstream
share CPU 1, as in load.py's shared layout. Each round runs both, interleaved, each against a
fresh bearward. Nothing asserts a timing; it prints figures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM = 18300, 18301
POLICY = "allow_if = \"claims.tenant == request.params.tenant && 'admin' in claims.roles\""


def configs(base, _d):
    templated = base.replace('prefix = "/"', 'prefix = "/{tenant}/"')
    return {"no allow_if": templated,
            "allow_if": templated.replace('scopes = ["read"]', 'scopes = ["read"]\n' + POLICY)}


if __name__ == "__main__":
    load.comparison_main(__doc__, "policy-load", PORT, UPSTREAM, configs,
                         claims={"tenant": "api", "roles": ["user", "admin"]})

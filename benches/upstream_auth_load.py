#!/usr/bin/env python3
"""Requests per second with an identity assertion and with a token exchange on the upstream,
against plain forwarding (issue 40's figures; benches/instructions.py --upstream gives the
instruction counts).

    python3 benches/upstream_auth_load.py                  # builds bearward, 5 rounds of 10 s
    python3 benches/upstream_auth_load.py --no-build --duration 5 --rounds 5

load.py's config (one route, `scopes = ["read"]`, one cached RS256 token) four ways: as it is;
with `identity_assertion` (ES256, the test key; signed once per token, then kept); with
`request = "include"` (signed on every request); with `token_exchange` at the upstream nginx's
`/token` (one exchange, then kept). wrk (CPU 0) sends 32 connections; bearward and the nginx
upstream share CPU 1, as in load.py's shared layout. Each round runs all four, interleaved,
each against a fresh bearward. Nothing asserts a timing; it prints figures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

PORT, UPSTREAM = 18310, 18311

if __name__ == "__main__":
    load.comparison_main(__doc__, "upstream-auth-load", PORT, UPSTREAM,
                         lambda base, d: load.upstream_auth_configs(base, d, UPSTREAM))

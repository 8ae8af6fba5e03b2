"""An MCP client made with the official Python SDK (mcp 2.3.0), for tests/mcp.rs.

    python3 tests/mcp/client.py URL ISSUER CLIENT_ID SECRET MODE OPS

Connects to URL (bearward in front of tests/mcp/server.py) with the SDK's client-credentials
OAuth provider, which discovers the authorization server from bearward's RFC 9728 metadata,
asks it for a token, and steps up on a 403 `insufficient_scope`. MODE is `auto` (2026-07-28,
which sends Mcp-Method and Mcp-Name) or `legacy` (the initialize handshake, which does not).
OPS is a JSON list of operations, each run in turn:
  ["tools"]  ["call", NAME, ARGS]  ["prompt", NAME, ARGS]  ["read", URI]
Prints one JSON object: each operation's result or error, and every HTTP exchange the client
made (to bearward and to the authorization server), in order.
"""
import asyncio
import json
import sys
import warnings

import httpx2
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client

warnings.simplefilter("ignore")
url, issuer, client_id, secret, mode, ops = sys.argv[1:7]
ops = json.loads(ops)


class Memory:
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


def describe(e):
    """An exception, and those an exception group holds (the SDK's task groups wrap them)."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


async def main():
    exchanges = []

    async def seen(response):
        r = response.request
        exchanges.append(
            {
                "method": r.method,
                "url": str(r.url),
                "status": response.status_code,
                "www_authenticate": response.headers.get("www-authenticate"),
            }
        )

    auth = ClientCredentialsOAuthProvider(
        server_url=url, storage=Memory(), client_id=client_id, client_secret=secret, issuer=issuer
    )
    results = []
    http = httpx2.AsyncClient(auth=auth, event_hooks={"response": [seen]}, timeout=20)
    try:
        async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            results.append({"ok": True, "protocol": client.protocol_version})
            for op in ops:
                try:
                    if op[0] == "tools":
                        r = await client.list_tools()
                        value = sorted(t.name for t in r.tools)
                    elif op[0] == "call":
                        r = await client.call_tool(op[1], op[2])
                        value = {"error": bool(r.is_error), "text": [c.text for c in r.content if hasattr(c, "text")]}
                    elif op[0] == "prompt":
                        r = await client.get_prompt(op[1], op[2])
                        value = [m.content.text for m in r.messages]
                    elif op[0] == "read":
                        r = await client.read_resource(op[1])
                        value = [c.text for c in r.contents if hasattr(c, "text")]
                    else:
                        raise ValueError(f"unknown operation {op[0]}")
                    results.append({"ok": True, "value": value})
                except Exception as e:  # noqa: BLE001 - the test reads the error
                    results.append({"ok": False, "error": type(e).__name__, "message": str(e)[:400]})
    except BaseException as e:  # noqa: BLE001 - a failed connect, or an error group at exit
        results.append({"ok": False, "error": type(e).__name__, "message": describe(e)[:800]})
    print(json.dumps({"results": results, "exchanges": exchanges}))


asyncio.run(main())

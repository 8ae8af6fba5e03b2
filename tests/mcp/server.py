"""An MCP server made with the official Python SDK (mcp 2.3.0), for tests/mcp.rs.

    python3 tests/mcp/server.py PORT LOG

Streamable HTTP on 127.0.0.1:PORT/mcp, with no authorization of its own (bearward is in front).
Every HTTP request it receives is appended to LOG as one JSON line (method, path, the Mcp-Method
and Mcp-Name headers, the body's JSON-RPC method and target, whether a token came along), and
every tool run to LOG.ran, so a test can tell what reached the server and what ran.
"""
import json
import sys

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

port = int(sys.argv[1])
log_path = sys.argv[2]
server = MCPServer("bearward-test")


def ran(what: str) -> None:
    with open(log_path + ".ran", "a", encoding="utf-8") as f:
        f.write(what + "\n")


@server.tool()
def echo(text: str) -> str:
    """Says the text back."""
    ran(f"echo {text}")
    return text


@server.tool()
def delete_repo(name: str) -> str:
    """Deletes a repository (pretends to)."""
    ran(f"delete_repo {name}")
    return f"deleted {name}"


@server.resource("file:///docs/{name}")
def doc(name: str) -> str:
    """A document."""
    return f"document {name}"


@server.prompt(name="grüße")
def greetings(who: str) -> str:
    """A prompt whose name is not ASCII: clients send it base64-wrapped in Mcp-Name."""
    return f"Grüße, {who}"


app = server.streamable_http_app(
    streamable_http_path="/mcp",
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)


async def logged(scope, receive, send):
    if scope["type"] != "http":
        return await app(scope, receive, send)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    entry = {
        "method": scope["method"],
        "path": scope["path"],
        "mcp_method": headers.get("mcp-method"),
        "mcp_name": headers.get("mcp-name"),
        "token": "authorization" in headers,
        "bytes": len(body),
    }
    try:
        message = json.loads(body) if body else None
        if isinstance(message, dict):
            params = message.get("params") or {}
            entry["body_method"] = message.get("method")
            entry["body_target"] = params.get("name") or params.get("uri")
    except ValueError:
        entry["body_method"] = "<not json>"
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    await app(scope, replay, send)


uvicorn.run(logged, host="127.0.0.1", port=port, log_level="warning", lifespan="on")

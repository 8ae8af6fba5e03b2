// An MCP client made with the official TypeScript SDK (@modelcontextprotocol/sdk), for
// tests/mcp.rs:
//
//   node tests/interop/mcp-client.mjs URL ISSUER CLIENT_ID SECRET SCOPE OPS
//
// Connects to URL (bearward in front of tests/mcp/server.py) with the SDK's client-credentials
// provider configured with SCOPE (its client-credentials flow asks for what it is configured
// with, so it cannot step up). OPS and the printed JSON are those of tests/mcp/client.py.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const [url, issuer, clientId, clientSecret, scope, opsJson] = process.argv.slice(2);
const ops = JSON.parse(opsJson);
const exchanges = [];
const seen = async (input, init) => {
  const res = await fetch(input, init);
  exchanges.push({
    method: init?.method ?? 'GET',
    url: String(input),
    status: res.status,
    www_authenticate: res.headers.get('www-authenticate'),
  });
  return res;
};
const results = [];
const client = new Client({ name: 'bearward-test', version: '1.0.0' });
try {
  const authProvider = new ClientCredentialsProvider({ clientId, clientSecret, scope, expectedIssuer: issuer });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider, fetch: seen });
  await client.connect(transport);
  results.push({ ok: true, protocol: transport.protocolVersion ?? null });
  for (const op of ops) {
    try {
      let value;
      if (op[0] === 'tools') value = (await client.listTools()).tools.map((t) => t.name).sort();
      else if (op[0] === 'call') {
        const r = await client.callTool({ name: op[1], arguments: op[2] });
        value = { error: Boolean(r.isError), text: r.content.filter((c) => c.text !== undefined).map((c) => c.text) };
      } else if (op[0] === 'prompt') value = (await client.getPrompt({ name: op[1], arguments: op[2] })).messages.map((m) => m.content.text);
      else if (op[0] === 'read') value = (await client.readResource({ uri: op[1] })).contents.map((c) => c.text);
      else throw new Error(`unknown operation ${op[0]}`);
      results.push({ ok: true, value });
    } catch (e) {
      results.push({ ok: false, error: e?.constructor?.name ?? 'Error', message: String(e?.message ?? e).slice(0, 400) });
    }
  }
} catch (e) {
  results.push({ ok: false, error: e?.constructor?.name ?? 'Error', message: String(e?.message ?? e).slice(0, 400) });
}
await client.close().catch(() => {});
process.stdout.write(`${JSON.stringify({ results, exchanges })}\n`);

// A real OpenID provider (oidc-provider) on 127.0.0.1 for bearward's interop tests.
//
// Prints one JSON line on stdout when ready: {"issuer": "http://127.0.0.1:PORT"}.
// Resource indicators make access tokens RFC 9068 JWTs for the requested resource (audience).
//
// Clients (all client_secret_basic):
//   cc-client     client_credentials, RS256, 300 s tokens
//   es-client     client_credentials, ES256, 300 s tokens
//   short-client  client_credentials, RS256, 2 s tokens
//   web-client    authorization_code + refresh_token (PKCE), RS256, 2 s tokens
//   bearward-rs   the resource server: introspects (RFC 7662), client_secret_basic
//   mcp-client    client_credentials, may have every scope of an MCP resource (a resource
//                 whose path ends in /mcp: mcp repo:admin files:read prompts:special)
//   mcp-limited-client  client_credentials, may have the scope mcp only
//   mtls-client   client_credentials, tokens bound to its TLS client certificate (RFC 8705),
//                 which the test passes to /token in X-Test-Client-Cert (URL-encoded PEM), as
//                 a TLS-terminating proxy in front of the provider would
//   exchange-client  RFC 8693 token exchange (registered below: oidc-provider has no built-in
//                 token exchange grant) and client_credentials (its own token, for actor_token)
// Any client may send a DPoP proof to /token and get a DPoP-bound token (RFC 9449).
//
// Token exchange: a subject_token that is one of this provider's JWT access tokens (signature,
// issuer, expiry checked with jose) or an opaque one it issued, for an `audience` (or
// `resource`) in EXCHANGE_AUDIENCES, gets an RS256 JWT for that audience: the subject's `sub`,
// `client_id` the exchanging client, the requested scopes (all the audience allows without
// `scope`; one it does not: invalid_scope), and with an actor_token `act: {sub: <actor>}`
// (nesting the subject's own `act`). Another audience: invalid_target; a bad subject:
// invalid_grant.
//
// A token for the resource OPAQUE_RESOURCE (http://opaque.bearward.test/api) is opaque; every
// other resource gets RFC 9068 JWTs. Introspection and revocation (RFC 7009) are on.
//
// Test-only endpoints (not part of the provider):
//   POST /__admin/code-flow {resource, scope}  drives the authorization-code flow headlessly
//                                              (login and consent granted automatically) and
//                                              returns the token response
//   POST /__admin/rotate?phase=add|retire      add: a new RSA key is published first and signs;
//                                              the old one stays published. retire: old removed.
//   POST /__admin/exchange?delay_ms=N          token exchanges wait N ms first
//   GET  /__admin/stats                        {"jwks_hits": N, "introspections": N,
//                                               "token_requests": N, "exchanges": N}
import { createServer } from 'node:http';
import { createPrivateKey, randomBytes, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import Provider, { errors } from 'oidc-provider';
import { SignJWT, createLocalJWKSet, importJWK, jwtVerify } from 'jose';

const REDIRECT = 'http://127.0.0.1/cb';

// The repository's test keys, not fresh ones: node 20's generateKeyPairSync can deadlock when a
// garbage collection runs while a key is exported (the main thread waits on a mutex in the
// previous key job's destructor), which hung a CI run before this printed its ready line.
function signingKey(file, kid, alg) {
  const pem = readFileSync(new URL(`../fixtures/keys/${file}`, import.meta.url));
  return { ...createPrivateKey(pem).export({ format: 'jwk' }), kid, use: 'sig', alg };
}

const keys = {
  oldRsa: signingKey('rsa1.pem', 'rsa-1', 'RS256'),
  newRsa: signingKey('rsa2.pem', 'rsa-2', 'RS256'),
  ec: signingKey('p256.pem', 'ec-1', 'ES256'),
};
let published = [keys.oldRsa, keys.ec];
let jwksHits = 0;
let introspections = 0;
let tokenRequests = 0;
const OPAQUE_RESOURCE = 'http://opaque.bearward.test/api';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const EXCHANGE_AUDIENCES = {
  'http://orders.bearward.test': 'orders:read orders:write',
  'http://billing.bearward.test': 'billing:read',
};
let exchanges = 0;
let exchangeDelayMs = 0;

const TTL = { 'short-client': 2, 'web-client': 2 };
const MCP_SCOPES = 'mcp repo:admin files:read prompts:special';
const isMcp = (resource) => URL.canParse(resource) && new URL(resource).pathname.endsWith('/mcp');

function configuration() {
  return {
    clients: [
      { client_id: 'cc-client', client_secret: 'cc-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'read write admin' },
      { client_id: 'es-client', client_secret: 'es-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'read write admin' },
      { client_id: 'short-client', client_secret: 'short-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'read write' },
      {
        client_id: 'web-client', client_secret: 'web-secret', grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'], redirect_uris: [REDIRECT], scope: 'openid offline_access read write',
      },
      { client_id: 'bearward-rs', client_secret: 'bearward-rs-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [] },
      { client_id: 'mcp-client', client_secret: 'mcp-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: MCP_SCOPES },
      { client_id: 'mcp-limited-client', client_secret: 'mcp-limited-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [], scope: 'mcp' },
      {
        client_id: 'exchange-client', client_secret: 'exchange-secret', grant_types: [TOKEN_EXCHANGE, 'client_credentials'],
        redirect_uris: [], response_types: [],
      },
      {
        client_id: 'mtls-client', client_secret: 'mtls-secret', grant_types: ['client_credentials'], redirect_uris: [],
        response_types: [], scope: 'read write', tls_client_certificate_bound_access_tokens: true,
      },
    ],
    clientDefaults: { token_endpoint_auth_method: 'client_secret_basic' },
    jwks: { keys: published },
    scopes: ['openid', 'offline_access', 'read', 'write', 'admin', ...MCP_SCOPES.split(' ')],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      dPoP: { enabled: true },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate(ctx) {
          const pem = ctx.get('x-test-client-cert');
          return pem ? decodeURIComponent(pem) : undefined;
        },
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf?.[0],
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource, client) => ({
          scope: isMcp(resource) ? MCP_SCOPES : 'read write admin',
          audience: resource,
          accessTokenFormat: resource === OPAQUE_RESOURCE ? 'opaque' : 'jwt',
          accessTokenTTL: TTL[client.clientId] ?? 300,
          jwt: { sign: { alg: client.clientId === 'es-client' ? 'ES256' : 'RS256' } },
        }),
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    ttl: { RefreshToken: 3600, Grant: 3600, Session: 3600, Interaction: 600 },
    cookies: { keys: ['bearward-interop-cookie-key'] },
  };
}

let provider;
let issuer;

const publicJwk = ({ kty, n, e, crv, x, y, kid, alg, use }) => ({ kty, n, e, crv, x, y, kid, alg, use });

// The subject (or actor) token's claims: one of this provider's JWT access tokens, or an opaque
// client-credentials token it issued.
async function tokenClaims(p, value) {
  const opaque = await p.ClientCredentials.find(value).catch(() => undefined);
  if (opaque) return { sub: opaque.clientId, client_id: opaque.clientId };
  const keys = createLocalJWKSet({ keys: published.map(publicJwk) });
  const { payload } = await jwtVerify(value, keys, { issuer });
  return payload;
}

async function tokenExchange(ctx) {
  exchanges += 1;
  if (exchangeDelayMs) await sleep(exchangeDelayMs);
  const params = ctx.oidc.params;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be an access token');
  }
  let subject;
  try {
    subject = await tokenClaims(ctx.oidc.provider, params.subject_token);
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token: ${e.code ?? e.message}`);
  }
  const audience = params.audience ?? params.resource;
  if (!Object.hasOwn(EXCHANGE_AUDIENCES, audience ?? '')) {
    throw new errors.InvalidTarget(`no token for ${audience}`);
  }
  const allowed = EXCHANGE_AUDIENCES[audience].split(' ');
  const scope = params.scope ? params.scope.split(' ') : allowed;
  if (scope.some((s) => !allowed.includes(s))) throw new errors.InvalidScope('scope not allowed', params.scope);
  let act;
  if (params.actor_token) {
    let actor;
    try {
      actor = await tokenClaims(ctx.oidc.provider, params.actor_token);
    } catch (e) {
      throw new errors.InvalidGrant(`actor_token: ${e.code ?? e.message}`);
    }
    act = { sub: actor.sub, ...(subject.act ? { act: subject.act } : {}) };
  }
  const now = Math.floor(Date.now() / 1000);
  const key = await importJWK(keys.oldRsa, 'RS256');
  const claims = { sub: subject.sub, client_id: ctx.oidc.client.clientId, scope: scope.join(' '), ...(act ? { act } : {}) };
  const token = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: keys.oldRsa.kid, typ: 'at+jwt' })
    .setIssuer(issuer).setAudience(audience).setIssuedAt(now).setExpirationTime(now + 300)
    .setJti(randomBytes(8).toString('hex'))
    .sign(key);
  ctx.body = { access_token: token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: 300, scope: scope.join(' ') };
}

function build() {
  const p = new Provider(issuer, configuration());
  p.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchange,
    ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'scope'],
  );
  // Login and consent are granted at once: the flow runs headlessly.
  p.use(async (ctx, next) => {
    if (!ctx.path.startsWith('/interaction/')) return next();
    const details = await p.interactionDetails(ctx.req, ctx.res);
    if (details.prompt.name === 'login') {
      await p.interactionFinished(ctx.req, ctx.res, { login: { accountId: 'user-42' } }, { mergeWithLastSubmission: false });
      return undefined;
    }
    const grant = new p.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const d = details.prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await p.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return undefined;
  });
  return p;
}

const basic = (id, secret) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;

async function codeFlow(resource, scope) {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const jar = new Map();
  const cookie = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  let url = `${issuer}/auth?${new URLSearchParams({
    client_id: 'web-client', response_type: 'code', scope, redirect_uri: REDIRECT, resource,
    prompt: 'consent', code_challenge: challenge, code_challenge_method: 'S256', state: 'interop',
  })}`;
  let code;
  for (let i = 0; i < 12 && !code; i += 1) {
    const res = await fetch(url, { redirect: 'manual', headers: { cookie: cookie() } });
    for (const c of res.headers.getSetCookie()) {
      const kv = c.split(';')[0];
      const at = kv.indexOf('=');
      const [k, v] = [kv.slice(0, at), kv.slice(at + 1)];
      if (v) jar.set(k, v); else jar.delete(k);
    }
    const location = res.headers.get('location');
    if (!location) throw new Error(`no redirect from ${url}: ${res.status} ${await res.text()}`);
    const next = new URL(location, url);
    if (next.href.startsWith(REDIRECT)) {
      code = next.searchParams.get('code');
      if (!code) throw new Error(`no code: ${next.href}`);
    }
    url = next.href;
  }
  const res = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: basic('web-client', 'web-secret'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier, resource }),
  });
  return { status: res.status, body: await res.json() };
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (url.pathname === '/__admin/stats') return json(res, 200, { jwks_hits: jwksHits, introspections, token_requests: tokenRequests, exchanges });
    if (url.pathname === '/__admin/exchange' && req.method === 'POST') {
      exchangeDelayMs = Number(url.searchParams.get('delay_ms') ?? 0);
      return json(res, 200, { delay_ms: exchangeDelayMs });
    }
    if (url.pathname === '/token') tokenRequests += 1;
    if (url.pathname === '/token/introspection') introspections += 1;
    if (url.pathname === '/__admin/rotate' && req.method === 'POST') {
      const phase = url.searchParams.get('phase');
      if (phase === 'add') published = [keys.newRsa, keys.oldRsa, keys.ec];
      else if (phase === 'retire') published = [keys.newRsa, keys.ec];
      else return json(res, 400, { error: 'phase must be add or retire' });
      provider = build();
      return json(res, 200, { kids: published.map((k) => k.kid) });
    }
    if (url.pathname === '/__admin/code-flow' && req.method === 'POST') {
      const { resource, scope } = JSON.parse(await readBody(req));
      const out = await codeFlow(resource, scope);
      return json(res, out.status, out.body);
    }
    if (url.pathname === '/jwks') jwksHits += 1;
    return provider.callback()(req, res);
  } catch (e) {
    return json(res, 500, { error: String(e?.stack ?? e) });
  }
});

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

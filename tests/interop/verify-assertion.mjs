// An upstream's check of bearward's identity assertions, with panva's `jose` (not bearward's
// code): the keys from bearward's published JWK Set, fetched over HTTP as a verifier would,
// the signature, `iss`, `aud` and `exp`/`iat` with no leeway.
//
//   node tests/interop/verify-assertion.mjs JWKS_URL ISSUER AUDIENCE JWT...
//
// Prints one JSON line per JWT: {"ok":true,"kid":...,"payload":{...}} or
// {"ok":false,"code":"ERR_JWT_EXPIRED",...}.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, issuer, audience, ...jwts] = process.argv.slice(2);
const keys = createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 0 });
for (const jwt of jwts) {
  try {
    const { payload, protectedHeader } = await jwtVerify(jwt, keys, {
      issuer,
      audience,
      algorithms: ["ES256", "ES384", "RS256", "PS256", "EdDSA"],
      clockTolerance: 0,
    });
    console.log(JSON.stringify({ ok: true, kid: protectedHeader.kid, payload }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, code: e.code, message: e.message }));
  }
}

//! RFC 9728 protected resource metadata: how a client that was refused finds the authorization
//! server that issues tokens for this API, and the scopes to ask it for.
//!
//! A route (or `[server]`, for every route) names the resource identifier its clients use,
//! `resource = "https://api.example.com/orders"`. bearward then
//! - serves the metadata document at the identifier's well-known URL, built as RFC 9728 3.1
//!   says (`/.well-known/oauth-protected-resource` between host and path:
//!   `https://api.example.com/.well-known/oauth-protected-resource/orders`), before any route
//!   is matched, so the upstream is never asked;
//! - names that URL in the `resource_metadata` parameter of every Bearer challenge the route
//!   answers (RFC 9728 5.1), which is where MCP clients and other dynamic clients start.
//!
//! The document says only what the config enforces: `authorization_servers` are the configured
//! issuers, `scopes_supported` every scope the resource's routes ask for,
//! `authorization_details_types_supported` the RFC 9396 types they require,
//! `bearer_methods_supported` the places they take a token from.

use crate::body::{self, Body};
use crate::request::path::{canonicalize_with, PathOptions};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The well-known URI suffix registered by RFC 9728 section 3.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The methods the document answers, for `Allow`.
pub const ALLOW: &str = "GET, HEAD, OPTIONS";

/// A checked resource identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    /// As configured. Clients compare the document's `resource` with the URL they called, byte
    /// for byte (RFC 9728 3.3), so it is never rewritten.
    pub id: String,
    /// The canonical path the document is served at.
    pub metadata_path: String,
    /// The identifier's host name as routes compare hosts
    /// ([`crate::request::host::route_name`]): which request a document goes to when several
    /// share a path.
    pub host: String,
    /// The document's URL, as challenges name it.
    pub metadata_url: Arc<str>,
}

impl ResourceId {
    /// Checks an identifier: an absolute `https` URL without query or fragment (RFC 9728 1.2),
    /// or `http` to a loopback host for development, as RFC 8252 allows loopback redirect URIs.
    /// Its well-known path must be one bearward's canonicalization leaves alone, else no
    /// request could ever reach the document.
    pub fn parse(raw: &str, opts: PathOptions) -> Result<ResourceId, String> {
        if raw.contains('#') {
            return Err("must not have a fragment (RFC 9728 1.2)".into());
        }
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let Some(authority) = uri.authority() else {
            return Err(format!(
                "{raw:?} is not an absolute URL such as \"https://api.example.com\""
            ));
        };
        if authority.as_str().contains('@') {
            return Err("must not hold user information".into());
        }
        if uri.query().is_some() {
            return Err("must not have a query (RFC 9728 1.2)".into());
        }
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") if is_loopback(authority.host()) => "http",
            _ => {
                return Err(
                    "must be an https URL (http only for a loopback host, for development)".into(),
                )
            }
        };
        // RFC 9728 3.1: the suffix goes between host and path, and a lone `/` after the host is
        // dropped first.
        let path = match uri.path() {
            "/" => "",
            p => p,
        };
        let metadata_path = format!("{WELL_KNOWN}{path}");
        match canonicalize_with(&metadata_path, opts) {
            Ok(c) if c == metadata_path => {}
            Ok(c) => {
                return Err(format!(
                    "its path is not in canonical form (requests for {metadata_path:?} are \
                     answered as {c:?}, so its metadata could never be fetched)"
                ))
            }
            Err(e) => return Err(format!("its path is not valid ({e})")),
        }
        let host = crate::request::host::route_name(authority.as_str().as_bytes())
            .map_err(|_| format!("{raw:?} does not name a valid host"))?;
        Ok(ResourceId {
            host,
            id: raw.to_owned(),
            metadata_url: format!("{scheme}://{authority}{metadata_path}").into(),
            metadata_path,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<Ipv6Addr>()
            .is_ok_and(|a| a.is_loopback())
}

#[derive(serde::Serialize)]
struct Metadata<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_servers: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_details_types_supported: Vec<&'a str>,
    bearer_methods_supported: Vec<&'static str>,
    /// RFC 9728 2 / RFC 9449 5.1: the algorithms bearward takes DPoP proofs in.
    dpop_signing_alg_values_supported: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dpop_bound_access_tokens_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls_client_certificate_bound_access_tokens: bool,
}

/// What a resource's document says about sender-constrained tokens.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub dpop_algs: Vec<String>,
    /// Every bearer route of the resource takes bound tokens only.
    pub required: bool,
    /// Client certificates reach bearward (its TLS listener asks for them, or a trusted proxy
    /// passes them), so certificate-bound tokens can be used (RFC 8705).
    pub mtls: bool,
}

/// The metadata documents, one per resource, keyed by the path they are served at.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// (metadata path, host, document).
    docs: Vec<(String, String, Bytes)>,
}

impl Documents {
    /// Does a document for this resource exist yet?
    pub fn has(&self, resource: &ResourceId) -> bool {
        self.docs
            .iter()
            .any(|(p, h, _)| *p == resource.metadata_path && *h == resource.host)
    }

    /// Adds the document of one resource: the issuers it takes tokens from, the sorted unions
    /// of its bearer routes' scopes and RFC 9396 types, and how a token may be sent to it. Built from the route
    /// table by [`crate::routes::resource_documents`].
    pub fn add(
        &mut self,
        resource: &ResourceId,
        issuers: Vec<&str>,
        mut scopes: Vec<&str>,
        mut detail_types: Vec<&str>,
        bearer_methods: Vec<&'static str>,
        binding: &Binding,
    ) {
        // `offline_access` asks the authorization server for a refresh token: it is never
        // a resource's to require, and a client that requests every scope listed would ask
        // for it (the MCP authorization rules say the same).
        scopes.retain(|s| *s != "offline_access");
        scopes.sort_unstable();
        scopes.dedup();
        detail_types.sort_unstable();
        detail_types.dedup();
        let doc = Metadata {
            resource: &resource.id,
            authorization_servers: issuers,
            scopes_supported: scopes,
            authorization_details_types_supported: detail_types,
            bearer_methods_supported: bearer_methods,
            dpop_signing_alg_values_supported: &binding.dpop_algs,
            dpop_bound_access_tokens_required: binding.required,
            tls_client_certificate_bound_access_tokens: binding.mtls,
        };
        let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        self.docs.push((
            resource.metadata_path.clone(),
            resource.host.clone(),
            Bytes::from(body),
        ));
    }

    /// The document served at this canonical path, if any. Where resources on several hosts
    /// share the path (`https://a.example.com/mcp`, `https://b.example.com/mcp`), the one for the
    /// request's host name (`host`, asked only then); a path only one resource has is served
    /// whatever the host, as a proxy in front may have rewritten it.
    pub fn find(&self, path: &str, host: impl FnOnce() -> Option<String>) -> Option<&Bytes> {
        if self.docs.is_empty() || !path.starts_with(WELL_KNOWN) {
            return None;
        }
        let mut at_path = self.docs.iter().filter(|(p, _, _)| p == path);
        let first = at_path.next()?;
        if at_path.next().is_none() {
            return Some(&first.2);
        }
        let host = host()?;
        self.docs
            .iter()
            .find(|(p, h, _)| p == path && *h == host)
            .map(|(_, _, d)| d)
    }
}

/// Answers a request for a document: `GET` and `HEAD` get it, `OPTIONS` (a CORS preflight, as
/// browser clients send before a `GET` with their own headers) gets what it may send; any other
/// method is `None`, for a 405. The document is public and asks for no credentials, so any
/// origin may read it, as with OpenID and RFC 8414 metadata.
pub fn respond(method: &Method, headers: &HeaderMap, doc: &Bytes) -> Option<Response<Body>> {
    let mut resp = match *method {
        Method::GET | Method::HEAD => {
            let mut resp = Response::new(body::full(doc.clone()));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            resp
        }
        Method::OPTIONS => {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD"),
            );
            if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            resp
        }
        _ => return None,
    };
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<ResourceId, String> {
        ResourceId::parse(raw, PathOptions::default())
    }

    #[test]
    fn the_well_known_suffix_goes_between_host_and_path() {
        let r = parse("https://api.example.com/v1/orders").unwrap();
        assert_eq!(
            r.metadata_path,
            "/.well-known/oauth-protected-resource/v1/orders"
        );
        assert_eq!(
            &*r.metadata_url,
            "https://api.example.com/.well-known/oauth-protected-resource/v1/orders"
        );
        for bare in ["https://api.example.com", "https://api.example.com/"] {
            let r = parse(bare).unwrap();
            assert_eq!(r.id, bare, "the identifier is kept as written");
            assert_eq!(r.metadata_path, WELL_KNOWN);
        }
        let r = parse("https://api.example.com:8443/x").unwrap();
        assert_eq!(
            &*r.metadata_url,
            "https://api.example.com:8443/.well-known/oauth-protected-resource/x"
        );
    }

    #[test]
    fn identifiers_are_https_urls_without_query_fragment_or_userinfo() {
        for bad in [
            "http://api.example.com",
            "api.example.com",
            "/orders",
            "https://api.example.com/x?y=1",
            "https://api.example.com/x#top",
            "https://user@api.example.com",
            "ftp://api.example.com",
            "https://api.example.com/a/../b",
            "https://api.example.com/a//b",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        for dev in [
            "http://localhost:3000/mcp",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
        ] {
            assert!(parse(dev).is_ok(), "{dev} refused");
        }
    }

    #[test]
    fn only_get_head_and_options_are_answered() {
        let doc = Bytes::from_static(b"{}");
        let h = HeaderMap::new();
        let get = respond(&Method::GET, &h, &doc).unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers()[header::CONTENT_TYPE], "application/json");
        let pre = respond(&Method::OPTIONS, &h, &doc).unwrap();
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        assert_eq!(pre.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(respond(&m, &h, &doc).is_none(), "{m}");
        }
    }
}

//! `[authzen.NAME]` and routes' `authzen`: policy decision points and the questions routes ask.

use super::Ctx;
use crate::config::file::*;
use crate::config::PdpConfig;
use crate::routes::{Ask, AskResource, ContextItem};
use crate::routes::{PathMatch, Route};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// The question's shape, as a PDP's defaults or a route's overrides give it.
#[derive(Default, Clone)]
struct Shape {
    subject: AuthzenSubjectFile,
    action: AuthzenActionFile,
    resource: AuthzenResourceFile,
    context: Option<Vec<String>>,
}

/// Every `[authzen.NAME]` that passed, with the shape its routes start from.
pub(super) struct Pdps {
    pub configs: Vec<PdpConfig>,
    shapes: Vec<Shape>,
}

pub(super) fn pdps(
    cx: &mut Ctx<'_>,
    file: &BTreeMap<Spanned<String>, Spanned<AuthzenFile>>,
) -> Pdps {
    let mut out = Pdps {
        configs: Vec::new(),
        shapes: Vec::new(),
    };
    for (name, f) in file {
        let name = name.get_ref();
        let span = f.span();
        let f = f.get_ref();
        let key = |k: &str| format!("authzen.{name}.{k}");
        let mut ok = true;
        let url = f.url.get_ref().trim_end_matches('/').to_owned();
        let parsed = url.parse::<http::Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.query().is_none()
        });
        if parsed.is_none() {
            cx.err(
                f.url.span(),
                &key("url"),
                format!("{url:?} is not an http(s) URL without a query"),
            );
            ok = false;
        }
        let endpoint = f.evaluation_endpoint.as_ref().and_then(|e| {
            let u = e.get_ref().parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if u.is_none() {
                cx.err(e.span(), &key("evaluation_endpoint"), "not an http(s) URL");
                ok = false;
            }
            u
        });
        let discover = f.discover.as_ref().is_some_and(|d| *d.get_ref());
        if let (true, Some(e)) = (discover, &f.evaluation_endpoint) {
            cx.err(
                e.span(),
                &key("evaluation_endpoint"),
                "give `evaluation_endpoint` or `discover = true`, not both",
            );
            ok = false;
        }
        let timeout = cx.duration(
            &f.timeout,
            &key("timeout"),
            Duration::from_secs(2),
            (Duration::from_millis(10), Duration::from_secs(60)),
        );
        let cache_ttl = cx.duration(
            &f.cache_ttl,
            &key("cache_ttl"),
            Duration::from_secs(60),
            (Duration::ZERO, Duration::from_secs(3600)),
        );
        let cache_entries = cx.size(
            &f.cache_entries,
            &key("cache_entries"),
            10_000,
            1,
            1_000_000,
        ) as u64;
        let max_in_flight = cx.size(&f.max_in_flight, &key("max_in_flight"), 64, 1, 10_000);
        let bearer = cx.secret(
            (&f.bearer_token_file, &f.bearer_token_env),
            &key("bearer_token"),
            &span,
        );
        let secret = cx.secret(
            (&f.client_secret_file, &f.client_secret_env),
            &key("client_secret"),
            &span,
        );
        let authorization = match (bearer, &f.client_id, secret) {
            (Some(_), Some(c), _) => {
                cx.err(
                    c.span(),
                    &key("client_id"),
                    "give a bearer token or client credentials, not both",
                );
                ok = false;
                None
            }
            (Some(t), None, _) => Some(format!("Bearer {}", String::from_utf8_lossy(&t.0))),
            (None, Some(id), Some(secret)) => {
                // RFC 6749 2.3.1: both parts form-encoded before the Basic encoding.
                let id: String = form_urlencoded::byte_serialize(id.get_ref().as_bytes()).collect();
                let pw: String = form_urlencoded::byte_serialize(&secret.0).collect();
                Some(format!(
                    "Basic {}",
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        format!("{id}:{pw}")
                    )
                ))
            }
            (None, Some(id), None) => {
                cx.err(
                    id.span(),
                    &key("client_id"),
                    "needs client_secret_file or client_secret_env",
                );
                ok = false;
                None
            }
            (None, None, _) => None,
        };
        let authorization = authorization.and_then(|a| match http::HeaderValue::from_str(&a) {
            Ok(v) => Some(v),
            Err(_) => {
                cx.err(
                    span.clone(),
                    &key("bearer_token_file"),
                    "the credential is not a valid header value",
                );
                ok = false;
                None
            }
        });
        let tls = tls(cx, f, &key).unwrap_or_else(|()| {
            ok = false;
            None
        });
        let shape = Shape {
            subject: f
                .subject
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            action: f
                .action
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            resource: f
                .resource
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            context: f
                .context
                .as_ref()
                .map(|c| c.get_ref().iter().map(|x| x.get_ref().clone()).collect()),
        };
        if !ok {
            continue;
        }
        out.configs.push(PdpConfig {
            name: name.clone(),
            url,
            endpoint,
            discover,
            timeout,
            cache_ttl,
            cache_entries,
            max_in_flight,
            authorization,
            tls,
        });
        out.shapes.push(shape);
    }
    out
}

/// `ca_file` and the client certificate: rustls settings for the PDP's connections, `None`
/// when neither is set (the system roots, no client certificate).
fn tls(
    cx: &mut Ctx<'_>,
    f: &AuthzenFile,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<Arc<rustls::ClientConfig>>, ()> {
    let files = (&f.ca_file, &f.client_cert_file, &f.client_key_file);
    super::client_tls(
        cx,
        files,
        ["ca_file", "client_cert_file", "client_key_file"],
        key,
    )
}

/// Each route's `authzen`: the PDP it names and the question it asks, its own shape over the
/// PDP's.
pub(super) fn routes(
    cx: &mut Ctx<'_>,
    file: &[Spanned<RouteFile>],
    routes: &mut [Route],
    pdps: &Pdps,
) {
    for (i, (r, route)) in file.iter().zip(routes.iter_mut()).enumerate() {
        let Some(a) = &r.get_ref().authzen else {
            continue;
        };
        let key = format!("routes[{i}].authzen");
        let (name, own) = match a.get_ref() {
            RouteAuthzenFile::Name(n) => (n.as_str(), None),
            RouteAuthzenFile::Table(t) => (t.pdp.as_str(), Some(t)),
        };
        let Some(pdp) = pdps.configs.iter().position(|p| p.name == name) else {
            let known: Vec<&str> = pdps.configs.iter().map(|p| p.name.as_str()).collect();
            cx.err(
                a.span(),
                &key,
                format!(
                    "no [authzen.{name}] (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        };
        let mut shape = pdps.shapes[pdp].clone();
        if let Some(t) = own {
            if let Some(s) = &t.subject {
                shape.subject = s.clone();
            }
            if let Some(x) = &t.action {
                shape.action = x.clone();
            }
            if let Some(x) = &t.resource {
                shape.resource = x.clone();
            }
            if let Some(x) = &t.context {
                shape.context = Some(x.clone());
            }
        }
        match ask(pdp, &shape, own.and_then(|t| t.reason_to_client), route) {
            Ok(a) => route.authzen = Some(Arc::new(a)),
            Err(e) => cx.err(a.span(), &key, e),
        }
    }
}

fn ask(pdp: usize, shape: &Shape, reason: Option<bool>, route: &Route) -> Result<Ask, String> {
    let params: &[String] = match &route.matcher {
        PathMatch::Template(t) => &t.names,
        _ => &[],
    };
    let resource_id = match shape.resource.id.as_deref().unwrap_or("route") {
        "route" => AskResource::Route,
        "path" => AskResource::Path,
        other => match other.strip_prefix("param:") {
            Some(p) => match params.iter().position(|n| n == p) {
                Some(n) => AskResource::Param(n),
                None => {
                    return Err(format!(
                        "resource id {other:?}: the route's path has no {{{p}}} segment"
                    ))
                }
            },
            None => {
                return Err(format!(
                    "resource id {other:?}: use \"route\", \"path\" or \"param:NAME\""
                ))
            }
        },
    };
    let context = shape
        .context
        .iter()
        .flatten()
        .map(|c| {
            Ok(match c.as_str() {
                "client_ip" => ContextItem::ClientIp,
                "time" => ContextItem::Time,
                "request_id" => ContextItem::RequestId,
                "method" => ContextItem::Method,
                "path" => ContextItem::Path,
                other => {
                    return Err(format!(
                        "context {other:?}: use \"client_ip\", \"time\", \"request_id\", \"method\" or \"path\""
                    ))
                }
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let nonempty = |what: &str, v: &Option<String>, default: &str| -> Result<String, String> {
        match v.as_deref().unwrap_or(default) {
            "" => Err(format!("{what} is empty")),
            s => Ok(s.to_owned()),
        }
    };
    let mut action_names = shape.action.names.clone().unwrap_or_default();
    // A route that takes GET takes HEAD (see `methods`), and HEAD asks what GET would.
    if let Some(get) = action_names.get("GET").cloned() {
        action_names.entry("HEAD".to_owned()).or_insert(get);
    }
    Ok(Ask {
        pdp,
        subject_type: nonempty("subject type", &shape.subject.kind, "identity")?,
        subject_claim: nonempty("subject id", &shape.subject.id, "sub")?,
        subject_properties: shape.subject.properties.clone().unwrap_or_default(),
        action_names,
        resource_type: nonempty("resource type", &shape.resource.kind, "route")?,
        resource_id,
        context,
        reason_to_client: reason.unwrap_or(false),
    })
}

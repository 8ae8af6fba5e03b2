//! MCP routes (`mcp = { ... }` on a route): per-method and per-target scopes for Model Context
//! Protocol servers, decided on the JSON-RPC body of each POST.
//!
//! MCP clients send every JSON-RPC message as its own POST (Streamable HTTP). Since the
//! 2026-07-28 revision a client also mirrors the body's `method` in `Mcp-Method` and its target
//! (`params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`) in
//! `Mcp-Name`, base64-wrapped (`=?base64?...?=`) when the name is not plain printable ASCII or
//! has edge spaces; older clients (and every TypeScript SDK so far) send neither. So the body
//! decides, and headers that are present must agree with it: a gateway deciding on headers that
//! the server never compares (servers before 2026-07-28 do not) could be told one tool and run
//! another.
//!
//! The body is parsed once, strictly: one JSON-RPC 2.0 object (no batch: MCP removed batching in
//! 2025-06-18), no duplicate member among those read (`method`, `params`, `name`, `uri`: a JSON
//! reader that keeps the last of two, as Python's does, would run another tool than the one
//! checked), nothing after it. A message without `method` is the client's answer to a server
//! request (sampling, elicitation) and needs the route's base scopes only.

use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// `Mcp-Method`: the JSON-RPC method, mirrored by 2026-07-28 clients.
pub const METHOD_HEADER: &str = "mcp-method";
/// `Mcp-Name`: the tool or prompt name or resource URI, mirrored by 2026-07-28 clients.
pub const NAME_HEADER: &str = "mcp-name";

/// Scopes per name, with a default (`"*"`) for the names not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub named: HashMap<String, Vec<String>>,
    pub default: Option<Vec<String>>,
}

impl Named {
    fn get(&self, name: &str) -> &[String] {
        self.named
            .get(name)
            .or(self.default.as_ref())
            .map_or(&[], Vec::as_slice)
    }
}

/// A route's `mcp` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Scopes per JSON-RPC method (`"resources/read" = ["files:read"]`).
    pub methods: HashMap<String, Vec<String>>,
    /// Per tool name, for `tools/call`.
    pub tools: Named,
    /// Per prompt name, for `prompts/get`.
    pub prompts: Named,
    /// Per resource URI prefix, longest first, for `resources/read`.
    pub resources: Vec<(String, Vec<String>)>,
    /// For resource URIs no prefix matches (`"*"`).
    pub resources_default: Option<Vec<String>>,
}

/// What a method's target is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Tool,
    Prompt,
    Resource,
}

impl TargetKind {
    /// The methods that name a target, and the `params` member that holds it.
    pub fn of(method: &str) -> Option<TargetKind> {
        match method {
            "tools/call" => Some(TargetKind::Tool),
            "prompts/get" => Some(TargetKind::Prompt),
            "resources/read" => Some(TargetKind::Resource),
            _ => None,
        }
    }
}

/// One JSON-RPC message, as far as the policy reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Call<'a> {
    /// `None`: a response (`result` or `error`) to a server's request.
    pub method: Option<Cow<'a, str>>,
    /// The tool or prompt name or resource URI, for the methods that name one.
    pub target: Option<Cow<'a, str>>,
}

/// Why a body is not an MCP message the policy can decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// Not one JSON-RPC 2.0 object, or a method that names a target without one.
    #[error("the body is not a JSON-RPC 2.0 message")]
    Invalid,
    /// `Mcp-Method` or `Mcp-Name` says something else than the body.
    #[error("Mcp-Method or Mcp-Name disagrees with the body")]
    HeaderMismatch,
}

impl McpError {
    /// The reason in logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            McpError::Invalid => "mcp_invalid_message",
            McpError::HeaderMismatch => "mcp_header_mismatch",
        }
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// `params`: an object (JSON-RPC allows an array; MCP never sends one), of which `name` and
/// `uri` are read and each may appear once.
#[derive(Default)]
struct Params<'a> {
    name: Option<Cow<'a, str>>,
    uri: Option<Cow<'a, str>>,
    /// `name` or `uri` held something other than a string.
    odd: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Params<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a params object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Params<'a>, M::Error> {
                let mut p = Params::default();
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    let slot = match &*key {
                        "name" => &mut p.name,
                        "uri" => &mut p.uri,
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom("duplicate member"));
                    }
                    match m.next_value::<StrOrOther<'de>>()? {
                        StrOrOther::Str(s) => *slot = Some(s),
                        StrOrOther::Other => {
                            *slot = Some(Cow::Borrowed(""));
                            p.odd = true;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A string, or any other JSON value (skipped).
enum StrOrOther<'a> {
    Str(Cow<'a, str>),
    Other,
}

impl<'de> Deserialize<'de> for StrOrOther<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrOther<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrOther::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrOther::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrOrOther::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(StrOrOther::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(StrOrOther::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(StrOrOther::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(StrOrOther::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(StrOrOther::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StrOrOther::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(StrOrOther::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads one JSON-RPC 2.0 message the way the policy needs it: its method and, for
/// `tools/call`, `prompts/get` and `resources/read`, the string target it names.
pub fn parse(body: &[u8]) -> Result<Call<'_>, McpError> {
    let m: Message<'_> = serde_json::from_slice(body).map_err(|_| McpError::Invalid)?;
    if m.jsonrpc != "2.0" {
        return Err(McpError::Invalid);
    }
    let Some(method) = m.method else {
        // A response: exactly one of result and error (its id may be null), nothing to call.
        let answer = m.result.is_some() != m.error.is_some();
        return if answer && m.params.is_none() {
            Ok(Call {
                method: None,
                target: None,
            })
        } else {
            Err(McpError::Invalid)
        };
    };
    if m.result.is_some() || m.error.is_some() {
        return Err(McpError::Invalid);
    }
    let target = match TargetKind::of(&method) {
        None => None,
        Some(kind) => {
            let p = m.params.ok_or(McpError::Invalid)?;
            let t = match kind {
                TargetKind::Tool | TargetKind::Prompt => p.name,
                TargetKind::Resource => p.uri,
            };
            if p.odd {
                return Err(McpError::Invalid);
            }
            Some(t.ok_or(McpError::Invalid)?)
        }
    };
    Ok(Call {
        method: Some(method),
        target,
    })
}

/// `Mcp-Name` as the SDKs decode it: verbatim, unless wrapped as `=?base64?PAYLOAD?=`, whose
/// payload must be canonical standard base64 of UTF-8. A malformed wrap is `None`, and never
/// matches.
pub fn decode_name(value: &[u8]) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(value).ok()?;
    let Some(payload) = s
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(Cow::Borrowed(s));
    };
    // The standard engine refuses non-zero trailing bits and missing padding: the canonical
    // form the SDKs write is the only one taken.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// Headers that are present must say what the body says: `Mcp-Method` its method, `Mcp-Name`
/// its target. One that is sent without the other where the method names a target disagrees
/// too (2026-07-28 clients always send both), and so does either header more than once.
pub fn check_headers(headers: &http::HeaderMap, call: &Call<'_>) -> Result<(), McpError> {
    let one = |name: &str| {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(v)),
            (Some(_), Some(_)) => Err(McpError::HeaderMismatch),
        }
    };
    let method = one(METHOD_HEADER)?;
    let name = one(NAME_HEADER)?;
    if method.is_none() && name.is_none() {
        return Ok(());
    }
    if let Some(m) = method {
        if call.method.as_deref().map(str::as_bytes) != Some(m.as_bytes()) {
            return Err(McpError::HeaderMismatch);
        }
    }
    match (&call.target, name) {
        (None, None) => Ok(()),
        (Some(t), Some(n)) if decode_name(n.as_bytes()).as_deref() == Some(&**t) => Ok(()),
        // Including a target with Mcp-Method alone: a 2026-07-28 client always names it.
        _ => Err(McpError::HeaderMismatch),
    }
}

impl Policy {
    /// The scopes an operation needs beyond the route's own, in a fixed order (the method's,
    /// then the target's), so the challenge is the same byte for byte each time.
    pub fn scopes<'p>(&'p self, call: &Call<'_>) -> impl Iterator<Item = &'p String> + 'p {
        let none: &'p [String] = &[];
        let Some(method) = call.method.as_deref() else {
            return none.iter().chain(none.iter());
        };
        let by_method = self.methods.get(method).map_or(&[][..], Vec::as_slice);
        let target = match (TargetKind::of(method), call.target.as_deref()) {
            (Some(TargetKind::Tool), Some(t)) => self.tools.get(t),
            (Some(TargetKind::Prompt), Some(t)) => self.prompts.get(t),
            (Some(TargetKind::Resource), Some(t)) => self
                .resources
                .iter()
                .find(|(p, _)| t.starts_with(p.as_str()))
                .map(|(_, s)| s.as_slice())
                .or(self.resources_default.as_deref())
                .unwrap_or(&[]),
            _ => &[],
        };
        by_method.iter().chain(target.iter())
    }

    /// Every scope the rules name, for the resource's `scopes_supported`.
    pub fn all_scopes(&self) -> impl Iterator<Item = &String> {
        let lists = self.methods.values();
        let lists = lists
            .chain(self.tools.named.values())
            .chain(&self.tools.default);
        let lists = lists
            .chain(self.prompts.named.values())
            .chain(&self.prompts.default);
        let lists = lists
            .chain(self.resources.iter().map(|(_, s)| s))
            .chain(&self.resources_default);
        lists.flatten()
    }

    /// The label a target is counted under: a name the policy lists, else `other` (the name
    /// is the client's to choose, and a metric's label set must stay bounded).
    pub fn label<'c>(&'c self, call: &'c Call<'_>) -> &'c str {
        let (Some(method), Some(t)) = (call.method.as_deref(), call.target.as_deref()) else {
            return "";
        };
        let listed = match TargetKind::of(method) {
            Some(TargetKind::Tool) => self.tools.named.get_key_value(t).map(|(k, _)| k),
            Some(TargetKind::Prompt) => self.prompts.named.get_key_value(t).map(|(k, _)| k),
            Some(TargetKind::Resource) => self
                .resources
                .iter()
                .find(|(p, _)| t.starts_with(p.as_str()))
                .map(|(p, _)| p),
            None => None,
        };
        listed.map_or("other", String::as_str)
    }
}

/// The MCP methods counted under their own name; any other is `other`.
pub fn method_label(method: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    ];
    match method {
        None => "response",
        Some(m) => KNOWN.iter().find(|k| **k == m).copied().unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(method: &'a str, target: Option<&'a str>) -> Call<'a> {
        Call {
            method: Some(Cow::Borrowed(method)),
            target: target.map(Cow::Borrowed),
        }
    }

    #[test]
    fn reads_the_method_and_the_target_it_names() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo","arguments":{"name":"x","uri":[1]}}}"#;
        assert_eq!(parse(body), Ok(call("tools/call", Some("delete_repo"))));
        let body =
            br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///a"}}"#;
        assert_eq!(parse(body), Ok(call("resources/read", Some("file:///a"))));
        let body = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(parse(body), Ok(call("notifications/initialized", None)));
        let body = br#" {"jsonrpc":"2.0","id":3,"result":{}} "#;
        assert_eq!(
            parse(body),
            Ok(Call {
                method: None,
                target: None
            })
        );
        // Escapes are read as JSON readers read them.
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"n\u0061me":"d\u00e9j\u00e0"}}"#;
        assert_eq!(
            parse(body).unwrap(),
            call("tools/call", Some("d\u{e9}j\u{e0}"))
        );
    }

    #[test]
    fn refuses_what_the_server_could_read_otherwise() {
        for body in [
            &br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#[..],
            br#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#,
            br#"{"id":1,"method":"tools/list"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_repo"]}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"} {}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
            b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":1}",
            b"not json",
            b"",
        ] {
            assert_eq!(
                parse(body),
                Err(McpError::Invalid),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn decodes_a_wrapped_name_as_the_sdks_write_it() {
        assert_eq!(decode_name(b"get_weather").as_deref(), Some("get_weather"));
        // " caf\u{e9} " wrapped, as encode_header_value writes it.
        assert_eq!(
            decode_name(b"=?base64?IGNhZsOpIA==?=").as_deref(),
            Some(" caf\u{e9} ")
        );
        assert_eq!(decode_name(b"=?base64?not base64?="), None);
        // Non-zero trailing bits, and missing padding: not the canonical form.
        assert_eq!(decode_name(b"=?base64?YR==?="), None);
        assert_eq!(decode_name(b"=?base64?YQ?="), None);
    }

    #[test]
    fn headers_present_must_agree_with_the_body() {
        let mk = |pairs: &[(&'static str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, http::HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let c = call("tools/call", Some("a b"));
        assert_eq!(check_headers(&mk(&[]), &c), Ok(()));
        let both = mk(&[("mcp-method", "tools/call"), ("mcp-name", "a b")]);
        assert_eq!(check_headers(&both, &c), Ok(()));
        let wrapped = mk(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?YSBi?="),
        ]);
        assert_eq!(check_headers(&wrapped, &c), Ok(()));
        for bad in [
            mk(&[("mcp-method", "tools/list")]),
            mk(&[("mcp-method", "tools/call"), ("mcp-name", "other")]),
            mk(&[("mcp-method", "tools/call")]),
            mk(&[("mcp-name", "other")]),
            mk(&[("mcp-name", "a b"), ("mcp-name", "a b")]),
            mk(&[("mcp-method", "tools/call"), ("mcp-method", "tools/call")]),
        ] {
            assert_eq!(
                check_headers(&bad, &c),
                Err(McpError::HeaderMismatch),
                "{bad:?}"
            );
        }
        let list = call("tools/list", None);
        assert_eq!(
            check_headers(&mk(&[("mcp-method", "tools/list")]), &list),
            Ok(())
        );
        assert_eq!(
            check_headers(
                &mk(&[("mcp-method", "tools/list"), ("mcp-name", "x")]),
                &list
            ),
            Err(McpError::HeaderMismatch)
        );
    }

    #[test]
    fn an_operation_needs_its_methods_and_its_targets_scopes() {
        let p = Policy {
            methods: [("resources/read".to_owned(), vec!["files:read".to_owned()])].into(),
            tools: Named {
                named: [("delete_repo".to_owned(), vec!["repo:admin".to_owned()])].into(),
                default: Some(vec!["tools:call".to_owned()]),
            },
            prompts: Named::default(),
            resources: vec![
                (
                    "file:///secret/".to_owned(),
                    vec!["files:secret".to_owned()],
                ),
                ("file:///".to_owned(), vec!["files:any".to_owned()]),
            ],
            resources_default: None,
        };
        let needs = |c: &Call<'_>| p.scopes(c).cloned().collect::<Vec<_>>();
        assert_eq!(
            needs(&call("tools/call", Some("delete_repo"))),
            ["repo:admin"]
        );
        assert_eq!(needs(&call("tools/call", Some("echo"))), ["tools:call"]);
        assert_eq!(
            needs(&call("resources/read", Some("file:///secret/k"))),
            ["files:read", "files:secret"]
        );
        assert_eq!(
            needs(&call("resources/read", Some("https://x"))),
            ["files:read"]
        );
        assert!(needs(&call("prompts/get", Some("p"))).is_empty());
        assert!(needs(&call("tools/list", None)).is_empty());
        assert_eq!(
            p.label(&call("tools/call", Some("delete_repo"))),
            "delete_repo"
        );
        assert_eq!(p.label(&call("tools/call", Some("anything"))), "other");
        assert_eq!(
            p.label(&call("resources/read", Some("file:///secret/x"))),
            "file:///secret/"
        );
    }
}

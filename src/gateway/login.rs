//! `login_url`: a browser that opens a page without a valid token is sent to sign in, where an
//! API client gets the 401 (oauth2-proxy's redirect, nginx's `error_page 401` to a sign-in URL).

use crate::body::{self, Body};
use http::{header, HeaderValue, Request, Response, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// RFC 3986 unreserved characters stay; everything else in the page's address is escaped, so it
/// is one query value whatever it holds.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The address of the page a browser is opening.
pub(crate) struct Page {
    origin: String,
    target: String,
}

/// The page, if the request is a browser's navigation to one: `GET` or `HEAD`, with
/// `Sec-Fetch-Mode: navigate` (every current browser sends it), or without that header an
/// `Accept` that names `text/html`. A page's `fetch` says `cors` or `same-origin` and is
/// answered 401 as any API call, for the page to handle.
pub(super) fn page<B>(req: &Request<B>, tls: bool, public: Option<&str>) -> Option<Page> {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let h = req.headers();
    let navigates = match h.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => h.get_all(header::ACCEPT).iter().any(|a| {
            a.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().starts_with(b"text/html"))
        }),
    };
    if !navigates {
        return None;
    }
    let origin = match public {
        Some(o) => o.to_owned(),
        None => {
            let host = h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))?;
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    Some(Page { origin, target })
}

impl Page {
    /// The 302 to `url` (split at its `{url}`), the page's address in the hole. A token in the
    /// query does not go with it to the sign-in server.
    pub(super) fn redirect(
        self,
        url: &(Box<str>, Option<Box<str>>),
        token_in_query: bool,
    ) -> Response<Body> {
        let mut location = String::from(&*url.0);
        if let Some(after) = &url.1 {
            let target = token_in_query
                .then(|| crate::auth::strip_query_token(&self.target))
                .flatten()
                .unwrap_or(self.target);
            let page = format!("{}{target}", self.origin);
            location.extend(utf8_percent_encode(&page, COMPONENT));
            location.push_str(after);
        }
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::FOUND;
        let h = resp.headers_mut();
        // Checked when the config loaded, and what was put in is escaped.
        if let Ok(v) = HeaderValue::from_str(&location) {
            h.insert(header::LOCATION, v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

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

/// The page a browser is opening: what its address is made of, kept as the request's own
/// (shared) values, since only a refused request's is ever written out.
pub(crate) struct Page {
    tls: bool,
    host: Option<HeaderValue>,
    uri: http::Uri,
}

/// The page, if the request is a browser's navigation to one: `GET` or `HEAD`, with
/// `Sec-Fetch-Mode: navigate` (every current browser sends it), or without that header an
/// `Accept` that names `text/html`. A page's `fetch` says `cors` or `same-origin` and is
/// answered 401 as any API call, for the page to handle.
pub(super) fn page<B>(req: &Request<B>, tls: bool) -> Option<Page> {
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
    // A request naming no authority (HTTP/1.0 without `Host`) gets its 401: no address to
    // send the browser back to.
    let named = crate::request::host::authority(h.get(header::HOST), req.uri()).is_some();
    (navigates && named).then(|| Page {
        tls,
        host: h.get(header::HOST).cloned(),
        uri: req.uri().clone(),
    })
}

impl Page {
    /// The 302 to `url` (split at its `{url}`), the page's address in the hole: `public` (the
    /// configured origin), else the scheme and the request's authority, then its path and
    /// query. A token in the query does not go with it to the sign-in server.
    pub(super) fn redirect(
        self,
        url: &(Box<str>, Option<Box<str>>),
        public: Option<&str>,
        token_in_query: bool,
    ) -> Response<Body> {
        let mut location = String::from(&*url.0);
        if let Some(after) = &url.1 {
            let mut page = match public {
                Some(o) => o.to_owned(),
                None => {
                    let host = crate::request::host::authority(self.host.as_ref(), &self.uri);
                    let host = String::from_utf8_lossy(host.unwrap_or_default());
                    format!("{}://{host}", if self.tls { "https" } else { "http" })
                }
            };
            let target = self
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str);
            match token_in_query.then(|| crate::auth::strip_query_token(target)) {
                Some(Some(stripped)) => page.push_str(&stripped),
                _ => page.push_str(target),
            }
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

//! The `Host` check's invariants on arbitrary bytes:
//! - it never panics;
//! - a `Host` it accepts is an authority `http` parses too, with a non-empty host, no userinfo,
//!   and a numeric port if any, so what bearward forwards is what it checked;
//! - as an HTTP/2 `Host` beside the same `:authority`, it matches itself.
#![no_main]

use bearward::request::host::check;
use http::{header, HeaderMap, HeaderValue, Uri, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, value);
    if check(Version::HTTP_11, &Uri::from_static("/"), &headers).is_err() {
        return;
    }
    let authority = http::uri::Authority::try_from(data)
        .unwrap_or_else(|e| panic!("accepted {data:?}, which http refuses: {e}"));
    assert!(!authority.host().is_empty(), "{data:?}");
    assert!(!authority.as_str().contains('@'), "{data:?}");
    if let Some(port) = authority.port() {
        assert!(port.as_str().bytes().all(|b| b.is_ascii_digit()), "{data:?}");
    }
    if let Ok(uri) = format!("http://{}/", authority.as_str()).parse::<Uri>() {
        assert!(
            check(Version::HTTP_2, &uri, &headers).is_ok(),
            "{data:?} does not match itself"
        );
    }
});

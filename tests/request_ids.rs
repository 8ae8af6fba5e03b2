//! Request ids (`server.request_id_header`): made for a client's request (its own id is
//! replaced), taken from a trusted proxy, sent to the upstream and returned to the client, on
//! refusals too; another header name, or none.

mod common;

use common::{basic_config, client, get, Gateway, Upstream};
use http::StatusCode;

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.chars()
            .filter(|c| *c != '-')
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[tokio::test]
async fn a_clients_id_is_replaced_by_a_new_one_that_the_upstream_and_the_client_both_see() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(&up.url(), "")).await;
    let c = client();
    let mut ids = std::collections::HashSet::new();
    for sent in [None, Some("chosen-by-the-client")] {
        let headers: Vec<(&str, &str)> = sent.map(|s| ("x-request-id", s)).into_iter().collect();
        let a = get(&c, &gw.url("/public/a"), &headers).await;
        assert_eq!(a.status, StatusCode::OK);
        let returned = a.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_uuid_v4(&returned), "{returned}");
        let seen = up.last();
        let upstream: Vec<_> = seen.headers.get_all("x-request-id").iter().collect();
        assert_eq!(upstream.len(), 1, "one id upstream: {upstream:?}");
        assert_eq!(
            upstream[0],
            returned.as_str(),
            "the upstream saw the id returned"
        );
        assert!(ids.insert(returned));
    }
    // A refusal never reaches the upstream, and still carries an id for the client to quote.
    let before = up.count();
    for path in ["/api/a", "/internal/a", "/nowhere"] {
        let a = get(
            &c,
            &gw.url(path),
            &[("x-request-id", "chosen-by-the-client")],
        )
        .await;
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
        let lines: Vec<_> = a.headers.get_all("x-request-id").iter().collect();
        assert_eq!(lines.len(), 1, "{path}: one id line: {lines:?}");
        let id = a.headers["x-request-id"].to_str().unwrap();
        assert!(is_uuid_v4(id) && ids.insert(id.to_owned()), "{path}: {id}");
    }
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn a_trusted_proxys_id_is_kept_unless_it_is_not_one() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&basic_config(
        &up.url(),
        "trusted_proxies = [\"127.0.0.1\"]",
    ))
    .await;
    let c = client();
    let a = get(&c, &gw.url("/public/a"), &[("x-request-id", "lb-7f3a91")]).await;
    assert_eq!(a.headers["x-request-id"], "lb-7f3a91");
    assert_eq!(up.last().headers["x-request-id"], "lb-7f3a91");
    // Too long, or with a space: made anew, never cut or passed.
    for bad in ["x".repeat(129), "two words".to_owned()] {
        let a = get(&c, &gw.url("/public/a"), &[("x-request-id", &bad)]).await;
        let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_uuid_v4(&id), "{id}");
        assert_eq!(up.last().headers["x-request-id"], id.as_str());
    }
}

#[tokio::test]
async fn another_header_name_or_none() {
    let up = Upstream::start().await;
    let c = client();
    let gw = Gateway::start(&basic_config(
        &up.url(),
        "request_id_header = \"x-correlation-id\"",
    ))
    .await;
    let a = get(
        &c,
        &gw.url("/public/a"),
        &[("x-request-id", "passes-untouched")],
    )
    .await;
    let id = a.headers["x-correlation-id"].to_str().unwrap().to_owned();
    assert!(is_uuid_v4(&id), "{id}");
    let seen = up.last();
    assert_eq!(seen.headers["x-correlation-id"], id.as_str());
    assert_eq!(seen.headers["x-request-id"], "passes-untouched");

    let gw = Gateway::start(&basic_config(&up.url(), "request_id_header = \"\"")).await;
    let a = get(&c, &gw.url("/public/a"), &[]).await;
    assert!(!a.headers.contains_key("x-request-id"));
    assert!(!up.last().headers.contains_key("x-request-id"));
}

//! The canonicalizer's invariants on arbitrary input:
//! - it never panics;
//! - canonicalizing a result again changes nothing;
//! - a result starts with `/` and never contains `/./`, `/../` or `//`, nor ends in `/.` or `/..`;
//! - a result holds no backslash, control byte or `%2F`/`%5C`.
#![no_main]

use bearward::request::path::{canonicalize_with, PathOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for allow_semicolon in [false, true] {
        let opts = PathOptions {
            allow_semicolon,
            max_len: 8192,
        };
        if let Ok(c) = canonicalize_with(s, opts) {
            assert!(c.starts_with('/'));
            assert!(
                !c.contains("/./") && !c.contains("/../") && !c.contains("//"),
                "{s:?} -> {c:?}"
            );
            assert!(!c.ends_with("/.") && !c.ends_with("/.."), "{s:?} -> {c:?}");
            assert!(
                !c.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
                "{s:?} -> {c:?}"
            );
            let upper = c.to_ascii_uppercase();
            assert!(
                !upper.contains("%2F") && !upper.contains("%5C"),
                "{s:?} -> {c:?}"
            );
            assert_eq!(
                canonicalize_with(&c, opts).as_deref(),
                Ok(c.as_str()),
                "not idempotent for {s:?}"
            );
        }
    }
});

//! The JWS compact parser on arbitrary input: it never panics, never accepts `none`, and what it
//! accepts is three canonical base64url parts whose signing input is a prefix of the token.
#![no_main]

use bearward::auth::token::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse(s, 8192) {
        assert_eq!(s.matches('.').count(), 2);
        assert!(s.starts_with(p.signing_input));
        assert!(s.ends_with(p.signature));
        assert!(!p.signature.is_empty());
    }
});

//! An upstream's response bytes, as bearward reads them: the head parser and the chunked
//! decoder never panic; what the decoder yields is never more than it was given, and a head it
//! accepts is framed one way only (a 101 is framed by its end alone).
#![no_main]

use bearward::upstream::wire::{parse_head, Chunked, Decoded, ResponseFraming};
use bytes::BytesMut;
use http::{header, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let method = if data.first().is_some_and(|b| b & 1 == 1) {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_head(&mut buf, &method) {
        let te = head.headers.contains_key(header::TRANSFER_ENCODING);
        let cl = head.headers.contains_key(header::CONTENT_LENGTH);
        // A 101 ends at its head whatever it carries (RFC 9112 6.3), so neither header frames
        // anything there; tests/upstream_wire.rs shows the client gets neither.
        if head.framing != ResponseFraming::Upgrade {
            assert!(!(te && cl), "both framings accepted");
        }
        if head.framing == ResponseFraming::Chunked {
            let before = buf.len();
            let mut dec = Chunked::default();
            let mut out = 0;
            loop {
                match dec.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => {
                        assert!(!d.is_empty());
                        out += d.len();
                    }
                    _ => break,
                }
            }
            assert!(out <= before);
        }
    }
});

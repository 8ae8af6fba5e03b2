//! Request ids (`server.request_id_header`): the one a trusted proxy or the ingress sent, or a
//! new UUIDv4.
//!
//! New ids are made 64 at a time per thread from the system generator (aws-lc's), as Envoy
//! buffers its UUIDs' randomness, and formatted into one buffer that each id is a slice of: a
//! request pays no allocation and no call into the generator of its own (benches/instructions.py:
//! about 1,000 instructions per request, the header on both sides included).

use bytes::Bytes;
use http::header::HeaderValue;
use std::cell::RefCell;

/// Longest id taken from a trusted peer (Envoy's and nginx's are 32-36 characters; a longer
/// one is replaced, never cut).
const MAX_LEN: usize = 128;
const BATCH: usize = 64;

/// The id a trusted peer sent, if it is one: 1 to [`MAX_LEN`] visible ASCII characters.
pub fn trusted(value: &HeaderValue) -> Option<HeaderValue> {
    let b = value.as_bytes();
    (!b.is_empty() && b.len() <= MAX_LEN && b.iter().all(u8::is_ascii_graphic))
        .then(|| value.clone())
}

/// A thread's next ids: [`BATCH`] of them formatted in one buffer, each handed out as a slice
/// of it, so a request's id costs no allocation of its own and its copies (the upstream's, the
/// client's) only a reference count.
struct Pool {
    ids: Bytes,
    next: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { ids: Bytes::new(), next: BATCH }) };
}

const LEN: usize = 36;

/// A new UUIDv4 (RFC 9562 section 5.4), lower-case hex.
pub fn new() -> HeaderValue {
    POOL.with_borrow_mut(|p| {
        if p.next == BATCH {
            p.ids = batch();
            p.next = 0;
        }
        let id = p.ids.slice(p.next * LEN..(p.next + 1) * LEN);
        p.next += 1;
        HeaderValue::from_maybe_shared(id).expect("hex and dashes")
    })
}

/// [`BATCH`] UUIDv4s, formatted one after the other.
fn batch() -> Bytes {
    let mut random = [0u8; 16 * BATCH];
    // The system generator does not fail on Linux once seeded; were it to, the ids would be
    // all zeros but for their version bits: they would repeat, requests would not stop.
    let _ = aws_lc_rs::rand::fill(&mut random);
    // The 8-4-4-4-12 groups: (first byte, last byte, first character).
    const GROUPS: [(usize, usize, usize); 5] =
        [(0, 4, 0), (4, 6, 9), (6, 8, 14), (8, 10, 19), (10, 16, 24)];
    let mut text = [b'-'; LEN * BATCH];
    for (raw, out) in random.chunks_exact_mut(16).zip(text.chunks_exact_mut(LEN)) {
        raw[6] = (raw[6] & 0x0f) | 0x40;
        raw[8] = (raw[8] & 0x3f) | 0x80;
        for (from, to, at) in GROUPS {
            crate::jose::hex_into(&raw[from..to], &mut out[at..at + 2 * (to - from)]);
        }
    }
    Bytes::copy_from_slice(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_version_4_uuids_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * BATCH) {
            let id = new();
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 36, "{s}");
            assert_eq!(&s[14..15], "4", "{s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            assert!(seen.insert(s.to_owned()), "repeated: {s}");
        }
    }

    #[test]
    fn a_trusted_id_is_bounded_and_visible() {
        let ok = HeaderValue::from_static("ingress-7f3a");
        assert_eq!(trusted(&ok), Some(ok));
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            assert_eq!(
                trusted(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad:?}"
            );
        }
        assert!(trusted(&HeaderValue::from_str(&"x".repeat(MAX_LEN)).unwrap()).is_some());
    }
}

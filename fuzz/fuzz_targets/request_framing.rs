//! The request framing follower (src/request/framing.rs), which flags ambiguous request heads
//! (smuggling) on the bytes hyper reads: a client chooses how its bytes are split across
//! reads, so the verdict (heads seen, the first ambiguous one, whether it stopped following)
//! must be the same for the bytes in one piece, in pieces the input chooses, and one at a time.
#![no_main]

use bearward::request::framing::follow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [size, seed, rest @ ..] = data else {
        return;
    };
    // Small head limits, so inputs reach the limit and the paths around it.
    let max_head = 8 + *size as usize * 4;
    let whole = follow(&[rest], max_head);

    let mut pieces = Vec::new();
    let (mut at, mut state) = (0, *seed as usize | 1);
    while at < rest.len() {
        state = state.wrapping_mul(1103515245).wrapping_add(12345) & 0x7fff_ffff;
        let len = 1 + state % (2 * max_head + 8);
        let end = (at + len).min(rest.len());
        pieces.push(&rest[at..end]);
        at = end;
    }
    assert_eq!(follow(&pieces, max_head), whole, "split as {:?}", pieces.iter().map(|p| p.len()).collect::<Vec<_>>());

    let singles: Vec<&[u8]> = rest.chunks(1).collect();
    assert_eq!(follow(&singles, max_head), whole, "one byte at a time");
});

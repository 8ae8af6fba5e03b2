//! One canonical form of a request path: what bearward matches routes against is exactly what
//! it forwards, so a request cannot be checked as one path and served as another.
//!
//! The rules, in order:
//! 1. The path must start with `/` (origin-form). Absolute-form and `*` targets are refused by
//!    the caller before this runs.
//! 2. Percent-escapes: an escape of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
//!    every other escape is kept, with upper-case hex. `%2F` (`/`), `%5C` (`\`), escaped control
//!    bytes (`%00`-`%1F`, `%7F`) and escapes whose bytes are not valid UTF-8 are refused: each can
//!    be read two ways by the servers behind us. A `%` not followed by two hex digits is refused.
//! 3. Raw characters: `\` and control bytes are refused; characters outside RFC 3986 `pchar`
//!    (such as `"` `{` `|`) are percent-encoded so that `{` and `%7B` have one spelling.
//!    `;` is refused by default, because servlet containers read `/admin;x/y` as `/admin/y`.
//!    Where it is allowed, a dot segment with a parameter (`..;x`, `.;`, `%2e%2e;`, `..%3B`) is
//!    still refused: Tomcat and Spring drop the parameter and then resolve `..`, so
//!    `/public/..;/api/admin` would be matched as an open route and served as `/api/admin`.
//! 4. Empty segments are merged: `//a///b` is `/a/b` (as nginx `merge_slashes on`). A trailing
//!    slash is kept: `/a/` and `/a` stay different paths.
//! 5. Dot segments are removed as RFC 3986 section 5.2.4 says; `..` at the root stays at the
//!    root. A `.` or `..` segment spelled with an escape (`%2e`, `.%2E`) is refused.
//!
//! 6. (Per route, after matching: [`has_double_encoding`].) `%25` followed by two hex digits is
//!    refused unless the route allows it: a backend that decodes once more would read another
//!    path than the one matched.
//!
//! The query string is not touched.

use std::fmt;

/// Why a path was refused. Every variant answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The target does not start with `/`.
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`: an escaped path separator.
    EncodedSeparator,
    /// A control byte, raw or escaped.
    ControlByte,
    /// A raw backslash.
    Backslash,
    /// Escaped bytes that do not form UTF-8.
    InvalidUtf8,
    /// A `.` or `..` segment written with escapes.
    EncodedDotSegment,
    /// A `;` path parameter, while they are refused.
    PathParameter,
    /// A `.` or `..` segment carrying a parameter (`..;x`, `.;`, `..%3B`), where `;` is
    /// allowed: servlet containers drop the parameter and then resolve the dot segment.
    DotSegmentParameter,
    /// A path longer than the limit.
    TooLong,
}

impl PathError {
    /// A short, fixed reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "path_not_origin_form",
            PathError::BadEscape => "path_bad_escape",
            PathError::EncodedSeparator => "path_encoded_separator",
            PathError::ControlByte => "path_control_byte",
            PathError::Backslash => "path_backslash",
            PathError::InvalidUtf8 => "path_invalid_utf8",
            PathError::EncodedDotSegment => "path_encoded_dot_segment",
            PathError::PathParameter => "path_parameter",
            PathError::DotSegmentParameter => "path_dot_segment_parameter",
            PathError::TooLong => "path_too_long",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Options for [`canonicalize_with`].
#[derive(Debug, Clone, Copy)]
pub struct PathOptions {
    /// Accept `;` in paths (kept as is). Off by default.
    pub allow_semicolon: bool,
    /// Longest accepted raw path, in bytes.
    pub max_len: usize,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            allow_semicolon: false,
            max_len: 8192,
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled apart) plus `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// One segment while it is built: its canonical text and whether an escaped `.` is in it.
struct Segment {
    text: String,
    encoded_dot: bool,
}

/// Canonicalizes with the default options.
///
/// ```
/// use bearward::request::path::{canonicalize, PathError};
/// assert_eq!(canonicalize("/public/../api//x/%7e").as_deref(), Ok("/api/x/~"));
/// assert_eq!(canonicalize("/public/%2e%2e/api"), Err(PathError::EncodedDotSegment));
/// ```
pub fn canonicalize(path: &str) -> Result<String, PathError> {
    canonicalize_with(path, PathOptions::default())
}

/// Canonicalizes `path` (the part of the target before `?`) as the module docs describe.
pub fn canonicalize_with(path: &str, opts: PathOptions) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.len() > opts.max_len {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Most paths are already canonical: plain characters, no escapes, no empty or dot segments.
    let plain = bytes
        .iter()
        .all(|&b| is_path_char(b) && (b != b';' || opts.allow_semicolon));
    if plain && !path.contains("//") && !path.contains("/.") {
        return Ok(path.to_owned());
    }

    // Split into segments while decoding; a segment list makes dot removal exact.
    let mut segments: Vec<Segment> = Vec::new();
    let mut cur = Segment {
        text: String::new(),
        encoded_dot: false,
    };
    // Escaped non-ASCII bytes are collected so their UTF-8 validity is checked as a sequence.
    let mut pending: Vec<u8> = Vec::new();
    let mut trailing_slash = false;

    let flush_pending = |pending: &mut Vec<u8>, cur: &mut Segment| -> Result<(), PathError> {
        if pending.is_empty() {
            return Ok(());
        }
        if std::str::from_utf8(pending).is_err() {
            return Err(PathError::InvalidUtf8);
        }
        for &b in pending.iter() {
            push_escaped(&mut cur.text, b);
        }
        pending.clear();
        Ok(())
    };

    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return Err(PathError::BadEscape);
            };
            let v = match (hex_val(h), hex_val(l)) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(PathError::BadEscape),
            };
            i += 3;
            if v >= 0x80 {
                pending.push(v);
                continue;
            }
            flush_pending(&mut pending, &mut cur)?;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::ControlByte),
                b'.' => {
                    cur.encoded_dot = true;
                    cur.text.push('.');
                }
                b';' if !opts.allow_semicolon => return Err(PathError::PathParameter),
                v if is_unreserved(v) => cur.text.push(v as char),
                v => push_escaped(&mut cur.text, v),
            }
            continue;
        }
        flush_pending(&mut pending, &mut cur)?;
        i += 1;
        match b {
            b'/' => {
                finish_segment(&mut segments, &mut cur)?;
                trailing_slash = true;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlByte),
            b';' if !opts.allow_semicolon => return Err(PathError::PathParameter),
            b if b >= 0x80 => return Err(PathError::InvalidUtf8),
            b if is_path_char(b) => cur.text.push(b as char),
            b => push_escaped(&mut cur.text, b),
        }
        trailing_slash = false;
    }
    flush_pending(&mut pending, &mut cur)?;
    if !cur.text.is_empty() {
        trailing_slash = false;
    }
    // The last segment: `/a/..` and `/a/.` end in a directory, so they keep a trailing slash.
    let last_is_dot = cur.text == "." || cur.text == "..";
    finish_segment(&mut segments, &mut cur)?;
    if last_is_dot {
        trailing_slash = true;
    }

    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(&s.text);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    // Escaping can make the canonical form longer than the input; the limit holds for both, so
    // a canonical path always canonicalizes to itself (found by the fuzz target).
    if out.len() > opts.max_len {
        return Err(PathError::TooLong);
    }
    Ok(out)
}

/// Closes the current segment: empty ones merge, `.` disappears, `..` pops.
fn finish_segment(segments: &mut Vec<Segment>, cur: &mut Segment) -> Result<(), PathError> {
    let seg = std::mem::replace(
        cur,
        Segment {
            text: String::new(),
            encoded_dot: false,
        },
    );
    let text = seg.text.as_str();
    // `.` or `..` followed by a parameter, raw or escaped: what a servlet container resolves
    // once it has dropped the parameter.
    let param = text.strip_prefix("..").or_else(|| text.strip_prefix('.'));
    if param.is_some_and(|p| p.starts_with(';') || p.starts_with("%3B")) {
        return Err(PathError::DotSegmentParameter);
    }
    match text {
        "" => {}
        "." | ".." if seg.encoded_dot => return Err(PathError::EncodedDotSegment),
        "." => {}
        ".." => {
            segments.pop();
        }
        _ => segments.push(seg),
    }
    Ok(())
}

/// Does a canonical path hold an escaped `%` followed by two hex digits (`%252e`, `%252F`)?
///
/// One decoding of such a path yields a new escape, and a backend, framework or WAF that decodes
/// a second time reads a path bearward never matched: `/public/%252e%252e/api/admin` is
/// `/public/../api/admin`, which is `/api/admin`. Canonicalization has already decoded escaped
/// unreserved characters, so every spelling of the class ends up here as `%25` and two hex
/// digits: `%25%32%65` is `%252e`, and `%25252e` (three decodings) holds `%2525`.
pub fn has_double_encoding(canonical: &str) -> bool {
    // memchr for `%` rather than a memmem searcher, which would be built anew for every
    // request: most paths hold no `%` at all, and this is one pass over them.
    let b = canonical.as_bytes();
    let hex = |i: usize| b.get(i).copied().and_then(hex_val).is_some();
    memchr::memchr_iter(b'%', b).any(|i| b[i + 1..].starts_with(b"25") && hex(i + 3) && hex(i + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_encoding_in_every_spelling_is_found() {
        let caught = [
            "/public/%252e%252e/api/admin/x",
            "/api/read/%252e%252e/admin/x",
            "/public/%252E%252E/api/admin",
            "/public/%252f..%252fapi",
            "/public/%252F",
            "/a/%255c../b",
            "/a/%255C",
            "/a%2541",
            "/a/b/c/d/%2500",
            "/%25%32%65%25%32%65/api",
            "/%25%32%45",
            "/%25%32e",
            "/%25%36%31",
            "/x/%25252e",
            "/x/%2525%32%65",
            "/last/%25ff",
            "/a/%2525",
            "/caf%C3%A9/%252e",
        ];
        for raw in caught {
            let c = canonicalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(has_double_encoding(&c), "{raw} -> {c}");
        }
        let kept = [
            "/a%25b",
            "/a%25",
            "/a%25%2e",
            "/a%25g0",
            "/a%250",
            "/a%25/2e",
            "/100%25-off",
            "/plain/path",
            "/a%20b",
        ];
        for raw in kept {
            let c = canonicalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(!has_double_encoding(&c), "{raw} -> {c}");
        }
    }

    /// (target, expected canonical path or the error)
    const TABLE: &[(&str, Result<&str, PathError>)] = &[
        ("/", Ok("/")),
        ("/api", Ok("/api")),
        ("/api/", Ok("/api/")),
        ("/api/users/42", Ok("/api/users/42")),
        ("//api", Ok("/api")),
        ("/api//users///42", Ok("/api/users/42")),
        ("/api/./users", Ok("/api/users")),
        ("/api/../admin", Ok("/admin")),
        ("/public/../api/admin", Ok("/api/admin")),
        ("/../../etc/passwd", Ok("/etc/passwd")),
        ("/a/b/..", Ok("/a/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/a/b/../", Ok("/a/")),
        ("/..", Ok("/")),
        ("/.", Ok("/")),
        ("/a/.../b", Ok("/a/.../b")),
        ("/a/..b/c", Ok("/a/..b/c")),
        ("/a/.b", Ok("/a/.b")),
        ("/%61pi", Ok("/api")),
        ("/%41%42%43", Ok("/ABC")),
        ("/a%2db%5Fc%7e", Ok("/a-b_c~")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%3fb", Ok("/a%3Fb")),
        ("/a%25b", Ok("/a%25b")),
        ("/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/a{b}", Ok("/a%7Bb%7D")),
        ("/a\"b", Ok("/a%22b")),
        ("/a|b", Ok("/a%7Cb")),
        ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
        ("/%2e", Err(PathError::EncodedDotSegment)),
        ("/%2e%2e/admin", Err(PathError::EncodedDotSegment)),
        ("/public/%2E%2E/admin", Err(PathError::EncodedDotSegment)),
        ("/public/.%2e/admin", Err(PathError::EncodedDotSegment)),
        ("/public/%2e./admin", Err(PathError::EncodedDotSegment)),
        ("/a/%2ehidden", Ok("/a/.hidden")),
        ("/api%2fadmin", Err(PathError::EncodedSeparator)),
        ("/api%2Fadmin", Err(PathError::EncodedSeparator)),
        ("/api%5cadmin", Err(PathError::EncodedSeparator)),
        ("/api\\admin", Err(PathError::Backslash)),
        ("/api/%00", Err(PathError::ControlByte)),
        ("/api/%0d%0aX-Injected:1", Err(PathError::ControlByte)),
        ("/api/%7f", Err(PathError::ControlByte)),
        ("/api/%", Err(PathError::BadEscape)),
        ("/api/%4", Err(PathError::BadEscape)),
        ("/api/%zz", Err(PathError::BadEscape)),
        ("/api/%c3", Err(PathError::InvalidUtf8)),
        ("/api/%c3%28", Err(PathError::InvalidUtf8)),
        ("/api/%ff", Err(PathError::InvalidUtf8)),
        ("/api/%c0%af", Err(PathError::InvalidUtf8)),
        ("/admin;x/secret", Err(PathError::PathParameter)),
        ("/admin%3bx/secret", Err(PathError::PathParameter)),
        ("api", Err(PathError::NotOriginForm)),
        ("", Err(PathError::NotOriginForm)),
        ("*", Err(PathError::NotOriginForm)),
        ("http://evil/api", Err(PathError::NotOriginForm)),
        ("/API", Ok("/API")),
    ];

    #[test]
    fn table_of_tricky_targets() {
        assert!(TABLE.len() >= 40);
        for (input, want) in TABLE {
            let got = canonicalize(input);
            let want = want.map(str::to_owned);
            assert_eq!(got, want, "input {input:?}");
            if let Ok(c) = &got {
                assert_eq!(canonicalize(c).as_ref(), Ok(c), "idempotent for {input:?}");
            }
        }
    }

    #[test]
    fn semicolon_allowed_when_configured() {
        let opts = PathOptions {
            allow_semicolon: true,
            ..PathOptions::default()
        };
        assert_eq!(canonicalize_with("/a;b/c", opts).as_deref(), Ok("/a;b/c"));
        assert_eq!(canonicalize_with("/a%3bb", opts).as_deref(), Ok("/a%3Bb"));
        // Parameters on ordinary segments, and dots that are not a whole segment, stay.
        assert_eq!(
            canonicalize_with("/a/...;x/.b;y/b..;z", opts).as_deref(),
            Ok("/a/...;x/.b;y/b..;z")
        );
    }

    /// Tomcat and Spring drop `;...` from a segment and then resolve what is left: a dot
    /// segment with a parameter climbs out of the route it was matched on, in every spelling.
    #[test]
    fn dot_segments_with_parameters_are_refused_where_semicolons_are_allowed() {
        let opts = PathOptions {
            allow_semicolon: true,
            ..PathOptions::default()
        };
        for raw in [
            "/public/..;/api/admin",
            "/public/..;x=1/api/admin",
            "/public/.;/api",
            "/public/.;x",
            "/public/%2e%2e;/api/admin",
            "/public/%2E.;/api/admin",
            "/public/.%2e;jsessionid=1/api",
            "/public/..%3b/api/admin",
            "/public/..%3Bx/api/admin",
            "/public/..;",
            "/..;/api",
        ] {
            assert_eq!(
                canonicalize_with(raw, opts),
                Err(PathError::DotSegmentParameter),
                "{raw}"
            );
            // Without semicolons allowed, the parameter itself is refused first.
            assert_eq!(canonicalize(raw), Err(PathError::PathParameter), "{raw}");
        }
    }

    #[test]
    fn long_path_refused() {
        let long = format!("/{}", "a".repeat(10_000));
        assert_eq!(canonicalize(&long), Err(PathError::TooLong));
        // Under the limit raw, over it once escaped.
        let grows = format!("/{}", "|".repeat(3000));
        assert_eq!(canonicalize(&grows), Err(PathError::TooLong));
    }

    /// The fuzz target's invariants over a deterministic stream of hostile-looking inputs, so CI
    /// checks them without a fuzzer.
    #[test]
    fn invariants_hold_on_generated_inputs() {
        const PIECES: &[&str] = &[
            "/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "%00", "%25", "%c3%a9", "%c3", "a",
            "B", "~", ";", "%3b", "?", "%3F", "\\", "{", "%7b", "%41", "%", "%g", " ", "%20", "./",
            "../",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50_000 {
            let mut s = String::from("/");
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 12) as usize;
            let mut x = seed;
            for _ in 0..n {
                s.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
                x = x.rotate_right(5).wrapping_mul(0x2545_f491_4f6c_dd1d);
            }
            if let Ok(c) = canonicalize(&s) {
                assert!(c.starts_with('/'));
                assert!(
                    !c.contains("/./") && !c.contains("/../") && !c.contains("//"),
                    "{s:?} -> {c:?}"
                );
                assert!(!c.ends_with("/.") && !c.ends_with("/.."), "{s:?} -> {c:?}");
                assert_eq!(
                    canonicalize(&c).as_deref(),
                    Ok(c.as_str()),
                    "not idempotent for {s:?}"
                );
            }
        }
    }
}

//! The PROXY protocol (HAProxy's, versions 1 and 2) on the proxy listener: what an L4 load
//! balancer (AWS NLB, HAProxy or nginx in TCP mode, Envoy's `proxy_protocol` transport socket)
//! says about the client it connects for, since it cannot add a header to an HTTP request it
//! does not read, nor to a TLS stream it passes through.
//!
//! The balancer owns that boundary: only a peer in `server.proxy_protocol_from` is read, and
//! each of its connections must open with a header (HAProxy's `accept-proxy`, Envoy's listener
//! filter without `allow_requests_without_proxy_protocol`), or it is closed before a byte of
//! it is taken as HTTP or TLS. Anyone else's connection is served as it is: a header such a
//! client writes is the start of its request, and gets the 400 any malformed request line
//! gets. A `LOCAL` header (v2) or `UNKNOWN` (v1), which a balancer sends for its own health
//! checks, keeps the peer's address.
//!
//! The header is taken off the socket before anything else reads it (the HTTP/2 preface check,
//! the TLS handshake, hyper), so the connection after it is the client's own bytes. A balancer
//! sends the header in one segment (the specification asks it to), so the first read nearly
//! always holds all of it; the parse is `ppp`'s, on a peek, and exactly the header is consumed.

use ppp::v2::{Addresses, Command};
use ppp::{v1, PartialResult};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header taken: a v1 header is at most 107 bytes; a v2 one is 16 bytes and the
/// addresses (at most 216) and TLVs after them. AWS, GCP and Azure add a few dozen bytes of
/// TLVs; HAProxy's SSL and unique-id TLVs a few hundred.
pub(super) const MAX_HEADER: usize = 2048;

/// v1's own limit (the specification's 107 bytes, CRLF included).
const MAX_V1: usize = 107;

/// Why a connection that had to open with a header was closed: the `outcome` label of
/// `bearward_proxy_protocol_headers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not a PROXY header (the balancer is not set to send one, or not this version).
    Invalid,
    /// Longer than [`MAX_HEADER`].
    TooLarge,
    /// A v2 header for a datagram protocol, on a TCP connection.
    NotStream,
    /// Not all of it within `header_read_timeout`.
    Timeout,
    /// The connection closed (or failed) first.
    Closed,
}

impl Refused {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refused::Invalid => "invalid",
            Refused::TooLarge => "too_large",
            Refused::NotStream => "not_stream",
            Refused::Timeout => "timeout",
            Refused::Closed => "closed",
        }
    }
}

/// The client's address from the header that opens `stream`, taken off it; `None` when the
/// header names none (`LOCAL`, `UNKNOWN`, a Unix socket or an unspecified family): the peer's
/// own address stands.
pub(super) async fn read(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refused> {
    match tokio::time::timeout(timeout, take(stream)).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Timeout),
    }
}

async fn take(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        match parse(&buf[..n]) {
            Parsed::Header { len, client } => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| Refused::Closed)?;
                return Ok(client);
            }
            Parsed::Refused(r) => return Err(r),
            Parsed::Partial if n == buf.len() => return Err(Refused::TooLarge),
            Parsed::Partial => {
                // More is on its way: peek returns the same bytes at once until it comes. A
                // split header is rare (the balancer sends it in one segment), so a short
                // sleep, under the caller's timeout, is cheaper than a buffer kept for it.
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                seen = n;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    Partial,
    Refused(Refused),
}

fn parse(bytes: &[u8]) -> Parsed {
    if bytes.first() == Some(&b'P') {
        return parse_v1(bytes);
    }
    let header = match ppp::v2::Header::try_from(bytes) {
        Ok(h) => h,
        Err(e) if e.is_incomplete() => return Parsed::Partial,
        Err(_) => return Parsed::Refused(Refused::Invalid),
    };
    if matches!(header.protocol, ppp::v2::Protocol::Datagram) {
        return Parsed::Refused(Refused::NotStream);
    }
    let client = match (header.command, header.addresses) {
        (Command::Local, _) => None,
        (Command::Proxy, Addresses::IPv4(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, Addresses::IPv6(a)) => {
            Some(SocketAddr::from((a.source_address, a.source_port)))
        }
        (Command::Proxy, Addresses::Unix(_) | Addresses::Unspecified) => None,
    };
    Parsed::Header {
        len: header.len(),
        client,
    }
}

/// A v1 line is parsed once its CRLF is in (`ppp` takes a line cut inside a field, such as a
/// port, for a malformed one).
fn parse_v1(bytes: &[u8]) -> Parsed {
    let head = &bytes[..bytes.len().min(MAX_V1)];
    let Some(end) = memchr::memmem::find(head, b"\r\n") else {
        let prefix = &head[..head.len().min(6)];
        return if head.len() < MAX_V1 && b"PROXY ".starts_with(prefix) {
            Parsed::Partial
        } else {
            Parsed::Refused(Refused::Invalid)
        };
    };
    let line = &head[..end + 2];
    match v1::Header::try_from(line) {
        Ok(h) => Parsed::Header {
            len: line.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        Err(_) => Parsed::Refused(Refused::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend(
            u16::try_from(addresses.len() + tlvs.len())
                .unwrap()
                .to_be_bytes(),
        );
        h.extend(addresses);
        h.extend(tlvs);
        h
    }

    const V4: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0xc3, 0x50, 0x01, 0xbb];

    #[test]
    fn both_versions_give_the_client_and_their_length() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: 41,
                client: Some("192.0.2.7:50000".parse().unwrap())
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 443\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: line.len(),
                client: Some("[2001:db8::7]:50000".parse().unwrap())
            }
        );
        // An AWS-style TLV (type 0xEA, the VPC endpoint id) after the addresses.
        let tlv = [&[0xea, 0x00, 0x06, 0x01][..], b"vpce1"].concat();
        let mut wire = v2(1, 0x11, &V4, &tlv);
        let len = wire.len();
        wire.extend(b"\x16\x03\x01");
        assert_eq!(
            parse(&wire),
            Parsed::Header {
                len,
                client: Some("192.0.2.7:50000".parse().unwrap())
            }
        );
    }

    #[test]
    fn local_and_unknown_keep_the_peer() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[], &[])),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
        // LOCAL with addresses (HAProxy's health checks may fill them in): still the peer's.
        assert_eq!(
            parse(&v2(0, 0x11, &V4, &[])),
            Parsed::Header {
                len: 28,
                client: None
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_others_are_refused() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 443\r\n";
        for cut in 1..line.len() {
            assert_eq!(parse(&line[..cut]), Parsed::Partial, "{cut}");
        }
        let wire = v2(1, 0x11, &V4, &[]);
        for cut in 1..wire.len() {
            assert_eq!(parse(&wire[..cut]), Parsed::Partial, "{cut}");
        }
        for refused in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 443\r\n",
        ] {
            assert_eq!(parse(refused), Parsed::Refused(Refused::Invalid));
        }
        // v1 without its CRLF within 107 bytes.
        let long = [b"PROXY TCP6 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Parsed::Refused(Refused::Invalid));
        // A datagram (UDP over IPv4) header on a TCP connection.
        assert_eq!(
            parse(&v2(1, 0x12, &V4, &[])),
            Parsed::Refused(Refused::NotStream)
        );
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            /// Any bytes: no panic, and a header is never longer than what was read (the
            /// socket is read exactly that far).
            #[test]
            fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
                if let Parsed::Header { len, .. } = parse(&bytes) {
                    prop_assert!(len <= bytes.len());
                }
            }

            /// Valid v2 headers with random TLVs, cut anywhere: partial before the end, the
            /// same header after it.
            #[test]
            fn v2_cut_anywhere(tlvs in prop::collection::vec(any::<u8>(), 0..200), extra in prop::collection::vec(any::<u8>(), 0..20)) {
                let wire = v2(1, 0x11, &V4, &tlvs);
                for cut in 0..wire.len() {
                    prop_assert_eq!(parse(&wire[..cut]), Parsed::Partial);
                }
                let full = [wire.as_slice(), &extra].concat();
                prop_assert_eq!(parse(&full), Parsed::Header { len: wire.len(), client: Some("192.0.2.7:50000".parse().unwrap()) });
            }
        }
    }
}

//! The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): how a
//! TCP load balancer in front of the gateway tells it the address of the
//! client it relays, so that the source-address checks of `admission` judge
//! the client and not the load balancer.
//!
//! It sits at the very start of the data flow, between `listener` (accept)
//! and `handshake`: the header is the first thing on the connection, before
//! the client's Hello. [`parse`] is a pure function over the bytes seen so far
//! (`Incomplete` until a whole header is there, never reads past its end);
//! [`read_header`] drives it on a socket without consuming a single byte of
//! what follows the header.
//!
//! What the parser accepts, and why:
//! - v1: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` exactly as the
//!   spec (section 2.1) writes it: single spaces, canonical addresses of the
//!   announced family, decimal ports without leading zeroes, at most
//!   [`MAX_V1_LEN`] bytes with the CRLF. `PROXY UNKNOWN` (with anything up to
//!   the CRLF) carries no address.
//! - v2 (section 2.2): command LOCAL (no address, whatever the family byte
//!   says: the spec tells receivers to ignore it), or command PROXY with TCP
//!   over IPv4 (`0x11`), TCP over IPv6 (`0x21`) or UNSPEC (`0x00`, no address).
//!   UDP and UNIX sockets are refused: the gateway only ever relays TCP
//!   streams, so such a header means a misconfigured load balancer. TLVs
//!   after the address block are skipped unread (the gateway needs none),
//!   but the whole header must fit [`MAX_HEADER_LEN`] bytes.
//! - Addresses are returned as sent; mapping `::ffff:a.b.c.d` back to IPv4 is
//!   the caller's job.
//!
//! A header carries no proof of origin: the caller must only read one from
//! peers it trusts to send it (the load balancers), and must treat a
//! connection without it as an error, not as a client without a header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// Longest v1 line, CRLF included (spec 2.1: `PROXY UNKNOWN` followed by two
/// full IPv6 addresses and two 5-digit ports).
pub const MAX_V1_LEN: usize = 107;

/// Longest v2 header the protocol can express: the 16 fixed bytes and a
/// 16-bit length.
pub const MAX_V2_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

/// Longest header this parser accepts, in either version. The largest
/// address block we use is 36 bytes (TCP over IPv6); the rest leaves room for
/// the TLVs load balancers commonly add (AWS and GCP add endpoint ids) while
/// bounding what a peer can make us buffer.
pub const MAX_HEADER_LEN: usize = 1024;

/// The 12 bytes every v2 header starts with (spec 2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, 16-bit length.
const V2_FIXED_LEN: usize = 16;
/// What identifies a v1 header (spec 2.1 and "detecting the version").
const V1_MAGIC: &[u8] = b"PROXY";

const V2_COMMAND_LOCAL: u8 = 0x0;
const V2_COMMAND_PROXY: u8 = 0x1;
const V2_UNSPEC: u8 = 0x00;
const V2_TCP_OVER_IPV4: u8 = 0x11;
const V2_TCP_OVER_IPV6: u8 = 0x21;
/// Two 4-byte addresses and two ports.
const V2_IPV4_BLOCK_LEN: usize = 12;
/// Two 16-byte addresses and two ports.
const V2_IPV6_BLOCK_LEN: usize = 36;

/// The addresses a header announced. Both are `None` for v1 `UNKNOWN`, v2
/// `LOCAL` and v2 `UNSPEC`: the connection's own addresses then apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client the load balancer relays.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, on the load balancer.
    pub destination: Option<SocketAddr>,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed. Every byte given so far belongs to the header
    /// (were it a valid one), and there are fewer than [`MAX_HEADER_LEN`].
    Incomplete,
    /// A whole header: it took the first `consumed` bytes; whatever follows
    /// is the client's own stream.
    Header {
        header: ProxyHeader,
        consumed: usize,
    },
}

/// Why a connection's PROXY header was refused. All of them come from the
/// client side of the connection (the load balancer or whatever connected in
/// its place) and none is worth retrying: the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxyHeader,
    #[error("PROXY v1 line has no CRLF within its first {MAX_V1_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v1 protocol is not one of TCP4, TCP6, UNKNOWN")]
    V1UnsupportedProtocol,
    #[error("PROXY v1 {which} address is not a canonical {family} address")]
    V1BadAddress {
        which: &'static str,
        family: &'static str,
    },
    #[error("PROXY v1 {0} port is not a decimal in 0..=65535 without leading zeroes")]
    V1BadPort(&'static str),
    #[error("PROXY v2 version is {0}, expected 2")]
    V2BadVersion(u8),
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    V2BadCommand(u8),
    #[error("PROXY v2 family and transport {0:#04x} not supported: only TCP over IPv4 or IPv6")]
    V2UnsupportedFamily(u8),
    #[error("PROXY v2 address block of {len} bytes is shorter than the {need} its family needs")]
    V2ShortAddressBlock { len: usize, need: usize },
    #[error("PROXY v2 header of {len} bytes is over the limit of {MAX_HEADER_LEN}")]
    V2TooLong { len: usize },
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("socket error while reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Parse the PROXY header at the start of `buf`, which holds the first bytes
/// of a connection. Never looks past the end of the header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Decide on the first bytes alone, so that a client speaking anything
    // else is refused as soon as it sent one byte that no header starts with.
    if starts_like(buf, &V2_SIGNATURE) {
        if buf.len() < V2_FIXED_LEN {
            return Ok(Parsed::Incomplete);
        }
        parse_v2(buf)
    } else if starts_like(buf, V1_MAGIC) {
        if buf.len() < V1_MAGIC.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v1(buf)
    } else {
        Err(ProxyError::NotProxyHeader)
    }
}

/// Read the PROXY header that starts `stream` and nothing more: when this
/// returns, the next byte to read is the first byte the client sent after
/// the header, so the handshake reads the stream as if no header had been.
///
/// The socket is only peeked, then exactly the bytes known to belong to the
/// header are read off it. [`parse`] answers `Incomplete` only while every
/// byte seen belongs to the header, so those bytes are consumed at once and
/// the next peek waits for new data rather than seeing the same bytes again.
/// At most [`MAX_HEADER_LEN`] bytes are held; the whole exchange is bounded
/// by `timeout`.
pub async fn read_header(stream: &TcpStream, timeout: Duration) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(timeout, read_header_unbounded(stream))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read_header_unbounded(stream: &TcpStream) -> Result<ProxyHeader, ProxyError> {
    // `buf[..have]` has been read off the socket; the socket's queue starts
    // right after it, so a peek lands at `buf[have..]`.
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut have = 0;
    loop {
        if have == buf.len() {
            // `parse` never answers Incomplete on that many bytes; kept so
            // that a bug there cannot turn into an empty peek read as EOF.
            return Err(ProxyError::V2TooLong { len: have });
        }
        let peeked = stream.peek(&mut buf[have..]).await?;
        if peeked == 0 {
            return Err(ProxyError::Closed);
        }
        let parsed = parse(&buf[..have + peeked])?;
        let take = match parsed {
            Parsed::Incomplete => peeked,
            Parsed::Header { consumed, .. } => consumed - have,
        };
        read_exactly(stream, &mut buf[have..have + take]).await?;
        have += take;
        if let Parsed::Header { header, .. } = parsed {
            return Ok(header);
        }
    }
}

/// Read `dst.len()` bytes that a peek has already shown to be queued.
async fn read_exactly(stream: &TcpStream, dst: &mut [u8]) -> Result<(), ProxyError> {
    let mut done = 0;
    while done < dst.len() {
        stream.readable().await?;
        match stream.try_read(&mut dst[done..]) {
            Ok(0) => return Err(ProxyError::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `buf` and `magic` agree on their common length.
fn starts_like(buf: &[u8], magic: &[u8]) -> bool {
    let n = buf.len().min(magic.len());
    buf[..n] == magic[..n]
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let version_command = buf[12];
    let family = buf[13];
    let block_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));

    // Everything is decided from the 16 fixed bytes, so a bad header is
    // refused before waiting for its body.
    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyError::V2BadVersion(version));
    }
    let command = version_command & 0x0f;
    let need = match (command, family) {
        // The spec has LOCAL receivers ignore the family and any address.
        (V2_COMMAND_LOCAL, _) => 0,
        (V2_COMMAND_PROXY, V2_UNSPEC) => 0,
        (V2_COMMAND_PROXY, V2_TCP_OVER_IPV4) => V2_IPV4_BLOCK_LEN,
        (V2_COMMAND_PROXY, V2_TCP_OVER_IPV6) => V2_IPV6_BLOCK_LEN,
        (V2_COMMAND_PROXY, other) => return Err(ProxyError::V2UnsupportedFamily(other)),
        (other, _) => return Err(ProxyError::V2BadCommand(other)),
    };
    if block_len < need {
        return Err(ProxyError::V2ShortAddressBlock {
            len: block_len,
            need,
        });
    }
    let total = V2_FIXED_LEN + block_len;
    if total > MAX_HEADER_LEN {
        return Err(ProxyError::V2TooLong { len: total });
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }

    // Bytes past `need` are TLVs, skipped unread.
    let block = &buf[V2_FIXED_LEN..total];
    let header = if command == V2_COMMAND_LOCAL {
        ProxyHeader::default()
    } else {
        match family {
            V2_TCP_OVER_IPV4 => {
                let src: [u8; 4] = fixed(&block[0..4]);
                let dst: [u8; 4] = fixed(&block[4..8]);
                v2_addresses(IpAddr::from(src), IpAddr::from(dst), &block[8..12])
            }
            V2_TCP_OVER_IPV6 => {
                let src: [u8; 16] = fixed(&block[0..16]);
                let dst: [u8; 16] = fixed(&block[16..32]);
                v2_addresses(IpAddr::from(src), IpAddr::from(dst), &block[32..36])
            }
            _ => ProxyHeader::default(),
        }
    };
    Ok(Parsed::Header {
        header,
        consumed: total,
    })
}

/// Copy a slice whose length the caller already checked into an array.
fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Addresses from a v2 block; `ports` is source then destination, big-endian.
fn v2_addresses(src: IpAddr, dst: IpAddr, ports: &[u8]) -> ProxyHeader {
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    ProxyHeader {
        source: Some(SocketAddr::new(src, src_port)),
        destination: Some(SocketAddr::new(dst, dst_port)),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= MAX_V1_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    if window[end] == b'\n' {
        return Err(ProxyError::V1Malformed("line ends in LF without CR"));
    }
    if end + 2 > MAX_V1_LEN {
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(end + 1) {
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Malformed("CR not followed by LF")),
    }
    let header = parse_v1_line(&buf[..end])?;
    Ok(Parsed::Header {
        header,
        consumed: end + 2,
    })
}

const ONE_SPACE: &str = "fields must be separated by exactly one space";

/// One v1 line without its CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let Some(rest) = line.strip_prefix(b"PROXY ") else {
        return Err(ProxyError::V1Malformed(
            "PROXY must be followed by one space",
        ));
    };
    // Spec 2.1: after UNKNOWN the receiver ignores everything up to the CRLF.
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        return Ok(ProxyHeader::default());
    }
    let text = std::str::from_utf8(rest)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or(ProxyError::V1Malformed("non-ASCII byte"))?;

    let mut words = text.split(' ');
    let protocol = words.next().unwrap_or_default();
    let family = match protocol {
        "" => return Err(ProxyError::V1Malformed(ONE_SPACE)),
        "TCP4" => "IPv4",
        "TCP6" => "IPv6",
        _ => return Err(ProxyError::V1UnsupportedProtocol),
    };
    let mut fields = [""; 4];
    for field in &mut fields {
        *field = words
            .next()
            .ok_or(ProxyError::V1Malformed("fewer than four address fields"))?;
    }
    if words.next().is_some() {
        return Err(ProxyError::V1Malformed("more than four address fields"));
    }
    if fields.iter().any(|f| f.is_empty()) {
        return Err(ProxyError::V1Malformed(ONE_SPACE));
    }
    let [src, dst, src_port, dst_port] = fields;

    let src = v1_address(src, family, "source")?;
    let dst = v1_address(dst, family, "destination")?;
    let src_port = v1_port(src_port).ok_or(ProxyError::V1BadPort("source"))?;
    let dst_port = v1_port(dst_port).ok_or(ProxyError::V1BadPort("destination"))?;
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(src, src_port)),
        destination: Some(SocketAddr::new(dst, dst_port)),
    })
}

/// An address of the family the line announced. The standard parsers match
/// the spec's canonical forms, leading zeroes in IPv4 octets refused.
fn v1_address(text: &str, family: &'static str, which: &'static str) -> Result<IpAddr, ProxyError> {
    let parsed = if family == "IPv4" {
        text.parse::<Ipv4Addr>().map(IpAddr::V4).ok()
    } else {
        text.parse::<Ipv6Addr>().map(IpAddr::V6).ok()
    };
    parsed.ok_or(ProxyError::V1BadAddress { which, family })
}

/// A port: plain decimal digits (no sign), no leading zero, at most 65535.
fn v1_port(text: &str) -> Option<u16> {
    let digits_only =
        !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits_only || leading_zero {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn header_of(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader {
            source: Some(addr(src)),
            destination: Some(addr(dst)),
        }
    }

    /// A v2 header as a load balancer would write it.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        let len = u16::try_from(block.len()).expect("block fits u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    /// The v2 address block for a TCP connection from `src` to `dst`.
    fn v2_block(src: SocketAddr, dst: SocketAddr) -> (u8, Vec<u8>) {
        let mut block = Vec::new();
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                V2_TCP_OVER_IPV4
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                V2_TCP_OVER_IPV6
            }
            _ => panic!("mixed families"),
        };
        block.extend_from_slice(&src.port().to_be_bytes());
        block.extend_from_slice(&dst.port().to_be_bytes());
        (family, block)
    }

    fn v2_proxy(src: &str, dst: &str, tlvs: &[u8]) -> Vec<u8> {
        let (family, mut block) = v2_block(addr(src), addr(dst));
        block.extend_from_slice(tlvs);
        v2(0x21, family, &block)
    }

    fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let protocol = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {protocol} {} {} {} {}\r\n",
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        )
        .into_bytes()
    }

    fn parsed(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Header { header, consumed }) => (header, consumed),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn refused(buf: &[u8]) -> ProxyError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn assert_every_prefix_incomplete(whole: &[u8]) {
        for n in 0..whole.len() {
            assert!(
                matches!(parse(&whole[..n]), Ok(Parsed::Incomplete)),
                "prefix of {n} bytes: {:?}",
                parse(&whole[..n])
            );
        }
    }

    // ---- v1 ----

    #[test]
    fn v1_tcp4_yields_both_addresses_and_stops_at_crlf() {
        let buf = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nHELLO";
        let (header, consumed) = parsed(buf);
        assert_eq!(header, header_of("192.0.2.10:56324", "198.51.100.1:443"));
        assert_eq!(&buf[consumed..], b"HELLO");
    }

    #[test]
    fn v1_tcp6_yields_both_addresses() {
        let buf = b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 0 65535\r\n";
        let (header, consumed) = parsed(buf);
        assert_eq!(header, header_of("[2001:db8::1]:0", "[2001:db8::2]:65535"));
        assert_eq!(consumed, buf.len());
    }

    #[test]
    fn v1_tcp6_keeps_ipv4_mapped_addresses_as_sent() {
        let (header, _) = parsed(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n");
        assert_eq!(header.source, Some(addr("[::ffff:192.0.2.1]:1")));
    }

    #[test]
    fn v1_unknown_carries_no_address_and_ignores_the_rest_of_the_line() {
        assert_eq!(parsed(b"PROXY UNKNOWN\r\n"), (ProxyHeader::default(), 15));
        let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                     ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\nX";
        assert_eq!(long.len(), MAX_V1_LEN + 1);
        assert_eq!(parsed(long), (ProxyHeader::default(), MAX_V1_LEN));
        assert_eq!(
            parsed(b"PROXY UNKNOWN whatever \xff\r\n").0,
            ProxyHeader::default()
        );
    }

    #[test]
    fn v1_truncated_is_incomplete() {
        assert_every_prefix_incomplete(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n");
        assert_every_prefix_incomplete(b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_refuses_a_line_without_crlf_within_107_bytes() {
        let mut buf = b"PROXY UNKNOWN ".to_vec();
        buf.resize(MAX_V1_LEN, b'a');
        assert!(matches!(refused(&buf), ProxyError::V1TooLong));
        // One byte short of the limit: still waiting.
        assert!(matches!(
            parse(&buf[..MAX_V1_LEN - 1]),
            Ok(Parsed::Incomplete)
        ));
        // A CR in the last allowed byte leaves no room for the LF.
        buf[MAX_V1_LEN - 1] = b'\r';
        assert!(matches!(refused(&buf), ProxyError::V1TooLong));
    }

    #[test]
    fn v1_refuses_bad_line_endings() {
        assert!(matches!(
            refused(b"PROXY UNKNOWN\n"),
            ProxyError::V1Malformed(_)
        ));
        assert!(matches!(
            refused(b"PROXY UNKNOWN\rX"),
            ProxyError::V1Malformed(_)
        ));
    }

    #[test]
    fn v1_refuses_bad_addresses() {
        for line in [
            &b"PROXY TCP4 256.0.0.1 192.0.2.2 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 010.0.0.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP6 2001:db8::1 2001:db8:::2 1 2\r\n",
            b"PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ProxyError::V1BadAddress { .. })),
                "{}: {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn v1_refuses_ports_out_of_range_or_not_plain_decimal() {
        for (line, which) in [
            (&b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n"[..], "source"),
            (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n", "destination"),
            (b"PROXY TCP4 192.0.2.1 192.0.2.2 080 2\r\n", "source"),
            (b"PROXY TCP4 192.0.2.1 192.0.2.2 +80 2\r\n", "source"),
            (b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n", "source"),
            (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 0x50\r\n", "destination"),
            (
                b"PROXY TCP4 192.0.2.1 192.0.2.2 1 000002\r\n",
                "destination",
            ),
        ] {
            match parse(line) {
                Err(ProxyError::V1BadPort(got)) => assert_eq!(got, which),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
    }

    #[test]
    fn v1_refuses_extra_or_missing_spaces_and_fields() {
        for line in [
            &b"PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n"[..],
            b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2  1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n",
            b"PROXY\tTCP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXYTCP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ProxyError::V1Malformed(_))),
                "{}: {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn v1_refuses_protocols_other_than_tcp4_tcp6_unknown() {
        for line in [
            &b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n"[..],
            b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
        ] {
            assert!(matches!(
                parse(line),
                Err(ProxyError::V1UnsupportedProtocol)
            ));
        }
    }

    #[test]
    fn v1_refuses_non_ascii_bytes() {
        assert!(matches!(
            refused(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\xc3\xa9\r\n"),
            ProxyError::V1Malformed(_)
        ));
    }

    #[test]
    fn lowercase_proxy_is_not_a_header() {
        assert!(matches!(
            refused(b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n"),
            ProxyError::NotProxyHeader
        ));
    }

    #[test]
    fn other_protocols_are_refused_on_their_first_byte() {
        assert!(matches!(refused(b"G"), ProxyError::NotProxyHeader));
        assert!(matches!(
            refused(b"GET / HTTP/1.1\r\n"),
            ProxyError::NotProxyHeader
        ));
        assert!(matches!(
            refused(&[0x00, 0x10, 0x01]),
            ProxyError::NotProxyHeader
        ));
        assert!(matches!(parse(b""), Ok(Parsed::Incomplete)));
    }

    // ---- v2 ----

    #[test]
    fn v2_tcp4_yields_both_addresses() {
        let mut buf = v2_proxy("192.0.2.10:56324", "198.51.100.1:443", &[]);
        assert_eq!(buf.len(), 16 + 12);
        buf.extend_from_slice(b"HELLO");
        let (header, consumed) = parsed(&buf);
        assert_eq!(header, header_of("192.0.2.10:56324", "198.51.100.1:443"));
        assert_eq!(&buf[consumed..], b"HELLO");
    }

    #[test]
    fn v2_tcp6_yields_both_addresses() {
        let buf = v2_proxy("[2001:db8::1]:1", "[2001:db8::2]:65535", &[]);
        assert_eq!(buf.len(), 16 + 36);
        assert_eq!(
            parsed(&buf),
            (
                header_of("[2001:db8::1]:1", "[2001:db8::2]:65535"),
                buf.len()
            )
        );
    }

    #[test]
    fn v2_skips_tlvs_after_the_address_block() {
        // An AWS-style VPC endpoint TLV and a NOOP, then payload.
        let mut tlvs = vec![0xEA, 0x00, 0x06, 0x01];
        tlvs.extend_from_slice(b"vpce-");
        tlvs.extend_from_slice(&[0x04, 0x00, 0x00]);
        for (src, dst) in [
            ("192.0.2.10:1000", "198.51.100.1:443"),
            ("[2001:db8::1]:1000", "[2001:db8::2]:443"),
        ] {
            let mut buf = v2_proxy(src, dst, &tlvs);
            let end = buf.len();
            buf.extend_from_slice(b"HELLO");
            assert_eq!(parsed(&buf), (header_of(src, dst), end));
            assert_every_prefix_incomplete(&buf[..end]);
        }
    }

    #[test]
    fn v2_local_carries_no_address_and_skips_any_block() {
        assert_eq!(parsed(&v2(0x20, 0x00, &[])), (ProxyHeader::default(), 16));
        let (family, block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        assert_eq!(
            parsed(&v2(0x20, family, &block)),
            (ProxyHeader::default(), 28)
        );
        // LOCAL receivers ignore the family byte, even one PROXY would refuse.
        assert_eq!(parsed(&v2(0x20, 0x12, &block)).0, ProxyHeader::default());
    }

    #[test]
    fn v2_unspec_family_carries_no_address() {
        assert_eq!(
            parsed(&v2(0x21, 0x00, &[1, 2, 3])),
            (ProxyHeader::default(), 19)
        );
    }

    #[test]
    fn v2_refuses_anything_but_tcp() {
        let (_, block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        // UDP over IPv4/IPv6, UNIX stream/datagram, undefined families.
        for family in [0x12, 0x22, 0x31, 0x32, 0x10, 0x01, 0x41, 0x13] {
            match parse(&v2(0x21, family, &[0; 216])) {
                Err(ProxyError::V2UnsupportedFamily(f)) => assert_eq!(f, family),
                other => panic!("{family:#04x}: {other:?}"),
            }
        }
        assert!(matches!(
            refused(&v2(0x21, 0x12, &block)),
            ProxyError::V2UnsupportedFamily(0x12)
        ));
    }

    #[test]
    fn v2_refuses_a_bad_signature() {
        let good = v2_proxy("192.0.2.1:1", "192.0.2.2:2", &[]);
        for i in 0..V2_SIGNATURE.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(
                matches!(parse(&bad), Err(ProxyError::NotProxyHeader)),
                "byte {i}: {:?}",
                parse(&bad)
            );
        }
    }

    #[test]
    fn v2_refuses_a_version_other_than_2() {
        let (family, block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        for version_command in [0x01, 0x11, 0x31, 0xF1] {
            match parse(&v2(version_command, family, &block)) {
                Err(ProxyError::V2BadVersion(v)) => assert_eq!(v, version_command >> 4),
                other => panic!("{version_command:#04x}: {other:?}"),
            }
        }
    }

    #[test]
    fn v2_refuses_commands_other_than_local_and_proxy() {
        let (family, block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        assert!(matches!(
            refused(&v2(0x22, family, &block)),
            ProxyError::V2BadCommand(2)
        ));
        assert!(matches!(
            refused(&v2(0x2F, family, &block)),
            ProxyError::V2BadCommand(0xF)
        ));
    }

    #[test]
    fn v2_refuses_a_header_over_the_limit_before_its_body_arrives() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11]);
        let len = u16::try_from(MAX_HEADER_LEN - 16 + 1).expect("u16");
        fixed.extend_from_slice(&len.to_be_bytes());
        assert!(matches!(
            refused(&fixed),
            ProxyError::V2TooLong { len } if len == MAX_HEADER_LEN + 1
        ));
        fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            refused(&fixed),
            ProxyError::V2TooLong { len } if len == MAX_V2_LEN
        ));
        // Exactly at the limit is fine.
        let (_, mut block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        block.resize(MAX_HEADER_LEN - 16, 0);
        assert_eq!(parsed(&v2(0x21, 0x11, &block)).1, MAX_HEADER_LEN);
    }

    #[test]
    fn v2_refuses_an_address_block_too_short_for_its_family() {
        let (_, block) = v2_block(addr("192.0.2.1:1"), addr("192.0.2.2:2"));
        assert!(matches!(
            refused(&v2(0x21, 0x11, &block[..11])),
            ProxyError::V2ShortAddressBlock { len: 11, need: 12 }
        ));
        assert!(matches!(
            refused(&v2(0x21, 0x21, &block)),
            ProxyError::V2ShortAddressBlock { len: 12, need: 36 }
        ));
    }

    #[test]
    fn v2_truncated_is_incomplete() {
        assert_every_prefix_incomplete(&v2_proxy("192.0.2.1:1", "192.0.2.2:2", &[]));
        assert_every_prefix_incomplete(&v2_proxy("[::1]:1", "[::2]:2", &[0x04, 0, 1, 0]));
        assert_every_prefix_incomplete(&v2(0x20, 0x00, &[]));
    }

    // ---- properties ----

    fn socket_addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
        if v6 {
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port))
                .boxed()
        } else {
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port))
                .boxed()
        }
    }

    fn address_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        any::<bool>().prop_flat_map(|v6| (socket_addr(v6), socket_addr(v6)))
    }

    /// Random bytes, some of them behind a signature so the parser gets
    /// past its first check.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        let tail = proptest::collection::vec(any::<u8>(), 0..1200);
        prop_oneof![
            tail.clone(),
            tail.clone()
                .prop_map(|t| [b"PROXY ".as_slice(), &t].concat()),
            (any::<[u8; 2]>(), any::<u16>(), tail).prop_map(|(vf, len, t)| {
                [
                    V2_SIGNATURE.as_slice(),
                    &vf,
                    &(len % 1100).to_be_bytes(),
                    &t,
                ]
                .concat()
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_nor_overrun(buf in input()) {
            match parse(&buf) {
                Ok(Parsed::Header { consumed, .. }) => {
                    prop_assert!(consumed > 0);
                    prop_assert!(consumed <= buf.len());
                    prop_assert!(consumed <= MAX_HEADER_LEN);
                }
                // read_header relies on this: it never needs more room.
                Ok(Parsed::Incomplete) => prop_assert!(buf.len() < MAX_HEADER_LEN),
                Err(_) => {}
            }
        }

        #[test]
        fn encoded_headers_round_trip_whatever_follows(
            (src, dst) in address_pair(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            use_v1 in any::<bool>(),
        ) {
            let head = if use_v1 {
                v1(src, dst)
            } else {
                let (family, block) = v2_block(src, dst);
                v2(0x21, family, &block)
            };
            for n in 0..head.len() {
                prop_assert_eq!(parse(&head[..n]).ok(), Some(Parsed::Incomplete));
            }
            let buf = [head.as_slice(), &tail].concat();
            let expected = ProxyHeader { source: Some(src), destination: Some(dst) };
            prop_assert_eq!(
                parse(&buf).ok(),
                Some(Parsed::Header { header: expected, consumed: head.len() })
            );
        }
    }

    // ---- on a socket ----

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn read_header_leaves_the_client_bytes_in_the_socket() {
        let (mut client, mut server) = pair().await;
        let mut sent = v2_proxy(
            "[2001:db8::1]:40000",
            "[2001:db8::2]:443",
            &[0x04, 0, 2, 7, 7],
        );
        let payload = b"\x00\x05hello and the rest of the first frame";
        sent.extend_from_slice(payload);
        client.write_all(&sent).await.expect("write");
        client.shutdown().await.expect("shutdown");

        let header = read_header(&server, PATIENCE).await.expect("header");
        assert_eq!(
            header,
            header_of("[2001:db8::1]:40000", "[2001:db8::2]:443")
        );

        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(rest, payload);
    }

    #[tokio::test]
    async fn read_header_waits_for_a_header_split_across_segments() {
        let (mut client, mut server) = pair().await;
        let line = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n";
        let reader = tokio::spawn(async move {
            let header = read_header(&server, PATIENCE).await;
            let mut next = [0u8; 2];
            server.read_exact(&mut next).await.expect("payload");
            (header, next)
        });
        for piece in [&line[..3], &line[3..20], &line[20..45], &line[45..]] {
            client.write_all(piece).await.expect("write");
            client.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.write_all(b"OK").await.expect("write");
        let (header, next) = reader.await.expect("join");
        assert_eq!(
            header.expect("header"),
            header_of("192.0.2.10:56324", "198.51.100.1:443")
        );
        assert_eq!(&next, b"OK");
    }

    #[tokio::test]
    async fn read_header_refuses_a_client_without_a_header_without_reading_on() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"\x00\x05hello").await.expect("write");
        assert!(matches!(
            read_header(&server, PATIENCE).await,
            Err(ProxyError::NotProxyHeader)
        ));
        let mut still_there = [0u8; 7];
        server.read_exact(&mut still_there).await.expect("read");
        assert_eq!(&still_there, b"\x00\x05hello");
    }

    #[tokio::test]
    async fn read_header_gives_up_on_a_silent_or_closing_peer() {
        let (client, server) = pair().await;
        let waited = Duration::from_millis(50);
        assert!(matches!(
            read_header(&server, waited).await,
            Err(ProxyError::Timeout(d)) if d == waited
        ));
        drop(client);

        let (mut client, server) = pair().await;
        client.write_all(&V2_SIGNATURE[..8]).await.expect("write");
        client.shutdown().await.expect("shutdown");
        assert!(matches!(
            read_header(&server, PATIENCE).await,
            Err(ProxyError::Closed)
        ));
    }
}

//! The PROXY protocol v2 parser (`hsmgate::proxy_protocol::parse` on bytes
//! that start with the v2 signature): the first bytes a load balancer sends,
//! HAProxy's health checks (command LOCAL) included.
//!
//! Properties (besides those of `check_proxy_parse`): a header that parses,
//! written back as a v2 header without TLVs, parses to the same addresses;
//! LOCAL never yields an address; the header is never over 1024 bytes.
#![no_main]

use hsmgate::proxy_protocol::{MAX_HEADER_LEN, Parsed, ProxyHeader, parse};
use libfuzzer_sys::fuzz_target;

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header for `header`: PROXY over TCP with its addresses, or LOCAL.
fn encode(header: &ProxyHeader) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    match (header.source, header.destination) {
        (Some(src), Some(dst)) => {
            let mut block = Vec::new();
            let family = match (src.ip(), dst.ip()) {
                (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    0x11
                }
                (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    0x21
                }
                _ => panic!("a v2 header with two families: {header:?}"),
            };
            block.extend_from_slice(&src.port().to_be_bytes());
            block.extend_from_slice(&dst.port().to_be_bytes());
            out.extend_from_slice(&[0x21, family]);
            out.extend_from_slice(&(block.len() as u16).to_be_bytes());
            out.extend_from_slice(&block);
        }
        _ => out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut buf = SIGNATURE.to_vec();
    buf.extend_from_slice(data);
    let Some(header) = hsmgate_fuzz::check_proxy_parse(&buf) else {
        return;
    };
    let Ok(Parsed::Header { consumed, .. }) = parse(&buf) else {
        unreachable!()
    };
    assert!(consumed <= MAX_HEADER_LEN);
    if buf[12] & 0x0f == 0 {
        assert_eq!(header, ProxyHeader::default(), "LOCAL with an address");
    }
    let bytes = encode(&header);
    match parse(&bytes) {
        Ok(Parsed::Header {
            header: h,
            consumed: c,
        }) => {
            assert_eq!(h, header);
            assert_eq!(c, bytes.len());
        }
        other => panic!("re-encoded header parses as {other:?}"),
    }
});

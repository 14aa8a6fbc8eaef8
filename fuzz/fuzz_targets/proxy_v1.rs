//! The PROXY protocol v1 parser (`hsmgate::proxy_protocol::parse` on bytes
//! that start with `PROXY`): the first bytes a load balancer sends.
//!
//! Properties (besides those of `check_proxy_parse`: never looks past the
//! header, incomplete only within the size bound, refusals final): a header
//! that parses, written back in the spec's canonical form, parses to the same
//! addresses; a v1 header never takes more than 107 bytes.
#![no_main]

use hsmgate::proxy_protocol::{MAX_V1_LEN, Parsed, ProxyHeader, parse};
use libfuzzer_sys::fuzz_target;

/// The canonical v1 line for `header` (spec 2.1).
fn encode(header: &ProxyHeader) -> Vec<u8> {
    match (header.source, header.destination) {
        (Some(src), Some(dst)) => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = b"PROXY".to_vec();
    buf.extend_from_slice(data);
    let Some(header) = hsmgate_fuzz::check_proxy_parse(&buf) else {
        return;
    };
    let Ok(Parsed::Header { consumed, .. }) = parse(&buf) else {
        unreachable!()
    };
    assert!(consumed <= MAX_V1_LEN);
    if let (Some(src), Some(dst)) = (header.source, header.destination) {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one line, one family");
    }
    let line = encode(&header);
    match parse(&line) {
        Ok(Parsed::Header {
            header: h,
            consumed: c,
        }) => {
            assert_eq!(h, header);
            assert_eq!(c, line.len());
        }
        other => panic!(
            "canonical line {:?} parses as {other:?}",
            String::from_utf8_lossy(&line)
        ),
    }
});

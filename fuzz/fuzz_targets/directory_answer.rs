//! The directory's answer as the gateway reads it: arbitrary bytes decoded as
//! an `AuthorizeResponse` (prost, as tonic does), then interpreted by
//! `Answer::from_response` and turned into a per-connection `Verdict`.
//!
//! Properties: a decoded message re-encodes to a message that decodes to the
//! same; an answer that is accepted is coherent (an ALLOW has reason OK and
//! a pool; a valid identity always names a pool); a connection is allowed
//! only for an answer whose identity is valid and only from an address
//! inside the answer's networks (IPv4-mapped IPv6 as its IPv4); an
//! identity denial never allows anyone.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hsmgate_authz::pb::AuthorizeResponse;
use hsmgate_authz::{Answer, Decision, DenyKind, Reason, Verdict};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The last 16 bytes (when there are that many) are a source address to
    // judge; the message is everything.
    let source = match data.len() {
        n if n >= 16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&data[n - 16..]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        n if n >= 4 => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let Ok(response) = AuthorizeResponse::decode(data) else {
        return;
    };
    let again = AuthorizeResponse::decode(&response.encode_to_vec()[..]).unwrap();
    assert_eq!(again, response);

    let Ok(answer) = Answer::from_response(&response) else {
        return;
    };
    assert_eq!(Answer::from_response(&again).unwrap(), answer);
    assert_eq!(
        answer.allowed_networks.len(),
        response.allowed_networks.len()
    );
    match answer.decision {
        Decision::Allow => {
            assert_eq!(answer.reason, Reason::Ok);
            assert!(!answer.pool.is_empty());
        }
        Decision::Deny => {
            assert_ne!(answer.reason, Reason::Ok);
            if answer.reason == Reason::NetworkNotAllowed {
                assert!(!answer.pool.is_empty());
            }
        }
    }
    for ip in [
        source,
        source.to_canonical(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let inside = answer
            .allowed_networks
            .iter()
            .any(|net| net.contains(&ip.to_canonical()));
        match answer.verdict(ip) {
            Verdict::Allow { pool, max_sessions } => {
                assert!(!answer.is_identity_deny());
                assert!(inside, "{ip} allowed outside {:?}", answer.allowed_networks);
                assert_eq!(pool, answer.pool);
                assert_eq!(max_sessions, answer.max_sessions);
            }
            Verdict::Deny(DenyKind::Identity(reason)) => {
                assert!(answer.is_identity_deny());
                assert_eq!(reason, answer.reason);
            }
            Verdict::Deny(DenyKind::Address) => {
                assert!(!answer.is_identity_deny());
                assert!(!inside);
            }
        }
    }
});

//! The decision: may this client, with this key, from this address, use this
//! partition? A pure function over [`DirectoryData`], checked in a fixed
//! order so that nothing about a client is revealed to a caller who does not
//! hold its key (unknown → key → disabled → tenant → partition → network).

use std::net::IpAddr;

use hsmgate_authz::pb::{AuthorizeResponse, Decision, Reason};
use hsmgate_wire::PublicKey;

use crate::data::DirectoryData;

/// A well-formed request (the service has parsed key and address).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub client_id: &'a str,
    pub key: &'a PublicKey,
    pub tenant: &'a str,
    pub partition: &'a str,
    pub source: IpAddr,
}

/// Decide one request.
///
/// Identity denials carry only the TTL (the gateway caps it further). Once
/// the identity is valid the answer carries pool, networks and limits even
/// when the address is refused, so that a gateway can re-check a cached
/// answer against another address of the same client.
pub fn decide(data: &DirectoryData, request: &Request<'_>) -> AuthorizeResponse {
    let deny = |reason: Reason| AuthorizeResponse {
        decision: Decision::Deny as i32,
        reason: reason as i32,
        ttl_seconds: data.ttl_seconds,
        ..AuthorizeResponse::default()
    };
    let Some(client) = data.clients.get(request.client_id) else {
        return deny(Reason::UnknownClient);
    };
    if client.key != *request.key {
        return deny(Reason::KeyMismatch);
    }
    if !client.enabled {
        return deny(Reason::ClientDisabled);
    }
    if client.tenant != request.tenant {
        return deny(Reason::WrongTenant);
    }
    let partition = match data.partitions.get(request.partition) {
        Some(p) if client.partitions.contains(request.partition) => p,
        _ => return deny(Reason::PartitionNotAllowed),
    };
    let source = request.source.to_canonical();
    let inside = client.networks.iter().any(|net| net.contains(&source));
    let (decision, reason) = if inside {
        (Decision::Allow, Reason::Ok)
    } else {
        (Decision::Deny, Reason::NetworkNotAllowed)
    };
    AuthorizeResponse {
        decision: decision as i32,
        reason: reason as i32,
        pool: partition.pool.clone(),
        allowed_networks: client.network_texts.clone(),
        max_sessions: client.max_sessions,
        ttl_seconds: data.ttl_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PublicKey = PublicKey([1; 32]);
    const OTHER_KEY: PublicKey = PublicKey([2; 32]);

    fn data() -> DirectoryData {
        let key = KEY.to_text();
        let other = OTHER_KEY.to_text();
        DirectoryData::from_toml_str(&format!(
            r#"
            [defaults]
            ttl_seconds = 30
            max_sessions = 4

            [[tenants]]
            name = "acme"
            networks = ["10.0.0.0/8", "::1/128"]

            [[tenants]]
            name = "other"
            networks = ["0.0.0.0/0"]

            [[partitions]]
            name = "acme-p1"
            tenant = "acme"
            pool = "pool-a"

            [[partitions]]
            name = "acme-p2"
            tenant = "acme"
            pool = "pool-b"

            [[clients]]
            id = "app"
            tenant = "acme"
            public_key = "{key}"
            partitions = ["acme-p1"]

            [[clients]]
            id = "narrow"
            tenant = "acme"
            public_key = "{other}"
            partitions = ["acme-p1"]
            networks = ["127.0.0.1/32"]
            max_sessions = 16

            [[clients]]
            id = "off"
            tenant = "acme"
            public_key = "{key}"
            partitions = ["acme-p1"]
            enabled = false
            "#
        ))
        .expect("valid test data")
    }

    fn ask(client_id: &str, key: &PublicKey, partition: &str, source: &str) -> AuthorizeResponse {
        decide(
            &data(),
            &Request {
                client_id,
                key,
                tenant: "acme",
                partition,
                source: source.parse().expect("test address"),
            },
        )
    }

    fn assert_deny(response: &AuthorizeResponse, reason: Reason) {
        assert_eq!(response.decision(), Decision::Deny);
        assert_eq!(response.reason(), reason);
        assert_eq!(response.ttl_seconds, 30);
    }

    #[test]
    fn allows_a_known_client_inside_its_tenant_networks() {
        let r = ask("app", &KEY, "acme-p1", "10.1.2.3");
        assert_eq!(r.decision(), Decision::Allow);
        assert_eq!(r.reason(), Reason::Ok);
        assert_eq!(r.pool, "pool-a");
        assert_eq!(r.allowed_networks, vec!["10.0.0.0/8", "::1/128"]);
        assert_eq!(r.max_sessions, 4);
        assert_eq!(r.ttl_seconds, 30);
    }

    #[test]
    fn client_networks_and_limits_override_the_tenant_ones() {
        let r = ask("narrow", &OTHER_KEY, "acme-p1", "127.0.0.1");
        assert_eq!(r.decision(), Decision::Allow);
        assert_eq!(r.allowed_networks, vec!["127.0.0.1/32"]);
        assert_eq!(r.max_sessions, 16);
        let r = ask("narrow", &OTHER_KEY, "acme-p1", "10.1.2.3");
        assert_deny(&r, Reason::NetworkNotAllowed);
    }

    #[test]
    fn treats_ipv4_mapped_sources_as_ipv4() {
        let r = ask("app", &KEY, "acme-p1", "::ffff:10.0.0.1");
        assert_eq!(r.decision(), Decision::Allow);
    }

    #[test]
    fn denies_unknown_client() {
        assert_deny(
            &ask("nobody", &KEY, "acme-p1", "10.0.0.1"),
            Reason::UnknownClient,
        );
    }

    #[test]
    fn denies_key_mismatch() {
        let r = ask("app", &OTHER_KEY, "acme-p1", "10.0.0.1");
        assert_deny(&r, Reason::KeyMismatch);
        assert!(r.pool.is_empty() && r.allowed_networks.is_empty());
    }

    #[test]
    fn key_is_checked_before_disabled_state() {
        assert_deny(
            &ask("off", &OTHER_KEY, "acme-p1", "10.0.0.1"),
            Reason::KeyMismatch,
        );
    }

    #[test]
    fn denies_disabled_client() {
        assert_deny(
            &ask("off", &KEY, "acme-p1", "10.0.0.1"),
            Reason::ClientDisabled,
        );
    }

    #[test]
    fn denies_client_outside_its_tenant() {
        let r = decide(
            &data(),
            &Request {
                client_id: "app",
                key: &KEY,
                tenant: "other",
                partition: "acme-p1",
                source: "10.0.0.1".parse().expect("address"),
            },
        );
        assert_deny(&r, Reason::WrongTenant);
    }

    #[test]
    fn denies_partition_not_in_the_clients_list() {
        assert_deny(
            &ask("app", &KEY, "acme-p2", "10.0.0.1"),
            Reason::PartitionNotAllowed,
        );
        assert_deny(
            &ask("app", &KEY, "no-such", "10.0.0.1"),
            Reason::PartitionNotAllowed,
        );
    }

    #[test]
    fn denies_client_outside_tenant_networks_with_full_policy() {
        let r = ask("app", &KEY, "acme-p1", "192.168.1.1");
        assert_deny(&r, Reason::NetworkNotAllowed);
        assert_eq!(r.pool, "pool-a");
        assert_eq!(r.allowed_networks, vec!["10.0.0.0/8", "::1/128"]);
        assert_eq!(r.max_sessions, 4);
    }
}

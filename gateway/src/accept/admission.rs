//! The global source-address lists, checked at accept before any byte is read.
//!
//! A source is admitted when it lies in an `allow` network and in no `deny`
//! network. IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`, as a dual-stack
//! listener reports IPv4 peers) are compared as the IPv4 address they carry,
//! so one IPv4 rule covers both forms.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        AddressPolicy {
            allow: allow.iter().map(canonical_net).collect(),
            deny: deny.iter().map(canonical_net).collect(),
        }
    }

    /// True when `source` may connect.
    pub fn admits(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        let inside = |nets: &[IpNet]| nets.iter().any(|net| net.contains(&source));
        inside(&self.allow) && !inside(&self.deny)
    }
}

/// A rule written in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`) becomes the
/// IPv4 network it denotes, so that it matches canonicalised sources.
fn canonical_net(net: &IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped.trunc());
    }
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| s.parse().expect("test network"))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn allow_then_deny() {
        let p = AddressPolicy::new(
            &nets(&["10.0.0.0/8", "2001:db8::/32"]),
            &nets(&["10.9.0.0/16"]),
        );
        assert!(p.admits(ip("10.1.2.3")));
        assert!(p.admits(ip("2001:db8::1")));
        assert!(!p.admits(ip("10.9.0.1")), "deny wins over allow");
        assert!(!p.admits(ip("192.168.1.1")), "outside allow");
        assert!(!p.admits(ip("2001:db9::1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_matched_as_ipv4() {
        let p = AddressPolicy::new(&nets(&["127.0.0.1/32"]), &nets(&["127.0.0.3/32"]));
        assert!(p.admits(ip("::ffff:127.0.0.1")));
        assert!(!p.admits(ip("::ffff:127.0.0.2")));
        assert!(!p.admits(ip("::ffff:127.0.0.3")));
    }

    #[test]
    fn rules_in_mapped_form_match_both_forms_of_the_source() {
        let p = AddressPolicy::new(
            &nets(&["0.0.0.0/0", "::/0"]),
            &nets(&["::ffff:192.0.2.0/120"]),
        );
        assert!(!p.admits(ip("::ffff:192.0.2.7")));
        assert!(!p.admits(ip("192.0.2.7")));
        assert!(p.admits(ip("192.0.3.7")));
    }

    #[test]
    fn empty_allow_list_refuses_everyone() {
        let p = AddressPolicy::new(&[], &[]);
        assert!(!p.admits(ip("127.0.0.1")));
        assert!(!p.admits(ip("::1")));
    }
}

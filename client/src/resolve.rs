//! Gateway discovery: from the configured `gateway` to the ordered list of
//! addresses the failover loop tries.
//!
//! A name is resolved through DNS (all A and AAAA records: DNS round-robin
//! across gateway instances), with the configured `dns_server` or the
//! system's resolvers. The addresses are then deduplicated, filtered to the
//! family of a `--bind` address, shuffled so that clients spread over the
//! instances, and capped at [`MAX_ATTEMPTS`].

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::Resolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::config::GatewayAddr;
use crate::error::ClientError;

/// Most gateway addresses one `connect` tries.
pub const MAX_ATTEMPTS: usize = 16;

/// All A and AAAA addresses of `host`, unordered.
pub async fn lookup(
    host: &str,
    dns_server: Option<SocketAddr>,
    timeout: std::time::Duration,
) -> Result<Vec<IpAddr>, ClientError> {
    let resolve_err = |reason: String| ClientError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let mut builder = match dns_server {
        Some(server) => {
            let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| resolve_err(format!("cannot read the system DNS configuration: {e}")))?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = timeout;
    let resolver = builder.build();
    let found = resolver.lookup_ip(host).await.map_err(|e| {
        resolve_err(if e.is_nx_domain() {
            "no such name (NXDOMAIN)".into()
        } else if e.is_no_records_found() {
            "no A or AAAA records".into()
        } else {
            e.to_string()
        })
    })?;
    let ips: Vec<IpAddr> = found.iter().collect();
    if ips.is_empty() {
        return Err(resolve_err("no A or AAAA records".into()));
    }
    Ok(ips)
}

/// The addresses to try, in order: deduplicated, only those of `bind`'s
/// family when a local address is given, shuffled, at most [`MAX_ATTEMPTS`].
pub fn attempt_order(
    ips: &[IpAddr],
    port: u16,
    bind: Option<IpAddr>,
    rng: &mut impl Rng,
) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        if same_family(bind, &addr) && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs.shuffle(rng);
    addrs.truncate(MAX_ATTEMPTS);
    addrs
}

fn same_family(bind: Option<IpAddr>, addr: &SocketAddr) -> bool {
    bind.is_none_or(|b| b.is_ipv4() == addr.is_ipv4())
}

/// Resolve the configured gateway into the ordered attempt list.
pub async fn gateway_addresses(
    gateway: &GatewayAddr,
    dns_server: Option<SocketAddr>,
    bind: Option<IpAddr>,
    timeout: std::time::Duration,
) -> Result<Vec<SocketAddr>, ClientError> {
    let (host, addrs) = match gateway {
        GatewayAddr::Addr(addr) => (
            addr.to_string(),
            if same_family(bind, addr) {
                vec![*addr]
            } else {
                Vec::new()
            },
        ),
        GatewayAddr::Name { host, port } => {
            let ips = lookup(host, dns_server, timeout).await?;
            // thread_rng is not Send: keep it out of any await.
            let addrs = attempt_order(&ips, *port, bind, &mut rand::thread_rng());
            (host.clone(), addrs)
        }
    };
    if addrs.is_empty() {
        // Only the family filter can empty the list: a usage problem.
        return Err(ClientError::InvalidInput(format!(
            "no address of gateway {host} has the family of the local bind address {}",
            bind.map(|b| b.to_string()).unwrap_or_default()
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keeps_every_address_once_with_the_port() {
        let ips = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.1"), ip("::1")];
        let mut rng = StdRng::seed_from_u64(7);
        let mut got = attempt_order(&ips, 2300, None, &mut rng);
        got.sort();
        let mut want: Vec<SocketAddr> = ["10.0.0.1:2300", "10.0.0.2:2300", "[::1]:2300"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn spreads_the_first_attempt_over_all_addresses() {
        let ips: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            firsts.insert(attempt_order(&ips, 1, None, &mut rng)[0]);
        }
        assert_eq!(firsts.len(), 4, "every address should sometimes go first");
    }

    #[test]
    fn keeps_only_the_bind_address_family() {
        let ips = [ip("10.0.0.1"), ip("2001:db8::1"), ip("10.0.0.2")];
        let mut rng = StdRng::seed_from_u64(3);
        let v4 = attempt_order(&ips, 2300, Some(ip("127.0.0.1")), &mut rng);
        assert_eq!(v4.len(), 2);
        assert!(v4.iter().all(SocketAddr::is_ipv4));
        let v6 = attempt_order(&ips, 2300, Some(ip("::1")), &mut rng);
        assert_eq!(v6, vec!["[2001:db8::1]:2300".parse().unwrap()]);
    }

    #[test]
    fn caps_the_number_of_attempts() {
        let ips: Vec<IpAddr> = (1..=40).map(|i| ip(&format!("10.0.1.{i}"))).collect();
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(attempt_order(&ips, 1, None, &mut rng).len(), MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn an_ip_literal_needs_no_dns() {
        let gw = GatewayAddr::Addr("127.0.0.1:2300".parse().unwrap());
        let addrs = gateway_addresses(&gw, None, None, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:2300".parse().unwrap()]);
        let err = gateway_addresses(
            &gw,
            None,
            Some(ip("::1")),
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}

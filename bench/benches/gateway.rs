//! Micro-benchmarks of the gateway's per-connection decisions: the
//! source-address check at accept, the balancing pick of each policy and an
//! authorization answered from the decision cache (a real cache in front of
//! a real in-process directory, measured with criterion's tokio support).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hsmgate::admission::AddressPolicy;
use hsmgate::balance::{Balancer, Candidate, Policy};
use hsmgate_authz::{CacheConfig, ClientConfig, DecisionCache, DirectoryClient, Query};
use hsmgate_directory::{Directory, DirectoryData};
use hsmgate_wire::StaticKeypair;
use ipnet::IpNet;

/// `n` distinct /24 networks inside 10.0.0.0/8.
fn networks(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 0);
            IpNet::new(IpAddr::V4(ip), 24).expect("valid prefix")
        })
        .collect()
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    for n in [10usize, 10_000] {
        let allow = networks(n);
        let policy = AddressPolicy::new(&allow, &[]);
        // Inside the last network: the worst case of a scan in list order.
        let last = match allow[n - 1] {
            IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) + 7)),
            IpNet::V6(_) => unreachable!("IPv4 networks only"),
        };
        let outside: IpAddr = "192.0.2.1".parse().expect("literal");
        assert!(policy.admits(last) && !policy.admits(outside));
        g.bench_with_input(BenchmarkId::new("admits_last", n), &last, |b, ip| {
            b.iter(|| policy.admits(black_box(*ip)))
        });
        g.bench_with_input(BenchmarkId::new("refuses_outside", n), &outside, |b, ip| {
            b.iter(|| policy.admits(black_box(*ip)))
        });
    }
    g.finish();
}

fn balancing(c: &mut Criterion) {
    let members: Vec<(SocketAddr, u32)> = (0..3)
        .map(|i| (SocketAddr::from(([127, 0, 0, 1], 2401 + i)), 1))
        .collect();
    let candidates: Vec<Candidate> = (0..3)
        .map(|i| Candidate {
            index: i,
            weight: 1,
            active: (i as u64 * 7) % 5,
        })
        .collect();
    let mut g = c.benchmark_group("balance");
    for policy in [
        Policy::RoundRobin,
        Policy::LeastConnections,
        Policy::PowerOfTwo,
        Policy::ConsistentHash,
    ] {
        let balancer = Balancer::new(policy, &members);
        g.bench_function(BenchmarkId::new("choose_of_3", policy.as_str()), |b| {
            b.iter(|| balancer.choose(black_box(&candidates), black_box("bench-client")))
        });
    }
    g.finish();
}

fn authorization(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let key = StaticKeypair::generate().expect("key");
    let data = format!(
        r#"[[tenants]]
name = "bench"
networks = ["127.0.0.0/8"]

[[partitions]]
name = "bench"
tenant = "bench"
pool = "hsm"

[[clients]]
id = "bench-client"
tenant = "bench"
public_key = "{}"
partitions = ["bench"]
"#,
        key.public().to_text()
    );
    let directory = Arc::new(Directory::from_data(
        DirectoryData::from_toml_str(&data).expect("directory data"),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cache = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(hsmgate_directory::serve(directory, listener, async {
            let _ = stopped.await;
        }));
        let client = DirectoryClient::new(&ClientConfig {
            endpoint: format!("http://{addr}"),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            tls: None,
        })
        .expect("client");
        DecisionCache::new(client, &CacheConfig::default())
    });
    let source: IpAddr = "127.0.0.1".parse().expect("literal");
    let query = Query {
        client_id: "bench-client".into(),
        client_static_key: key.public(),
        tenant: "bench".into(),
        partition: "bench".into(),
        source,
        gateway_id: "bench-gw".into(),
    };
    // The first call asks the directory; every later one is a hit.
    let (answer, _) = rt
        .block_on(cache.decide(&query))
        .expect("directory answers");
    let mut g = c.benchmark_group("authz");
    g.bench_function("cache_hit_and_verdict", |b| {
        b.to_async(&rt).iter(|| async {
            let (answer, outcome) = cache.decide(black_box(&query)).await.expect("decision");
            black_box((answer.verdict(source), outcome))
        })
    });
    g.bench_function("verdict_only", |b| {
        b.iter(|| answer.verdict(black_box(source)))
    });
    g.finish();
    let _ = stop.send(());
}

criterion_group!(benches, admission, balancing, authorization);
criterion_main!(benches);

//! Gateway discovery through real DNS: an in-process hickory DNS server on
//! loopback (UDP and TCP), authoritative for `hsm.test.`, answers several A
//! records for the gateway name; the client SDK resolves them through its
//! `dns_server` setting, shuffles them and fails over past dead ones.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::ServerFuture;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hsmgate_client::{ClientConfig, ClientError, ConnectOptions, GatewayAddr, resolve};
use hsmgate_tests::{Options, PATIENCE, World, binary, proc};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

const ZONE: &str = "hsm.test.";
const LIVE_1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LIVE_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Nothing listens here: a gateway instance that is down.
const DEAD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// A listener that accepts and hangs up at once: an instance failing mid-handshake.
const HANGS_UP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// An authoritative DNS server for [`ZONE`] on 127.0.0.1 (UDP and TCP on
/// one ephemeral port). Dropping it stops it.
struct Dns {
    addr: SocketAddr,
    _server: ServerFuture<Catalog>,
}

impl Dns {
    async fn start(records: Vec<Record>) -> Dns {
        let origin = Name::from_ascii(ZONE).expect("zone name");
        let mut authority = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let serial = 1;
        let soa = SOA::new(
            Name::from_ascii("ns.hsm.test.").expect("mname"),
            Name::from_ascii("admin.hsm.test.").expect("rname"),
            serial,
            3600,
            600,
            86400,
            0,
        );
        assert!(
            authority.upsert_mut(
                Record::from_rdata(origin.clone(), 60, RData::SOA(soa)),
                serial
            ),
            "SOA accepted"
        );
        for record in records {
            let shown = record.to_string();
            assert!(
                authority.upsert_mut(record, serial),
                "record {shown} accepted"
            );
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(authority)]);

        let mut server = ServerFuture::new(catalog);
        // UDP and TCP on the same port, as a resolver expects: a few tries
        // in case another process takes the TCP port first.
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns udp");
            let addr = udp.local_addr().expect("dns udp addr");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                server.register_socket(udp);
                server.register_listener(tcp, PATIENCE);
                return Dns {
                    addr,
                    _server: server,
                };
            }
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1");
    }
}

fn a(name: &str, ip: Ipv4Addr) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).expect("record name"),
        60,
        RData::A(A(ip)),
    )
}

fn txt(name: &str, text: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).expect("record name"),
        60,
        RData::TXT(TXT::new(vec![text.to_owned()])),
    )
}

/// A port free on every address of `ips` at the moment of the check (the
/// gateway binds it right after; loopback ephemeral ports are rarely reused
/// that fast).
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind probe");
        let port = first.local_addr().expect("probe addr").port();
        let all_free = ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// The world's client config text with `gateway` turned into a DNS name
/// served by `dns`.
fn named_config(world: &World, gateway: &str, dns: &Dns, extra: &str) -> String {
    let original = world.client_toml();
    let literal = format!("gateway = \"{}\"\n", world.gateway_addr());
    assert!(
        original.contains(&literal),
        "client config has the line {literal:?}"
    );
    format!(
        "{}dns_server = \"{}\"\n{extra}",
        original.replace(&literal, &format!("gateway = \"{gateway}\"\n")),
        dns.addr
    )
}

fn parse_config(text: &str, dir: &Path) -> ClientConfig {
    ClientConfig::from_toml(text, dir).expect("client config with a gateway name is valid")
}

fn accepted(world: &World, listener: &str) -> f64 {
    world.metric(&format!(
        "hsmgate_connections_accepted_total{{listener=\"{listener}\"}}"
    ))
}

/// Two live gateway listeners and a dead address behind one name: every
/// connect succeeds, the load spreads over both live instances, and the
/// dead record is really handed to the failover loop.
#[tokio::test(flavor = "multi_thread")]
async fn round_robin_name_spreads_over_live_gateways_and_skips_a_dead_one() {
    let port = free_port_on(&[LIVE_1, LIVE_2, DEAD]);
    let world = World::start_with(Options {
        listeners: vec![
            ("lo-1".into(), SocketAddr::from((LIVE_1, port))),
            ("lo-6".into(), SocketAddr::from((LIVE_2, port))),
        ],
        ..Options::default()
    })
    .await;
    let dns = Dns::start(vec![
        a("gw.hsm.test.", LIVE_1),
        a("gw.hsm.test.", LIVE_2),
        a("gw.hsm.test.", DEAD),
    ])
    .await;
    let config = parse_config(
        &named_config(&world, &format!("gw.hsm.test:{port}"), &dns, ""),
        world.dir.path(),
    );
    assert_eq!(
        config.gateway,
        GatewayAddr::Name {
            host: "gw.hsm.test".into(),
            port
        }
    );

    // The resolver sees all three records, and the attempt order the SDK
    // builds from them puts the dead address first in about a third of the
    // connects: the failover loop really has to get past it.
    let mut ips = resolve::lookup("gw.hsm.test", Some(dns.addr), PATIENCE)
        .await
        .expect("gw.hsm.test resolves");
    ips.sort();
    assert_eq!(
        ips,
        vec![
            IpAddr::from(LIVE_1),
            IpAddr::from(DEAD),
            IpAddr::from(LIVE_2)
        ]
    );
    let dead = SocketAddr::from((DEAD, port));
    let mut dead_first = 0;
    for _ in 0..60 {
        let order = resolve::gateway_addresses(&config.gateway, config.dns_server, None, PATIENCE)
            .await
            .expect("attempt order");
        assert_eq!(order.len(), 3, "{order:?}");
        if order[0] == dead {
            dead_first += 1;
        }
    }
    assert!(
        (1..60).contains(&dead_first),
        "the dead address went first {dead_first} times in 60 shuffles"
    );

    let connects = 20;
    for i in 0..connects {
        let session = world
            .connect_with(&config, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect {i} through gw.hsm.test: {e}"));
        let ip = session.peer_addr().ip();
        assert!(
            ip == IpAddr::from(LIVE_1) || ip == IpAddr::from(LIVE_2),
            "connect {i} ended at {ip}"
        );
        tokio::time::timeout(PATIENCE, session.ping())
            .await
            .expect("ping in time")
            .unwrap_or_else(|e| panic!("ping {i}: {e}"));
        session.close().await;
    }

    let (one, six) = (accepted(&world, "lo-1"), accepted(&world, "lo-6"));
    assert_eq!(
        one + six,
        f64::from(connects),
        "every connect was accepted by exactly one live listener (lo-1 {one}, lo-6 {six})"
    );
    assert!(
        one >= 1.0 && six >= 1.0,
        "both live gateway instances got connections (lo-1 {one}, lo-6 {six})"
    );
}

/// A gateway instance that accepts and hangs up is a retryable failure: the
/// client moves on to the next record, and we can count that it was tried.
#[tokio::test(flavor = "multi_thread")]
async fn fails_over_past_a_gateway_that_hangs_up() {
    let port = free_port_on(&[LIVE_1, HANGS_UP]);
    let world = World::start_with(Options {
        listeners: vec![("lo-1".into(), SocketAddr::from((LIVE_1, port)))],
        ..Options::default()
    })
    .await;
    let hang_up = TcpListener::bind((HANGS_UP, port))
        .await
        .expect("bind the hanging-up listener");
    let hung_up = Arc::new(AtomicUsize::new(0));
    let hanger: JoinHandle<()> = tokio::spawn({
        let hung_up = Arc::clone(&hung_up);
        async move {
            while let Ok((stream, _)) = hang_up.accept().await {
                hung_up.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        }
    });
    let dns = Dns::start(vec![a("gw.hsm.test.", LIVE_1), a("gw.hsm.test.", HANGS_UP)]).await;
    let config = parse_config(
        &named_config(&world, &format!("gw.hsm.test:{port}"), &dns, ""),
        world.dir.path(),
    );

    let connects = 20;
    for i in 0..connects {
        let session = world
            .connect_with(&config, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect {i}: {e}"));
        assert_eq!(session.peer_addr(), SocketAddr::from((LIVE_1, port)));
        tokio::time::timeout(PATIENCE, session.ping())
            .await
            .expect("ping in time")
            .unwrap_or_else(|e| panic!("ping {i}: {e}"));
        session.close().await;
    }
    hanger.abort();
    let tried = hung_up.load(Ordering::SeqCst);
    // Each connect puts it first with probability 1/2: 0 in 20 is ~1e-6.
    assert!(
        (1..connects).contains(&tried),
        "the hanging-up instance was tried first in {tried} of {connects} connects"
    );
    assert_eq!(accepted(&world, "lo-1"), f64::from(connects as u32));
}

/// A name without A or AAAA records is a resolve error: exit code 4 from
/// the SDK and from the CLI, and no connection is attempted.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_without_records_is_a_resolve_error_with_exit_code_4() {
    let world = World::start().await;
    let dns = Dns::start(vec![
        a("gw.hsm.test.", LIVE_1),
        txt("text-only.hsm.test.", "no addresses here"),
    ])
    .await;
    let port = world.gateway_addr().port();

    for host in ["absent.hsm.test", "text-only.hsm.test"] {
        let text = named_config(&world, &format!("{host}:{port}"), &dns, "");
        let config = parse_config(&text, world.dir.path());
        let err = match world
            .connect_with(&config, &ConnectOptions::default())
            .await
        {
            Ok(_) => panic!("{host} has no address, yet the connect succeeded"),
            Err(e) => e,
        };
        assert!(
            matches!(&err, ClientError::Resolve { host: h, .. } if h == host),
            "{host}: expected a resolve error, got {err:?}"
        );
        assert_eq!(err.exit_code(), 4, "{host}: {err}");
        assert!(err.to_string().contains(host), "{err}");

        // The CLI says the same.
        let path = world.dir.path().join(format!("{host}.toml"));
        std::fs::write(&path, &text).expect("write client config");
        let mut cmd = std::process::Command::new(binary("hsmgate-client"));
        cmd.arg("--config").arg(&path).arg("ping");
        let out = proc::run_async(cmd, PATIENCE * 2).await;
        assert_eq!(out.code(), Some(4), "{out}");
        assert!(
            out.stderr.contains("cannot resolve gateway") && out.stderr.contains(host),
            "{out}"
        );
    }
    assert_eq!(accepted(&world, "main"), 0.0, "nothing reached the gateway");

    // The same world and DNS server do serve the name that exists.
    let text = named_config(&world, &format!("gw.hsm.test:{port}"), &dns, "");
    let session = world
        .connect_with(
            &parse_config(&text, world.dir.path()),
            &ConnectOptions::default(),
        )
        .await
        .expect("gw.hsm.test resolves and serves");
    session.ping().await.expect("ping");
    session.close().await;
}

/// No DNS server answering: a resolve error (exit 4) within the budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_dns_server_is_a_resolve_error_in_bounded_time() {
    let world = World::start().await;
    // A bound UDP socket that never answers (and no TCP listener).
    let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let dns = silent.local_addr().expect("addr");
    let port = world.gateway_addr().port();
    let original = world.client_toml();
    let literal = format!("gateway = \"{}\"\n", world.gateway_addr());
    let text = format!(
        "{}dns_server = \"{dns}\"\n",
        original
            .replace(&literal, &format!("gateway = \"gw.hsm.test:{port}\"\n"))
            .replace("connect_timeout_ms = 2000", "connect_timeout_ms = 300")
    );
    let config = parse_config(&text, world.dir.path());
    let started = std::time::Instant::now();
    let err = match world
        .connect_with(&config, &ConnectOptions::default())
        .await
    {
        Ok(_) => panic!("no DNS answer, yet the connect succeeded"),
        Err(e) => e,
    };
    assert!(
        matches!(err, ClientError::Resolve { .. }),
        "expected a resolve error, got {err:?}"
    );
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
}

//! DNS discovery of pool members (`[[pools]] dns`), against a DNS server on
//! loopback whose answers each test changes while the gateway runs: the
//! pool follows the answer, keeps its last good members when DNS fails or
//! answers nothing, and keeps them across a reload.
//!
//! The harness's HSM nodes share 127.0.0.1 on different ports, so the
//! gateway tests use SRV records (`_hsm._tcp.test.` → `hsm-N.test.` with
//! each node's port); the A/AAAA form is checked through
//! `hsmgate::discovery::resolve` against the same server.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hsmgate::GatewayConfig;
use hsmgate::config::DiscoveryConfig;
use hsmgate::discovery::{self, DiscoveryError, DnsTarget};
use hsmgate_tests::{Options, PATIENCE, POOL, World};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const SERVICE: &str = "_hsm._tcp.test.";
/// TTL of every record the test server gives: the gateway resolves again
/// after `max(TTL, discovery.min_ttl_secs)`, 1 s here.
const TTL: u32 = 1;

/// How the test DNS server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From the records (NOERROR and no answer when none matches).
    Answer,
    /// SERVFAIL to every query.
    ServFail,
    /// No answer at all.
    Silent,
}

struct DnsState {
    records: Vec<Record>,
    mode: Mode,
    /// SRV queries received, answered or not.
    srv_queries: usize,
}

/// A minimal UDP DNS server on 127.0.0.1: answers each query with the
/// records of the same name and type from a list the test can replace.
struct TestDns {
    addr: SocketAddr,
    state: Arc<Mutex<DnsState>>,
    task: JoinHandle<()>,
}

impl TestDns {
    async fn start(records: Vec<Record>) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let state = Arc::new(Mutex::new(DnsState {
            records,
            mode: Mode::Answer,
            srv_queries: 0,
        }));
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..len]) else {
                        continue;
                    };
                    let Some(answer) = respond(&query, &mut state.lock().expect("dns state"))
                    else {
                        continue;
                    };
                    let bytes = answer.to_vec().expect("encode the answer");
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, state, task }
    }

    fn set_records(&self, records: Vec<Record>) {
        let mut state = self.state.lock().expect("dns state");
        state.records = records;
        state.mode = Mode::Answer;
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("dns state").mode = mode;
    }

    fn srv_queries(&self) -> usize {
        self.state.lock().expect("dns state").srv_queries
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(query: &Message, state: &mut DnsState) -> Option<Message> {
    state.srv_queries += query
        .queries()
        .iter()
        .filter(|q| q.query_type() == RecordType::SRV)
        .count();
    if state.mode == Mode::Silent || query.message_type() != MessageType::Query {
        return None;
    }
    let mut answer = Message::new();
    answer
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().to_vec());
    if state.mode == Mode::ServFail {
        answer.set_response_code(ResponseCode::ServFail);
        return Some(answer);
    }
    answer.set_response_code(ResponseCode::NoError);
    for q in query.queries() {
        let asked = LowerName::from(q.name());
        answer.add_answers(
            state
                .records
                .iter()
                .filter(|r| LowerName::from(r.name()) == asked && r.record_type() == q.query_type())
                .cloned(),
        );
    }
    Some(answer)
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("record name")
}

fn a(host: &str, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name(host), TTL, RData::A(A(ip)))
}

fn aaaa(host: &str, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(host), TTL, RData::AAAA(AAAA(ip)))
}

fn srv(service: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(service),
        TTL,
        RData::SRV(SRV::new(priority, weight, port, name(target))),
    )
}

/// SRV records that advertise the given HSM nodes of `world` (indexes into
/// `world.hsms`), each as `hsm-N.test.` with an A record for 127.0.0.1.
fn advertise(world: &World, nodes: &[usize]) -> Vec<Record> {
    let mut records = Vec::new();
    for &i in nodes {
        let hsm = &world.hsms[i];
        let target = format!("{}.test.", hsm.id);
        records.push(srv(SERVICE, 10, 1, hsm.pool_addr.port(), &target));
        let SocketAddr::V4(v4) = hsm.pool_addr else {
            panic!("the harness's HSM nodes listen on IPv4 loopback");
        };
        records.push(a(&target, *v4.ip()));
    }
    records
}

/// Quick discovery timings for tests (the DNS server comes from `pool_dns`).
fn quick_discovery(config: &mut GatewayConfig) {
    config.discovery.min_ttl_secs = 1;
    config.discovery.retry_secs = 1;
    config.discovery.timeout_ms = 300;
}

fn dns_world(dns: &TestDns) -> Options {
    Options {
        pool_dns: Some((SERVICE.into(), dns.addr)),
        tweak: quick_discovery,
        ..Options::default()
    }
}

fn updates(world: &World, result: &str) -> f64 {
    world.metric(&format!(
        "hsmgate_discovery_updates_total{{pool=\"{POOL}\",result=\"{result}\"}}"
    ))
}

fn pool_members(world: &World) -> f64 {
    world.metric(&format!("hsmgate_pool_members{{pool=\"{POOL}\"}}"))
}

/// The pool's current member addresses.
fn members(world: &World) -> BTreeSet<SocketAddr> {
    let snapshot = world.gateway.snapshot();
    let pool = snapshot.pools.get(POOL).expect("the pool");
    pool.members().iter().map(|m| m.addr).collect()
}

fn addrs(world: &World, nodes: &[usize]) -> BTreeSet<SocketAddr> {
    nodes.iter().map(|&i| world.hsms[i].pool_addr).collect()
}

/// Poll `done` every 50 ms until it holds; fail after [`PATIENCE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open `n` sessions one after the other; the HSM node of each.
async fn landings(world: &World, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let session = world
            .connect(None)
            .await
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        session.ping().await.expect("ping");
        ids.push(session.hsm_id().to_owned());
        session.close().await;
    }
    ids
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_members_follow_the_answer_and_survive_dns_failures() {
    // No records yet: the HSM nodes' ports are known once the world runs.
    let dns = TestDns::start(Vec::new()).await;
    let world = World::start_with(dns_world(&dns)).await;
    dns.set_records(advertise(&world, &[0, 1]));
    eventually("the pool has the two advertised nodes", || {
        members(&world) == addrs(&world, &[0, 1])
    })
    .await;
    assert_eq!(pool_members(&world), 2.0);

    // Sessions land only on the advertised nodes, on both (round-robin).
    let landed: BTreeSet<String> = landings(&world, 6).await.into_iter().collect();
    assert_eq!(landed, ids(&["hsm-1", "hsm-2"]));

    // The answer changes to the third node: new sessions go there.
    let changed_before = updates(&world, "changed");
    dns.set_records(advertise(&world, &[2]));
    eventually("the pool follows the new answer", || {
        members(&world) == addrs(&world, &[2])
    })
    .await;
    assert_eq!(updates(&world, "changed"), changed_before + 1.0);
    assert_eq!(pool_members(&world), 1.0);
    assert_eq!(landings(&world, 3).await, ["hsm-3", "hsm-3", "hsm-3"]);

    // An empty answer, SERVFAIL, then silence: each is counted, and the
    // last good set keeps serving.
    for (mode, result) in [
        (None, "empty"),
        (Some(Mode::ServFail), "error"),
        (Some(Mode::Silent), "error"),
    ] {
        let before = updates(&world, result);
        match mode {
            None => dns.set_records(Vec::new()),
            Some(mode) => dns.set_mode(mode),
        }
        eventually(&format!("a resolution counted as {result}"), || {
            updates(&world, result) > before
        })
        .await;
        assert_eq!(members(&world), addrs(&world, &[2]), "after {result}");
        assert_eq!(pool_members(&world), 1.0);
        assert_eq!(landings(&world, 2).await, ["hsm-3", "hsm-3"], "{result}");
    }

    // DNS answers again, with the first node: followed again.
    dns.set_records(advertise(&world, &[0]));
    eventually("the pool follows DNS once it answers again", || {
        members(&world) == addrs(&world, &[0])
    })
    .await;
    assert_eq!(landings(&world, 2).await, ["hsm-1", "hsm-1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_dns_pool_members() {
    let dns = TestDns::start(Vec::new()).await;
    let world = World::start_with(dns_world(&dns)).await;
    dns.set_records(advertise(&world, &[0, 1]));
    eventually("the pool has the two advertised nodes", || {
        members(&world) == addrs(&world, &[0, 1])
    })
    .await;

    // DNS goes silent, then the config is reloaded: the new generation's
    // pool starts from the old pool's members and keeps them, since DNS
    // gives nothing better.
    dns.set_mode(Mode::Silent);
    let mut config = world.gateway.config();
    config.limits.hsm_connect_retries = 1;
    let generation = world.gateway.reload(config.clone()).expect("reload");
    assert_eq!(world.gateway.snapshot().generation, generation);
    assert_eq!(
        members(&world),
        addrs(&world, &[0, 1]),
        "seeded at once, before any resolution"
    );
    let errors = updates(&world, "error");
    eventually("a failed resolution in the new generation", || {
        updates(&world, "error") > errors
    })
    .await;
    assert_eq!(members(&world), addrs(&world, &[0, 1]));
    let landed: BTreeSet<String> = landings(&world, 4).await.into_iter().collect();
    assert_eq!(landed, ids(&["hsm-1", "hsm-2"]));

    // A reload that names another service does not carry the old members
    // over: the pool is what the new name resolves to.
    let other = "_other._tcp.test.";
    let mut records = advertise(&world, &[0, 1]);
    let hsm3 = &world.hsms[2];
    records.push(srv(other, 0, 1, hsm3.pool_addr.port(), "hsm-3.test."));
    records.push(a("hsm-3.test.", Ipv4Addr::LOCALHOST));
    dns.set_records(records);
    config.pools[0].dns = Some(other.into());
    world
        .gateway
        .reload(config)
        .expect("reload with another name");
    eventually("the pool follows the new name", || {
        members(&world) == addrs(&world, &[2])
    })
    .await;
    assert_eq!(landings(&world, 2).await, ["hsm-3", "hsm-3"]);
}

/// The answer's TTL decides when the gateway asks again, within
/// `[discovery] min_ttl_secs..=max_ttl_secs`: an hour-long TTL clamped to a
/// 2 s maximum means no query for a second after an answer, then a new one.
#[tokio::test(flavor = "multi_thread")]
async fn resolves_again_when_the_clamped_ttl_expires() {
    let dns = TestDns::start(Vec::new()).await;
    let world = World::start_with(Options {
        tweak: |c| {
            quick_discovery(c);
            c.discovery.max_ttl_secs = 2;
        },
        ..dns_world(&dns)
    })
    .await;
    let hour: Vec<Record> = advertise(&world, &[0])
        .into_iter()
        .map(|mut r| {
            r.set_ttl(3_600);
            r
        })
        .collect();
    dns.set_records(hour);
    eventually("the first answer is in force", || {
        members(&world) == addrs(&world, &[0])
    })
    .await;
    let after_answer = dns.srv_queries();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        dns.srv_queries(),
        after_answer,
        "no query while the answer is valid (min_ttl_secs and retry_secs are 1 s)"
    );
    eventually("a new query once the clamped TTL expired", || {
        dns.srv_queries() > after_answer
    })
    .await;
    eventually("the unchanged answer is counted", || {
        updates(&world, "unchanged") >= 1.0
    })
    .await;
    assert_eq!(members(&world), addrs(&world, &[0]));
}

fn resolver_for(dns: &TestDns) -> hickory_resolver::TokioResolver {
    discovery::resolver(&DiscoveryConfig {
        nameserver: Some(dns.addr),
        timeout_ms: 300,
        ..DiscoveryConfig::default()
    })
    .expect("resolver")
}

fn sock(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

/// `host:port`: every A and AAAA address on the port, weight 1, with the
/// records' TTL.
#[tokio::test]
async fn host_and_port_takes_every_a_and_aaaa_address() {
    let dns = TestDns::start(vec![
        a("hsm.test.", Ipv4Addr::new(127, 0, 0, 2)),
        a("hsm.test.", Ipv4Addr::new(127, 0, 0, 1)),
        aaaa("hsm.test.", Ipv6Addr::LOCALHOST),
        a("other.test.", Ipv4Addr::new(127, 0, 0, 9)),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let target = DnsTarget::parse("hsm.test:2400").expect("target");
    let answer = discovery::resolve(&resolver, &target)
        .await
        .expect("hsm.test resolves");
    assert_eq!(
        answer.members,
        [
            (sock("127.0.0.1:2400"), 1),
            (sock("127.0.0.2:2400"), 1),
            (sock("[::1]:2400"), 1)
        ]
    );
    assert!(
        answer.valid_for <= Duration::from_secs(u64::from(TTL)),
        "{:?}",
        answer.valid_for
    );

    // A name without addresses is "empty", a failing server an error.
    let absent = DnsTarget::parse("absent.test:2400").expect("target");
    let err = discovery::resolve(&resolver, &absent)
        .await
        .expect_err("no records");
    assert!(matches!(err, DiscoveryError::Empty(_)), "{err:?}");
    dns.set_mode(Mode::ServFail);
    let err = discovery::resolve(&resolver, &target)
        .await
        .expect_err("SERVFAIL");
    assert!(matches!(err, DiscoveryError::Failed(_)), "{err:?}");
}

/// SRV: the lowest priority group only, the record's port and weight
/// (clamped to 1..=100), targets resolved to their addresses.
#[tokio::test]
async fn srv_takes_the_lowest_priority_group_with_ports_and_weights() {
    let dns = TestDns::start(vec![
        srv(SERVICE, 10, 60, 2401, "a.test."),
        srv(SERVICE, 10, 500, 2402, "b.test."),
        srv(SERVICE, 10, 0, 2403, "nowhere.test."),
        srv(SERVICE, 20, 1, 2409, "backup.test."),
        a("a.test.", Ipv4Addr::new(127, 0, 0, 1)),
        a("b.test.", Ipv4Addr::new(127, 0, 0, 2)),
        aaaa("b.test.", Ipv6Addr::LOCALHOST),
        a("backup.test.", Ipv4Addr::new(127, 0, 0, 3)),
    ])
    .await;
    let resolver = resolver_for(&dns);
    let target = DnsTarget::parse(SERVICE).expect("target");
    let answer = discovery::resolve(&resolver, &target)
        .await
        .expect("the service resolves");
    assert_eq!(
        answer.members,
        [
            (sock("127.0.0.1:2401"), 60),
            (sock("127.0.0.2:2402"), 100),
            (sock("[::1]:2402"), 100)
        ],
        "nowhere.test has no address and backup.test has a higher priority"
    );
}

//! Decision cache against a real tonic server on 127.0.0.1: hits, expiry,
//! short-lived denials, errors never cached, coalesced misses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hsmgate_authz::pb::directory_server::{Directory, DirectoryServer};
use hsmgate_authz::tls::FailureKind;
use hsmgate_authz::{
    AuthzError, CacheConfig, CacheOutcome, ClientConfig, ConnectObserver, ControlThread,
    DecisionCache, DenyKind, DirectoryClient, Query, Reason, Verdict, pb,
};
use hsmgate_wire::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Answers by client id: `bad-key` → KEY_MISMATCH, `ghost` → UNKNOWN_CLIENT,
/// `far` → NETWORK_NOT_ALLOWED, `broken` → an unparseable network, anything
/// else → ALLOW from 127.0.0.1.
#[derive(Clone)]
struct TestDirectory {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    ttl_seconds: u32,
}

#[tonic::async_trait]
impl Directory for TestDirectory {
    async fn authorize(
        &self,
        request: tonic::Request<pb::AuthorizeRequest>,
    ) -> Result<tonic::Response<pb::AuthorizeResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let (decision, reason, network) = match request.get_ref().client_id.as_str() {
            "bad-key" => (pb::Decision::Deny, pb::Reason::KeyMismatch, "127.0.0.1/32"),
            "ghost" => (
                pb::Decision::Deny,
                pb::Reason::UnknownClient,
                "127.0.0.1/32",
            ),
            "far" => (
                pb::Decision::Deny,
                pb::Reason::NetworkNotAllowed,
                "10.0.0.0/8",
            ),
            "broken" => (pb::Decision::Allow, pb::Reason::Ok, "127.0.0.1/33"),
            _ => (pb::Decision::Allow, pb::Reason::Ok, "127.0.0.1/32"),
        };
        Ok(tonic::Response::new(pb::AuthorizeResponse {
            decision: decision as i32,
            reason: reason as i32,
            pool: "default".into(),
            allowed_networks: vec![network.into()],
            max_sessions: 8,
            ttl_seconds: self.ttl_seconds,
        }))
    }
}

struct RunningServer {
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task");
    }
}

async fn start_server(listener: TcpListener, delay: Duration, ttl_seconds: u32) -> RunningServer {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = TestDirectory {
        calls: calls.clone(),
        delay,
        ttl_seconds,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .serve_with_incoming_shutdown(
                DirectoryServer::new(service),
                TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("test server");
    });
    RunningServer {
        calls,
        stop: Some(stop),
        task,
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

fn cache(addr: SocketAddr, config: CacheConfig) -> DecisionCache {
    let client = DirectoryClient::new(&ClientConfig {
        endpoint: format!("http://{addr}"),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        tls: None,
    })
    .expect("client");
    DecisionCache::new(client, &config)
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        endpoint: format!("http://{addr}"),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        tls: None,
    }
}

/// Names of the threads that saw a failed connection to the directory.
#[derive(Default)]
struct ThreadsThatConnected(std::sync::Mutex<Vec<String>>);

impl ConnectObserver for ThreadsThatConnected {
    fn failed(&self, _: FailureKind, _: &str) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.0.lock().expect("lock").push(name);
    }
}

/// Threads of this process named like the control thread (the kernel
/// keeps 15 bytes of a thread's name).
fn control_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "hsmgate-control")
        .count()
}

/// `n` decisions for `client_id` on tasks of their own, all at once; their
/// outcomes.
async fn decide_at_once(cache: &DecisionCache, n: usize, client_id: &str) -> Vec<CacheOutcome> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let cache = cache.clone();
            let query = query(client_id);
            tokio::spawn(async move { cache.decide(&query).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("decision").1);
    }
    outcomes
}

fn query(client_id: &str) -> Query {
    Query {
        client_id: client_id.into(),
        client_static_key: PublicKey([7; 32]),
        tenant: "demo".into(),
        partition: "demo".into(),
        source: IpAddr::from([127, 0, 0, 1]),
        gateway_id: "gw-test".into(),
    }
}

#[tokio::test]
async fn second_decision_is_a_hit() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 60).await;
    let cache = cache(addr, CacheConfig::default());

    let (first, outcome) = cache.decide(&query("app")).await.expect("first");
    assert_eq!(outcome, CacheOutcome::Miss);
    let (second, outcome) = cache.decide(&query("app")).await.expect("second");
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(first, second);
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        second.verdict(IpAddr::from([127, 0, 0, 1])),
        Verdict::Allow {
            pool: "default".into(),
            max_sessions: 8
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn source_address_is_not_part_of_the_key() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 60).await;
    let cache = cache(addr, CacheConfig::default());

    let mut q = query("far");
    q.source = IpAddr::from([192, 168, 0, 1]);
    let (answer, outcome) = cache.decide(&q).await.expect("first");
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(answer.verdict(q.source), Verdict::Deny(DenyKind::Address));
    // The cached NETWORK deny is re-evaluated for an allowed address.
    q.source = IpAddr::from([10, 1, 1, 1]);
    let (answer, outcome) = cache.decide(&q).await.expect("second");
    assert_eq!(outcome, CacheOutcome::Hit);
    assert!(matches!(answer.verdict(q.source), Verdict::Allow { .. }));
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn expired_answer_leads_to_a_new_call() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 1).await;
    let cache = cache(addr, CacheConfig::default());

    assert_eq!(
        cache.decide(&query("app")).await.expect("1").1,
        CacheOutcome::Miss
    );
    assert_eq!(
        cache.decide(&query("app")).await.expect("2").1,
        CacheOutcome::Hit
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cache.decide(&query("app")).await.expect("3").1,
        CacheOutcome::Miss
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn max_ttl_caps_the_directory_ttl() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 3600).await;
    let cache = cache(
        addr,
        CacheConfig {
            max_ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        },
    );

    assert_eq!(
        cache.decide(&query("app")).await.expect("1").1,
        CacheOutcome::Miss
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cache.decide(&query("app")).await.expect("2").1,
        CacheOutcome::Miss
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn identity_deny_is_cached_only_for_the_deny_ttl() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 60).await;
    let cache = cache(
        addr,
        CacheConfig {
            deny_ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        },
    );

    let (answer, outcome) = cache.decide(&query("bad-key")).await.expect("1");
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(
        answer.verdict(IpAddr::from([127, 0, 0, 1])),
        Verdict::Deny(DenyKind::Identity(Reason::KeyMismatch))
    );
    assert_eq!(
        cache.decide(&query("bad-key")).await.expect("2").1,
        CacheOutcome::Hit
    );
    // An allow with the same directory TTL outlives the deny.
    assert_eq!(
        cache.decide(&query("app")).await.expect("3").1,
        CacheOutcome::Miss
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cache.decide(&query("bad-key")).await.expect("4").1,
        CacheOutcome::Miss
    );
    assert_eq!(
        cache.decide(&query("app")).await.expect("5").1,
        CacheOutcome::Hit
    );
    assert_eq!(server.calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn errors_are_not_cached() {
    let (l, addr) = listener().await;
    drop(l); // nothing listens: the directory is down
    let cache = cache(addr, CacheConfig::default());

    let err = cache
        .decide(&query("app"))
        .await
        .expect_err("directory down");
    assert!(matches!(err, AuthzError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());

    let l = TcpListener::bind(addr).await.expect("rebind");
    let server = start_server(l, Duration::ZERO, 60).await;
    let (_, outcome) = cache.decide(&query("app")).await.expect("directory back");
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_answers_are_not_cached() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 60).await;
    let cache = cache(addr, CacheConfig::default());

    for _ in 0..2 {
        let err = cache
            .decide(&query("broken"))
            .await
            .expect_err("bad network");
        assert!(matches!(err, AuthzError::BadAnswer(_)), "{err}");
        assert!(!err.is_retryable());
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_directory_call() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::from_millis(200), 60).await;
    let cache = cache(addr, CacheConfig::default());

    let outcomes = decide_at_once(&cache, 20, "app").await;
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    let count = |o| outcomes.iter().filter(|&&x| x == o).count();
    assert_eq!(count(CacheOutcome::Miss), 1);
    assert_eq!(count(CacheOutcome::Coalesced), 19);
    server.stop().await;
}

/// A stranger can make up tenants and partitions (and, for an unknown id,
/// keys) for free: the denial is cached under what the directory checked,
/// so the flood costs one directory call per identity per deny TTL.
#[tokio::test]
async fn made_up_identities_cost_one_directory_call_each() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::ZERO, 60).await;
    let cache = cache(addr, CacheConfig::default());
    let variant = |client_id: &str, i: u8| Query {
        client_static_key: PublicKey([i; 32]),
        tenant: format!("tenant-{i}"),
        partition: format!("partition-{i}"),
        ..query(client_id)
    };
    for i in 0..20 {
        let (answer, _) = cache.decide(&variant("ghost", i)).await.expect("answer");
        assert_eq!(answer.reason, Reason::UnknownClient);
    }
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        1,
        "an unknown id: one call, whatever key, tenant or partition"
    );
    for i in 0..20 {
        let q = Query {
            client_static_key: PublicKey([9; 32]),
            ..variant("bad-key", i)
        };
        let (answer, _) = cache.decide(&q).await.expect("answer");
        assert_eq!(answer.reason, Reason::KeyMismatch);
    }
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        2,
        "a wrong key for a known id: one call, whatever tenant or partition"
    );
    let (_, outcome) = cache
        .decide(&variant("bad-key", 3))
        .await
        .expect("another key");
    assert_eq!(
        outcome,
        CacheOutcome::Miss,
        "another key is another identity"
    );
    // A real client is not affected by a stranger's denials.
    let (answer, _) = cache.decide(&query("app")).await.expect("app");
    assert_eq!(answer.reason, Reason::Ok);
    server.stop().await;
}

/// A cache on the control thread decides as one on the caller's task does
/// (misses, hits, coalescing, errors not cached), and its connections are
/// made on that thread, which ends with the last cache using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_the_control_thread_asks_from_there() {
    let (l, addr) = listener().await;
    let server = start_server(l, Duration::from_millis(100), 60).await;
    let before = control_threads();
    let thread = ControlThread::start().expect("control thread");
    // The thread names itself once it runs.
    assert_eq!(control_threads_become(before + 1).await, before + 1);
    let cache = DecisionCache::on_thread(
        &thread,
        &client_config(addr),
        Arc::new(hsmgate_authz::IgnoreFailures),
        &CacheConfig::default(),
    )
    .expect("cache");

    let outcomes = decide_at_once(&cache, 10, "app").await;
    let count = |o| outcomes.iter().filter(|&&x| x == o).count();
    assert_eq!(count(CacheOutcome::Miss), 1, "{outcomes:?}");
    assert_eq!(count(CacheOutcome::Coalesced), 9, "{outcomes:?}");
    let (_, outcome) = cache.decide(&query("app")).await.expect("hit");
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(server.calls.load(Ordering::SeqCst), 1);
    server.stop().await;

    // The directory is gone: the error comes back through the thread and
    // is not cached; the failed connection was made on the thread.
    let observer = Arc::new(ThreadsThatConnected::default());
    let down = DecisionCache::on_thread(
        &thread,
        &client_config(addr),
        observer.clone(),
        &CacheConfig::default(),
    )
    .expect("cache");
    for _ in 0..2 {
        let err = down.decide(&query("other")).await.expect_err("down");
        assert!(matches!(err, AuthzError::Unavailable(_)), "{err}");
    }
    let seen = observer.0.lock().expect("lock").clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|t| t == "hsmgate-control"), "{seen:?}");

    drop((cache, down, thread));
    assert_eq!(
        control_threads_become(before).await,
        before,
        "the control thread outlived its caches"
    );
}

/// The number of control threads once it is `want`, or after 2 s.
async fn control_threads_become(want: usize) -> usize {
    let mut now = control_threads();
    for _ in 0..100 {
        if now == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = control_threads();
    }
    now
}

//! HSM pools: named lists of HSM nodes, a round-robin pick, and connecting
//! with a timeout and retries on other members before any byte is forwarded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Pool {
    name: String,
    members: Vec<Member>,
    next: AtomicUsize,
}

/// One HSM node of a pool and what the health checker last concluded.
#[derive(Debug)]
pub struct Member {
    pub addr: SocketAddr,
    /// Members start healthy, so that a fresh gateway serves at once; the
    /// health checker (`health.rs`) takes them out and brings them back.
    healthy: AtomicBool,
}

impl Member {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(config: &PoolConfig) -> Pool {
        Pool {
            name: config.name.clone(),
            members: config
                .members
                .iter()
                .map(|&addr| Member {
                    addr,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn healthy_count(&self) -> usize {
        self.members.iter().filter(|m| m.is_healthy()).count()
    }

    /// The healthy members in the order this session should try them:
    /// round-robin start, then the others in list order.
    pub fn pick_order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.members.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n)
            .map(move |i| &self.members[(start + i) % n])
            .filter(|m| m.is_healthy())
            .map(|m| m.addr)
    }
}

/// Every configured pool, by name.
#[derive(Debug, Default)]
pub struct Pools(HashMap<String, Arc<Pool>>);

impl Pools {
    pub fn new(configs: &[PoolConfig]) -> Pools {
        Pools(
            configs
                .iter()
                .map(|c| (c.name.clone(), Arc::new(Pool::new(c))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.0.values()
    }
}

/// Why no HSM node could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no member of pool {pool} answered ({attempts} attempts, last: {last})")]
pub struct ConnectError {
    pub pool: String,
    pub attempts: usize,
    pub last: String,
}

/// A connected HSM node.
pub struct Connected {
    pub stream: TcpStream,
    pub member: SocketAddr,
    pub attempts: usize,
}

/// Connect to one member of `pool`: the round-robin pick first, then up to
/// `retries` others, each attempt bounded by `timeout` and all by `deadline`.
pub async fn connect(
    pool: &Pool,
    timeout: Duration,
    retries: usize,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<Connected, ConnectError> {
    let mut attempts = 0;
    let mut last = String::from("no healthy member");
    for member in pool.pick_order().take(retries + 1) {
        let now = Instant::now();
        if now >= deadline {
            last = "session deadline passed".into();
            break;
        }
        attempts += 1;
        let bound = timeout.min(deadline - now);
        let member_label = member.to_string();
        let result = match tokio::time::timeout(bound, TcpStream::connect(member)).await {
            Ok(Ok(stream)) => {
                metrics
                    .backend_connect
                    .with_label_values(&[pool.name(), &member_label, "ok"])
                    .inc();
                return Ok(Connected {
                    stream,
                    member,
                    attempts,
                });
            }
            Ok(Err(e)) => ("error", e.to_string()),
            Err(_) => (
                "timeout",
                format!("no answer within {} ms", bound.as_millis()),
            ),
        };
        metrics
            .backend_connect
            .with_label_values(&[pool.name(), &member_label, result.0])
            .inc();
        tracing::warn!(pool = pool.name(), member = %member, reason = %result.1, "HSM node connect failed");
        last = format!("{member}: {}", result.1);
    }
    Err(ConnectError {
        pool: pool.name().to_owned(),
        attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(members: &[&str]) -> Pool {
        Pool::new(&PoolConfig {
            name: "p".into(),
            members: members.iter().map(|m| m.parse().expect("addr")).collect(),
        })
    }

    #[test]
    fn round_robin_rotates_the_first_choice() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let firsts: Vec<u16> = (0..6)
            .map(|_| p.pick_order().next().expect("member").port())
            .collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        let order: Vec<u16> = p.pick_order().map(|a| a.port()).collect();
        assert_eq!(order, [1, 2, 3]);
        let order: Vec<u16> = p.pick_order().map(|a| a.port()).collect();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn unhealthy_members_are_not_picked() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        p.members()[1].set_healthy(false);
        for _ in 0..6 {
            assert!(p.pick_order().all(|a| a.port() != 2));
        }
        assert_eq!(p.healthy_count(), 2);
        for m in p.members() {
            m.set_healthy(false);
        }
        assert_eq!(p.pick_order().count(), 0);
        p.members()[1].set_healthy(true);
        assert_eq!(p.pick_order().map(|a| a.port()).collect::<Vec<_>>(), [2]);
    }

    #[tokio::test]
    async fn connect_skips_a_dead_member() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        // A port that was just free: nothing listens there.
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let p = Pool::new(&PoolConfig {
            name: "p".into(),
            members: vec![dead_addr, live_addr],
        });
        let metrics = Metrics::new().expect("metrics");
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = connect(&p, Duration::from_secs(1), 2, deadline, &metrics)
            .await
            .expect("live member reached");
        assert_eq!(c.member, live_addr);
        assert_eq!(c.attempts, 2);
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "member=\"{dead_addr}\",pool=\"p\",result=\"error\"}} 1"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn connect_gives_up_after_the_retry_budget() {
        let dead: Vec<SocketAddr> = (0..3)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr")
            })
            .collect();
        let p = Pool::new(&PoolConfig {
            name: "p".into(),
            members: dead,
        });
        let metrics = Metrics::new().expect("metrics");
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = connect(&p, Duration::from_secs(1), 1, deadline, &metrics)
            .await
            .err()
            .expect("nothing listens");
        assert_eq!(e.attempts, 2);
    }
}

//! Active health checks: every member of every pool is probed with the HSM
//! node's protocol-level probe (PING → PONG, no client session). A member
//! leaves the rotation after `unhealthy_after` consecutive failures and
//! returns after `healthy_after` consecutive successes.

use std::sync::Arc;
use std::time::Duration;

use hsmgate_hsm::probe;

use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::pool::{Member, Pools};

/// Probe every member until `stop` completes.
pub async fn run(
    pools: &Pools,
    config: &HealthConfig,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) {
    let mut checks = tokio::task::JoinSet::new();
    for pool in pools.iter() {
        for index in 0..pool.members().len() {
            let pool = Arc::clone(pool);
            let config = config.clone();
            let metrics = metrics.clone();
            checks.spawn(async move {
                let member = &pool.members()[index];
                check_member(pool.name(), member, &config, &metrics).await;
            });
        }
    }
    stop.await;
    checks.shutdown().await;
}

async fn check_member(pool: &str, member: &Member, config: &HealthConfig, metrics: &Metrics) {
    let label = member.addr.to_string();
    let gauge = metrics.backend_healthy.with_label_values(&[pool, &label]);
    gauge.set(i64::from(member.is_healthy()));
    let interval = Duration::from_millis(config.interval_ms);
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut tracker = Tracker::new(member.is_healthy(), config);
    // Members start healthy: the first probe is one interval away.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe::check(member.addr, timeout).await;
        let ok = result.is_ok();
        if let Some(now_healthy) = tracker.observe(ok) {
            member.set_healthy(now_healthy);
            gauge.set(i64::from(now_healthy));
            match result {
                Ok(hsm_id) => {
                    tracing::info!(pool, member = %member.addr, %hsm_id, "HSM node healthy again")
                }
                Err(e) => {
                    tracing::warn!(pool, member = %member.addr, error = %e, "HSM node unhealthy: out of rotation")
                }
            }
        }
    }
}

/// Consecutive-result hysteresis.
#[derive(Debug)]
struct Tracker {
    healthy: bool,
    streak: u32,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl Tracker {
    fn new(healthy: bool, config: &HealthConfig) -> Tracker {
        Tracker {
            healthy,
            streak: 0,
            unhealthy_after: config.unhealthy_after,
            healthy_after: config.healthy_after,
        }
    }

    /// Record one probe; returns the new state when it changes.
    fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok {
            self.healthy_after
        } else {
            self.unhealthy_after
        };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_only_after_a_streak() {
        let config = HealthConfig {
            unhealthy_after: 2,
            healthy_after: 3,
            ..HealthConfig::default()
        };
        let mut t = Tracker::new(true, &config);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the failure streak");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None);
    }
}

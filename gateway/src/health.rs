//! Active health checks: every member of every pool is probed with the HSM
//! node's protocol-level probe (PING → PONG, no client session), which also
//! shows that a TCP connect works. A member leaves the rotation after
//! `unhealthy_after` consecutive failures and returns after `healthy_after`
//! consecutive successes. Each round probes the pool's current member set,
//! so members that DNS discovery adds or removes are followed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_hsm::probe;

use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::pool::{Pool, Pools};

/// Probe every pool's members until `stop` completes.
pub async fn run(
    pools: &Pools,
    config: &HealthConfig,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) {
    let mut checks = tokio::task::JoinSet::new();
    for pool in pools.iter() {
        let pool = Arc::clone(pool);
        let config = config.clone();
        let metrics = metrics.clone();
        checks.spawn(async move { check_pool(&pool, &config, &metrics).await });
    }
    stop.await;
    checks.shutdown().await;
}

async fn check_pool(pool: &Pool, config: &HealthConfig, metrics: &Metrics) {
    let interval = Duration::from_millis(config.interval_ms);
    let timeout = Duration::from_millis(config.timeout_ms);
    // Members start healthy: the first probe is one interval away.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut labelled: HashSet<String> = HashSet::new();
    loop {
        let members = pool.members();
        // Keep the gauge to the current members only.
        let current: HashSet<String> = members.iter().map(|m| m.addr.to_string()).collect();
        for gone in labelled.difference(&current) {
            let _ = metrics
                .backend_healthy
                .remove_label_values(&[pool.name(), gone]);
        }
        for m in &members {
            metrics
                .backend_healthy
                .with_label_values(&[pool.name(), &m.addr.to_string()])
                .set(i64::from(m.is_healthy()));
        }
        labelled = current;
        ticks.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for member in pool.members() {
            probes.spawn(async move {
                let result = probe::check(member.addr, timeout).await;
                (member, result)
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((member, result)) = done else { continue };
            let changed =
                member.observe_probe(result.is_ok(), config.unhealthy_after, config.healthy_after);
            let label = member.addr.to_string();
            metrics
                .backend_healthy
                .with_label_values(&[pool.name(), &label])
                .set(i64::from(member.is_healthy()));
            match (changed, result) {
                (Some(true), Ok(hsm_id)) => {
                    tracing::info!(pool = pool.name(), member = %member.addr, %hsm_id, "HSM node healthy again")
                }
                (Some(false), Err(e)) => {
                    tracing::warn!(pool = pool.name(), member = %member.addr, error = %e, "HSM node unhealthy: out of rotation")
                }
                _ => {}
            }
        }
    }
}

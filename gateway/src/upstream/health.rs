//! Active health checks: every member of every pool is probed with the HSM
//! node's protocol-level probe (PING → PONG, no client session), which also
//! shows that a TCP connect works. A member leaves the rotation after
//! `unhealthy_after` consecutive failures and returns after `healthy_after`
//! consecutive successes. Each round probes the pool's current member set,
//! so members that DNS discovery adds or removes are followed.

use std::sync::Arc;
use std::time::Duration;

use hsmgate_hsm::probe;

use crate::control::config::HealthConfig;
use crate::control::metrics::{CurrentMembers, Metrics};
use crate::upstream::pool::{Pool, Pools};

/// Probe every pool's members until `stop` completes.
pub async fn run(
    pools: &Pools,
    config: &HealthConfig,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) {
    let mut checks = tokio::task::JoinSet::new();
    {
        let pools: Vec<Arc<Pool>> = pools.iter().cloned().collect();
        let metrics = metrics.clone();
        let interval = Duration::from_millis(config.interval_ms);
        checks.spawn(async move { forget_gone_members(&pools, &metrics, interval).await });
    }
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
    loop {
        let members = pool.members();
        let labels: Vec<String> = members.iter().map(|m| m.addr.to_string()).collect();
        metrics.start_pool_series(pool.name(), &labels);
        for (m, label) in members.iter().zip(&labels) {
            metrics
                .backend_healthy
                .with_label_values(&[pool.name(), label])
                .set(i64::from(m.is_healthy()));
        }
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
                    tracing::info!(pool = pool.name(), member = %member.addr, %hsm_id, "HSM node healthy again");
                    member.end_ejection();
                    member.grants.retry_now();
                }
                (Some(false), Err(e)) => {
                    tracing::warn!(pool = pool.name(), member = %member.addr, error = %e, "HSM node unhealthy: out of rotation")
                }
                _ => {}
            }
        }
    }
}

/// Right away (after a reload) and then every `interval`: drop the series
/// of pools and members that are no longer in force ([`Metrics::forget_gone`]).
async fn forget_gone_members(pools: &[Arc<Pool>], metrics: &Metrics, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current: CurrentMembers = pools
            .iter()
            .map(|pool| {
                let members = pool.members().iter().map(|m| m.addr.to_string()).collect();
                (pool.name().to_owned(), members)
            })
            .collect();
        metrics.forget_gone(&current);
    }
}

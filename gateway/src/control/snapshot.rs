//! One generation of the gateway's reloadable state: the config and what is
//! built from it. A session takes the current snapshot when it is accepted
//! and keeps it to its end, so a reload never changes a running session.

use std::sync::Arc;

use hsmgate_authz::{ConnectObserver, ControlThread, DecisionCache};

use crate::accept::admission::AddressPolicy;
use crate::accept::limits::SourceLimits;
use crate::control::config::GatewayConfig;
use crate::error::GatewayError;
use crate::session::forward::PipePool;
use crate::upstream::pool::Pools;

pub struct Snapshot {
    pub generation: u64,
    pub config: GatewayConfig,
    pub policy: AddressPolicy,
    pub pools: Arc<Pools>,
    pub authz: DecisionCache,
    pub source_limits: Arc<SourceLimits>,
    /// Splice pipes; `None` in copy mode.
    pub pipes: Option<Arc<PipePool>>,
    /// Told about every failed connection to the directory (metric, log).
    directory_observer: Arc<dyn ConnectObserver>,
    /// Where the directory's connections and the cache's misses run, away
    /// from the sessions' memory (`hsmgate_authz::ControlThread`).
    control_thread: Arc<ControlThread>,
}

/// Config fields that only a restart changes: a reload that alters them is
/// refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly(pub Vec<&'static str>);

impl std::fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} can only change with a restart", self.0.join(", "))
    }
}

impl Snapshot {
    /// The first generation. Must run inside a tokio runtime. The
    /// directory's TLS files are read here.
    pub fn first(
        config: GatewayConfig,
        directory_observer: Arc<dyn ConnectObserver>,
    ) -> Result<Snapshot, GatewayError> {
        let control_thread = ControlThread::start().map_err(GatewayError::ControlThread)?;
        let authz = DecisionCache::on_thread(
            &control_thread,
            &config.directory.client_config(),
            Arc::clone(&directory_observer),
            &config.directory.cache_config(),
        )?;
        Ok(Snapshot {
            directory_observer,
            control_thread,
            generation: 1,
            policy: AddressPolicy::new(&config.admission.allow, &config.admission.deny),
            pools: Arc::new(Pools::new(&config.pools)),
            authz,
            source_limits: Arc::new(source_limits(&config)),
            pipes: pipe_pool(&config),
            config,
        })
    }

    /// The next generation from a new, validated config. The decision cache
    /// and the per-source counts carry over unless their settings changed; a
    /// DNS pool whose name and `dns` stay starts from the old pool's members,
    /// so that it serves before its first resolution in this generation.
    pub fn next(&self, config: GatewayConfig) -> Result<Snapshot, GatewayError> {
        // The same directory settings keep the client, its connections,
        // its TLS config (reloaded in place) and the cached decisions.
        let authz = if config.directory == self.config.directory {
            self.authz.clone()
        } else {
            DecisionCache::on_thread(
                &self.control_thread,
                &config.directory.client_config(),
                Arc::clone(&self.directory_observer),
                &config.directory.cache_config(),
            )?
        };
        let source_limits = if same_source_limits(&config, &self.config) {
            Arc::clone(&self.source_limits)
        } else {
            Arc::new(source_limits(&config))
        };
        let pipes = if config.forwarding == self.config.forwarding
            && config.uses_splice() == self.config.uses_splice()
        {
            self.pipes.clone()
        } else {
            pipe_pool(&config)
        };
        let pools = Pools::new(&config.pools);
        self.carry_discovered_members(&config, &pools);
        for pool in pools.iter() {
            if let Some(previous) = self.pools.get(pool.name()) {
                pool.inherit(previous);
            }
        }
        Ok(Snapshot {
            directory_observer: Arc::clone(&self.directory_observer),
            control_thread: Arc::clone(&self.control_thread),
            generation: self.generation + 1,
            pipes,
            policy: AddressPolicy::new(&config.admission.allow, &config.admission.deny),
            pools: Arc::new(pools),
            authz,
            source_limits,
            config,
        })
    }

    /// Seed the DNS pools of the next generation that resolve the same name
    /// as before with this generation's members (addresses and weights).
    fn carry_discovered_members(&self, config: &GatewayConfig, pools: &Pools) {
        for new in config.pools.iter().filter(|p| p.dns.is_some()) {
            let same = self
                .config
                .pools
                .iter()
                .any(|old| old.name == new.name && old.dns == new.dns);
            if let (true, Some(old), Some(pool)) =
                (same, self.pools.get(&new.name), pools.get(&new.name))
            {
                let members: Vec<_> = old.members().iter().map(|m| (m.addr, m.weight)).collect();
                pool.set_members(&members);
            }
        }
    }

    /// The thread of the control plane: the directory's traffic and the
    /// gateway's background tasks run there, away from the sessions.
    pub fn control_thread(&self) -> &Arc<ControlThread> {
        &self.control_thread
    }

    /// The restart-only fields that differ between this config and `new`.
    pub fn restart_only_changes(&self, new: &GatewayConfig) -> Result<(), RestartOnly> {
        let old = &self.config;
        let mut changed = Vec::new();
        if old.listeners != new.listeners {
            changed.push("listeners");
        }
        if old.admin != new.admin {
            changed.push("admin");
        }
        let kernel = |c: &GatewayConfig| {
            c.uses_kernel_forwarding()
                .then_some((c.forwarding.kernel_max_sessions, c.forwarding.kernel_budget))
        };
        if kernel(old) != kernel(new) {
            changed.push("forwarding.mode or pools[].forwarding (kernel)");
        }
        if old.quic != new.quic {
            changed.push("quic");
        }
        if old.limits.max_connections != new.limits.max_connections {
            changed.push("limits.max_connections");
        }
        if old.limits.max_handshakes != new.limits.max_handshakes {
            changed.push("limits.max_handshakes");
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(RestartOnly(changed))
        }
    }
}

fn pipe_pool(config: &GatewayConfig) -> Option<Arc<PipePool>> {
    let f = &config.forwarding;
    // Kernel mode splices the sessions the kernel cannot take.
    config
        .uses_splice()
        .then(|| Arc::new(PipePool::new(f.pipe_size, f.max_idle_pipes)))
}

fn source_limits(config: &GatewayConfig) -> SourceLimits {
    SourceLimits::new(
        config.limits.max_connections_per_source,
        config.limits.handshakes_per_second_per_source,
        config.limits.handshake_burst_per_source,
        config.limits.ipv6_source_prefix,
    )
}

fn same_source_limits(a: &GatewayConfig, b: &GatewayConfig) -> bool {
    let (a, b) = (&a.limits, &b.limits);
    a.max_connections_per_source == b.max_connections_per_source
        && a.handshakes_per_second_per_source == b.handshakes_per_second_per_source
        && a.handshake_burst_per_source == b.handshake_burst_per_source
        && a.ipv6_source_prefix == b.ipv6_source_prefix
}

/// Why a reload was refused (the running config stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    RestartOnly(RestartOnly),
    #[error("{0}")]
    Build(#[from] GatewayError),
}

//! The decision cache: directory answers reused for their TTL.
//!
//! Keyed by identity (client id, key, tenant, partition), never by source
//! address: the network check is redone for every connection by
//! [`Answer::verdict`]. Expiry is per entry: the answer's TTL capped by
//! `max_ttl`; identity denials live at most `deny_ttl` so that a fixed
//! directory entry takes effect quickly. Errors are never cached, and
//! concurrent misses for one key share one directory call.
//!
//! Two denials are also kept under a narrower key, because a stranger can
//! vary everything else for free: "unknown client" under the client id
//! alone, "key mismatch" under the client id and key. A flood of made-up
//! tenants and partitions for one made-up identity then costs one directory
//! call per identity per `deny_ttl`, not one per connection. (The directory
//! checks the client id, then the key, before anything else, so these
//! answers do not depend on the rest of the request.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::answer::{Answer, Reason};
use crate::client::{ClientConfig, DirectoryClient, Query};
use crate::connect::ConnectObserver;
use crate::error::AuthzError;
use crate::thread::ControlThread;

/// Cache limits. The gateway fills this from its own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most answers held at once (least recently used go first).
    pub max_entries: u64,
    /// Upper bound on any answer's lifetime, whatever the directory says.
    pub max_ttl: Duration,
    /// Lifetime of identity denials (also capped by the answer's TTL).
    pub deny_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300),
            deny_ttl: Duration::from_secs(5),
        }
    }
}

/// Where a decision came from; the gateway counts these in its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// A still-valid cached answer.
    Hit,
    /// This caller asked the directory.
    Miss,
    /// Another caller was already asking; this one waited for its answer.
    Coalesced,
}

impl CacheOutcome {
    /// Stable lower-case name for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    client_id: String,
    client_static_key: [u8; 32],
    tenant: String,
    partition: String,
}

impl Key {
    fn of(query: &Query) -> Self {
        Key {
            client_id: query.client_id.clone(),
            client_static_key: *query.client_static_key.as_bytes(),
            tenant: query.tenant.clone(),
            partition: query.partition.clone(),
        }
    }
}

/// Per-entry lifetime, computed once when the answer is inserted.
#[derive(Debug)]
struct AnswerExpiry {
    max_ttl: Duration,
    deny_ttl: Duration,
}

impl AnswerExpiry {
    fn lifetime(&self, answer: &Answer) -> Duration {
        let ttl = answer.ttl.min(self.max_ttl);
        if answer.is_identity_deny() {
            ttl.min(self.deny_ttl)
        } else {
            ttl
        }
    }
}

impl<K> Expiry<K, Arc<Answer>> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &K,
        answer: &Arc<Answer>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(answer))
    }
}

/// Directory answers shared by all connections of one gateway.
#[derive(Clone)]
pub struct DecisionCache {
    client: DirectoryClient,
    cache: Cache<Key, Arc<Answer>>,
    /// UNKNOWN_CLIENT answers by client id.
    unknown_clients: Cache<String, Arc<Answer>>,
    /// KEY_MISMATCH answers by client id and key.
    key_mismatches: Cache<(String, [u8; 32]), Arc<Answer>>,
    expiry: Arc<AnswerExpiry>,
    /// Where misses are answered; `None`: on the caller's task.
    asks_on: Option<Arc<ControlThread>>,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl DecisionCache {
    /// The directory client behind the cache (its TLS config reloads in
    /// place).
    pub fn client(&self) -> &DirectoryClient {
        &self.client
    }

    pub fn new(client: DirectoryClient, config: &CacheConfig) -> Self {
        let expiry = || AnswerExpiry {
            max_ttl: config.max_ttl,
            deny_ttl: config.deny_ttl,
        };
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(expiry())
            .build();
        let unknown_clients = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(expiry())
            .build();
        let key_mismatches = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(expiry())
            .build();
        DecisionCache {
            client,
            cache,
            unknown_clients,
            key_mismatches,
            expiry: Arc::new(expiry()),
            asks_on: None,
        }
    }

    /// A cache whose directory traffic runs on `thread` (see `thread.rs`):
    /// the client is built there, so its connections live there, and every
    /// miss is answered and inserted there. Hits are answered on the
    /// caller's task.
    pub fn on_thread(
        thread: &Arc<ControlThread>,
        client: &ClientConfig,
        observer: Arc<dyn ConnectObserver>,
        config: &CacheConfig,
    ) -> Result<Self, AuthzError> {
        let client = {
            let _on_thread = thread.handle().enter();
            DirectoryClient::with_observer(client, observer)?
        };
        let mut cache = DecisionCache::new(client, config);
        cache.asks_on = Some(Arc::clone(thread));
        Ok(cache)
    }

    /// Until when `answer` may be used: its arrival plus its lifetime in
    /// this cache.
    pub fn valid_until(&self, answer: &Answer) -> Instant {
        answer.received + self.expiry.lifetime(answer)
    }

    /// The answer for `query`'s identity, from the cache or the directory.
    /// The caller still applies [`Answer::verdict`] for the source address.
    pub async fn decide(&self, query: &Query) -> Result<(Arc<Answer>, CacheOutcome), AuthzError> {
        if let Some(answer) = self.cached(query).await {
            return Ok((answer, CacheOutcome::Hit));
        }
        let Some(thread) = &self.asks_on else {
            return self.ask(query).await;
        };
        let (cache, query) = (self.clone(), query.clone());
        thread
            .handle()
            .spawn(async move { cache.ask(&query).await })
            .await
            .map_err(|e| AuthzError::Unavailable(format!("control thread: {e}")))?
    }

    /// A still-valid answer for `query`'s identity; what it allocates is
    /// freed before it returns.
    async fn cached(&self, query: &Query) -> Option<Arc<Answer>> {
        if let Some(answer) = self.unknown_clients.get(query.client_id.as_str()).await {
            return Some(answer);
        }
        let identity = (query.client_id.clone(), *query.client_static_key.as_bytes());
        if let Some(answer) = self.key_mismatches.get(&identity).await {
            return Some(answer);
        }
        self.cache.get(&Key::of(query)).await
    }

    /// The answer from the directory, or from a caller already asking it
    /// for the same key; inserted into the caches.
    async fn ask(&self, query: &Query) -> Result<(Arc<Answer>, CacheOutcome), AuthzError> {
        let identity = (query.client_id.clone(), *query.client_static_key.as_bytes());
        let key = Key::of(query);
        let asked = AtomicBool::new(false);
        let answer = self
            .cache
            .try_get_with(key, async {
                asked.store(true, Ordering::Relaxed);
                tracing::debug!(
                    client_id = %query.client_id,
                    tenant = %query.tenant,
                    partition = %query.partition,
                    "asking the directory"
                );
                self.client.authorize(query).await.map(Arc::new)
            })
            .await
            .map_err(|shared| AuthzError::clone(&shared))?;
        let outcome = if asked.load(Ordering::Relaxed) {
            match answer.reason {
                Reason::UnknownClient => {
                    self.unknown_clients
                        .insert(query.client_id.clone(), Arc::clone(&answer))
                        .await;
                }
                Reason::KeyMismatch => {
                    self.key_mismatches
                        .insert(identity, Arc::clone(&answer))
                        .await;
                }
                _ => {}
            }
            if self.asks_on.is_some() {
                // Apply the inserts' bookkeeping (the caches' order lists
                // and timers) here on the control thread, rather than in
                // the next hit that finds it pending, on a session's worker.
                self.cache.run_pending_tasks().await;
                self.unknown_clients.run_pending_tasks().await;
                self.key_mismatches.run_pending_tasks().await;
            }
            CacheOutcome::Miss
        } else {
            CacheOutcome::Coalesced
        };
        Ok((answer, outcome))
    }

    /// Forget every answer (e.g. after the operator changed the directory).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.unknown_clients.invalidate_all();
        self.key_mismatches.invalidate_all();
    }

    /// Approximate number of cached answers, for metrics.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

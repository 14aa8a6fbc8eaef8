//! The hsmgate sessions behind the API: per partition, a fixed number of
//! slots, each holding one session (which pipelines any number of
//! requests). A request takes the next slot in turn; a slot whose session
//! is missing or broken connects a new one through the gateway, with the
//! partition's client settings (the service key this REST service is
//! registered with in the directory, and the partition key).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hsmgate_client::{ClientConfig, ClientError, ConnectOptions, Session};
use tokio::sync::Mutex;

use crate::config::PartitionSettings;
use crate::metrics::Metrics;

pub struct PartitionPool {
    pub name: String,
    /// The tenant the partition belongs to (its client config's `tenant`).
    pub tenant: String,
    client: ClientConfig,
    slots: Vec<Mutex<Option<Session>>>,
    next: AtomicUsize,
    /// The last connect succeeded (or none was tried yet after one that did).
    reachable: AtomicBool,
    metrics: Arc<Metrics>,
}

impl PartitionPool {
    pub fn new(settings: &PartitionSettings, metrics: Arc<Metrics>) -> PartitionPool {
        metrics
            .upstream_sessions
            .with_label_values(&[settings.name.as_str()])
            .set(0);
        PartitionPool {
            name: settings.name.clone(),
            tenant: settings.client.tenant.clone(),
            client: settings.client.clone(),
            slots: (0..settings.sessions).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            reachable: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Run `op` on a session of this partition. A session found broken
    /// before the request was sent is replaced and the request tried once
    /// more; any other failure is the caller's answer.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(Session) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let session = self.session(slot).await?;
        match op(session).await {
            Err(ClientError::SessionBroken { .. }) => op(self.session(slot).await?).await,
            other => other,
        }
    }

    /// The slot's session, connecting one when it has none or a broken one.
    async fn session(&self, slot: usize) -> Result<Session, ClientError> {
        let mut held = self.slots[slot].lock().await;
        if let Some(s) = held.as_ref()
            && !s.is_broken()
        {
            return Ok(s.clone());
        }
        if held.take().is_some() {
            self.sessions_gauge().dec();
        }
        match hsmgate_client::connect(&self.client, &ConnectOptions::default()).await {
            Ok(s) => {
                self.reachable.store(true, Ordering::Relaxed);
                self.count_connect("ok");
                self.sessions_gauge().inc();
                *held = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                self.reachable.store(false, Ordering::Relaxed);
                self.count_connect("failed");
                tracing::warn!(partition = %self.name, error = %hsmgate_log::error_chain(&e), "cannot open an hsmgate session");
                Err(e)
            }
        }
    }

    fn sessions_gauge(&self) -> prometheus::IntGauge {
        self.metrics
            .upstream_sessions
            .with_label_values(&[self.name.as_str()])
    }

    fn count_connect(&self, outcome: &str) {
        self.metrics
            .upstream_connects
            .with_label_values(&[self.name.as_str(), outcome])
            .inc();
    }

    /// Open the first slot's session now (at start), so that readiness
    /// reflects the path to the HSM before the first request.
    pub async fn warm(&self) -> bool {
        self.session(0).await.is_ok()
    }

    /// Close every session (drain).
    pub async fn close(&self) {
        for slot in &self.slots {
            if let Some(s) = slot.lock().await.take() {
                self.sessions_gauge().dec();
                s.close().await;
            }
        }
    }
}

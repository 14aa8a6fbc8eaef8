//! The first stage of every connection to a node: what its first bytes are
//! and whether they may go on (PROTOCOL.md §8).
//!
//! ```text
//! accept ─▶ first bytes (first-frame deadline)
//!   "PING"         ─▶ probe reply, close                (no session slot)
//!   ControlHello   ─▶ a gateway's control connection    (control.rs)
//!   Grant          ─▶ verified? ─ no ─▶ Error, close
//!                        │ yes: a session, bound to the grant
//!   InnerHello     ─▶ insecure_allow_direct? ─ no ─▶ Error(denied), close
//!                        │ yes: a session without a grant
//!   anything else  ─▶ Error(protocol), close
//! ```
//!
//! The node uses it for every connection; test and benchmark backends that
//! stand in for a node behind a real gateway use it too
//! ([`Gatekeeper::accept_granted`]), so they speak the same preamble.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::grant::Grant;
use hsmgate_wire::{Code, StaticKeypair, WireError};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, timeout_at};

use crate::conn::{Conn, ConnError};
use crate::probe;
use crate::slots::NodeStatus;
use crate::trust::{GatewayTrust, VerifiedGrant};

/// Reads first frames and runs control connections for one node.
#[derive(Debug)]
pub struct Gatekeeper {
    trust: Arc<GatewayTrust>,
    /// The node's static key pair; a reload may replace it (rotation).
    key: arc_swap::ArcSwap<StaticKeypair>,
    hsm_id: String,
    status: watch::Receiver<NodeStatus>,
    /// Keeps `status` open for a stand-in backend, which has no slots.
    _status_source: Option<watch::Sender<NodeStatus>>,
    /// Turns true when the node stops: control connections end at once
    /// (they are not sessions to drain).
    stopping: watch::Sender<bool>,
    control: Arc<Semaphore>,
    first_frame_timeout: Duration,
    handshake_timeout: Duration,
    /// Whether the node can serve now (its key stores are ready).
    ready: Readiness,
}

/// Whether a node can serve now: probes answer `DOWN` while it says no.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> bool + Send + Sync>);

impl Readiness {
    pub fn new(ready: impl Fn() -> bool + Send + Sync + 'static) -> Readiness {
        Readiness(Arc::new(ready))
    }

    fn ready(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness")
    }
}

/// A connection that may become a session.
#[derive(Debug)]
pub struct Admitted {
    pub conn: Conn,
    /// The gateway's grant; `None` for an insecure direct session.
    pub grant: Option<VerifiedGrant>,
    /// The InnerHello body, when it was the first frame (direct sessions).
    pub inner_hello: Option<Vec<u8>>,
    /// When the inner handshake must be complete.
    pub deadline: Instant,
}

enum First {
    Probe,
    Frame(FrameType, Vec<u8>),
}

impl Gatekeeper {
    pub fn new(
        trust: Arc<GatewayTrust>,
        key: StaticKeypair,
        hsm_id: String,
        status: watch::Receiver<NodeStatus>,
        first_frame_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Gatekeeper {
        let control = Arc::new(Semaphore::new(trust.max_control_connections()));
        Gatekeeper {
            trust,
            key: arc_swap::ArcSwap::from_pointee(key),
            hsm_id,
            status,
            _status_source: None,
            stopping: watch::channel(false).0,
            control,
            first_frame_timeout,
            handshake_timeout,
            ready: Readiness::new(|| true),
        }
    }

    /// Answer probes `DOWN` while `ready` says no (a key store that cannot
    /// serve).
    pub fn with_readiness(mut self, ready: Readiness) -> Gatekeeper {
        self.ready = ready;
        self
    }

    /// A gatekeeper for a backend that stands in for a node (tests,
    /// benchmarks): it trusts `trust`, always reports itself accepting and
    /// takes no direct sessions unless `trust` allows them.
    pub fn standalone(trust: GatewayTrust, key: StaticKeypair, hsm_id: &str) -> Gatekeeper {
        let (source, status) = watch::channel(NodeStatus {
            accepting: true,
            sessions: 0,
            max_sessions: u32::MAX,
        });
        Gatekeeper {
            _status_source: Some(source),
            ..Gatekeeper::new(
                Arc::new(trust),
                key,
                hsm_id.to_owned(),
                status,
                Duration::from_secs(1),
                Duration::from_secs(5),
            )
        }
    }

    pub fn trust(&self) -> &Arc<GatewayTrust> {
        &self.trust
    }

    /// The key pair new handshakes use.
    pub(crate) fn keypair(&self) -> Arc<StaticKeypair> {
        self.key.load_full()
    }

    /// Use `key` for new handshakes; running sessions keep theirs.
    pub(crate) fn use_key(&self, key: StaticKeypair) {
        self.key.store(Arc::new(key));
    }

    pub(crate) fn hsm_id(&self) -> &str {
        &self.hsm_id
    }

    pub(crate) fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// End every control connection now (the node is stopping).
    pub fn stop_control(&self) {
        self.stopping.send_replace(true);
    }

    /// Take control connections again (the node runs again after a stop).
    pub fn start_control(&self) {
        self.stopping.send_replace(false);
    }

    pub(crate) fn control_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.control).try_acquire_owned().ok()
    }

    /// Read the first frame of `stream` and act on it. Probes, control
    /// connections and refusals are dealt with here (each logged); what may
    /// become a session is returned. `pending` is released once the first
    /// stage is over.
    pub async fn admit(
        &self,
        stream: TcpStream,
        pending: Option<OwnedSemaphorePermit>,
    ) -> Option<Admitted> {
        let accepted = Instant::now();
        let deadline = accepted + self.handshake_timeout;
        let mut conn = Conn::new(stream);
        let first = match timeout_at(accepted + self.first_frame_timeout, first(&mut conn)).await {
            Ok(Ok(first)) => first,
            Ok(Err(ConnError::Closed)) => {
                tracing::debug!("connection closed before its first frame");
                return None;
            }
            Ok(Err(ConnError::Io(e))) => {
                tracing::debug!(error = %e, "i/o error before the first frame");
                return None;
            }
            Ok(Err(ConnError::Wire(e))) => {
                tracing::warn!(error = %e, "refused: malformed first frame");
                conn.close_with(frame::error_frame(e.code())).await;
                return None;
            }
            Err(_) => {
                tracing::info!("refused: no first frame before the deadline");
                conn.close_with(frame::error_frame(Code::Timeout)).await;
                return None;
            }
        };
        let (kind, body) = match first {
            First::Probe => {
                tracing::debug!("health probe");
                let reply = if self.ready.ready() {
                    probe::reply(&self.hsm_id)
                } else {
                    probe::reply_not_ready(&self.hsm_id)
                };
                conn.close_with(reply).await;
                return None;
            }
            First::Frame(kind, body) => (kind, body),
        };
        match kind {
            FrameType::ControlHello if !self.trust.takes_grants() => {
                // PROTOCOL.md §8.2: a node that trusts no gateway takes no
                // grants; the gateway may then forward without one.
                tracing::info!("control hello refused: this node trusts no gateway");
                conn.close_with(frame::error_frame(Code::UnsupportedVersion))
                    .await;
                None
            }
            FrameType::ControlHello => {
                crate::control::serve(self, conn, &body, deadline, pending).await;
                None
            }
            FrameType::Grant => match self.trust.verify(&body, SystemTime::now()) {
                Ok(grant) => Some(Admitted {
                    conn,
                    grant: Some(grant),
                    inner_hello: None,
                    deadline,
                }),
                Err(refusal) => {
                    tracing::warn!(
                        reason = refusal.as_str(),
                        error = %refusal,
                        code = refusal.code().as_str(),
                        "refused: grant not accepted"
                    );
                    conn.close_with(frame::error_frame(refusal.code())).await;
                    None
                }
            },
            FrameType::InnerHello if self.trust.allows_direct() => Some(Admitted {
                conn,
                grant: None,
                inner_hello: Some(body),
                deadline,
            }),
            FrameType::InnerHello => {
                tracing::warn!(
                    code = Code::Denied.as_str(),
                    "refused: session without a gateway grant (only trusted gateways may open sessions)"
                );
                conn.close_with(frame::error_frame(Code::Denied)).await;
                None
            }
            FrameType::Error => {
                let code = frame::decode_error_body(&body).unwrap_or(Code::ProtocolError);
                tracing::debug!(%code, "peer sent an error frame first");
                None
            }
            other => {
                let e = WireError::UnexpectedFrame {
                    got: other,
                    expected: "a grant, a control hello or a probe",
                };
                tracing::warn!(error = %e, "refused: unexpected first frame");
                conn.close_with(frame::error_frame(e.code())).await;
                None
            }
        }
    }

    /// For a backend standing in for a node: serve probes and control
    /// connections, refuse what is not granted, and return a granted
    /// session's socket, the bytes already read behind its Grant, and the
    /// grant.
    pub async fn accept_granted(&self, stream: TcpStream) -> Option<(TcpStream, Vec<u8>, Grant)> {
        let admitted = self.admit(stream, None).await?;
        let grant = admitted.grant?;
        let (stream, rest) = admitted.conn.into_parts();
        Some((stream, rest, grant.grant))
    }
}

/// Wait until the first bytes tell a probe from a frame, and read that frame.
async fn first(conn: &mut Conn) -> Result<First, ConnError> {
    loop {
        match probe::detect(conn.buffered()) {
            probe::Detect::Probe => return Ok(First::Probe),
            probe::Detect::NotProbe => break,
            probe::Detect::NeedMore => conn.fill().await?,
        }
    }
    let (kind, body) = conn.frame(MAX_GATEWAY_NODE_FRAME_LEN).await?;
    Ok(First::Frame(kind, body))
}

//! The gateway's side of the control channel to each HSM node, and the
//! grants it seals for the sessions it forwards (PROTOCOL.md §8).
//!
//! Every pool member has a [`GrantChannel`]: a background task keeps one
//! long-lived control connection to the node, on which the gateway proves its
//! static key once and receives a grant key; every session forwarded to that
//! node then opens with a Grant sealed under that key, so a new session
//! costs an AES-GCM seal, not a handshake. The node also reports on that
//! connection whether it takes new sessions, so a full node is skipped
//! without being counted as failed.
//!
//! ```text
//! member added ─▶ connect ─▶ ControlHello … ControlFinish ─▶ GrantKey: Up
//!                    ▲                                         │ Status: accepting / full
//!                    └──── back-off ◀── Down (refused, error, silent past a Ping)
//! Error 5 or 6 to the ControlHello: the node takes no grants (insecure
//! direct mode, or older than §8): NoGrants, sessions go without a preamble.
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hsmgate_wire::control::{ControlChannel, ControlMessage, GatewayControl};
use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::grant::{Grant, GrantKey};
use hsmgate_wire::{Code, StaticKeypair, WireError};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use crate::control::metrics::Metrics;
use crate::session::forward::write_all;
use crate::upstream::pool::{Member, Pools};

/// Time between two Pings on an idle control connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A Ping not answered within this time ends the control connection.
const PONG_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a node that takes no grants is asked again.
const NO_GRANTS_RECHECK: Duration = Duration::from_secs(30);
/// How often the set of members is compared with the running channels.
const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// After the gateway's key changed: how long a node's old control channel
/// stays open once the new one is up, so that grants sealed under the old
/// grant key just before the switch still find it on the node.
const HANDOFF_GRACE: Duration = Duration::from_secs(1);

/// Ids of control channel tasks: a member's state is written only by the
/// task that owns it.
static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

/// What the gateway knows of its control channel to one node.
#[derive(Clone, Debug)]
pub enum ChannelState {
    /// Never connected yet: sessions wait for it (bounded by their deadline).
    Connecting,
    /// A grant key is in hand; `accepting` is the node's last word on
    /// whether it takes new sessions.
    Up {
        key: Arc<SealingKey>,
        accepting: bool,
    },
    /// Lost or refused: the member is no candidate until it is up again.
    Down(Arc<str>),
    /// The node takes no grants: sessions are forwarded without one.
    NoGrants,
}

impl ChannelState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelState::Connecting => "connecting",
            ChannelState::Up {
                accepting: true, ..
            } => "up",
            ChannelState::Up { .. } => "full",
            ChannelState::Down(_) => "down",
            ChannelState::NoGrants => "no_grants",
        }
    }
}

/// A grant key with the counter that numbers the grants sealed under it.
#[derive(Debug)]
pub struct SealingKey {
    key: GrantKey,
    next: AtomicU64,
}

impl SealingKey {
    fn new(key: GrantKey) -> SealingKey {
        SealingKey {
            key,
            next: AtomicU64::new(1),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> SealingKey {
        SealingKey::new(GrantKey::new(1, &[0; 32]))
    }

    /// Seal `grant` with the next counter (never reused under this key).
    pub fn seal(&self, grant: &Grant) -> Result<Vec<u8>, WireError> {
        self.key
            .seal(self.next.fetch_add(1, Ordering::Relaxed), grant)
    }
}

/// One member's control channel state, shared by its task and the sessions.
#[derive(Debug)]
pub struct GrantChannel {
    state: watch::Sender<ChannelState>,
    /// The control task whose word counts (0: none yet). When the gateway's
    /// key changes, the channel opened with the new key takes over once it
    /// is up; the old one is then silent until it is closed.
    owner: AtomicU64,
    /// Cuts a reconnect back-off short: the health checks saw the node
    /// answer again.
    retry: tokio::sync::Notify,
}

impl Default for GrantChannel {
    fn default() -> Self {
        GrantChannel {
            state: watch::channel(ChannelState::Connecting).0,
            owner: AtomicU64::new(0),
            retry: tokio::sync::Notify::new(),
        }
    }
}

/// Why no grant could be had from a member.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    #[error("control channel to the HSM node is down: {0}")]
    Down(Arc<str>),
    #[error("the HSM node is full")]
    Full,
    #[error("no grant key from the HSM node before the deadline")]
    Timeout,
    #[error("cannot seal the grant: {0}")]
    Seal(String),
}

impl GrantChannel {
    pub fn state(&self) -> ChannelState {
        self.state.borrow().clone()
    }

    /// Whether new sessions may be sent to the node (as far as the control
    /// channel knows; health checks and ejection are the pool's business).
    pub fn admits_sessions(&self) -> bool {
        matches!(
            &*self.state.borrow(),
            ChannelState::Connecting
                | ChannelState::NoGrants
                | ChannelState::Up {
                    accepting: true,
                    ..
                }
        )
    }

    /// Whether the node said it is full.
    pub fn is_full(&self) -> bool {
        matches!(
            &*self.state.borrow(),
            ChannelState::Up {
                accepting: false,
                ..
            }
        )
    }

    pub(crate) fn set(&self, state: ChannelState) {
        self.state.send_replace(state);
    }

    /// The node answers again (its health checks pass): a channel waiting
    /// out its back-off reconnects now instead of up to 10 s later.
    pub fn retry_now(&self) {
        if matches!(&*self.state.borrow(), ChannelState::Down(_)) {
            self.retry.notify_one();
        }
    }

    /// Make `task` the one whose state counts.
    fn claim(&self, task: u64) {
        self.owner.store(task, Ordering::Release);
    }

    fn owned_by(&self, task: u64) -> bool {
        self.owner.load(Ordering::Acquire) == task
    }

    /// [`GrantChannel::set`] if `task` owns the channel; else nothing.
    fn set_as(&self, task: u64, state: ChannelState) {
        if self.owned_by(task) {
            self.set(state);
        }
    }

    /// The Grant frame that opens a session to this node, sealed for
    /// `grant`; `None` when the node takes no grants. Waits, until
    /// `deadline`, for a channel still connecting.
    pub async fn preamble(
        &self,
        grant: &Grant,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, GrantError> {
        let mut rx = self.state.subscribe();
        let ready = timeout_at(
            deadline,
            rx.wait_for(|s| !matches!(s, ChannelState::Connecting)),
        )
        .await;
        let state = match ready {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) | Err(_) => return Err(GrantError::Timeout),
        };
        match state {
            ChannelState::Up { key, .. } => key
                .seal(grant)
                .map(Some)
                .map_err(|e| GrantError::Seal(e.to_string())),
            ChannelState::NoGrants => Ok(None),
            ChannelState::Down(why) => Err(GrantError::Down(why)),
            ChannelState::Connecting => Err(GrantError::Timeout),
        }
    }
}

/// What the control tasks need besides their member.
#[derive(Clone)]
pub struct ChannelContext {
    pub key: Arc<StaticKeypair>,
    pub gateway_id: String,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub metrics: Metrics,
}

/// Keep a control channel to every member of `pools` (re-read through
/// `current` every [`SCAN_INTERVAL`]), until the future is dropped.
/// Channels of members that stay are kept across reloads and DNS changes.
pub async fn run(
    current: impl Fn() -> (Arc<Pools>, ChannelContext),
    mut reloaded: watch::Receiver<u64>,
) {
    let mut running: HashMap<usize, Running> = HashMap::new();
    // Channels opened with a gateway key no longer in force, each waiting
    // for its successor to be up (then HANDOFF_GRACE more) before it closes.
    let mut retiring: Vec<Retiring> = Vec::new();
    loop {
        let (pools, context) = current();
        let mut seen = HashMap::new();
        for pool in pools.iter() {
            for member in pool.members() {
                seen.insert(member_id(&member), pool.name().to_owned());
            }
        }
        let key = context.key.public();
        let mut rekeyed = HashMap::new();
        running.retain(|id, r| {
            if seen.contains_key(id) && r.key != key {
                // The gateway's key was rotated: a new channel with the
                // key in force replaces this one once it is up.
                rekeyed.insert(*id, r.task.take());
                return false;
            }
            // A member that left: its channel ends.
            let keep = seen.contains_key(id);
            if !keep {
                if let Some(task) = r.task.take() {
                    task.abort();
                }
                let label = r.member.addr.to_string();
                for gauge in [
                    &context.metrics.backend_grant_channel,
                    &context.metrics.backend_accepting,
                ] {
                    let _ = gauge.remove_label_values(&[&r.pool, &label]);
                }
            }
            keep
        });
        for pool in pools.iter() {
            for member in pool.members() {
                let id = member_id(&member);
                if running.contains_key(&id) {
                    continue;
                }
                let task_id = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
                match rekeyed.remove(&id).flatten() {
                    Some(old) => retiring.push(Retiring {
                        member: Arc::clone(&member),
                        successor: task_id,
                        up_since: None,
                        task: old,
                    }),
                    None => member.grants.claim(task_id),
                }
                let task = tokio::spawn(maintain(
                    Arc::clone(&member),
                    pool.name().to_owned(),
                    context.clone(),
                    task_id,
                ));
                running.insert(
                    id,
                    Running {
                        member,
                        pool: pool.name().to_owned(),
                        key,
                        task: Some(task),
                    },
                );
            }
        }
        retiring.retain_mut(|r| {
            if !seen.contains_key(&member_id(&r.member)) {
                return false;
            }
            let successor_up = r.member.grants.owned_by(r.successor);
            match (successor_up, r.up_since) {
                (false, _) => true,
                (true, None) => {
                    r.up_since = Some(Instant::now());
                    true
                }
                (true, Some(since)) => since.elapsed() < HANDOFF_GRACE,
            }
        });
        tokio::select! {
            () = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = reloaded.changed() => {}
        }
    }
}

/// A control channel opened with a gateway key no longer in force.
struct Retiring {
    member: Arc<Member>,
    /// The task that replaces it; it owns the member once it is up.
    successor: u64,
    /// When the successor was first seen up.
    up_since: Option<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Retiring {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Running {
    /// Held so that the member's address (the map key) is not reused.
    member: Arc<Member>,
    pool: String,
    /// The gateway key the channel was opened with.
    key: hsmgate_wire::PublicKey,
    /// `None` once handed over to a [`Retiring`].
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn member_id(member: &Arc<Member>) -> usize {
    Arc::as_ptr(member) as usize
}

/// How one control connection ended.
enum Ended {
    /// The node refused us (our key is not trusted, it is at its limit, …).
    Refused(Code),
    /// The node takes no grants.
    NoGrants,
    /// Connect, handshake or the running connection failed.
    Failed(String),
}

/// Keep `member`'s control channel up for as long as the task lives.
async fn maintain(member: Arc<Member>, pool: String, context: ChannelContext, task: u64) {
    let label = member.addr.to_string();
    let gauges = Gauges {
        up: context
            .metrics
            .backend_grant_channel
            .with_label_values(&[&pool, &label]),
        accepting: context
            .metrics
            .backend_accepting
            .with_label_values(&[&pool, &label]),
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let ended = connect_and_serve(&member, &context, &pool, &gauges, task).await;
        if !member.grants.owned_by(task) {
            // Replaced by a channel with the gateway's new key: nothing of
            // this one counts any more; it is closed shortly.
            std::future::pending::<()>().await;
        }
        gauges.up.set(0);
        gauges.accepting.set(0);
        if matches!(member.grants.state(), ChannelState::Up { .. }) {
            // It was up: start the back-off over.
            backoff = FIRST_BACKOFF;
        }
        let (state, wait) = match ended {
            Ended::NoGrants => {
                if !matches!(member.grants.state(), ChannelState::NoGrants) {
                    tracing::warn!(
                        pool, member = %member.addr,
                        "HSM node takes no grants (insecure_allow_direct without trusted gateways, \
                         or a node older than the grant protocol): its sessions are not bound to \
                         what the directory granted"
                    );
                }
                count(&context.metrics, "no_grants");
                (ChannelState::NoGrants, NO_GRANTS_RECHECK)
            }
            Ended::Refused(code) => {
                tracing::error!(
                    pool, member = %member.addr, code = code.as_str(),
                    "HSM node refused the gateway's control connection \
                     (is this gateway's public key in the node's gateways.trusted_keys?)"
                );
                count(&context.metrics, "refused");
                (
                    ChannelState::Down(format!("refused by the node: {}", code.as_str()).into()),
                    backoff,
                )
            }
            Ended::Failed(why) => {
                let was_up = matches!(member.grants.state(), ChannelState::Up { .. });
                if was_up {
                    tracing::warn!(pool, member = %member.addr, reason = %why, "control channel to HSM node lost; reconnecting");
                } else {
                    tracing::debug!(pool, member = %member.addr, reason = %why, "control channel to HSM node not up");
                }
                count(&context.metrics, "error");
                (ChannelState::Down(why.into()), backoff)
            }
        };
        member.grants.set_as(task, state);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = member.grants.retry.notified() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if matches!(member.grants.state(), ChannelState::NoGrants) {
            backoff = FIRST_BACKOFF;
        }
    }
}

/// The member's two gauges.
struct Gauges {
    up: prometheus::IntGauge,
    accepting: prometheus::IntGauge,
}

fn count(metrics: &Metrics, result: &str) {
    metrics
        .grant_channel_events
        .with_label_values(&[result])
        .inc();
}

/// One control connection, from connect to its end.
async fn connect_and_serve(
    member: &Member,
    context: &ChannelContext,
    pool: &str,
    gauges: &Gauges,
    task: u64,
) -> Ended {
    let stream = match timeout(context.connect_timeout, TcpStream::connect(member.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Ended::Failed(format!("connect: {e}")),
        Err(_) => return Ended::Failed("connect timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    let mut reader = Reader::default();
    let deadline = Instant::now() + context.handshake_timeout;
    let handshake = async {
        let (control, hello) = GatewayControl::start(&context.key).map_err(fail)?;
        write_all(&stream, &hello).await.map_err(fail)?;
        let (kind, body) = reader.frame(&stream).await?;
        if kind == FrameType::Error {
            let code = frame::decode_error_body(&body).map_err(fail)?;
            return Err(match code {
                Code::UnsupportedVersion | Code::ProtocolError => Ended::NoGrants,
                code => Ended::Refused(code),
            });
        }
        let body = frame::Frame { kind, body: &body }
            .expect(FrameType::ControlChallenge, "control challenge")
            .map_err(fail)?;
        let (finish, node, channel) = control
            .finish(body, &context.gateway_id, |_| true)
            .map_err(fail)?;
        write_all(&stream, &finish).await.map_err(fail)?;
        Ok((node, channel))
    };
    let (node, mut channel) = match timeout_at(deadline, handshake).await {
        Ok(Ok(established)) => established,
        Ok(Err(ended)) => return ended,
        Err(_) => return Ended::Failed("control handshake timed out".into()),
    };
    // The first message is the grant key, or a refusal.
    let first = timeout_at(deadline, reader.message(&stream, &mut channel)).await;
    let (key, accepting) = match first {
        Ok(Ok(ControlMessage::GrantKey { key_id, key })) => {
            (Arc::new(SealingKey::new(GrantKey::new(key_id, &key))), true)
        }
        Ok(Ok(other)) => return Ended::Failed(format!("expected a grant key, got {other:?}")),
        Ok(Err(ended)) => return ended,
        Err(_) => return Ended::Failed("no grant key before the handshake deadline".into()),
    };
    tracing::info!(
        pool, member = %member.addr, hsm_id = %node.hsm_id, hsm_key = %node.static_key,
        "control channel to HSM node up"
    );
    count(&context.metrics, "up");
    // A channel opened with the gateway's new key takes over here.
    member.grants.claim(task);
    gauges.up.set(1);
    gauges.accepting.set(i64::from(accepting));
    member.grants.set_as(
        task,
        ChannelState::Up {
            key: Arc::clone(&key),
            accepting,
        },
    );
    serve(
        &stream,
        &mut reader,
        &mut channel,
        member,
        key,
        gauges,
        task,
    )
    .await
}

/// Read the node's messages and ping it, until the connection fails.
async fn serve(
    stream: &TcpStream,
    reader: &mut Reader,
    channel: &mut ControlChannel,
    member: &Member,
    mut key: Arc<SealingKey>,
    gauges: &Gauges,
    task: u64,
) -> Ended {
    let mut pings = tokio::time::interval(PING_INTERVAL);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    let mut outstanding: Option<(u64, Instant)> = None;
    let mut next_ping = 1u64;
    loop {
        let pong_due = outstanding.map(|(_, due)| due);
        tokio::select! {
            message = reader.message(stream, channel) => match message {
                Ok(ControlMessage::Status { accepting, sessions, max_sessions }) => {
                    if !accepting {
                        tracing::info!(member = %member.addr, sessions, max_sessions, "HSM node is full: no new sessions until it accepts again");
                    } else if member.grants.is_full() {
                        tracing::info!(member = %member.addr, sessions, max_sessions, "HSM node accepts sessions again");
                    }
                    if member.grants.owned_by(task) {
                        gauges.accepting.set(i64::from(accepting));
                    }
                    member.grants.set_as(task, ChannelState::Up { key: Arc::clone(&key), accepting });
                }
                Ok(ControlMessage::GrantKey { key_id, key: secret }) => {
                    key = Arc::new(SealingKey::new(GrantKey::new(key_id, &secret)));
                    let accepting = !member.grants.is_full();
                    member.grants.set_as(task, ChannelState::Up { key: Arc::clone(&key), accepting });
                }
                Ok(ControlMessage::Pong(n)) => {
                    if outstanding.is_some_and(|(sent, _)| sent == n) {
                        outstanding = None;
                    }
                }
                Ok(ControlMessage::Ping(_)) => return Ended::Failed("the node sent a ping".into()),
                Err(ended) => return ended,
            },
            _ = pings.tick(), if outstanding.is_none() => {
                let n = next_ping;
                next_ping += 1;
                let sealed = match channel.seal(&ControlMessage::Ping(n)) {
                    Ok(s) => s,
                    Err(e) => return Ended::Failed(format!("cannot seal a ping: {e}")),
                };
                if let Err(e) = timeout(PONG_TIMEOUT, write_all(stream, &sealed)).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                    return Ended::Failed(format!("ping: {e}"));
                }
                outstanding = Some((n, Instant::now() + PONG_TIMEOUT));
            }
            () = async { if let Some(due) = pong_due { tokio::time::sleep_until(due).await } else { std::future::pending().await } } => {
                return Ended::Failed("the node did not answer a ping".into());
            }
        }
    }
}

fn fail(e: impl std::fmt::Display) -> Ended {
    Ended::Failed(e.to_string())
}

/// Reads control frames from a stream into one buffer.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    async fn frame(&mut self, stream: &TcpStream) -> Result<(FrameType, Vec<u8>), Ended> {
        loop {
            match frame::decode(&self.buf, MAX_GATEWAY_NODE_FRAME_LEN) {
                Ok(Some((f, used))) => {
                    let out = (f.kind, f.body.to_vec());
                    self.buf.drain(..used);
                    return Ok(out);
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e)),
            }
            stream.readable().await.map_err(fail)?;
            let mut chunk = [0u8; 2048];
            match stream.try_read(&mut chunk) {
                Ok(0) => return Err(Ended::Failed("closed by the node".into())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(e)),
            }
        }
    }

    async fn message(
        &mut self,
        stream: &TcpStream,
        channel: &mut ControlChannel,
    ) -> Result<ControlMessage, Ended> {
        let (kind, body) = self.frame(stream).await?;
        if kind == FrameType::Error {
            let code = frame::decode_error_body(&body).map_err(fail)?;
            return Err(Ended::Refused(code));
        }
        let body = frame::Frame { kind, body: &body }
            .expect(FrameType::ControlData, "control data")
            .map_err(fail)?;
        channel.open(body).map_err(fail)
    }
}

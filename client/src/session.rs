//! A session with one HSM node: the inner end-to-end channel and the typed
//! HSM operations over it (PROTOCOL.md §6, §7).
//!
//! After the gateway's grant the connection is a pipe to an HSM node. The
//! client finishes the inner Noise handshake with it, checking the node's key
//! against `hsm_keys`. Then a writer task and a reader task own the two
//! halves of the socket: any number of callers may have requests in flight
//! at once (`&self` methods, a cloneable handle), each request carries its
//! own id and each response is matched to its request by id (§7.1), so
//! requests are pipelined on one connection. An Error frame from the HSM
//! side (e.g. `denied`: the partition key is not authorized), a transport
//! failure or a protocol error ends the session for every caller: requests
//! in flight fail with that cause, later ones with [`ClientError::SessionBroken`].
//!
//! The node negotiates the inner version: with version 1 only the ops of
//! version 1 exist, and an op of version 2 fails locally with status
//! `unsupported` without being sent (§7.6).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hsmgate_wire::PublicKey;
use hsmgate_wire::frame::{FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::{Channel, ClientInner, HsmInfo, MAX_CHANNEL_PLAINTEXT};
use hsmgate_wire::ops::{
    KeyInfo, KeyRef, KeyType, OaepHash, ObjectInfo, Reply, Request, Response, SignScheme, Status,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::error::{ClientError, Phase};
use crate::framed::{Framed, wire_error};

/// Requests queued for the writer at once; callers beyond wait their turn.
const QUEUE: usize = 256;

/// An authenticated, end-to-end encrypted session with one HSM node. Clones
/// share the session.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    calls: mpsc::Sender<Call>,
}

/// What the session's handle and its two tasks share.
struct Shared {
    peer: SocketAddr,
    gateway_id: String,
    hsm: HsmInfo,
    request_timeout: Duration,
    next_id: AtomicU32,
    state: Mutex<State>,
    /// Turns true when the session ends, for the two tasks.
    ended: watch::Sender<bool>,
    /// On QUIC: the connection the session's stream belongs to, kept open
    /// while the session lives.
    quic: Option<QuicLink>,
}

/// A QUIC session's connection.
pub(crate) struct QuicLink {
    pub conn: quinn::Connection,
    /// Set when the session is the connection's only user (`connect` with
    /// `transport = "quic"`): closing the session closes the connection.
    pub endpoint: Option<quinn::Endpoint>,
}

/// A byte stream a session runs on, split into its two directions.
pub(crate) trait SplitStream {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl SplitStream for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

#[derive(Default)]
struct State {
    /// Requests written (or being written) and not yet answered.
    pending: HashMap<u32, Pending>,
    /// Why the session ended, once it has.
    dead: Option<Death>,
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Reply, ClientError>>,
}

/// One caller's request on its way to the writer.
struct Call {
    id: u32,
    request: Request,
    reply: oneshot::Sender<Result<Reply, ClientError>>,
}

/// Why a session ended: kept so that every request in flight, and every
/// later one, can be told.
#[derive(Debug, Clone)]
enum Death {
    Closed,
    Io(String),
    Timeout,
    Protocol(String),
    HsmRefused(hsmgate_wire::Code),
    Local,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("gateway", &self.shared.peer)
            .field("gateway_id", &self.shared.gateway_id)
            .field("hsm_id", &self.shared.hsm.hsm_id)
            .field("version", &self.shared.hsm.version)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, death: &Death) -> ClientError {
        let addr = self.peer;
        let phase = Phase::Request;
        match death {
            Death::Closed => ClientError::Closed { addr, phase },
            Death::Io(text) => ClientError::Io {
                addr,
                phase,
                source: std::io::Error::other(text.clone()),
            },
            Death::Timeout => ClientError::Timeout { addr, phase },
            Death::Protocol(detail) => ClientError::Protocol {
                addr,
                phase,
                detail: detail.clone(),
            },
            Death::HsmRefused(code) => ClientError::HsmRefused {
                addr,
                hsm_id: Some(self.hsm.hsm_id.clone()),
                code: *code,
            },
            Death::Local => ClientError::SessionBroken {
                addr,
                hsm_id: self.hsm.hsm_id.clone(),
            },
        }
    }

    /// End the session: every request in flight fails with `death`.
    fn die(&self, death: Death) {
        let pending = {
            let mut state = self.lock();
            if state.dead.is_none() {
                state.dead = Some(death.clone());
            }
            std::mem::take(&mut state.pending)
        };
        for (_, p) in pending {
            let _ = p.reply.send(Err(self.error(&death)));
        }
        self.ended.send_replace(true);
    }

    /// Completes once the session has ended.
    async fn ended(&self) {
        let mut ended = self.ended.subscribe();
        let _ = ended.wait_for(|e| *e).await;
    }
}

impl Session {
    /// Finish the inner handshake on a granted connection (the InnerHello
    /// was already sent, pipelined behind the credentials), then start the
    /// session's reader and writer.
    pub(crate) async fn establish<S: SplitStream + AsyncRead + AsyncWrite + Unpin>(
        mut io: Framed<S>,
        inner: ClientInner,
        config: &ClientConfig,
        gateway_id: String,
        quic: Option<QuicLink>,
    ) -> Result<Session, ClientError> {
        let addr = io.peer();
        let phase = Phase::InnerHandshake;
        let timeout = config.handshake_timeout;
        let wire = |e| wire_error(addr, phase, None, e);
        let challenge = io.read_frame(phase, MAX_FRAME_LEN, timeout).await?;
        let body = challenge
            .as_frame()
            .expect(FrameType::InnerChallenge, "inner challenge")
            .map_err(wire)?;
        let trusted = |k: &PublicKey| config.hsm_keys.contains(k);
        let (finish, hsm, channel) = inner.finish(body, trusted).map_err(wire)?;
        io.write_all(&finish, phase, timeout).await?;
        tracing::debug!(gateway = %addr, hsm_id = %hsm.hsm_id, version = hsm.version, "session established");
        let (stream, buffered) = io.into_parts();
        let (read, write) = stream.split();
        let shared = Arc::new(Shared {
            peer: addr,
            gateway_id,
            hsm,
            request_timeout: config.request_timeout,
            next_id: AtomicU32::new(1),
            state: Mutex::default(),
            ended: watch::channel(false).0,
            quic,
        });
        let channel = Arc::new(Mutex::new(channel));
        let (calls, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_requests(
            Arc::clone(&shared),
            Arc::clone(&channel),
            queue,
            write,
        ));
        tokio::spawn(read_responses(
            Arc::clone(&shared),
            channel,
            Framed::with_buffer(read, addr, buffered),
        ));
        Ok(Session { shared, calls })
    }

    /// The id the gateway announced in its Challenge.
    pub fn gateway_id(&self) -> &str {
        &self.shared.gateway_id
    }

    /// The id the HSM node announced in its InnerChallenge.
    pub fn hsm_id(&self) -> &str {
        &self.shared.hsm.hsm_id
    }

    /// The HSM node's static key (one of `hsm_keys`).
    pub fn hsm_key(&self) -> PublicKey {
        self.shared.hsm.static_key
    }

    /// The inner protocol version the node chose: 2 has the extended op set.
    pub fn version(&self) -> u8 {
        self.shared.hsm.version
    }

    /// The gateway address this session goes through.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Whether the session ended (it then fails every request).
    pub fn is_broken(&self) -> bool {
        self.shared.lock().dead.is_some()
    }

    /// End the session (for every clone): the writer half-closes. A QUIC
    /// session that owns its connection closes it too, and waits (at most a
    /// second) until the gateway has been told.
    pub async fn close(self) {
        self.shared.die(Death::Local);
        if let Some(QuicLink {
            conn,
            endpoint: Some(endpoint),
        }) = &self.shared.quic
        {
            conn.close(quinn::VarInt::from_u32(0), b"");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    /// Check that the HSM node answers.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(self.unexpected("ping", &other)),
        }
    }

    /// `n` random bytes from the HSM (1..=4096).
    pub async fn random(&self, n: u16) -> Result<Vec<u8>, ClientError> {
        match self.call(Request::Random { len: n }).await? {
            Reply::Random(bytes) => Ok(bytes),
            other => Err(self.unexpected("random", &other)),
        }
    }

    /// Generate a key of `kind` under `label` in the partition.
    pub async fn generate_key(&self, kind: KeyType, label: &str) -> Result<KeyInfo, ClientError> {
        let request = Request::GenerateKey {
            kind,
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::Key(info) => Ok(info),
            other => Err(self.unexpected("generate_key", &other)),
        }
    }

    /// The keys of the partition, with their public keys. With version 2,
    /// a partition whose listing does not fit one frame is listed key by
    /// key (pipelined).
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(Request::ListKeys).await {
            Ok(Reply::Keys(keys)) => Ok(keys),
            Ok(other) => Err(self.unexpected("list_keys", &other)),
            Err(ClientError::Operation {
                status: Status::LimitReached,
                ..
            }) if self.version() >= hsmgate_wire::ops::OPS_V2 => {
                // Every lookup at once: the writer pipelines them.
                let refs = self.list_key_refs().await?;
                let mut lookups = tokio::task::JoinSet::new();
                for (i, r) in refs.into_iter().enumerate() {
                    let session = self.clone();
                    lookups.spawn(async move { (i, session.get_key(&r.label).await) });
                }
                let mut keys = Vec::new();
                while let Some(done) = lookups.join_next().await {
                    let (i, key) = done.map_err(|_| self.shared.error(&Death::Local))?;
                    keys.push((i, key?));
                }
                keys.sort_by_key(|(i, _)| *i);
                Ok(keys.into_iter().map(|(_, k)| k).collect())
            }
            Err(e) => Err(e),
        }
    }

    /// Sign `data` with the key `label` (hashing per key type, §7.5).
    pub async fn sign(&self, label: &str, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let request = Request::Sign {
            label: label.to_owned(),
            data: data.to_vec(),
        };
        match self.call(request).await? {
            Reply::Signature(sig) => Ok(sig),
            other => Err(self.unexpected("sign", &other)),
        }
    }

    /// Verify `signature` over `data` with the key `label`.
    pub async fn verify(
        &self,
        label: &str,
        data: &[u8],
        signature: &[u8],
    ) -> Result<bool, ClientError> {
        let request = Request::Verify {
            label: label.to_owned(),
            data: data.to_vec(),
            signature: signature.to_vec(),
        };
        match self.call(request).await? {
            Reply::Verified(ok) => Ok(ok),
            other => Err(self.unexpected("verify", &other)),
        }
    }

    /// Encrypt `plaintext` (with additional authenticated data `aad`) under
    /// the AES key `label`; the HSM draws the nonce.
    pub async fn encrypt(
        &self,
        label: &str,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::Encrypt {
            label: label.to_owned(),
            plaintext: plaintext.to_vec(),
            aad: aad.to_vec(),
        };
        match self.call(request).await? {
            Reply::Ciphertext(ct) => Ok(ct),
            other => Err(self.unexpected("encrypt", &other)),
        }
    }

    /// Decrypt `ciphertext` (produced by [`Session::encrypt`]) with `aad`.
    pub async fn decrypt(
        &self,
        label: &str,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::Decrypt {
            label: label.to_owned(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.to_vec(),
        };
        match self.call(request).await? {
            Reply::Plaintext(pt) => Ok(pt),
            other => Err(self.unexpected("decrypt", &other)),
        }
    }

    // ------------------------------------------------- version 2 (§7.6)

    /// Sign a digest the caller computed (`scheme` says how).
    pub async fn sign_digest(
        &self,
        label: &str,
        scheme: SignScheme,
        digest: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::SignDigest {
            label: label.to_owned(),
            scheme,
            digest: digest.to_vec(),
        };
        match self.call(request).await? {
            Reply::DigestSignature(sig) => Ok(sig),
            other => Err(self.unexpected("sign_digest", &other)),
        }
    }

    /// RSA-OAEP decryption with the RSA key `label`.
    pub async fn decrypt_rsa(
        &self,
        label: &str,
        hash: OaepHash,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::DecryptRsa {
            label: label.to_owned(),
            hash,
            ciphertext: ciphertext.to_vec(),
        };
        match self.call(request).await? {
            Reply::RsaPlaintext(pt) => Ok(pt),
            other => Err(self.unexpected("decrypt_rsa", &other)),
        }
    }

    /// Delete the key `label`.
    pub async fn delete_key(&self, label: &str) -> Result<(), ClientError> {
        let request = Request::DeleteKey {
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::KeyDeleted => Ok(()),
            other => Err(self.unexpected("delete_key", &other)),
        }
    }

    /// Set the id (PKCS#11 `CKA_ID`) of the key `label`.
    pub async fn set_key_id(&self, label: &str, id: &[u8]) -> Result<(), ClientError> {
        let request = Request::SetKeyId {
            label: label.to_owned(),
            id: id.to_vec(),
        };
        match self.call(request).await? {
            Reply::KeyIdSet => Ok(()),
            other => Err(self.unexpected("set_key_id", &other)),
        }
    }

    /// AES-256-GCM with the caller's 12-byte IV: `ciphertext ‖ tag`.
    pub async fn encrypt_gcm(
        &self,
        label: &str,
        iv: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::EncryptGcm {
            label: label.to_owned(),
            iv: iv.to_vec(),
            plaintext: plaintext.to_vec(),
            aad: aad.to_vec(),
        };
        match self.call(request).await? {
            Reply::GcmCiphertext(ct) => Ok(ct),
            other => Err(self.unexpected("encrypt_gcm", &other)),
        }
    }

    /// The inverse of [`Session::encrypt_gcm`].
    pub async fn decrypt_gcm(
        &self,
        label: &str,
        iv: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let request = Request::DecryptGcm {
            label: label.to_owned(),
            iv: iv.to_vec(),
            ciphertext: ciphertext.to_vec(),
            aad: aad.to_vec(),
        };
        match self.call(request).await? {
            Reply::GcmPlaintext(pt) => Ok(pt),
            other => Err(self.unexpected("decrypt_gcm", &other)),
        }
    }

    /// Store a certificate (DER) under `label`, with `id`.
    pub async fn put_object(
        &self,
        label: &str,
        id: &[u8],
        value: &[u8],
    ) -> Result<ObjectInfo, ClientError> {
        let request = Request::PutObject {
            label: label.to_owned(),
            id: id.to_vec(),
            value: value.to_vec(),
        };
        match self.call(request).await? {
            Reply::ObjectStored(info) => Ok(info),
            other => Err(self.unexpected("put_object", &other)),
        }
    }

    /// The stored objects, without their values.
    pub async fn list_objects(&self) -> Result<Vec<ObjectInfo>, ClientError> {
        match self.call(Request::ListObjects).await? {
            Reply::Objects(objects) => Ok(objects),
            other => Err(self.unexpected("list_objects", &other)),
        }
    }

    /// One object with its value.
    pub async fn get_object(&self, label: &str) -> Result<(ObjectInfo, Vec<u8>), ClientError> {
        let request = Request::GetObject {
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::Object { info, value } => Ok((info, value)),
            other => Err(self.unexpected("get_object", &other)),
        }
    }

    /// Delete the object `label`.
    pub async fn delete_object(&self, label: &str) -> Result<(), ClientError> {
        let request = Request::DeleteObject {
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::ObjectDeleted => Ok(()),
            other => Err(self.unexpected("delete_object", &other)),
        }
    }

    /// Type, label and id of every key (no public keys: always fits a frame).
    pub async fn list_key_refs(&self) -> Result<Vec<KeyRef>, ClientError> {
        match self.call(Request::ListKeyRefs).await? {
            Reply::KeyRefs(refs) => Ok(refs),
            other => Err(self.unexpected("list_key_refs", &other)),
        }
    }

    /// One key's description, public key included.
    pub async fn get_key(&self, label: &str) -> Result<KeyInfo, ClientError> {
        let request = Request::GetKey {
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::KeyDetails(info) => Ok(info),
            other => Err(self.unexpected("get_key", &other)),
        }
    }

    /// Send one request and wait for its response (bounded by the request
    /// timeout). Other callers' requests may be in flight meanwhile.
    pub async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let shared = &self.shared;
        if request.since() > shared.hsm.version {
            return Err(ClientError::Operation {
                addr: shared.peer,
                hsm_id: shared.hsm.hsm_id.clone(),
                status: Status::Unsupported,
            });
        }
        // Refuse what breaks a protocol limit before it is queued.
        request
            .encode(0)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        if let Some(death) = shared.lock().dead.clone() {
            return Err(match death {
                Death::Local => shared.error(&Death::Local),
                _ => ClientError::SessionBroken {
                    addr: shared.peer,
                    hsm_id: shared.hsm.hsm_id.clone(),
                },
            });
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let waited = tokio::time::timeout(shared.request_timeout, async {
            self.calls
                .send(Call { id, request, reply })
                .await
                .map_err(|_| shared.error(&Death::Local))?;
            answer.await.map_err(|_| shared.error(&Death::Local))?
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                // A late response is dropped; the session stays usable.
                shared.lock().pending.remove(&id);
                Err(ClientError::Timeout {
                    addr: shared.peer,
                    phase: Phase::Request,
                })
            }
        }
    }

    fn unexpected(&self, op: &str, reply: &Reply) -> ClientError {
        ClientError::Protocol {
            addr: self.shared.peer,
            phase: Phase::Request,
            detail: format!("unexpected reply to {op}: {}", reply.name()),
        }
    }
}

/// Seal and write queued requests until the session ends.
async fn write_requests<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    channel: Arc<Mutex<Channel>>,
    mut queue: mpsc::Receiver<Call>,
    write: W,
) {
    let mut io = Framed::new(write, shared.peer);
    loop {
        let call = tokio::select! {
            call = queue.recv() => match call {
                Some(call) => call,
                None => break,
            },
            () = shared.ended() => break,
        };
        let plain = match call.request.encode(call.id) {
            Ok(p) => zeroize::Zeroizing::new(p),
            Err(e) => {
                let _ = call
                    .reply
                    .send(Err(ClientError::InvalidInput(e.to_string())));
                continue;
            }
        };
        let sealed = match channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seal(&plain)
        {
            Ok(s) => s,
            Err(e) => {
                let _ = call
                    .reply
                    .send(Err(ClientError::InvalidInput(e.to_string())));
                continue;
            }
        };
        {
            let mut state = shared.lock();
            if let Some(death) = state.dead.clone() {
                drop(state);
                let _ = call.reply.send(Err(shared.error(&death)));
                break;
            }
            state.pending.insert(
                call.id,
                Pending {
                    request: call.request,
                    reply: call.reply,
                },
            );
        }
        if let Err(e) = io
            .send(&sealed, Phase::Request, shared.request_timeout)
            .await
        {
            shared.die(death_of(&e));
            break;
        }
    }
    io.shutdown().await;
}

/// Read, open and dispatch responses until the session ends.
async fn read_responses<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    channel: Arc<Mutex<Channel>>,
    mut io: Framed<R>,
) {
    let version = shared.hsm.version;
    loop {
        let frame = tokio::select! {
            frame = io.next_frame(Phase::Request, MAX_FRAME_LEN) => frame,
            () = shared.ended() => return,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return shared.die(death_of(&e)),
        };
        let body = match frame.as_frame().expect(FrameType::InnerData, "inner data") {
            Ok(b) => b,
            Err(hsmgate_wire::WireError::Refused(code)) => {
                return shared.die(Death::HsmRefused(code));
            }
            Err(e) => return shared.die(Death::Protocol(e.to_string())),
        };
        let opened = channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(body);
        let opened = match opened {
            Ok(p) if p.len() <= MAX_CHANNEL_PLAINTEXT => zeroize::Zeroizing::new(p),
            Ok(_) => return shared.die(Death::Protocol("oversized response".into())),
            Err(e) => return shared.die(Death::Protocol(e.to_string())),
        };
        let response = match Response::decode(&opened, version) {
            Ok(r) => r,
            Err(e) => return shared.die(Death::Protocol(e.to_string())),
        };
        let Some(pending) = shared.lock().pending.remove(&response.id) else {
            // The caller gave up waiting (its timeout): nothing to deliver.
            continue;
        };
        // PROTOCOL.md §7.1: the reply's tag must be the request's op, and a
        // random reply exactly as long as asked.
        let result = match response.result {
            Ok(reply) if !reply.answers(&pending.request) => {
                let detail = format!(
                    "reply {} does not answer the request {}",
                    reply.name(),
                    pending.request.name()
                );
                let _ = pending.reply.send(Err(ClientError::Protocol {
                    addr: shared.peer,
                    phase: Phase::Request,
                    detail: detail.clone(),
                }));
                return shared.die(Death::Protocol(detail));
            }
            Ok(reply) => Ok(reply),
            Err(status) => Err(ClientError::Operation {
                addr: shared.peer,
                hsm_id: shared.hsm.hsm_id.clone(),
                status,
            }),
        };
        let _ = pending.reply.send(result);
    }
}

fn death_of(e: &ClientError) -> Death {
    match e {
        ClientError::Closed { .. } => Death::Closed,
        ClientError::Timeout { .. } => Death::Timeout,
        ClientError::Io { source, .. } => Death::Io(source.to_string()),
        ClientError::HsmRefused { code, .. } | ClientError::Refused { code, .. } => {
            Death::HsmRefused(*code)
        }
        other => Death::Protocol(other.to_string()),
    }
}

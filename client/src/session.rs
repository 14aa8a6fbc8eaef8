//! A session with one HSM node: the inner end-to-end channel and the typed
//! HSM operations over it (PROTOCOL.md §6, §7).
//!
//! After the gateway's grant the connection is a pipe to an HSM node. The
//! client finishes the inner Noise handshake with it, checking the node's key
//! against `hsm_keys`, and then sends one sealed request at a time and waits
//! for its sealed response. An Error frame from the HSM side (e.g. `denied`:
//! the partition key is not authorized) ends the session with that code.

use std::net::SocketAddr;
use std::time::Duration;

use hsmgate_wire::PublicKey;
use hsmgate_wire::frame::{FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::{Channel, ClientInner, HsmInfo};
use hsmgate_wire::ops::{KeyInfo, KeyType, Reply, Request, Response};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::error::{ClientError, Phase};
use crate::framed::{Framed, wire_error};

/// An authenticated, end-to-end encrypted session with one HSM node.
pub struct Session {
    io: Framed<TcpStream>,
    channel: Channel,
    next_id: u32,
    gateway_id: String,
    hsm: HsmInfo,
    request_timeout: Duration,
    /// Set while a request is in flight and left set if it fails at the
    /// transport level: a lost response would desynchronise the channel.
    broken: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("gateway", &self.io.peer())
            .field("gateway_id", &self.gateway_id)
            .field("hsm_id", &self.hsm.hsm_id)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Finish the inner handshake on a granted connection. The InnerHello
    /// was already sent, pipelined behind the credentials.
    pub(crate) async fn establish(
        mut io: Framed<TcpStream>,
        inner: ClientInner,
        config: &ClientConfig,
        gateway_id: String,
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
        tracing::debug!(gateway = %addr, hsm_id = %hsm.hsm_id, "session established");
        Ok(Session {
            io,
            channel,
            next_id: 1,
            gateway_id,
            hsm,
            request_timeout: config.request_timeout,
            broken: false,
        })
    }

    /// The id the gateway announced in its Challenge.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// The id the HSM node announced in its InnerChallenge.
    pub fn hsm_id(&self) -> &str {
        &self.hsm.hsm_id
    }

    /// The HSM node's static key (one of `hsm_keys`).
    pub fn hsm_key(&self) -> PublicKey {
        self.hsm.static_key
    }

    /// The gateway address this session goes through.
    pub fn peer_addr(&self) -> SocketAddr {
        self.io.peer()
    }

    /// End the session.
    pub async fn close(mut self) {
        self.io.shutdown().await;
    }

    /// Check that the HSM node answers.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(Request::Ping).await? {
            Reply::Pong => Ok(()),
            other => Err(self.unexpected("ping", &other)),
        }
    }

    /// `n` random bytes from the HSM (1..=4096).
    pub async fn random(&mut self, n: u16) -> Result<Vec<u8>, ClientError> {
        match self.call(Request::Random { len: n }).await? {
            Reply::Random(bytes) => Ok(bytes),
            other => Err(self.unexpected("random", &other)),
        }
    }

    /// Generate a key of `kind` under `label` in the partition.
    pub async fn generate_key(
        &mut self,
        kind: KeyType,
        label: &str,
    ) -> Result<KeyInfo, ClientError> {
        let request = Request::GenerateKey {
            kind,
            label: label.to_owned(),
        };
        match self.call(request).await? {
            Reply::Key(info) => Ok(info),
            other => Err(self.unexpected("generate_key", &other)),
        }
    }

    /// The keys of the partition.
    pub async fn list_keys(&mut self) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(Request::ListKeys).await? {
            Reply::Keys(keys) => Ok(keys),
            other => Err(self.unexpected("list_keys", &other)),
        }
    }

    /// Sign `data` with the key `label`.
    pub async fn sign(&mut self, label: &str, data: &[u8]) -> Result<Vec<u8>, ClientError> {
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
        &mut self,
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
    /// the AES key `label`.
    pub async fn encrypt(
        &mut self,
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
        &mut self,
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

    /// Send one request and wait for its response.
    async fn call(&mut self, request: Request) -> Result<Reply, ClientError> {
        let addr = self.io.peer();
        if self.broken {
            return Err(ClientError::SessionBroken {
                addr,
                hsm_id: self.hsm.hsm_id.clone(),
            });
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let plain = zeroize::Zeroizing::new(
            request
                .encode(id)
                .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
        );
        let sealed = self
            .channel
            .seal(&plain)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;

        self.broken = true;
        let phase = Phase::Request;
        let timeout = self.request_timeout;
        let hsm_id = self.hsm.hsm_id.clone();
        let wire = |e| wire_error(addr, phase, Some(&hsm_id), e);
        let answer = match self.io.write_all(&sealed, phase, timeout).await {
            Ok(()) => self.io.read_frame(phase, MAX_FRAME_LEN, timeout).await,
            Err(e) => Err(e),
        }
        .map_err(|e| self.blame_hsm(e))?;
        let body = answer
            .as_frame()
            .expect(FrameType::InnerData, "inner data")
            .map_err(wire)?;
        let opened = self.channel.open(body).map_err(wire)?;
        let response = Response::decode(&opened).map_err(wire)?;
        if response.id != id {
            return Err(ClientError::Protocol {
                addr,
                phase,
                detail: format!("response id {} does not match request id {id}", response.id),
            });
        }
        // PROTOCOL.md §7.1: the reply's tag must be the request's op, and a
        // random reply exactly as long as asked.
        if let Ok(reply) = &response.result
            && !reply.answers(&request)
        {
            return Err(ClientError::Protocol {
                addr,
                phase,
                detail: format!(
                    "reply {} does not answer the request {}",
                    reply_name(reply),
                    request_name(&request)
                ),
            });
        }
        self.broken = false;
        response.result.map_err(|status| ClientError::Operation {
            addr,
            hsm_id: self.hsm.hsm_id.clone(),
            status,
        })
    }

    /// Name the HSM in a refusal that `Framed` could only attribute to the side.
    fn blame_hsm(&self, e: ClientError) -> ClientError {
        match e {
            ClientError::HsmRefused {
                addr,
                hsm_id: None,
                code,
            } => ClientError::HsmRefused {
                addr,
                hsm_id: Some(self.hsm.hsm_id.clone()),
                code,
            },
            other => other,
        }
    }

    fn unexpected(&mut self, op: &str, reply: &Reply) -> ClientError {
        self.broken = true;
        ClientError::Protocol {
            addr: self.io.peer(),
            phase: Phase::Request,
            detail: format!("unexpected reply to {op}: {}", reply_name(reply)),
        }
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Ping => "ping",
        Request::Random { .. } => "random",
        Request::GenerateKey { .. } => "generate_key",
        Request::ListKeys => "list_keys",
        Request::Sign { .. } => "sign",
        Request::Verify { .. } => "verify",
        Request::Encrypt { .. } => "encrypt",
        Request::Decrypt { .. } => "decrypt",
    }
}

fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Pong => "pong",
        Reply::Random(_) => "random",
        Reply::Key(_) => "key",
        Reply::Keys(_) => "keys",
        Reply::Signature(_) => "signature",
        Reply::Verified(_) => "verified",
        Reply::Ciphertext(_) => "ciphertext",
        Reply::Plaintext(_) => "plaintext",
    }
}

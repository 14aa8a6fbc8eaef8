//! The Grant: what the gateway authorized, told to the HSM node that serves
//! the session (PROTOCOL.md §8.3).
//!
//! It is the first frame on every connection the gateway opens to a node for
//! a session, written ahead of the client's bytes, which follow unchanged.
//! It is sealed with AES-256-GCM under the grant key the node gave the
//! gateway over their control channel (`control.rs`), so only a gateway the
//! node trusts can produce one, and an observer on the gateway–node network
//! learns nothing of the session. Each grant carries a counter, unique per
//! key, that is the GCM nonce and lets the node refuse a replay
//! ([`ReplayWindow`]).
//!
//! ```text
//! Grant frame body = key_id: u64 | counter: u64 | AES-256-GCM(grant) | tag
//!   nonce = 00 00 00 00 | counter     aad = key_id | counter
//! grant = version | session_id[16] | expires_at: u64 | source | client_key[32]
//!         | gateway_id | client_id | tenant | partition           (names)
//! ```

use std::net::{IpAddr, SocketAddr};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};

use crate::error::WireError;
use crate::frame::{self, FrameType};
use crate::keys::PublicKey;
use crate::reader::{Reader, put_name};
use crate::text::validate_name;

/// The grant format this implementation writes and reads.
pub const GRANT_VERSION: u8 = 1;
/// Length of a session id.
pub const SESSION_ID_LEN: usize = 16;
/// Bytes of the frame body before the ciphertext: key id and counter.
const CLEAR_LEN: usize = 16;

/// What the gateway granted, for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Chosen by the gateway; both sides log it, so their logs join.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Unix time (seconds) until which the directory's answer that granted
    /// the session is valid.
    pub expires_at: u64,
    /// The client's address as the gateway saw it.
    pub source: SocketAddr,
    /// The service key the client proved in the outer handshake.
    pub client_key: PublicKey,
    pub gateway_id: String,
    pub client_id: String,
    pub tenant: String,
    pub partition: String,
}

impl Grant {
    /// The session id as 32 lower-case hex digits, as logs show it.
    pub fn session_id_hex(&self) -> String {
        hex::encode(self.session_id)
    }

    /// The plaintext that [`GrantKey::seal`] encrypts. Public for the fuzz
    /// targets only: a grant travels sealed.
    #[doc(hidden)]
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        for (field, name) in [
            ("gateway_id", &self.gateway_id),
            ("client_id", &self.client_id),
            ("tenant", &self.tenant),
            ("partition", &self.partition),
        ] {
            validate_name(name).map_err(|why| WireError::malformed(field, why))?;
        }
        let mut out = Vec::with_capacity(128);
        out.push(GRANT_VERSION);
        out.extend_from_slice(&self.session_id);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        match self.source.ip().to_canonical() {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.extend_from_slice(&self.source.port().to_be_bytes());
        out.extend_from_slice(self.client_key.as_bytes());
        put_name(&mut out, &self.gateway_id);
        put_name(&mut out, &self.client_id);
        put_name(&mut out, &self.tenant);
        put_name(&mut out, &self.partition);
        Ok(out)
    }

    /// Read the plaintext that [`GrantKey::open`] decrypted. Public for the
    /// fuzz targets only.
    #[doc(hidden)]
    pub fn decode(bytes: &[u8]) -> Result<Grant, WireError> {
        const WHAT: &str = "grant";
        let mut r = Reader::new(bytes, WHAT);
        if r.u8()? != GRANT_VERSION {
            return Err(WireError::malformed(WHAT, "unknown grant version"));
        }
        let mut session_id = [0u8; SESSION_ID_LEN];
        session_id.copy_from_slice(r.take(SESSION_ID_LEN)?);
        let expires_at = r.u64()?;
        let ip = match r.u8()? {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(r.take(4)?);
                IpAddr::from(a)
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(r.take(16)?);
                // An IPv4-mapped address is sent as IPv4 (§8.3); one sent
                // as IPv6 all the same reads as the IPv4 address it carries,
                // so that a grant has one reading, the one it encodes to.
                IpAddr::from(a).to_canonical()
            }
            _ => return Err(WireError::malformed(WHAT, "address family is not 4 or 6")),
        };
        let port = r.u16()?;
        let client_key = PublicKey::from_bytes(r.take(32)?)?;
        let grant = Grant {
            session_id,
            expires_at,
            source: SocketAddr::new(ip, port),
            client_key,
            gateway_id: r.name()?.to_owned(),
            client_id: r.name()?.to_owned(),
            tenant: r.name()?.to_owned(),
            partition: r.name()?.to_owned(),
        };
        r.finish()?;
        Ok(grant)
    }
}

/// A grant key: seals grants (gateway) and opens them (node).
pub struct GrantKey {
    id: u64,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GrantKey {
    pub fn new(id: u64, key: &[u8; crate::control::GRANT_KEY_LEN]) -> GrantKey {
        GrantKey {
            id,
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Seal `grant` as a whole Grant frame. `counter` must never repeat
    /// under this key (it is the GCM nonce); it starts at 1.
    pub fn seal(&self, counter: u64, grant: &Grant) -> Result<Vec<u8>, WireError> {
        if counter == 0 {
            return Err(WireError::State("grant counter 0"));
        }
        let clear = clear_part(self.id, counter);
        let plain = zeroize::Zeroizing::new(grant.encode()?);
        let sealed = self
            .cipher
            .encrypt(
                &nonce(counter),
                Payload {
                    msg: &plain,
                    aad: &clear,
                },
            )
            .map_err(|_| WireError::State("grant encryption"))?;
        let mut body = Vec::with_capacity(CLEAR_LEN + sealed.len());
        body.extend_from_slice(&clear);
        body.extend_from_slice(&sealed);
        frame::encode(FrameType::Grant, &body)
    }

    /// Open a sealed grant that names this key.
    pub fn open(&self, sealed: &SealedGrant<'_>) -> Result<Grant, WireError> {
        if sealed.key_id != self.id {
            return Err(WireError::State("grant opened with another key"));
        }
        let clear = clear_part(sealed.key_id, sealed.counter);
        let plain = self
            .cipher
            .decrypt(
                &nonce(sealed.counter),
                Payload {
                    msg: sealed.ciphertext,
                    aad: &clear,
                },
            )
            .map(zeroize::Zeroizing::new)
            .map_err(|_| WireError::Handshake("grant does not authenticate".into()))?;
        Grant::decode(&plain)
    }
}

/// A Grant frame body, split but not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedGrant<'a> {
    pub key_id: u64,
    pub counter: u64,
    ciphertext: &'a [u8],
}

impl<'a> SealedGrant<'a> {
    /// Split a Grant frame body into key id, counter and ciphertext.
    pub fn parse(body: &'a [u8]) -> Result<SealedGrant<'a>, WireError> {
        let mut r = Reader::new(body, "grant frame");
        let key_id = r.u64()?;
        let counter = r.u64()?;
        let ciphertext = r.take(body.len() - CLEAR_LEN)?;
        if ciphertext.len() < crate::TAG_LEN {
            return Err(WireError::malformed("grant frame", "shorter than a tag"));
        }
        if counter == 0 {
            return Err(WireError::malformed("grant frame", "counter 0"));
        }
        Ok(SealedGrant {
            key_id,
            counter,
            ciphertext,
        })
    }
}

fn clear_part(key_id: u64, counter: u64) -> [u8; CLEAR_LEN] {
    let mut clear = [0u8; CLEAR_LEN];
    clear[..8].copy_from_slice(&key_id.to_be_bytes());
    clear[8..].copy_from_slice(&counter.to_be_bytes());
    clear
}

fn nonce(counter: u64) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

/// Counters of one grant key seen by a node: each may be used once.
///
/// Grants reach the node on separate connections, so they may arrive a
/// little out of order; the window remembers the last [`REPLAY_WINDOW`]
/// counters below the highest seen and refuses anything older.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: u64,
    seen: Box<[u64; REPLAY_WINDOW as usize / 64]>,
}

/// How far below the highest counter seen a grant is still accepted.
pub const REPLAY_WINDOW: u64 = 4096;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// This counter was used before.
    Seen,
    /// Older than the window: it cannot be told from a replay.
    TooOld,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: 0,
            seen: Box::new([0; REPLAY_WINDOW as usize / 64]),
        }
    }
}

impl ReplayWindow {
    /// Accept `counter` once; counter 0 is never accepted.
    pub fn accept(&mut self, counter: u64) -> Result<(), Replay> {
        if counter == 0 {
            return Err(Replay::Seen);
        }
        if counter > self.highest {
            let advance = counter - self.highest;
            if advance >= REPLAY_WINDOW {
                self.seen.fill(0);
            } else {
                for c in self.highest + 1..counter {
                    self.clear(c);
                }
            }
            self.highest = counter;
            self.set(counter);
            return Ok(());
        }
        if self.highest - counter >= REPLAY_WINDOW {
            return Err(Replay::TooOld);
        }
        if self.is_set(counter) {
            return Err(Replay::Seen);
        }
        self.set(counter);
        Ok(())
    }

    fn slot(counter: u64) -> (usize, u64) {
        let bit = counter % REPLAY_WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn set(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.seen[word] |= mask;
    }

    fn clear(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.seen[word] &= !mask;
    }

    fn is_set(&self, counter: u64) -> bool {
        let (word, mask) = Self::slot(counter);
        self.seen[word] & mask != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_GATEWAY_NODE_FRAME_LEN, decode};
    use proptest::prelude::*;

    fn grant() -> Grant {
        Grant {
            session_id: [7; SESSION_ID_LEN],
            expires_at: 1_800_000_000,
            source: "127.0.0.2:40000".parse().unwrap(),
            client_key: PublicKey([3; 32]),
            gateway_id: "gw-1".into(),
            client_id: "app-1".into(),
            tenant: "acme".into(),
            partition: "p1".into(),
        }
    }

    fn body(frame: &[u8]) -> Vec<u8> {
        let (f, used) = decode(frame, MAX_GATEWAY_NODE_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(f.kind, FrameType::Grant);
        f.body.to_vec()
    }

    #[test]
    fn an_ipv4_mapped_source_sent_as_ipv6_reads_as_ipv4() {
        // Found by the `grant` fuzz target: family 6 with ::ffff:a.b.c.d
        // decoded to an IPv6 source that encodes as family 4, so decode →
        // encode → decode changed the grant.
        let v4 = grant().encode().unwrap();
        // version, session id, expires_at: the family byte is at 25.
        assert_eq!(v4[25], 4);
        let mut v6 = v4[..25].to_vec();
        v6.push(6);
        v6.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        v6.extend_from_slice(&v4[26..]);
        let decoded = Grant::decode(&v6).unwrap();
        assert_eq!(decoded, grant());
        assert_eq!(decoded.source, "127.0.0.2:40000".parse().unwrap());
        assert_eq!(decoded.encode().unwrap(), v4);
    }

    #[test]
    fn a_sealed_grant_opens_with_its_key_only() {
        let key = GrantKey::new(11, &[1; 32]);
        let frame = key.seal(5, &grant()).unwrap();
        let b = body(&frame);
        let sealed = SealedGrant::parse(&b).unwrap();
        assert_eq!((sealed.key_id, sealed.counter), (11, 5));
        assert_eq!(key.open(&sealed).unwrap(), grant());
        assert!(!frame.windows(4).any(|w| w == b"acme"), "encrypted");
        let other = GrantKey::new(11, &[2; 32]);
        assert!(other.open(&sealed).is_err(), "wrong key");
        assert!(GrantKey::new(12, &[1; 32]).open(&sealed).is_err());
    }

    #[test]
    fn the_clear_part_is_authenticated() {
        let key = GrantKey::new(11, &[1; 32]);
        let mut b = body(&key.seal(5, &grant()).unwrap());
        b[15] ^= 1; // counter 5 -> 4
        let sealed = SealedGrant::parse(&b).unwrap();
        assert!(key.open(&sealed).is_err());
    }

    #[test]
    fn the_largest_grant_fits_a_gateway_node_frame() {
        let long = "a".repeat(64);
        let g = Grant {
            source: "[2001:db8::1]:65535".parse().unwrap(),
            gateway_id: long.clone(),
            client_id: long.clone(),
            tenant: long.clone(),
            partition: long,
            ..grant()
        };
        let frame = GrantKey::new(1, &[1; 32]).seal(u64::MAX, &g).unwrap();
        assert!(
            frame.len() - 2 <= MAX_GATEWAY_NODE_FRAME_LEN,
            "{}",
            frame.len()
        );
        let mapped = Grant {
            source: "[::ffff:10.0.0.1]:1".parse().unwrap(),
            ..grant()
        };
        let key = GrantKey::new(1, &[1; 32]);
        let b = body(&key.seal(1, &mapped).unwrap());
        let back = key.open(&SealedGrant::parse(&b).unwrap()).unwrap();
        assert_eq!(back.source, "10.0.0.1:1".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn replay_window_accepts_each_counter_once_in_any_order() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(0), Err(Replay::Seen));
        assert_eq!(w.accept(3), Ok(()));
        assert_eq!(w.accept(1), Ok(()), "late but inside the window");
        assert_eq!(w.accept(3), Err(Replay::Seen));
        assert_eq!(w.accept(1), Err(Replay::Seen));
        assert_eq!(w.accept(2), Ok(()));
        assert_eq!(w.accept(2 + REPLAY_WINDOW), Ok(()));
        assert_eq!(w.accept(2), Err(Replay::TooOld));
        assert_eq!(w.accept(3 + REPLAY_WINDOW), Ok(()));
        assert_eq!(
            w.accept(REPLAY_WINDOW + 1),
            Ok(()),
            "bit reused after the slide"
        );
        assert_eq!(w.accept(10 * REPLAY_WINDOW), Ok(()));
        assert_eq!(w.accept(9 * REPLAY_WINDOW + 1), Ok(()));
        assert_eq!(w.accept(9 * REPLAY_WINDOW), Err(Replay::TooOld));
    }

    proptest! {
        #[test]
        fn replay_window_matches_a_set_model(counters in proptest::collection::vec(1u64..20_000, 0..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut highest = 0;
            for c in counters {
                let model = if seen.contains(&c) {
                    Err(Replay::Seen)
                } else if c + REPLAY_WINDOW <= highest {
                    Err(Replay::TooOld)
                } else {
                    Ok(())
                };
                let got = w.accept(c);
                // An old counter never seen is TooOld in both; a seen one
                // may be reported either way once it left the window.
                match (model, got) {
                    (Err(Replay::Seen), Err(_)) => {}
                    (m, g) => prop_assert_eq!(m, g, "counter {}", c),
                }
                if got.is_ok() {
                    seen.insert(c);
                    highest = highest.max(c);
                }
            }
        }

        #[test]
        fn any_body_parses_or_is_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(sealed) = SealedGrant::parse(&bytes) {
                let _ = GrantKey::new(sealed.key_id, &[0; 32]).open(&sealed);
            }
            let _ = Grant::decode(&bytes);
        }
    }
}

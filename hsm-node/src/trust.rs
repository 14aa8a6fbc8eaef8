//! Which gateways the node trusts, and the grant keys it handed them
//! (PROTOCOL.md §8).
//!
//! A gateway proves its static key on a control connection (`control.rs`);
//! if the key is in `gateways.trusted_keys`, the node draws a fresh grant key
//! for that connection and registers it here. Every session a gateway
//! forwards opens with a Grant sealed under such a key: [`GatewayTrust::verify`]
//! finds the key, opens the grant, refuses a replayed counter and an expired
//! grant. A key lives exactly as long as its control connection: the
//! [`Registration`] removes it when dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hsmgate_wire::control::GRANT_KEY_LEN;
use hsmgate_wire::grant::{Grant, GrantKey, Replay, ReplayWindow, SealedGrant};
use hsmgate_wire::{Code, PublicKey, WireError};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::config::GatewaysConfig;

/// The node's trust in gateways and its live grant keys.
#[derive(Debug)]
pub struct GatewayTrust {
    /// A reload may change the keys (not whether there are any).
    trusted: std::sync::RwLock<HashSet<PublicKey>>,
    allow_direct: bool,
    max_clock_skew: Duration,
    max_control: usize,
    keys: Mutex<HashMap<u64, Arc<KeyEntry>>>,
    /// Bumped when a reload changes the trusted keys: control connections
    /// then check that they still hold a live grant key.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
struct KeyEntry {
    key: GrantKey,
    gateway_key: PublicKey,
    window: Mutex<ReplayWindow>,
}

/// A grant that opened, is fresh and was never used before.
#[derive(Debug, Clone)]
pub struct VerifiedGrant {
    pub grant: Grant,
    /// The key of the gateway that sealed it (proved on its control connection).
    pub gateway_key: PublicKey,
}

/// Why a grant was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefusal {
    #[error("grant is malformed: {0}")]
    Malformed(WireError),
    /// No live control connection gave out this key: the gateway's control
    /// connection closed, this node restarted, or the grant is forged.
    #[error("grant names an unknown key (no control connection of a trusted gateway holds it)")]
    UnknownKey,
    #[error("grant does not authenticate under its key")]
    BadSeal,
    #[error("grant was used before (replay)")]
    Replayed,
    #[error("grant counter is too old to tell from a replay")]
    TooOld,
    #[error("grant expired at {expires_at} (unix), now {now}; check the clocks")]
    Expired { expires_at: u64, now: u64 },
    #[error("this node trusts no gateway: it accepts no grant")]
    NoTrustedGateway,
}

impl GrantRefusal {
    /// The Error frame code the session is refused with. A stale key is
    /// worth retrying (the gateway reconnects its control channel); the
    /// rest is not.
    pub fn code(&self) -> Code {
        match self {
            GrantRefusal::UnknownKey => Code::Unavailable,
            _ => Code::Denied,
        }
    }

    /// Stable short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            GrantRefusal::Malformed(_) => "malformed",
            GrantRefusal::UnknownKey => "unknown_key",
            GrantRefusal::BadSeal => "bad_seal",
            GrantRefusal::Replayed => "replayed",
            GrantRefusal::TooOld => "too_old",
            GrantRefusal::Expired { .. } => "expired",
            GrantRefusal::NoTrustedGateway => "no_trusted_gateway",
        }
    }
}

/// A registered grant key; dropping it withdraws the key.
#[derive(Debug)]
pub struct Registration {
    trust: Arc<GatewayTrust>,
    key_id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.trust.lock().remove(&self.key_id);
    }
}

impl GatewayTrust {
    pub fn new(config: &GatewaysConfig) -> GatewayTrust {
        GatewayTrust {
            // validate() checked every key text.
            trusted: std::sync::RwLock::new(
                config
                    .trusted_keys
                    .iter()
                    .filter_map(|k| PublicKey::from_text(k).ok())
                    .collect(),
            ),
            allow_direct: config.insecure_allow_direct,
            max_clock_skew: Duration::from_secs(config.max_clock_skew_secs),
            max_control: config.max_control_connections,
            keys: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Trust exactly `keys` (no direct sessions): for test and benchmark
    /// backends that stand in for a node.
    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> GatewayTrust {
        GatewayTrust::new(&GatewaysConfig {
            trusted_keys: keys.into_iter().map(|k| k.to_text()).collect(),
            ..GatewaysConfig::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<KeyEntry>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn trusted(&self) -> std::sync::RwLockReadGuard<'_, HashSet<PublicKey>> {
        self.trusted.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_trusted(&self, gateway_key: &PublicKey) -> bool {
        self.trusted().contains(gateway_key)
    }

    /// Whether any gateway is trusted (otherwise the node takes no grants).
    pub fn takes_grants(&self) -> bool {
        !self.trusted().is_empty()
    }

    /// Trust exactly `keys` from now on. The grant keys held by gateways no
    /// longer trusted are withdrawn at once (their grants are refused);
    /// their control connections end at their next message. Returns how
    /// many grant keys were withdrawn.
    pub fn set_trusted(&self, keys: HashSet<PublicKey>) -> usize {
        let mut live = self.lock();
        let before = live.len();
        live.retain(|_, entry| keys.contains(&entry.gateway_key));
        let withdrawn = before - live.len();
        drop(live);
        *self.trusted.write().unwrap_or_else(PoisonError::into_inner) = keys;
        self.changed.send_modify(|n| *n += 1);
        withdrawn
    }

    /// Changes whenever a reload changes the trusted keys.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the grant key `key_id` is live (given out and not withdrawn).
    pub fn is_live(&self, key_id: u64) -> bool {
        self.lock().contains_key(&key_id)
    }

    /// Whether sessions without a grant are served (insecure).
    pub fn allows_direct(&self) -> bool {
        self.allow_direct
    }

    /// Most control connections held at once.
    pub fn max_control_connections(&self) -> usize {
        self.max_control
    }

    /// Grant keys live now (one per control connection).
    pub fn live_keys(&self) -> usize {
        self.lock().len()
    }

    /// Draw a fresh grant key for a control connection of the trusted
    /// gateway `gateway_key`; the caller sends `(key_id, key)` to it.
    pub fn register(
        self: &Arc<Self>,
        gateway_key: PublicKey,
    ) -> (Registration, u64, Zeroizing<[u8; GRANT_KEY_LEN]>) {
        let mut secret = Zeroizing::new([0u8; GRANT_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut secret[..]);
        let mut keys = self.lock();
        let key_id = loop {
            let id = rand::rngs::OsRng.next_u64();
            if !keys.contains_key(&id) {
                break id;
            }
        };
        keys.insert(
            key_id,
            Arc::new(KeyEntry {
                key: GrantKey::new(key_id, &secret),
                gateway_key,
                window: Mutex::default(),
            }),
        );
        drop(keys);
        let registration = Registration {
            trust: Arc::clone(self),
            key_id,
        };
        (registration, key_id, secret)
    }

    /// Check a Grant frame body: a live key, an authentic seal, a counter
    /// never used, an expiry not in the past (beyond the allowed skew).
    pub fn verify(&self, body: &[u8], now: SystemTime) -> Result<VerifiedGrant, GrantRefusal> {
        if !self.takes_grants() {
            return Err(GrantRefusal::NoTrustedGateway);
        }
        let sealed = SealedGrant::parse(body).map_err(GrantRefusal::Malformed)?;
        let entry = self
            .lock()
            .get(&sealed.key_id)
            .cloned()
            .ok_or(GrantRefusal::UnknownKey)?;
        // Registered just before a reload withdrew this gateway's trust.
        if !self.is_trusted(&entry.gateway_key) {
            return Err(GrantRefusal::UnknownKey);
        }
        let grant = entry.key.open(&sealed).map_err(|e| match e {
            WireError::Malformed { .. } => GrantRefusal::Malformed(e),
            _ => GrantRefusal::BadSeal,
        })?;
        // Only an authentic grant may advance the window.
        entry
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accept(sealed.counter)
            .map_err(|r| match r {
                Replay::Seen => GrantRefusal::Replayed,
                Replay::TooOld => GrantRefusal::TooOld,
            })?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let latest = Duration::from_secs(grant.expires_at).saturating_add(self.max_clock_skew);
        if now > latest {
            return Err(GrantRefusal::Expired {
                expires_at: grant.expires_at,
                now: now.as_secs(),
            });
        }
        Ok(VerifiedGrant {
            grant,
            gateway_key: entry.gateway_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_wire::frame::{self, MAX_GATEWAY_NODE_FRAME_LEN};

    fn grant(expires_at: u64) -> Grant {
        Grant {
            session_id: [1; 16],
            expires_at,
            source: "127.0.0.1:5000".parse().expect("addr"),
            client_key: PublicKey([2; 32]),
            gateway_id: "gw".into(),
            client_id: "app".into(),
            tenant: "t".into(),
            partition: "p".into(),
        }
    }

    fn body(frame_bytes: &[u8]) -> Vec<u8> {
        let (f, _) = frame::decode(frame_bytes, MAX_GATEWAY_NODE_FRAME_LEN)
            .expect("frame")
            .expect("whole");
        f.body.to_vec()
    }

    fn unix(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_grant_under_a_live_key_verifies_once() {
        let gw = PublicKey([9; 32]);
        let trust = Arc::new(GatewayTrust::of([gw]));
        let (registration, key_id, secret) = trust.register(gw);
        let key = GrantKey::new(key_id, &secret);
        let b = body(&key.seal(1, &grant(1000)).expect("seal"));
        let ok = trust.verify(&b, unix(999)).expect("verifies");
        assert_eq!(ok.grant, grant(1000));
        assert_eq!(ok.gateway_key, gw);
        assert_eq!(
            trust.verify(&b, unix(999)).unwrap_err(),
            GrantRefusal::Replayed
        );
        drop(registration);
        let b2 = body(&key.seal(2, &grant(1000)).expect("seal"));
        assert_eq!(
            trust.verify(&b2, unix(999)).unwrap_err(),
            GrantRefusal::UnknownKey,
            "the key died with its control connection"
        );
        assert_eq!(trust.live_keys(), 0);
    }

    #[test]
    fn forged_and_expired_grants_are_refused() {
        let gw = PublicKey([9; 32]);
        let trust = Arc::new(GatewayTrust::of([gw]));
        let (_registration, key_id, _) = trust.register(gw);
        let forged = GrantKey::new(key_id, &[0; 32]);
        let b = body(&forged.seal(1, &grant(1000)).expect("seal"));
        assert_eq!(
            trust.verify(&b, unix(0)).unwrap_err(),
            GrantRefusal::BadSeal
        );
        // A forged grant must not burn the counter of a real one.
        let (_r2, id2, secret2) = trust.register(gw);
        let real = GrantKey::new(id2, &secret2);
        let late = body(&real.seal(1, &grant(1000)).expect("seal"));
        assert_eq!(
            trust.verify(&late, unix(1000 + 61)).unwrap_err(),
            GrantRefusal::Expired {
                expires_at: 1000,
                now: 1061
            }
        );
        let fresh = body(&real.seal(2, &grant(1000)).expect("seal"));
        assert!(trust.verify(&fresh, unix(1060)).is_ok(), "within the skew");
        assert!(matches!(
            trust.verify(&[0; 10], unix(0)).unwrap_err(),
            GrantRefusal::Malformed(_)
        ));
    }

    #[test]
    fn a_node_that_trusts_no_gateway_takes_no_grant() {
        let trust = GatewayTrust::new(&GatewaysConfig {
            insecure_allow_direct: true,
            ..GatewaysConfig::default()
        });
        assert!(trust.allows_direct());
        assert_eq!(
            trust.verify(&[0; 40], unix(0)).unwrap_err(),
            GrantRefusal::NoTrustedGateway
        );
    }
}

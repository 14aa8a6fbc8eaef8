//! X25519 for every Noise handshake of this crate, computed by AWS-LC.
//!
//! `snow` brings its own X25519 (curve25519-dalek's portable field
//! arithmetic). AWS-LC's is the same function (RFC 7748) in assembly for
//! the CPUs it knows: on the machines of docs/BENCHMARKS.md a shared secret
//! costs 31 µs instead of 68 µs and a public key 9 µs instead of 46 µs, and
//! the responder of an XX handshake (a gateway, per session) computes one
//! public key for its static key, one for its ephemeral key and three
//! shared secrets. Everything else of the Noise suite (AES-256-GCM,
//! SHA-256, the random source) stays with `snow`'s own resolver.
//!
//! One difference in behaviour, stated in PROTOCOL.md §1.2: a peer key of
//! low order, whose shared secret is all zeros, fails the handshake here
//! (`snow`'s own X25519 would go on with a predictable secret).

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::keys::KEY_LEN;

/// The resolver handed to every `snow::Builder` of this crate: X25519 from
/// AWS-LC, the rest from `snow`.
pub(crate) struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(AwsLcX25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// One X25519 key of a handshake (the static or the ephemeral one).
#[derive(Default)]
struct AwsLcX25519 {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    /// AWS-LC's form of `private`, made once per key; `None` until `set`
    /// or `generate` succeeded, and then every `dh` fails.
    key: Option<PrivateKey>,
}

impl AwsLcX25519 {
    /// Forget the key, so that every `dh` fails until the next `set` or
    /// `generate`.
    fn clear(&mut self) {
        self.key = None;
        self.public = [0; KEY_LEN];
        *self.private = [0; KEY_LEN];
    }

    /// AWS-LC's key and the public half, from `self.private`.
    fn derive(&mut self) -> Result<(), snow::Error> {
        let key = PrivateKey::from_private_key(&X25519, &self.private[..])
            .map_err(|_| snow::Error::Dh)?;
        let public = key.compute_public_key().map_err(|_| snow::Error::Dh)?;
        self.public = <[u8; KEY_LEN]>::try_from(public.as_ref()).map_err(|_| snow::Error::Dh)?;
        self.key = Some(key);
        Ok(())
    }
}

impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    /// `snow` hands over the 32 bytes of a `local_private_key`; any other
    /// length leaves no key (and the handshake fails at its first `dh`).
    fn set(&mut self, privkey: &[u8]) {
        self.clear();
        if privkey.len() != KEY_LEN {
            return;
        }
        self.private.copy_from_slice(privkey);
        if self.derive().is_err() {
            self.clear();
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.clear();
        let made = rng
            .try_fill_bytes(&mut self.private[..])
            .and_then(|()| self.derive());
        if made.is_err() {
            self.clear();
        }
        made
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        let peer = pubkey.get(..KEY_LEN).ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..KEY_LEN).ok_or(snow::Error::Dh)?;
        // AWS-LC refuses an all-zero result (a peer key of low order).
        agreement::agree(
            key,
            UnparsedPublicKey::new(&X25519, peer),
            snow::Error::Dh,
            |secret| {
                out.copy_from_slice(secret);
                Ok(())
            },
        )
    }
}

/// The public key of an X25519 private key (RFC 7748: the clamped scalar
/// times the base point).
pub(crate) fn public_of(private: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    let key = PrivateKey::from_private_key(&X25519, private).ok()?;
    let public = key.compute_public_key().ok()?;
    <[u8; KEY_LEN]>::try_from(public.as_ref()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;

    /// A key whose bytes all depend on `seed`, the first one included (its
    /// low three bits are cleared by clamping).
    fn keys(seed: u8) -> AwsLcX25519 {
        let mut k = AwsLcX25519::default();
        let private: Vec<u8> = (1..=KEY_LEN as u8)
            .map(|i| i.wrapping_mul(seed) ^ 0x5b)
            .collect();
        k.set(&private);
        k
    }

    fn dalek_public(private: &[u8]) -> [u8; KEY_LEN] {
        MontgomeryPoint::mul_base_clamped(private.try_into().unwrap()).to_bytes()
    }

    /// RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn rfc7748_test_vector() {
        let alice_private =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let bob_public =
            hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .unwrap();
        let mut alice = AwsLcX25519::default();
        alice.set(&alice_private);
        assert_eq!(
            hex::encode(alice.pubkey()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let mut shared = [0u8; KEY_LEN];
        alice.dh(&bob_public, &mut shared).unwrap();
        assert_eq!(
            hex::encode(shared),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    /// The same public keys and shared secrets as `snow`'s own X25519
    /// (curve25519-dalek), so peers of either kind agree.
    #[test]
    fn agrees_with_curve25519_dalek() {
        for seed in [1u8, 3, 7, 101, 255] {
            let a = keys(seed);
            let b = keys(seed.wrapping_add(2));
            assert_eq!(a.pubkey(), dalek_public(a.privkey()));
            let mut ours = [0u8; KEY_LEN];
            a.dh(b.pubkey(), &mut ours).unwrap();
            let peer = MontgomeryPoint(b.pubkey().try_into().unwrap());
            let private: [u8; KEY_LEN] = a.privkey().try_into().unwrap();
            assert_eq!(ours, peer.mul_clamped(private).to_bytes());
        }
    }

    #[test]
    fn a_small_order_peer_key_is_refused_and_a_valid_one_is_not() {
        let a = keys(5);
        let mut out = [0u8; KEY_LEN];
        assert!(a.dh(keys(6).pubkey(), &mut out).is_ok(), "the control");
        // u = 0 and u = 1, both points of small order.
        let mut one = [0u8; KEY_LEN];
        one[0] = 1;
        for peer in [[0u8; KEY_LEN], one] {
            assert!(a.dh(&peer, &mut out).is_err(), "{peer:02x?}");
        }
    }

    #[test]
    fn a_wrong_length_or_no_key_fails_without_panicking() {
        let a = keys(9);
        let mut out = [0u8; KEY_LEN];
        assert!(a.dh(&[9u8; 31], &mut out).is_err());
        assert!(AwsLcX25519::default().dh(&[9u8; 32], &mut out).is_err());
        let mut short = keys(9);
        short.set(&[7u8; 31]);
        assert!(short.dh(keys(3).pubkey(), &mut out).is_err());
        assert_eq!(short.privkey(), &[0u8; KEY_LEN], "no stale key is kept");
        assert_eq!(short.pubkey(), &[0u8; KEY_LEN]);
    }

    #[test]
    fn generated_keys_differ_and_match_curve25519_dalek() {
        let mut rng = DefaultResolver.resolve_rng().unwrap();
        let mut a = AwsLcX25519::default();
        let mut b = AwsLcX25519::default();
        a.generate(&mut *rng).unwrap();
        b.generate(&mut *rng).unwrap();
        assert_ne!(a.privkey(), b.privkey());
        assert_eq!(a.pubkey(), dalek_public(a.privkey()));
        let private: [u8; KEY_LEN] = a.privkey().try_into().unwrap();
        assert_eq!(public_of(&private).unwrap(), a.pubkey());
    }

    fn builder(
        resolver: snow::resolvers::BoxedCryptoResolver,
        private: &[u8],
    ) -> snow::Builder<'_> {
        snow::Builder::with_resolver(crate::NOISE_PARAMS.parse().unwrap(), resolver)
            .local_private_key(private)
            .unwrap()
    }

    /// A whole XX handshake, then one transport message each way.
    fn handshake(
        initiator: snow::Builder<'_>,
        responder: snow::Builder<'_>,
    ) -> Result<(), snow::Error> {
        let mut i = initiator.build_initiator()?;
        let mut r = responder.build_responder()?;
        let (mut msg, mut out) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut msg)?;
        r.read_message(&msg[..n], &mut out)?;
        let n = r.write_message(&[], &mut msg)?;
        i.read_message(&msg[..n], &mut out)?;
        let n = i.write_message(&[], &mut msg)?;
        r.read_message(&msg[..n], &mut out)?;
        assert_eq!(i.get_handshake_hash(), r.get_handshake_hash());
        let (mut i, mut r) = (i.into_transport_mode()?, r.into_transport_mode()?);
        let n = i.write_message(b"ping", &mut msg)?;
        let got = r.read_message(&msg[..n], &mut out)?;
        assert_eq!(&out[..got], b"ping");
        let n = r.write_message(b"pong", &mut msg)?;
        let got = i.read_message(&msg[..n], &mut out)?;
        assert_eq!(&out[..got], b"pong");
        Ok(())
    }

    /// Either side on AWS-LC, the other on `snow`'s own X25519: both roles
    /// complete the handshake and talk.
    #[test]
    fn a_handshake_with_snows_own_x25519_succeeds_in_both_roles() {
        let (a, b) = (keys(11), keys(13));
        handshake(
            builder(Box::new(Resolver), a.privkey()),
            builder(Box::new(DefaultResolver), b.privkey()),
        )
        .unwrap();
        handshake(
            builder(Box::new(DefaultResolver), a.privkey()),
            builder(Box::new(Resolver), b.privkey()),
        )
        .unwrap();
    }

    /// An initiator that announces a static key of small order (which no
    /// honest peer can hold) and computes with it consistently: the
    /// responder refuses its third message. (`snow`'s own X25519 would
    /// complete this handshake.)
    #[test]
    fn a_static_key_of_small_order_fails_the_handshake() {
        struct SmallOrderStatic(AwsLcX25519, bool);
        impl Dh for SmallOrderStatic {
            fn name(&self) -> &'static str {
                self.0.name()
            }
            fn pub_len(&self) -> usize {
                KEY_LEN
            }
            fn priv_len(&self) -> usize {
                KEY_LEN
            }
            fn set(&mut self, privkey: &[u8]) {
                self.0.set(privkey);
                self.1 = true;
            }
            fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
                self.0.generate(rng)
            }
            fn pubkey(&self) -> &[u8] {
                const SMALL_ORDER: [u8; KEY_LEN] = [0; KEY_LEN];
                if self.1 {
                    &SMALL_ORDER
                } else {
                    self.0.pubkey()
                }
            }
            fn privkey(&self) -> &[u8] {
                self.0.privkey()
            }
            /// What a small-order key shares with anyone: zeros, so that
            /// a responder that accepts them completes the handshake.
            fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
                if self.1 {
                    out[..KEY_LEN].fill(0);
                    Ok(())
                } else {
                    self.0.dh(pubkey, out)
                }
            }
        }
        struct Lying;
        impl CryptoResolver for Lying {
            fn resolve_rng(&self) -> Option<Box<dyn Random>> {
                DefaultResolver.resolve_rng()
            }
            fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
                Some(Box::new(SmallOrderStatic(AwsLcX25519::default(), false)))
            }
            fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
                DefaultResolver.resolve_hash(choice)
            }
            fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
                DefaultResolver.resolve_cipher(choice)
            }
        }
        let (a, b) = (keys(17), keys(19));
        assert!(
            handshake(
                builder(Box::new(Lying), a.privkey()),
                builder(Box::new(Resolver), b.privkey())
            )
            .is_err()
        );
    }
}

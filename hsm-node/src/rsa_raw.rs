//! RSASSA-PKCS1-v1_5 padding of a caller-given value, without a DigestInfo
//! added (PKCS#11 `CKM_RSA_PKCS`; PROTOCOL.md §7.6 scheme 8).
//!
//! `aws-lc-rs` signs only with the DigestInfo of a hash it knows, so this
//! calls AWS-LC's `RSA_sign_raw` with `RSA_PKCS1_PADDING` (type 1 padding,
//! blinded constant-time private operation) through `aws-lc-sys`: the same
//! library, the one FFI boundary of the node.

use std::ptr::NonNull;

use aws_lc_sys as lc;

/// Owns an `EVP_PKEY` and frees it.
struct PrivateKey(NonNull<lc::EVP_PKEY>);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_parse_private_key and is freed once.
        unsafe { lc::EVP_PKEY_free(self.0.as_ptr()) };
    }
}

/// Sign `input` (at most the modulus length − 11 bytes) with the RSA key
/// `pkcs8` (DER PKCS#8). `None` when the key does not parse, is not RSA, or
/// the input is too long for it.
pub fn sign_pkcs1_raw(pkcs8: &[u8], input: &[u8]) -> Option<Vec<u8>> {
    let mut cbs = lc::CBS {
        data: pkcs8.as_ptr(),
        len: pkcs8.len(),
    };
    // SAFETY: `cbs` points into `pkcs8`, which outlives the call; the parser
    // reads within `len` and returns an owned key or null.
    let key = PrivateKey(NonNull::new(unsafe {
        lc::EVP_parse_private_key(&mut cbs)
    })?);
    // SAFETY: `key` is a valid EVP_PKEY; the RSA it returns (null if the key
    // is not RSA) is borrowed from it and lives as long as `key`.
    let rsa = NonNull::new(unsafe { lc::EVP_PKEY_get0_RSA(key.0.as_ptr()) })?;
    // SAFETY: `rsa` is a valid RSA key (see above).
    let size = unsafe { lc::RSA_size(rsa.as_ptr()) } as usize;
    if input.is_empty() || input.len() + 11 > size {
        return None;
    }
    let mut out = vec![0u8; size];
    let mut written = 0usize;
    // SAFETY: `out` has room for `size` bytes, `input` is readable for its
    // length, `written` is a valid out-pointer, and `rsa` stays alive with
    // `key` for the call.
    let ok = unsafe {
        lc::RSA_sign_raw(
            rsa.as_ptr(),
            &mut written,
            out.as_mut_ptr(),
            out.len(),
            input.as_ptr(),
            input.len(),
            lc::RSA_PKCS1_PADDING,
        )
    };
    if ok != 1 || written != size {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::digest;
    use aws_lc_rs::signature::{self, UnparsedPublicKey};

    /// The DigestInfo prefix of SHA-256 (RFC 8017 §9.2).
    const SHA256_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];

    #[test]
    fn a_raw_signature_over_a_digest_info_is_a_pkcs1_signature() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let hash = digest::digest(&digest::SHA256, b"message");
        let mut input = SHA256_INFO.to_vec();
        input.extend_from_slice(hash.as_ref());
        let sig = sign_pkcs1_raw(pkcs8.as_ref(), &input).unwrap();
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(b"message", &sig)
            .expect("verifies as SHA256withRSA");
        assert!(
            sign_pkcs1_raw(pkcs8.as_ref(), &[0; 246]).is_none(),
            "too long"
        );
        assert!(sign_pkcs1_raw(pkcs8.as_ref(), &[]).is_none());
        assert!(sign_pkcs1_raw(b"not a key", &input).is_none());
    }
}

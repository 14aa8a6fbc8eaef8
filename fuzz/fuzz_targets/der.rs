//! The DER readers (`hsmgate_wire::der`): TLV, OCTET STRING contents (EC
//! points from a token), `RSAPublicKey` parts and DigestInfo (PKCS#1 v1.5
//! input to raw signatures), as the PKCS#11 key store and library read them.
//!
//! Properties: whatever a reader takes lies inside its input; writing what
//! was read and reading it again gives the same (RSA key parts, OCTET
//! STRING contents at any length, DigestInfo).
#![no_main]

use hsmgate_wire::der;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };

    if let Some((_, contents, rest)) = der::tlv(bytes) {
        assert!(contents.len() + rest.len() + 2 <= bytes.len());
        let (element, after) = der::element(bytes).unwrap();
        assert_eq!(element.len() + after.len(), bytes.len());
        assert_eq!(after, rest);
        assert!(element.ends_with(contents));
    }

    if let Some(contents) = der::octet_string_contents(bytes) {
        assert_eq!(
            der::octet_string_contents(&der::octet_string(contents)),
            Some(contents)
        );
    }
    // OCTET STRING of any length: the input repeated, up to 70,000 bytes
    // (past the two-byte length form).
    let repeat = usize::from(selector) * 300;
    let long: Vec<u8> = bytes.iter().copied().cycle().take(repeat).collect();
    if long.len() == repeat {
        let written = der::octet_string(&long);
        // Not assert_eq: a failure would print 70,000 bytes.
        assert!(
            der::octet_string_contents(&written) == Some(&long[..]),
            "an OCTET STRING of {} bytes does not read back",
            long.len()
        );
    }

    if let Some((n, e)) = der::rsa_public_parts(bytes) {
        assert!(n.first() != Some(&0) && e.first() != Some(&0));
        let written = der::rsa_public_key(&n, &e);
        assert_eq!(der::rsa_public_parts(&written), Some((n, e)));
    }

    if let Some((hash, digest)) = der::digest_info(bytes) {
        assert_eq!(digest.len(), hash.output_len());
        assert_eq!(der::to_digest_info(hash, digest), bytes);
    }
});

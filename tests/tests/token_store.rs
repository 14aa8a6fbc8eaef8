//! The PKCS#11 key store on a SoftHSM2 token, driven directly: every
//! request of PROTOCOL.md §7 gives the software store's reply formats, and
//! what the token holds is what an independent PKCS#11 consumer
//! (`pkcs11-tool` with SoftHSM's own library) sees. The end-to-end suites
//! run on this store too (`Options::store`); this test is the close-up.

use std::sync::Arc;

use hsmgate_hsm::metrics::NodeMetrics;
use hsmgate_hsm::token::TokenStore;
use hsmgate_hsm::{Pkcs11Config, StoreKind};
use hsmgate_tests::softhsm;
use hsmgate_wire::ops::{KeyInfo, KeyType, OPS_V2, OaepHash, Reply, Request, SignScheme, Status};

fn run(store: &TokenStore, request: Request) -> Result<Reply, Status> {
    store.execute(&request, OPS_V2)
}

fn key(store: &TokenStore, kind: KeyType, label: &str) -> KeyInfo {
    match run(
        store,
        Request::GenerateKey {
            kind,
            label: label.into(),
        },
    ) {
        Ok(Reply::Key(k)) => k,
        other => panic!("generate {kind}: {other:?}"),
    }
}

#[test]
fn every_operation_on_a_softhsm_token() {
    if !softhsm::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = softhsm::Token::init(dir.path(), "store-test");
    // SAFETY: the only test of this binary, before it starts any thread;
    // SoftHSM reads its config path from the environment at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &token.conf) };
    let config = Pkcs11Config {
        module: softhsm::MODULE.into(),
        token_label: Some(token.label.clone()),
        token_serial: None,
        pin_file: Some(token.pin_file.clone()),
        pin_env: None,
        label_prefix: "p1.".into(),
        sessions: 2,
        session_wait_ms: 5_000,
    };
    let _ = StoreKind::Pkcs11;
    let store: Arc<TokenStore> =
        TokenStore::open("p1", &config, 16, Arc::new(NodeMetrics::new())).expect("open the token");

    // Key generation: public keys in the software store's formats.
    let ed = key(&store, KeyType::Ed25519, "ed");
    assert_eq!(ed.public_key.len(), 32);
    let p256 = key(&store, KeyType::P256, "p256");
    assert_eq!((p256.public_key.len(), p256.public_key[0]), (65, 4));
    let p384 = key(&store, KeyType::P384, "p384");
    assert_eq!(p384.public_key.len(), 97);
    let rsa = key(&store, KeyType::Rsa2048, "rsa");
    assert_eq!(rsa.public_key[0], 0x30, "DER RSAPublicKey");
    let _aes = key(&store, KeyType::Aes256, "aes");
    assert_eq!(
        run(
            &store,
            Request::GenerateKey {
                kind: KeyType::P256,
                label: "p256".into()
            }
        ),
        Err(Status::AlreadyExists)
    );
    let Ok(Reply::Keys(keys)) = run(&store, Request::ListKeys) else {
        panic!("list");
    };
    let labels: Vec<_> = keys.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["aes", "ed", "p256", "p384", "rsa"]);

    // Signatures of every key type verify (Verify checks with the public key).
    for (label, len) in [("ed", 64), ("p256", 64), ("p384", 96), ("rsa", 256)] {
        let Ok(Reply::Signature(sig)) = run(
            &store,
            Request::Sign {
                label: label.into(),
                data: b"message".to_vec(),
            },
        ) else {
            panic!("sign {label}");
        };
        assert_eq!(sig.len(), len, "{label}");
        let verify = |data: &[u8]| {
            run(
                &store,
                Request::Verify {
                    label: label.into(),
                    data: data.to_vec(),
                    signature: sig.clone(),
                },
            )
        };
        assert_eq!(verify(b"message"), Ok(Reply::Verified(true)), "{label}");
        assert_eq!(verify(b"other"), Ok(Reply::Verified(false)), "{label}");
    }

    // Digest signatures.
    for (label, scheme, digest_len) in [
        ("p256", SignScheme::Ecdsa, 32),
        ("p384", SignScheme::Ecdsa, 48),
        ("rsa", SignScheme::RsaPkcs1Sha256, 32),
        ("rsa", SignScheme::RsaPssSha384, 48),
        ("rsa", SignScheme::RsaPkcs1Raw, 51),
    ] {
        let reply = run(
            &store,
            Request::SignDigest {
                label: label.into(),
                scheme,
                digest: vec![7; digest_len],
            },
        );
        assert!(
            matches!(reply, Ok(Reply::DigestSignature(_))),
            "{label} {scheme:?}: {reply:?}"
        );
    }

    // AES-GCM: nonce ‖ ciphertext ‖ tag, and the caller's IV.
    let Ok(Reply::Ciphertext(ct)) = run(
        &store,
        Request::Encrypt {
            label: "aes".into(),
            plaintext: b"secret".to_vec(),
            aad: b"aad".to_vec(),
        },
    ) else {
        panic!("encrypt");
    };
    assert_eq!(ct.len(), 6 + 28);
    let decrypt = |aad: &[u8]| {
        run(
            &store,
            Request::Decrypt {
                label: "aes".into(),
                ciphertext: ct.clone(),
                aad: aad.to_vec(),
            },
        )
    };
    assert_eq!(decrypt(b"aad"), Ok(Reply::Plaintext(b"secret".to_vec())));
    assert_eq!(decrypt(b"other"), Err(Status::CryptoFailed));
    let Ok(Reply::GcmCiphertext(gct)) = run(
        &store,
        Request::EncryptGcm {
            label: "aes".into(),
            iv: vec![1; 12],
            plaintext: b"secret".to_vec(),
            aad: vec![],
        },
    ) else {
        panic!("encrypt_gcm");
    };
    assert_eq!(
        run(
            &store,
            Request::DecryptGcm {
                label: "aes".into(),
                iv: vec![1; 12],
                ciphertext: gct,
                aad: vec![],
            }
        ),
        Ok(Reply::GcmPlaintext(b"secret".to_vec()))
    );

    // RSA-OAEP: a ciphertext the token cannot open is refused cleanly.
    let bad = run(
        &store,
        Request::DecryptRsa {
            label: "rsa".into(),
            hash: OaepHash::Sha1,
            ciphertext: vec![1; 256],
        },
    );
    assert_eq!(bad, Err(Status::CryptoFailed));

    // Ids, objects, deletion.
    assert_eq!(
        run(
            &store,
            Request::SetKeyId {
                label: "p256".into(),
                id: vec![0xc1]
            }
        ),
        Ok(Reply::KeyIdSet)
    );
    let Ok(Reply::KeyDetails(details)) = run(
        &store,
        Request::GetKey {
            label: "p256".into(),
        },
    ) else {
        panic!("get_key");
    };
    assert_eq!(details.id, [0xc1]);
    assert_eq!(details.public_key, p256.public_key);
    let put = run(
        &store,
        Request::PutObject {
            label: "cert".into(),
            id: vec![0xc1],
            value: vec![0x30, 1, 2],
        },
    );
    assert!(matches!(put, Ok(Reply::ObjectStored(_))), "{put:?}");
    let Ok(Reply::Object { info, value }) = run(
        &store,
        Request::GetObject {
            label: "cert".into(),
        },
    ) else {
        panic!("get_object");
    };
    assert_eq!((info.id, value), (vec![0xc1], vec![0x30, 1, 2]));
    assert_eq!(
        run(&store, Request::DeleteKey { label: "ed".into() }),
        Ok(Reply::KeyDeleted)
    );
    assert_eq!(
        run(&store, Request::DeleteKey { label: "ed".into() }),
        Err(Status::NotFound)
    );
    let Ok(Reply::Random(r)) = run(&store, Request::Random { len: 300 }) else {
        panic!("random");
    };
    assert_eq!(r.len(), 300);

    // An independent consumer sees the keys in the token: sensitive, never
    // extractable, under the prefixed label.
    if std::process::Command::new("pkcs11-tool")
        .arg("--help")
        .output()
        .is_ok()
    {
        let out = token.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
        assert_eq!(out.code(), Some(0), "{out}");
        assert!(out.stdout.contains("label:      p1.p256"), "{out}");
        assert!(out.stdout.contains("never extractable"), "{out}");
        assert!(
            !out.stdout.contains("label:      p1.ed\n"),
            "deleted: {out}"
        );
    }
}

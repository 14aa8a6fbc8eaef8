//! The PIN and the directory's word: a token whose partition key file is
//! sealed needs the passphrase as user PIN (a wrong one is
//! CKR_PIN_INCORRECT, nothing is reachable before login), and a client the
//! directory does not know gets CKR_TOKEN_NOT_PRESENT.

mod support;

use cryptoki_sys::*;
use hsmgate_wire::sealed::KdfParams;
use support::p11;

const PIN: &[u8] = b"correct horse battery";

#[test]
fn sealed_keys_need_the_pin_and_unknown_clients_are_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pkcs11.toml");
    support::select_config(&config);
    let rt = support::runtime();
    let d = rt.block_on(support::deploy_at(&config, support::one_node()));
    let world = &d.world;

    // Slot 0: the partition key sealed under PIN.
    let cheap = KdfParams {
        memory_kib: 1024,
        passes: 1,
        lanes: 1,
    };
    let sealed = world
        .partition_key
        .to_sealed_file_text(PIN, cheap)
        .expect("seal");
    let sealed_path = d.path("sealed-partition.key");
    write_private(&sealed_path, &sealed);
    let sealed_config = d.path("sealed.toml");
    std::fs::write(
        &sealed_config,
        world.client_toml().replace(
            "partition_key_file = \"partition.key\"",
            "partition_key_file = \"sealed-partition.key\"",
        ),
    )
    .expect("write");
    // Slot 1: a service key the directory has never heard of.
    let stranger = hsmgate_wire::StaticKeypair::generate().expect("key");
    write_private(&d.path("stranger.key"), &stranger.to_file_text());
    let stranger_config = d.path("stranger.toml");
    std::fs::write(
        &stranger_config,
        world.client_toml().replace(
            "identity_file = \"client.key\"",
            "identity_file = \"stranger.key\"",
        ),
    )
    .expect("write");
    support::write_slots(&config, &[&sealed_config, &stranger_config]);

    assert_eq!(p11::initialize(), CKR_OK);
    assert_eq!(p11::slots(), Ok(vec![0, 1]));
    let flags = p11::token_flags(0).expect("token info");
    assert_ne!(
        flags & CKF_LOGIN_REQUIRED,
        0,
        "a sealed slot asks for the PIN"
    );
    assert_eq!(
        p11::token_flags(1).expect("token info") & CKF_LOGIN_REQUIRED,
        0
    );

    // Before login: a session, but no object and no HSM call.
    let session = p11::open_session(0).expect("a session before login");
    assert_eq!(p11::find(session, "anything"), Ok(vec![]));
    assert_eq!(p11::random(session, 8), Err(CKR_USER_NOT_LOGGED_IN));

    assert_eq!(
        p11::login(session, b"wrong horse battery"),
        CKR_PIN_INCORRECT
    );
    assert_eq!(p11::random(session, 8), Err(CKR_USER_NOT_LOGGED_IN));
    assert_eq!(p11::login(session, PIN), CKR_OK);
    assert_eq!(p11::login(session, PIN), CKR_USER_ALREADY_LOGGED_IN);
    assert_eq!(
        p11::random(session, 8).expect("random after login").len(),
        8
    );
    assert_eq!(p11::logout(session), CKR_OK);
    assert_eq!(p11::random(session, 8), Err(CKR_USER_NOT_LOGGED_IN));

    // The stranger: denied by the gateway (the directory does not know it).
    assert_eq!(p11::open_session(1), Err(CKR_TOKEN_NOT_PRESENT));

    assert_eq!(p11::finalize(), CKR_OK);
    rt.block_on(async move { drop(d) });
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    f.write_all(text.as_bytes()).expect("write key file");
}

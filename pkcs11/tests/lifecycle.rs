//! The library's life and its handles: calls before C_Initialize, bad
//! configs and bad pointers, a key deleted elsewhere while a handle to it is
//! open, C_Finalize with sessions (and their session keys) open, and a
//! child process after fork().

mod support;

use cryptoki_sys::*;
use support::p11;

#[test]
fn before_init_bad_configs_deleted_keys_finalize_and_fork() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pkcs11.toml");
    support::select_config(&config);

    // Before C_Initialize: nothing but the function list.
    assert_eq!(p11::slots(), Err(CKR_CRYPTOKI_NOT_INITIALIZED));
    assert_eq!(p11::open_session(0), Err(CKR_CRYPTOKI_NOT_INITIALIZED));
    assert_eq!(p11::finalize(), CKR_CRYPTOKI_NOT_INITIALIZED);
    // No config file yet, then configs that are wrong: refused, no crash.
    assert_eq!(p11::initialize(), CKR_GENERAL_ERROR);
    std::fs::write(&config, "log_level = \"warn\"\n").expect("write");
    assert_eq!(p11::initialize(), CKR_GENERAL_ERROR, "no slot");
    std::fs::write(
        &config,
        "[[slots]]\nclient_config = \"/nonexistent.toml\"\n",
    )
    .expect("write");
    assert_eq!(
        p11::initialize(),
        CKR_GENERAL_ERROR,
        "a missing client config"
    );
    assert_eq!(p11::initialize_with_app_mutexes_only(), CKR_CANT_LOCK);

    let rt = support::runtime();
    let d = rt.block_on(support::deploy_at(&config, support::one_node()));
    assert_eq!(p11::initialize(), CKR_OK);
    assert_eq!(p11::initialize(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_eq!(p11::slot_list_without_count(), CKR_ARGUMENTS_BAD);

    let session = p11::open_session(0).expect("session");
    let (public, private) = p11::generate_p256(session, "doomed", true).expect("key pair");
    assert_eq!(p11::sign_init(session, private, CKM_ECDSA_SHA256), CKR_OK);
    assert_eq!(p11::sign_with_null_pointers(session), CKR_ARGUMENTS_BAD);
    assert_eq!(
        p11::attribute_value(session, private, CKA_VALUE),
        Err(CKR_ATTRIBUTE_SENSITIVE)
    );
    let point = p11::attribute_value(session, public, CKA_EC_POINT).expect("EC point");
    assert_eq!(
        point[..3],
        [0x04, 65, 0x04],
        "DER OCTET STRING of an uncompressed point"
    );

    // Deleted through the CLI while the handle is open.
    let out = rt.block_on(d.cli(&["delete", "--key", "doomed"]));
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        p11::sign_init(session, private, CKM_ECDSA_SHA256),
        CKR_OK,
        "the handle is still known"
    );
    assert_eq!(p11::sign(session, b"data"), Err(CKR_KEY_HANDLE_INVALID));
    assert_eq!(
        p11::sign_init(session, private, CKM_ECDSA_SHA256),
        CKR_KEY_HANDLE_INVALID,
        "and now forgotten"
    );

    // A session key and an open session at C_Finalize: both cleaned up.
    let other = p11::open_session(0).expect("session");
    p11::generate_p256(other, "temporary", false).expect("session key pair");
    let listed = rt.block_on(d.cli_ok(&["list"]));
    assert!(
        listed.contains("_s."),
        "the session key is on the HSM: {listed}"
    );
    assert_eq!(p11::finalize(), CKR_OK);
    let listed = rt.block_on(d.cli_ok(&["list"]));
    assert!(!listed.contains("_s."), "C_Finalize removed it: {listed}");
    assert_eq!(p11::random(session, 8), Err(CKR_CRYPTOKI_NOT_INITIALIZED));
    assert_eq!(p11::close_session(session), CKR_CRYPTOKI_NOT_INITIALIZED);

    // fork(): the child must initialize again, and then works.
    assert_eq!(p11::initialize(), CKR_OK);
    let session = p11::open_session(0).expect("session");
    assert_eq!(p11::random(session, 8).expect("random").len(), 8);
    // SAFETY: the child only calls the library and then _exit()s; it never
    // returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = child_after_fork();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status), "the child exited");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child's checks (exit code = failed step)"
    );
    // The parent's library is untouched by the child.
    assert_eq!(
        p11::random(session, 8).expect("random in the parent").len(),
        8
    );
    assert_eq!(p11::finalize(), CKR_OK);
    rt.block_on(async move { drop(d) });
}

/// In the forked child: every step's failure is its own exit code.
fn child_after_fork() -> i32 {
    if p11::slots() != Err(CKR_CRYPTOKI_NOT_INITIALIZED) {
        return 10;
    }
    if p11::initialize() != CKR_OK {
        return 11;
    }
    let Ok(session) = p11::open_session(0) else {
        return 12;
    };
    if p11::random(session, 8).map(|r| r.len()) != Ok(8) {
        return 13;
    }
    if p11::finalize() != CKR_OK {
        return 14;
    }
    0
}

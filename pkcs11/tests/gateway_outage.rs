//! A gateway that stops and comes back: calls fail with CKR_DEVICE_ERROR
//! while it is gone and work again when it returns, on the same session
//! and key handles, without reinitializing the library. Also: the library
//! called from inside an application's own tokio runtime.

mod support;

use cryptoki_sys::*;
use support::p11;

#[test]
fn a_stopped_gateway_is_a_device_error_until_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pkcs11.toml");
    support::select_config(&config);
    let rt = support::runtime();
    let mut d = rt.block_on(support::deploy_at(
        &config,
        hsmgate_tests::Options {
            // Sessions do not outlive a stopped gateway by much.
            tweak: |c| c.timeouts.drain_ms = 100,
            ..support::one_node()
        },
    ));

    assert_eq!(p11::initialize(), CKR_OK);
    let session = p11::open_session(0).expect("session");
    let (_public, private) = p11::generate_p256(session, "outage", true).expect("key pair");
    let sign = |data: &[u8]| {
        let rv = p11::sign_init(session, private, CKM_ECDSA_SHA256);
        if rv != CKR_OK {
            return Err(rv);
        }
        p11::sign(session, data)
    };
    assert_eq!(sign(b"before").expect("signs").len(), 64);

    rt.block_on(d.world.gateway_server.stop());
    assert_eq!(sign(b"during"), Err(CKR_DEVICE_ERROR));
    assert_eq!(p11::open_session(0), Err(CKR_DEVICE_ERROR));
    assert_eq!(p11::random(session, 16), Err(CKR_DEVICE_ERROR));

    rt.block_on(d.world.restart_gateway());
    assert_eq!(sign(b"after").expect("signs again").len(), 64);
    assert_eq!(p11::random(session, 16).expect("random").len(), 16);

    // An application with its own runtime calls the library from inside
    // it: the library waits on its own runtime, never on the caller's.
    let app = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the application's runtime");
    let signed = app.block_on(async { sign(b"from inside a runtime") });
    assert_eq!(signed.expect("signs").len(), 64);

    assert_eq!(p11::finalize(), CKR_OK);
    rt.block_on(async move { drop(d) });
}

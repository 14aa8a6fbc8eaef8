//! The library's connection pool over QUIC: with `transport = "quic"` in
//! the slot's client config, the pool's connections are sessions on one
//! QUIC connection, authenticated once; signatures work through them.

mod support;

use cryptoki_sys::*;
use support::p11;

#[test]
fn a_quic_slot_signs_through_streams_of_one_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pkcs11.toml");
    support::select_config(&config);
    let rt = support::runtime();
    let world = rt.block_on(hsmgate_tests::World::start_with(hsmgate_tests::Options {
        quic: true,
        ..support::one_node()
    }));
    let client_config = world.dir.path().join("client-quic.toml");
    std::fs::write(&client_config, world.client_toml_quic()).expect("write client config");
    std::fs::write(
        &config,
        format!(
            "connections_per_slot = 4\n[[slots]]\nclient_config = {:?}\n",
            client_config.display().to_string()
        ),
    )
    .expect("write pkcs11.toml");

    assert_eq!(p11::initialize(), CKR_OK);
    let session = p11::open_session(0).expect("session");
    let (_public, private) = p11::generate_p256(session, "over-quic", true).expect("key pair");
    // More calls than pooled connections: every entry of the pool is used.
    for i in 0..8u8 {
        assert_eq!(p11::sign_init(session, private, CKM_ECDSA_SHA256), CKR_OK);
        assert_eq!(p11::sign(session, &[i; 32]).expect("signs").len(), 64);
    }
    assert_eq!(p11::random(session, 16).expect("random").len(), 16);
    let authenticated = world.metric(r#"hsmgate_quic_connections_total{outcome="authenticated"}"#);
    let streams = world.metric(r#"hsmgate_quic_streams_total{outcome="granted"}"#);
    assert_eq!(authenticated, 1.0, "one QUIC connection for the whole pool");
    assert!(
        streams >= 1.0,
        "the other pooled sessions are streams of it"
    );
    assert_eq!(
        world.metric("hsmgate_connections_accepted_total{listener=\"main\"}"),
        0.0,
        "nothing over TCP"
    );
    assert_eq!(p11::finalize(), CKR_OK);
    rt.block_on(async move { drop(world) });
}

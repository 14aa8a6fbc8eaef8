//! python-pkcs11 (PyPI) against the library: every key type, signatures
//! verified with `cryptography`, OAEP and GCM, session objects, and eight
//! threads at once (tests/consumers/python_pkcs11.py).

mod support;

use support::{consumer, deploy, library};

// On both key stores of the HSM node: software and a SoftHSM2 token.
hsmgate_tests::each_store!(python_pkcs11_signs_decrypts_and_shares_keys_with_the_cli);

async fn python_pkcs11_signs_decrypts_and_shares_keys_with_the_cli(
    store: hsmgate_tests::TestStore,
) {
    let Some(python) = support::python() else {
        return;
    };
    let d = deploy(store).await;
    // A key the CLI makes is one the script uses.
    d.cli_ok(&[
        "keygen", "--type", "p256", "--label", "cli-p256", "--id", "c1",
    ])
    .await;

    let mut cmd = d.command(&python);
    cmd.arg(consumer("python_pkcs11.py"))
        .arg(library())
        .arg("demo")
        .arg(match store {
            hsmgate_tests::TestStore::Software => "software",
            hsmgate_tests::TestStore::SoftHsm => "softhsm",
        });
    let out = d.run(cmd).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("ALL OK"), "{out}");
    assert!(
        out.stdout
            .contains("ok: 8 threads x 25 signatures, all verified"),
        "{out}"
    );

    // And the keys the script made are the CLI's too.
    let listed = d.cli_ok(&["list"]).await;
    for line in [
        "py-p256\tp256\t",
        "py-p384\tp384\t",
        "py-ed25519\ted25519\t",
        "py-rsa\trsa2048\t",
    ] {
        assert!(listed.contains(line), "{line}: {listed}");
    }
    assert!(!listed.contains("py-aes"), "destroyed: {listed}");
    assert!(!listed.contains("_s."), "session keys are gone: {listed}");
}

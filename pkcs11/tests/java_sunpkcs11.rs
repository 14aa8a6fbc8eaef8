//! Java's SunPKCS11 provider (OpenJDK 17) against the library: the KeyStore
//! pairs keys with certificates by CKA_ID, signatures made by the token
//! verify with the JDK's software providers, AES/GCM/NoPadding and
//! SecureRandom work (tests/consumers/Pkcs11Consumer.java).

mod support;

use support::{consumer, deploy, library};

// On both key stores of the HSM node: software and a SoftHSM2 token.
hsmgate_tests::each_store!(java_keystore_signatures_gcm_and_random_through_sunpkcs11);

async fn java_keystore_signatures_gcm_and_random_through_sunpkcs11(
    store: hsmgate_tests::TestStore,
) {
    if !support::available("javac", &["-version"], true, "OpenJDK (javac)") {
        return;
    }
    let Some(python) = support::python() else {
        return;
    };
    let d = deploy(store).await;

    // Keys made by the CLI, with certificates of the same id and label.
    for (kind, label, id) in [("p256", "java-ec", "0a"), ("rsa2048", "java-rsa", "0b")] {
        d.cli_ok(&["keygen", "--type", kind, "--label", label, "--id", id])
            .await;
        let info = d.cli_ok(&["info", "--key", label]).await;
        let public = info
            .lines()
            .find_map(|l| l.strip_prefix("public_key\t"))
            .expect("public key line");
        let cert = d.path(&format!("{label}.der"));
        let mut make = std::process::Command::new(&python);
        make.arg(consumer("make_cert.py"))
            .arg(if kind == "p256" { "p256" } else { "rsa" })
            .arg(public)
            .arg(label)
            .arg(&cert);
        let out = d.run(make).await;
        assert_eq!(out.code(), Some(0), "{out}");
        d.cli_ok(&[
            "cert",
            "put",
            "--label",
            label,
            "--id",
            id,
            "--file",
            cert.to_str().unwrap(),
        ])
        .await;
    }
    d.cli_ok(&["keygen", "--type", "aes256", "--label", "java-aes"])
        .await;

    let classes = d.path("classes");
    let mut javac = std::process::Command::new("javac");
    javac
        .arg("-d")
        .arg(&classes)
        .arg(consumer("Pkcs11Consumer.java"));
    let out = d.run(javac).await;
    assert_eq!(out.code(), Some(0), "{out}");

    let provider = d.path("sunpkcs11.cfg");
    std::fs::write(
        &provider,
        format!(
            "name = hsmgate\nlibrary = {}\nslotListIndex = 0\n",
            library().display()
        ),
    )
    .expect("write provider config");
    let mut java = d.command("java");
    java.arg("-cp")
        .arg(&classes)
        .arg("Pkcs11Consumer")
        .arg(&provider);
    let out = d.run(java).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("ALL OK"), "{out}");
    assert!(out.stdout.contains("java-ec"), "listed: {out}");
    // The JVM exits without C_Finalize: the library's exit handler still
    // deletes the session key KeyPairGenerator made.
    let listed = d.cli_ok(&["list"]).await;
    assert!(
        !listed.contains("_s."),
        "no session key left behind: {listed}"
    );
}

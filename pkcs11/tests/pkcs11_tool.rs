//! OpenSC `pkcs11-tool` (Debian `opensc`) against the library: slots,
//! mechanisms, key generation of every kind, signatures verified by the
//! tool, objects listed and deleted, random bytes, and its own self-test.

mod support;

use support::{Deployment, deploy, library};

async fn tool(d: &Deployment, args: &[&str]) -> hsmgate_tests::proc::Output {
    let mut cmd = d.command("pkcs11-tool");
    cmd.arg("--module").arg(library()).args(args);
    d.run(cmd).await
}

async fn tool_ok(d: &Deployment, args: &[&str]) -> String {
    let out = tool(d, args).await;
    assert_eq!(out.code(), Some(0), "pkcs11-tool {args:?}: {out}");
    out.stdout
}

// On both key stores of the HSM node: software and a SoftHSM2 token.
hsmgate_tests::each_store!(pkcs11_tool_generates_signs_lists_deletes_and_passes_its_self_test);

async fn pkcs11_tool_generates_signs_lists_deletes_and_passes_its_self_test(
    store: hsmgate_tests::TestStore,
) {
    if !support::available("pkcs11-tool", &["--help"], false, "OpenSC pkcs11-tool") {
        return;
    }
    let d = deploy(store).await;

    let slots = tool_ok(&d, &["--list-slots"]).await;
    assert!(slots.contains("token label        : demo"), "{slots}");
    let mechanisms = tool_ok(&d, &["--list-mechanisms"]).await;
    for m in [
        "ECDSA-SHA256",
        "EDDSA",
        "SHA256-RSA-PKCS-PSS",
        "RSA-PKCS-OAEP",
        "AES-GCM",
    ] {
        assert!(mechanisms.contains(m), "{m}: {mechanisms}");
    }

    for (key_type, label, id) in [
        ("EC:prime256v1", "ec1", "01"),
        ("EC:edwards25519", "ed1", "02"),
        ("rsa:2048", "rsa1", "03"),
    ] {
        let out = tool_ok(
            &d,
            &[
                "--keypairgen",
                "--key-type",
                key_type,
                "--label",
                label,
                "--id",
                id,
            ],
        )
        .await;
        assert!(out.contains("never extractable"), "{out}");
    }
    // A secret key must be sensitive: it never leaves the HSM.
    let refused = tool(&d, &["--keygen", "--key-type", "AES:32", "--label", "aes1"]).await;
    assert_ne!(refused.code(), Some(0), "{refused}");
    assert!(
        refused.stderr.contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{refused}"
    );
    tool_ok(
        &d,
        &[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "aes1",
            "--id",
            "04",
            "--sensitive",
        ],
    )
    .await;

    let message = d.path("message.txt");
    std::fs::write(&message, b"signed by pkcs11-tool through hsmgate").expect("write");
    let digest = d.path("digest.bin");
    std::fs::write(
        &digest,
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"some message").as_ref(),
    )
    .expect("write");
    let signature = d.path("signature.bin");
    for (id, mechanism, input, extra) in [
        ("01", "ECDSA-SHA256", &message, &[][..]),
        ("01", "ECDSA", &digest, &[]),
        ("02", "EDDSA", &message, &[]),
        ("03", "SHA256-RSA-PKCS", &message, &[]),
        ("03", "SHA384-RSA-PKCS-PSS", &message, &[]),
        (
            "03",
            "RSA-PKCS-PSS",
            &digest,
            &["--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"],
        ),
    ] {
        let mut sign = vec!["--sign", "--id", id, "--mechanism", mechanism];
        sign.extend_from_slice(extra);
        let mut verify = sign.clone();
        verify[0] = "--verify";
        sign.extend(["--input-file", input.to_str().unwrap(), "--output-file"]);
        sign.push(signature.to_str().unwrap());
        tool_ok(&d, &sign).await;
        verify.extend(["--input-file", input.to_str().unwrap(), "--signature-file"]);
        verify.push(signature.to_str().unwrap());
        let out = tool_ok(&d, &verify).await;
        assert!(out.contains("Signature is valid"), "{mechanism}: {out}");
    }

    let random = d.path("random.bin");
    tool_ok(
        &d,
        &[
            "--generate-random",
            "64",
            "--output-file",
            random.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&random).expect("random file").len(), 64);

    let objects = tool_ok(&d, &["--list-objects"]).await;
    for label in ["ec1", "ed1", "rsa1", "aes1"] {
        assert!(
            objects.contains(&format!("label:      {label}\n")),
            "{label}: {objects}"
        );
    }
    // The CLI sees the keys the tool made.
    let listed = d.cli_ok(&["list"]).await;
    assert!(listed.contains("ed1\ted25519\t"), "{listed}");

    tool_ok(&d, &["--delete-object", "--type", "privkey", "--id", "02"]).await;
    let objects = tool_ok(&d, &["--list-objects"]).await;
    assert!(!objects.contains("label:      ed1\n"), "{objects}");
    let listed = d.cli_ok(&["list"]).await;
    assert!(!listed.contains("ed1\t"), "{listed}");

    let test = tool(&d, &["--test"]).await;
    assert_eq!(test.code(), Some(0), "{test}");
    assert!(test.stdout.contains("No errors"), "{test}");
    assert!(test.stdout.contains("RSA-PKCS: OK"), "{test}");
}

//! The real `hsmgate-client` binary against an in-process deployment: its
//! output and, above all, its exit codes (0 ok, 1 operation failed or
//! signature invalid, 2 usage or config, 3 denied, 4 unavailable).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hsmgate_tests::proc::{self, Output};
use hsmgate_tests::{Options, TestStore, World, binary};

// The tests that run HSM operations, on both key stores (software and a
// SoftHSM2 token).
hsmgate_tests::each_store!(
    random_16_prints_32_hex_digits,
    keygen_sign_verify_round_trip,
    keys_get_ids_certificates_and_can_be_deleted,
);

/// Bound on one CLI run.
const RUN_LIMIT: Duration = Duration::from_secs(20);

async fn client(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("hsmgate-client"));
    cmd.arg("--config").arg(config).args(args);
    proc::run_async(cmd, RUN_LIMIT).await
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_exits_0_and_prints_a_pong_line() {
    let world = World::start().await;
    let config = world.write_client_config("");
    let out = client(&config, &["ping"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let line = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
    assert!(line.starts_with("pong from hsm-"), "{out}");
    assert!(line.contains("via test-gateway"), "{out}");
    assert!(line.contains(&world.gateway_addr().to_string()), "{out}");
}

async fn random_16_prints_32_hex_digits(store: TestStore) {
    let world = World::start_with(Options {
        store,
        ..Options::default()
    })
    .await;
    let config = world.write_client_config("");
    let first = client(&config, &["random", "16"]).await;
    assert_eq!(first.code(), Some(0), "{first}");
    let hex = first.stdout.trim();
    assert_eq!(hex.len(), 32, "{first}");
    assert!(is_lower_hex(hex), "{first}");
    let second = client(&config, &["random", "16"]).await;
    assert_eq!(second.code(), Some(0), "{second}");
    assert_ne!(
        hex,
        second.stdout.trim(),
        "two draws of 16 random bytes differ"
    );

    // Out of range: a usage error, before any connection.
    let zero = client(&config, &["random", "0"]).await;
    assert_eq!(zero.code(), Some(2), "{zero}");
}

/// One HSM node, since each node has its own key store.
async fn keygen_sign_verify_round_trip(store: TestStore) {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        store,
        ..Options::default()
    })
    .await;
    let config = world.write_client_config("");

    let keygen = client(&config, &["keygen", "--type", "ed25519", "--label", "k1"]).await;
    assert_eq!(keygen.code(), Some(0), "{keygen}");
    let fields: Vec<&str> = keygen.stdout.trim().split('\t').collect();
    assert_eq!(fields.len(), 3, "label, type, public key: {keygen}");
    assert_eq!(fields[..2], ["k1", "ed25519"], "{keygen}");
    let public = fields[2];
    assert_eq!(
        public.len(),
        64,
        "an Ed25519 public key is 32 bytes: {keygen}"
    );
    assert!(is_lower_hex(public), "{keygen}");

    let list = client(&config, &["list"]).await;
    assert_eq!(list.code(), Some(0), "{list}");
    assert_eq!(list.stdout.trim(), keygen.stdout.trim(), "{list}");

    let data = hex::encode(b"hello through the gateway");
    let sign = client(&config, &["sign", "--key", "k1", "--data", &data]).await;
    assert_eq!(sign.code(), Some(0), "{sign}");
    let signature = sign.stdout.trim().to_owned();
    assert_eq!(
        signature.len(),
        128,
        "an Ed25519 signature is 64 bytes: {sign}"
    );
    assert!(is_lower_hex(&signature), "{sign}");

    let verify = client(
        &config,
        &[
            "verify",
            "--key",
            "k1",
            "--data",
            &data,
            "--signature",
            &signature,
        ],
    )
    .await;
    assert_eq!(verify.code(), Some(0), "{verify}");
    assert_eq!(verify.stdout.trim(), "valid", "{verify}");

    // Other data under the same signature: invalid, exit 1.
    let other = hex::encode(b"hello through the gateway!");
    let forged = client(
        &config,
        &[
            "verify",
            "--key",
            "k1",
            "--data",
            &other,
            "--signature",
            &signature,
        ],
    )
    .await;
    assert_eq!(forged.code(), Some(1), "{forged}");
    assert_eq!(forged.stdout.trim(), "invalid", "{forged}");

    // Data from a file gives the same signature (Ed25519 is deterministic).
    let file = world.dir.path().join("data.bin");
    std::fs::write(&file, b"hello through the gateway").expect("write data file");
    let file = file.to_str().expect("utf-8 path");
    let from_file = client(&config, &["sign", "--key", "k1", "--file", file]).await;
    assert_eq!(from_file.code(), Some(0), "{from_file}");
    assert_eq!(from_file.stdout.trim(), signature, "{from_file}");

    // A key that does not exist: the operation fails at the HSM, exit 1.
    let missing = client(&config, &["sign", "--key", "nope", "--data", &data]).await;
    assert_eq!(missing.code(), Some(1), "{missing}");
    assert!(missing.stdout.is_empty(), "{missing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_address_outside_the_tenant_networks_exits_3() {
    let world = World::start().await;
    let config = world.write_client_config("");
    let mut cmd = Command::new(binary("hsmgate-client"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.2", "ping"]);
    let out = proc::run_async(cmd, RUN_LIMIT).await;
    assert_eq!(out.code(), Some(3), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("address_not_allowed"), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out}");

    // The same world serves the allowed address.
    let ok = client(&config, &["--bind", "127.0.0.1", "ping"]).await;
    assert_eq!(ok.code(), Some(0), "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_directory_exits_4() {
    let mut world = World::start().await;
    let config = world.write_client_config("");
    world.directory_server.stop().await;
    let out = client(&config, &["ping"]).await;
    assert_eq!(out.code(), Some(4), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("unavailable"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_exits_2_and_names_the_field() {
    let world = World::start().await;

    let config = world.write_client_config("request_timeout_ms = 0\n");
    let out = client(&config, &["ping"]).await;
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("request_timeout_ms: 0 is out of range"),
        "{out}"
    );

    let config = world.write_client_config("gatway = \"127.0.0.1:1\"\n");
    let out = client(&config, &["ping"]).await;
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("unknown field") && out.stderr.contains("gatway"),
        "{out}"
    );

    let missing = world.dir.path().join("missing.toml");
    let out = client(&missing, &["ping"]).await;
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("missing.toml"), "{out}");

    // Nothing of it reached the gateway.
    assert_eq!(
        world.metric("hsmgate_connections_accepted_total{listener=\"main\"}"),
        0.0
    );
}

/// The version 2 commands: a key with an id, its details, a digest
/// signature, a certificate next to it, and deletion.
async fn keys_get_ids_certificates_and_can_be_deleted(store: TestStore) {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        store,
        ..Options::default()
    })
    .await;
    let config = world.write_client_config("");

    let keygen = client(
        &config,
        &["keygen", "--type", "p384", "--label", "k", "--id", "0a0b"],
    )
    .await;
    assert_eq!(keygen.code(), Some(0), "{keygen}");
    let info = client(&config, &["info", "--key", "k"]).await;
    assert_eq!(info.code(), Some(0), "{info}");
    assert!(info.stdout.contains("type\tp384\n"), "{info}");
    assert!(info.stdout.contains("id\t0a0b\n"), "{info}");
    assert!(
        info.stdout.contains("public_key\t04"),
        "SEC1 uncompressed: {info}"
    );

    let digest = "11".repeat(48);
    let sign = client(
        &config,
        &[
            "sign-digest",
            "--key",
            "k",
            "--scheme",
            "ecdsa",
            "--digest",
            &digest,
        ],
    )
    .await;
    assert_eq!(sign.code(), Some(0), "{sign}");
    assert_eq!(
        sign.stdout.trim().len(),
        192,
        "r ‖ s, 48 bytes each: {sign}"
    );
    let bad_scheme = client(
        &config,
        &[
            "sign-digest",
            "--key",
            "k",
            "--scheme",
            "rsa-pss-sha256",
            "--digest",
            &"11".repeat(32),
        ],
    )
    .await;
    assert_eq!(bad_scheme.code(), Some(1), "wrong key type: {bad_scheme}");

    // A certificate: DER only; PEM gets a hint and no connection.
    let der = world.dir.path().join("cert.der");
    std::fs::write(&der, [0x30, 0x03, 0x02, 0x01, 0x07]).expect("write cert");
    let pem = world.dir.path().join("cert.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").expect("write pem");
    let der = der.to_str().expect("utf-8 path");
    let refused = client(
        &config,
        &[
            "cert",
            "put",
            "--label",
            "c",
            "--id",
            "0a0b",
            "--file",
            pem.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(refused.stderr.contains("outform DER"), "{refused}");
    let put = client(
        &config,
        &["cert", "put", "--label", "c", "--id", "0a0b", "--file", der],
    )
    .await;
    assert_eq!(put.code(), Some(0), "{put}");
    assert_eq!(put.stdout.trim(), "c\t0a0b\t5", "{put}");
    let list = client(&config, &["cert", "list"]).await;
    assert_eq!(list.stdout.trim(), "c\t0a0b\t5", "{list}");
    let get = client(&config, &["cert", "get", "--label", "c"]).await;
    assert_eq!(get.stdout.trim(), "3003020107", "{get}");
    let gone = client(&config, &["cert", "delete", "--label", "c"]).await;
    assert_eq!(gone.code(), Some(0), "{gone}");
    let again = client(&config, &["cert", "get", "--label", "c"]).await;
    assert_eq!(again.code(), Some(1), "{again}");

    let delete = client(&config, &["delete", "--key", "k"]).await;
    assert_eq!(delete.code(), Some(0), "{delete}");
    let after = client(&config, &["info", "--key", "k"]).await;
    assert_eq!(after.code(), Some(1), "deleted: {after}");
    assert!(
        after.stderr.contains("not_found") || after.stderr.contains("no key"),
        "{after}"
    );
}

/// A partition key file sealed under a passphrase: the CLI needs
/// HSMGATE_KEY_PASSPHRASE, and a wrong one is a usage error, not a
/// connection attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_partition_key_opens_with_the_passphrase_from_the_environment() {
    use hsmgate_wire::sealed::KdfParams;
    let world = World::start().await;
    let cheap = KdfParams {
        memory_kib: 1024,
        passes: 1,
        lanes: 1,
    };
    let sealed = world
        .partition_key
        .to_sealed_file_text(b"open sesame", cheap)
        .expect("seal");
    let key_path = world.dir.path().join("partition.key");
    std::fs::write(&key_path, sealed).expect("write sealed key");
    let config = world.write_client_config("");

    let run = |passphrase: Option<&'static str>| {
        let config = config.clone();
        async move {
            let mut cmd = Command::new(binary("hsmgate-client"));
            cmd.arg("--config").arg(&config).arg("ping");
            match passphrase {
                Some(p) => cmd.env("HSMGATE_KEY_PASSPHRASE", p),
                None => cmd.env_remove("HSMGATE_KEY_PASSPHRASE"),
            };
            proc::run_async(cmd, RUN_LIMIT).await
        }
    };
    let locked = run(None).await;
    assert_eq!(locked.code(), Some(2), "{locked}");
    assert!(
        locked
            .stderr
            .contains("partition_key_file sealed under a passphrase"),
        "{locked}"
    );
    let wrong = run(Some("open sesame!")).await;
    assert_eq!(wrong.code(), Some(2), "{wrong}");
    assert!(
        wrong
            .stderr
            .contains("partition_key_file: wrong passphrase"),
        "{wrong}"
    );
    assert!(!wrong.stderr.contains("open sesame"), "{wrong}");
    let ok = run(Some("open sesame")).await;
    assert_eq!(ok.code(), Some(0), "{ok}");
    assert!(ok.stdout.starts_with("pong"), "{ok}");
}

//! HSM nodes on SoftHSM2 tokens (the PKCS#11 key store), as processes:
//! what the token holds is what an independent PKCS#11 consumer sees, nodes
//! sharing a token share keys, a wrong PIN stops a node at start, and a
//! token that goes away takes the node out of service until it returns.
//! (The operation suites run on this store too: `each_store!`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hsmgate_client::{ClientError, Status};
use hsmgate_tests::proc::{self, Output};
use hsmgate_tests::{Options, PATIENCE, TestStore, World, binary, softhsm};

async fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("hsmgate-client"));
    cmd.arg("--config").arg(config).args(args);
    proc::run_async(cmd, Duration::from_secs(60)).await
}

async fn cli_ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args).await;
    assert_eq!(out.code(), Some(0), "hsmgate-client {args:?}: {out}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_live_in_the_token_as_pkcs11_tool_sees_them_and_nodes_share_them() {
    if !softhsm::available() {
        return;
    }
    let world = World::start_with(Options {
        hsm_nodes: 2,
        store: TestStore::SoftHsm,
        ..Options::default()
    })
    .await;
    let config = world.write_client_config("");

    // A key made through one node signs through the other (one token).
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let s = world.connect(None).await.expect("session");
        if !sessions
            .iter()
            .any(|o: &hsmgate_client::Session| o.hsm_id() == s.hsm_id())
        {
            sessions.push(s);
        }
    }
    assert_eq!(sessions.len(), 2, "both nodes served");
    let made = sessions[0]
        .generate_key(hsmgate_client::KeyType::P256, "shared")
        .await
        .expect("generate on one node");
    let sig = sessions[1]
        .sign("shared", b"data")
        .await
        .expect("sign on the other");
    assert!(
        sessions[0]
            .verify("shared", b"data", &sig)
            .await
            .expect("verify")
    );
    assert_eq!(made.public_key.len(), 65);

    // Made and used through the CLI; read back with SoftHSM's own library.
    let line = cli_ok(&config, &["keygen", "--type", "p256", "--label", "xk"]).await;
    let public = hex::decode(line.trim().split('\t').nth(2).expect("public key")).expect("hex");
    let data = hex::encode(b"signed through hsmgate");
    let sig = cli_ok(&config, &["sign", "--key", "xk", "--data", &data]).await;
    let sig = hex::decode(sig.trim()).expect("hex");

    let token = world.hsms[0].token.clone().expect("a token");
    let out = token.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let listing = out
        .stdout
        .split("Private Key Object")
        .find(|o| o.contains("label:      demo.xk\n"));
    let listing = listing.unwrap_or_else(|| panic!("demo.xk on the token: {out}"));
    assert!(listing.contains("sensitive"), "{listing}");
    assert!(listing.contains("never extractable"), "{listing}");

    let der = world.dir.path().join("xk.der");
    let out = token.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "demo.xk",
        "--output-file",
        der.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.code(), Some(0), "{out}");
    let spki = std::fs::read(&der).expect("public key file");
    // A P-256 SubjectPublicKeyInfo ends with the uncompressed point.
    let point = &spki[spki.len() - 65..];
    assert_eq!(
        point,
        &public[..],
        "pkcs11-tool and hsmgate read the same public key"
    );
    use p256::ecdsa::signature::Verifier as _;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).expect("point");
    let sig = p256::ecdsa::Signature::from_slice(&sig).expect("r || s");
    key.verify(b"signed through hsmgate", &sig)
        .expect("the signature verifies with the key pkcs11-tool read");
}

#[test]
fn a_wrong_pin_stops_the_node_at_start_naming_the_partition() {
    if !softhsm::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = softhsm::Token::init(dir.path(), "pin-test");
    std::fs::write(&token.pin_file, "not-the-pin\n").expect("write pin");
    let key = dir.path().join("hsm.key");
    hsmgate::keyfile::create(&key).expect("key");
    let config = dir.path().join("hsm.toml");
    std::fs::write(
        &config,
        format!(
            "hsm_id = \"hsm-1\"\nlisten = \"127.0.0.1:0\"\nkey_file = \"{}\"\nstate_dir = \"{}\"\n\
             [gateways]\ninsecure_allow_direct = true\n[[partitions]]\nname = \"acme\"\n{}",
            key.display(),
            dir.path().join("state").display(),
            token.partition_toml("acme.")
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(binary("hsmgate-hsm"));
    cmd.arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &token.conf);
    let out = proc::run(&mut cmd, Duration::from_secs(30));
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("partition acme"), "{out}");
    assert!(out.stderr.contains("wrong PIN"), "{out}");
    assert!(
        !out.stderr.contains("not-the-pin"),
        "the PIN is never shown: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_goes_away_takes_its_node_out_until_it_returns() {
    if !softhsm::available() {
        return;
    }
    let world = World::start_with(Options {
        hsm_nodes: 2,
        store: TestStore::SoftHsm,
        shared_token: false,
        ..Options::default()
    })
    .await;
    let node = &world.hsms[0];
    let (addr, admin) = (node.server.addr, node.admin.expect("admin listener"));
    let token = node.token.clone().expect("a token");
    // A session on the node whose token will go.
    let mut held = None;
    for _ in 0..8 {
        let s = world.connect(None).await.expect("session");
        if s.hsm_id() == node.id {
            held = Some(s);
            break;
        }
    }
    let held = held.expect("a session on hsm-1");
    held.random(8).await.expect("served before");

    let away = token.dir.with_extension("away");
    std::fs::rename(&token.dir, &away).expect("take the token directory away");
    let not_ready = wait_for(|| async {
        matches!(
            hsmgate_hsm::probe::check(addr, Duration::from_millis(500)).await,
            Err(hsmgate_hsm::probe::ProbeError::NotReady(_))
        )
    })
    .await;
    assert!(not_ready, "the probe says DOWN");
    let (status, body) = hsmgate_tests::http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("demo"), "{body}");
    let (_, metrics) = hsmgate_tests::http_get(admin, "/metrics").await;
    assert_eq!(
        hsmgate_tests::metric_value(&metrics, r#"hsmgate_hsm_store_ready{partition="demo"}"#),
        0.0,
        "{metrics}"
    );
    // The session on that node: its operations fail as `internal`.
    match held.random(8).await {
        Err(ClientError::Operation {
            status: Status::Internal,
            ..
        }) => {}
        other => panic!("an operation on a node without its token: {other:?}"),
    }
    // The gateway's health checks take the node out: new sessions go to
    // the other node.
    let moved = wait_for(|| async {
        let mut all_other = true;
        for _ in 0..4 {
            match world.connect(None).await {
                Ok(s) => all_other &= s.hsm_id() != world.hsms[0].id,
                Err(_) => all_other = false,
            }
        }
        all_other
    })
    .await;
    assert!(moved, "new sessions avoid the node without its token");

    std::fs::rename(&away, &token.dir).expect("bring the token back");
    let back = wait_for(|| async {
        hsmgate_hsm::probe::check(addr, Duration::from_millis(500))
            .await
            .is_ok()
    })
    .await;
    assert!(back, "the node recovers by itself");
    let served = wait_for(|| async {
        for _ in 0..4 {
            if let Ok(s) = world.connect(None).await
                && s.hsm_id() == world.hsms[0].id
            {
                return s.random(8).await.is_ok();
            }
        }
        false
    })
    .await;
    assert!(served, "the node serves new sessions again");
}

/// Poll `check` every 100 ms until it holds, for at most the patience.
async fn wait_for<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `hsmgate dev` with its demo partition on a SoftHSM2 token: the CLI's
/// keys are in the token.
#[test]
fn hsmgate_dev_runs_on_a_softhsm_token() {
    if !softhsm::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = softhsm::Token::init(dir.path(), "dev");
    let state = dir.path().join("state");
    let mut cmd = Command::new(binary("hsmgate"));
    cmd.env("SOFTHSM2_CONF", &token.conf).args([
        "dev",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--pkcs11-module",
        softhsm::MODULE,
        "--pkcs11-token",
        "dev",
        "--pkcs11-pin-file",
        token.pin_file.to_str().expect("utf-8"),
        "--no-rest",
    ]);
    let dev = proc::Daemon::spawn(&mut cmd);
    assert!(
        dev.wait_for_line("ready", Duration::from_secs(30))
            .is_some(),
        "hsmgate dev did not say ready\n{}",
        dev.transcript()
    );
    let config = state.join("client.toml");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(binary("hsmgate-client"));
        cmd.arg("--config").arg(&config).args(args);
        proc::run(&mut cmd, Duration::from_secs(60))
    };
    let keygen = run(&["keygen", "--type", "ed25519", "--label", "devkey"]);
    assert_eq!(keygen.code(), Some(0), "{keygen}\n{}", dev.transcript());
    let sign = run(&["sign", "--key", "devkey", "--data", "00"]);
    assert_eq!(sign.code(), Some(0), "{sign}");
    let out = token.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert!(out.stdout.contains("label:      demo.devkey\n"), "{out}");
    dev.guard.signal("TERM");
}

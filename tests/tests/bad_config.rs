//! Every program, given a bad config file, names the field and the reason on
//! stderr and exits 2; `hsmgate keygen` writes private key files and never
//! overwrites one; `hsmgate dev` starts, serves the CLI and stops on SIGTERM.
//!
//! Each bad file is one valid file with one fault, and the valid file is
//! checked to load, so a test fails if the program refuses it for another
//! reason.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hsmgate::GatewayConfig;
use hsmgate::keyfile;
use hsmgate_client::ClientConfig;
use hsmgate_directory::Directory;
use hsmgate_hsm::HsmConfig;
use hsmgate_tests::proc::{self, Daemon, Output};
use hsmgate_tests::{binary, directory_toml};
use hsmgate_wire::{PublicKey, StaticKeypair};

/// Bound on a program that is expected to exit by itself.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn run(program: &str, args: &[&str]) -> Output {
    proc::run(Command::new(binary(program)).args(args), RUN_LIMIT)
}

/// Whether curl is here; panics when the REST tools are required (CI).
fn curl_available() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("HSMGATE_REQUIRE_REST_TOOLS").is_ok_and(|v| v == "1");
    assert!(
        ok || !required,
        "HSMGATE_REQUIRE_REST_TOOLS=1 but there is no curl"
    );
    ok
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Exit 2, and stderr names every one of `needles` (field and reason).
fn assert_refused(out: &Output, needles: &[&str]) {
    assert_eq!(out.code(), Some(2), "{out}");
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {out}"
        );
    }
}

const GATEWAY_VALID: &str = r#"
gateway_id = "gw-test"
key_file = "gateway.key"

[[listeners]]
address = "127.0.0.1:0"

[directory]
endpoint = "http://127.0.0.1:7100"
allow_plaintext = true

[[pools]]
name = "default"
members = ["127.0.0.1:2401"]
"#;

#[test]
fn gateway_run_names_the_bad_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    GatewayConfig::from_toml(GATEWAY_VALID, dir.path()).expect("the base config is valid");

    let path = write(
        dir.path(),
        "zero.toml",
        &format!("{GATEWAY_VALID}\n[timeouts]\nhandshake_ms = 0\n"),
    );
    let out = run("hsmgate", &["run", "--config", text(&path)]);
    assert_refused(
        &out,
        &[
            "zero.toml",
            "timeouts.handshake_ms: must be 1..=60000 milliseconds",
        ],
    );
    let problems: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(problems.len(), 1, "only the one fault is reported: {out}");

    let path = write(
        dir.path(),
        "unknown.toml",
        &format!("{GATEWAY_VALID}\n[timeouts]\nhandshake_secs = 5\n"),
    );
    let out = run("hsmgate", &["run", "--config", text(&path)]);
    assert_refused(&out, &["unknown field", "handshake_secs"]);

    let out = run(
        "hsmgate",
        &["run", "--config", text(&dir.path().join("absent.toml"))],
    );
    assert_refused(&out, &["absent.toml"]);

    // A QUIC listener sees the client's own address: no PROXY protocol.
    let path = write(
        dir.path(),
        "quic.toml",
        &GATEWAY_VALID.replacen(
            "[[listeners]]",
            "[[listeners]]\nname = \"q\"\naddress = \"127.0.0.1:0\"\ntransport = \"quic\"\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n[[listeners]]",
            1,
        ),
    );
    let out = run("hsmgate", &["run", "--config", text(&path)]);
    assert_refused(&out, &["quic.toml", "listeners[0].proxy_protocol"]);
}

#[test]
fn directory_names_the_bad_client_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = StaticKeypair::generate().expect("key pair").public();
    let valid = directory_toml(&key, &["127.0.0.1/32".into()], 60);
    Directory::load(write(dir.path(), "valid.toml", &valid)).expect("the base data is valid");

    let bad = valid.replace(&key.to_text(), "x25519:not-hex");
    assert_ne!(bad, valid);
    let path = write(dir.path(), "bad-key.toml", &bad);
    let out = run(
        "hsmgate-directory",
        &["--data", text(&path), "--listen", "127.0.0.1:0"],
    );
    assert_refused(&out, &["bad-key.toml", "clients[0].public_key: "]);
    let reason = out
        .stderr
        .lines()
        .find(|l| l.contains("clients[0].public_key: "))
        .expect("the problem line");
    assert!(
        reason.trim().len() > "clients[0].public_key: ".len(),
        "a reason follows the field: {out}"
    );

    let path = write(
        dir.path(),
        "unknown.toml",
        &valid.replace("[defaults]\n", "[defaults]\nttl_secs = 5\n"),
    );
    let out = run(
        "hsmgate-directory",
        &["--data", text(&path), "--listen", "127.0.0.1:0"],
    );
    assert_refused(&out, &["unknown field", "ttl_secs"]);
}

const HSM_VALID: &str = r#"
hsm_id = "hsm-1"
listen = "127.0.0.1:0"
key_file = "hsm-1.key"
state_dir = "state/hsm-1"

[gateways]
trusted_keys = ["x25519:c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3"]

[[partitions]]
name = "demo"
client_keys = ["x25519:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2"]
"#;

#[test]
fn hsm_node_names_the_bad_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    HsmConfig::load(write(dir.path(), "valid.toml", HSM_VALID)).expect("the base config is valid");

    let path = write(
        dir.path(),
        "zero.toml",
        &format!("{HSM_VALID}\n[limits]\nmax_keys_per_partition = 0\n"),
    );
    let out = run("hsmgate-hsm", &["--config", text(&path)]);
    assert_refused(&out, &["zero.toml", "limits.max_keys_per_partition: "]);

    let path = write(
        dir.path(),
        "bad-key.toml",
        &HSM_VALID.replace("x25519:c2c2", "x25519:zzzz"),
    );
    let out = run("hsmgate-hsm", &["--config", text(&path)]);
    assert_refused(&out, &["partitions[0].client_keys[0]"]);

    // A node that trusts no gateway refuses to start (issue 9).
    let path = write(
        dir.path(),
        "no-gateways.toml",
        &HSM_VALID.replace(
            "[gateways]\ntrusted_keys = [\"x25519:c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3\"]\n",
            "",
        ),
    );
    let out = run("hsmgate-hsm", &["--config", text(&path)]);
    assert_refused(&out, &["gateways.trusted_keys", "insecure_allow_direct"]);

    let path = write(
        dir.path(),
        "unknown.toml",
        &format!("hsm_name = \"x\"\n{HSM_VALID}"),
    );
    let out = run("hsmgate-hsm", &["--config", text(&path)]);
    assert_refused(&out, &["unknown field", "hsm_name"]);
    // Nothing was created for a refused config.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn client_names_the_bad_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    keyfile::create(&dir.path().join("client.key")).expect("client key");
    keyfile::create(&dir.path().join("partition.key")).expect("partition key");
    let peer = |_| {
        StaticKeypair::generate()
            .expect("key pair")
            .public()
            .to_text()
    };
    let [gateway_key, hsm_key]: [String; 2] = [0, 1].map(peer);
    let valid = format!(
        "gateway = \"127.0.0.1:9\"\ngateway_key = \"{gateway_key}\"\nclient_id = \"demo-app\"\n\
         tenant = \"demo\"\npartition = \"demo\"\nidentity_file = \"client.key\"\n\
         partition_key_file = \"partition.key\"\nhsm_keys = [\"{hsm_key}\"]\n"
    );
    ClientConfig::load(write(dir.path(), "valid.toml", &valid)).expect("the base config is valid");

    let path = write(
        dir.path(),
        "bad-hsm-key.toml",
        &valid.replace(&hsm_key, "x25519:1234"),
    );
    let out = run("hsmgate-client", &["--config", text(&path), "ping"]);
    assert_refused(&out, &["bad-hsm-key.toml", "hsm_keys[0]: "]);

    let path = write(
        dir.path(),
        "bad-gateway.toml",
        &valid.replace("127.0.0.1:9", "127.0.0.1:0"),
    );
    let out = run("hsmgate-client", &["--config", text(&path), "ping"]);
    assert_refused(&out, &["gateway: ", "port must be 1..=65535"]);

    let path = write(
        dir.path(),
        "missing-key-file.toml",
        &valid.replace("\"partition.key\"", "\"nowhere.key\""),
    );
    let out = run("hsmgate-client", &["--config", text(&path), "ping"]);
    assert_refused(&out, &["partition_key_file: ", "nowhere.key"]);

    let path = write(
        dir.path(),
        "unknown.toml",
        &format!("{valid}dns_servers = \"127.0.0.1\"\n"),
    );
    let out = run("hsmgate-client", &["--config", text(&path), "ping"]);
    assert_refused(&out, &["unknown field", "dns_servers"]);
}

#[test]
fn keygen_writes_a_private_key_file_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.key");

    let out = run("hsmgate", &["keygen", "--out", text(&path)]);
    assert_eq!(out.code(), Some(0), "{out}");
    let printed = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
    let hex_part = printed
        .strip_prefix("x25519:")
        .unwrap_or_else(|| panic!("no x25519: prefix: {out}"));
    assert_eq!(hex_part.len(), 64, "{out}");
    assert!(
        hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{out}"
    );

    let meta = std::fs::metadata(&path).expect("key file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "key file mode");
    let stored = std::fs::read_to_string(&path).expect("read key file");
    let pair = StaticKeypair::from_file_text(&stored).expect("the key file parses");
    assert_eq!(
        pair.public(),
        PublicKey::from_text(printed).expect("printed key parses"),
        "the printed key is the file's public key"
    );

    let again = run("hsmgate", &["keygen", "--out", text(&path)]);
    assert_ne!(again.code(), Some(0), "{again}");
    assert!(again.stdout.is_empty(), "{again}");
    assert!(again.stderr.contains("gw.key"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read key file"),
        stored,
        "the existing key is untouched"
    );
}

#[test]
fn keygen_encrypt_seals_the_private_key_under_the_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("client.key");

    // No passphrase anywhere: refused, no file.
    let mut cmd = Command::new(binary("hsmgate"));
    cmd.args(["keygen", "--encrypt", "--out", text(&path)])
        .env_remove("HSMGATE_KEY_PASSPHRASE");
    let out = proc::run(&mut cmd, RUN_LIMIT);
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("HSMGATE_KEY_PASSPHRASE"), "{out}");
    assert!(!path.exists(), "nothing written");

    // Too short a passphrase: refused too.
    let short = write(dir.path(), "short.txt", "1234\n");
    let out = run(
        "hsmgate",
        &[
            "keygen",
            "--encrypt",
            "--passphrase-file",
            text(&short),
            "--out",
            text(&path),
        ],
    );
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("at least 8"), "{out}");

    let mut cmd = Command::new(binary("hsmgate"));
    cmd.args(["keygen", "--encrypt", "--out", text(&path)])
        .env("HSMGATE_KEY_PASSPHRASE", "correct horse battery");
    let out = proc::run(&mut cmd, RUN_LIMIT);
    assert_eq!(out.code(), Some(0), "{out}");
    let printed = PublicKey::from_text(out.stdout.trim()).expect("printed key parses");
    let meta = std::fs::metadata(&path).expect("key file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "key file mode");
    let stored = std::fs::read_to_string(&path).expect("read key file");
    assert!(!stored.contains("private"), "{stored}");
    assert!(
        stored.contains("sealed = \"argon2id-aes256gcm:m=65536,t=3,p=1:"),
        "{stored}"
    );
    let hsmgate_wire::KeyFile::Sealed(sealed) =
        hsmgate_wire::KeyFile::parse(&stored).expect("parses")
    else {
        panic!("not sealed: {stored}");
    };
    assert_eq!(sealed.public(), printed);
    let pair = sealed.unseal(b"correct horse battery").expect("opens");
    assert_eq!(pair.public(), printed);
    assert!(sealed.unseal(b"correct horse battery!").is_err());

    // Servers take no sealed key: a gateway config naming it is refused.
    assert!(keyfile::load(&path).is_err());
}

/// Start `hsmgate dev` on `state`, wait for "ready", check the CLI both
/// ways, then stop it with SIGTERM.
fn dev_round(state: &Path) {
    let mut dev = Daemon::spawn(Command::new(binary("hsmgate")).args([
        "dev",
        "--state-dir",
        text(state),
        "--listen",
        "127.0.0.1:0",
        // Not the fixed default ports: the test must not collide with anything.
        "--admin",
        "127.0.0.1:0",
        "--rest-listen",
        "127.0.0.1:0",
    ]));
    let ready = dev.wait_for_line("ready", Duration::from_secs(20));
    assert!(
        ready.is_some(),
        "hsmgate dev did not say ready in 20 s\n{}",
        dev.transcript()
    );

    let config = state.join("client.toml");
    let ping = run("hsmgate-client", &["--config", text(&config), "ping"]);
    assert_eq!(ping.code(), Some(0), "{ping}\n{}", dev.transcript());
    assert!(ping.stdout.contains("via dev-gateway"), "{ping}");

    let refused = run(
        "hsmgate-client",
        &["--config", text(&config), "--bind", "127.0.0.2", "ping"],
    );
    assert_eq!(refused.code(), Some(3), "{refused}\n{}", dev.transcript());

    // The same client.toml over QUIC, to the same port over UDP.
    let quic = run(
        "hsmgate-client",
        &["--config", text(&config), "--transport", "quic", "ping"],
    );
    assert_eq!(quic.code(), Some(0), "{quic}\n{}", dev.transcript());
    let refused = run(
        "hsmgate-client",
        &[
            "--config",
            text(&config),
            "--transport",
            "quic",
            "--bind",
            "127.0.0.2",
            "ping",
        ],
    );
    assert_eq!(refused.code(), Some(3), "{refused}\n{}", dev.transcript());

    // hsmgate-rest with the dev token, as the banner's curl line says.
    let curl_line = dev
        .seen_line("curl --cacert")
        .expect("dev printed the REST curl line");
    let rest_url = curl_line
        .split_whitespace()
        .last()
        .expect("the URL ends the line")
        .to_owned();
    let token = std::fs::read_to_string(state.join("rest").join("token")).expect("dev token");
    if curl_available() {
        let out = proc::run(
            Command::new("curl").args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                text(&state.join("tls").join("ca.pem")),
                "-H",
                &format!("Authorization: Bearer {}", token.trim()),
                &rest_url,
            ]),
            RUN_LIMIT,
        );
        assert_eq!(out.code(), Some(0), "{out}\n{}", dev.transcript());
        assert!(out.stdout.starts_with("{\"keys\":["), "{out}");
    }

    // The admin endpoints of the running dev gateway: the metrics show what
    // this test caused and parse as the Prometheus text format.
    let line = dev
        .seen_line("admin endpoints on http://")
        .expect("dev printed its admin address before ready");
    let admin: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("admin address in the banner");
    let (status, metrics) = hsmgate_tests::http_get_blocking(admin, "/metrics");
    assert_eq!(status, 200);
    let value = |sample: &str| hsmgate_tests::metric_value(&metrics, sample);
    // Two sessions of the CLI above, and hsmgate-rest's one pooled session
    // (opened at its start, used by the curl request).
    assert_eq!(
        value(r#"hsmgate_admission_total{result="allow",stage="authz"}"#),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        value(r#"hsmgate_admission_total{result="deny",stage="authz"}"#),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        value(r#"hsmgate_quic_connections_total{outcome="authenticated"}"#),
        1.0,
        "{metrics}"
    );
    hsmgate_tests::check_exposition_format(&metrics);
    let (status, body) = hsmgate_tests::http_get_blocking(admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, config) = hsmgate_tests::http_get_blocking(admin, "/config");
    assert_eq!(status, 200);
    assert!(!config.contains("x25519-private"), "{config}");

    // The PKCS#11 library's config for the demo partition, and the line
    // that selects it.
    let export = dev
        .seen_line("export HSMGATE_PKCS11_CONFIG=")
        .expect("dev printed the line that selects its PKCS#11 config");
    let pkcs11 = std::path::absolute(state.join("pkcs11.toml")).expect("absolute path");
    assert!(
        export.trim_end().ends_with(&pkcs11.display().to_string()),
        "{export}"
    );
    let text = std::fs::read_to_string(&pkcs11).expect("dev wrote pkcs11.toml");
    assert!(text.contains("client_config = \"client.toml\""), "{text}");

    dev.guard.signal("TERM");
    let status = dev.guard.wait_timeout(Duration::from_secs(15));
    let status = status.unwrap_or_else(|| {
        panic!(
            "hsmgate dev did not exit within 15 s of SIGTERM\n{}",
            dev.transcript()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}\n{}", dev.transcript());
}

#[test]
fn dev_serves_the_cli_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    dev_round(&state);
    let key = std::fs::read_to_string(state.join("gateway.key")).expect("gateway key kept");
    // A second run reuses the state: same keys, a fresh client.toml.
    dev_round(&state);
    assert_eq!(
        std::fs::read_to_string(state.join("gateway.key")).expect("gateway key kept"),
        key
    );
}

#[test]
fn check_config_validates_the_config_and_its_key_without_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "gateway.toml", GATEWAY_VALID);
    // No key file yet: its resolved path and the command that creates it.
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    let key_path = dir.path().join("gateway.key");
    assert_refused(
        &out,
        &[
            "key_file: ",
            "does not exist",
            &format!("hsmgate keygen --out {}", key_path.display()),
        ],
    );
    let pair = keyfile::create(&key_path).expect("key file");
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("valid"), "{out}");
    assert!(out.stdout.contains(&pair.public().to_text()), "{out}");
    let effective: GatewayConfig =
        toml::from_str(&out.stdout).expect("the effective config parses");
    assert_eq!(effective.gateway_id, "gw-test");
    // A key file others may read is a problem too.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    assert_refused(&out, &["key_file: "]);
    // Every problem of a bad file, exit 2, nothing bound.
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!("{GATEWAY_VALID}\n[timeouts]\nhandshake_ms = 0\nidle_ms = 0\n"),
    );
    let out = run("hsmgate", &["check-config", "--config", text(&bad)]);
    assert_refused(&out, &["timeouts.handshake_ms", "timeouts.idle_ms"]);
}

#[test]
fn an_address_that_is_not_ip_port_says_what_is_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, member) in [
        ("host.toml", "localhost:2401"),
        ("port.toml", "127.0.0.1:99999"),
    ] {
        let path = write(
            dir.path(),
            name,
            &GATEWAY_VALID.replace("127.0.0.1:2401", member),
        );
        let out = run("hsmgate", &["check-config", "--config", text(&path)]);
        assert_refused(
            &out,
            &["pools.members", "expected IP:port", "dns = \"host:port\""],
        );
    }
}

#[test]
fn an_error_prints_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    keyfile::create(&dir.path().join("gateway.key")).expect("key file");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let path = write(
        dir.path(),
        "taken.toml",
        &GATEWAY_VALID.replace("127.0.0.1:0", &addr),
    );
    let out = run("hsmgate", &["run", "--config", text(&path)]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "{out}"
    );
    assert!(out.stderr.contains(&addr), "{out}");
}

#[test]
fn the_directory_and_the_node_check_their_files_without_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = StaticKeypair::generate().expect("key pair").public();
    let data = write(
        dir.path(),
        "directory.toml",
        &directory_toml(&key, &["127.0.0.1/32".into()], 60),
    );
    let out = run("hsmgate-directory", &["--data", text(&data), "--check"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("valid"), "{out}");

    let node = write(dir.path(), "hsm.toml", HSM_VALID);
    let out = run("hsmgate-hsm", &["--config", text(&node), "--check"]);
    assert_refused(&out, &["key_file: ", "does not exist"]);
    let pair = keyfile::create(&dir.path().join("hsm-1.key")).expect("key file");
    let out = run("hsmgate-hsm", &["--config", text(&node), "--check"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains(&pair.public().to_text()), "{out}");
}

#[test]
fn logs_go_to_stderr_as_plain_text_when_it_is_not_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = StaticKeypair::generate().expect("key pair").public();
    let data = write(
        dir.path(),
        "directory.toml",
        &directory_toml(&key, &["127.0.0.1/32".into()], 60),
    );
    let daemon = Daemon::spawn(
        Command::new(binary("hsmgate-directory"))
            .args(["--data", text(&data), "--listen", "127.0.0.1:0"])
            .arg("--insecure-plaintext")
            .env_remove("NO_COLOR"),
    );
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while !daemon.stderr_contains("serving") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.guard.signal("TERM");
    let transcript = daemon.transcript();
    assert!(daemon.stderr_contains("serving"), "{transcript}");
    assert!(
        daemon.seen_line("serving").is_none(),
        "nothing on stdout: {transcript}"
    );
    assert!(
        !transcript.contains('\u{1b}'),
        "no colour codes: {transcript:?}"
    );
    // A value with spaces is quoted, so logfmt parsers read it whole.
    let loaded = transcript
        .lines()
        .find(|l| l.contains("directory data loaded"))
        .expect("the load line");
    assert!(loaded.contains("loaded=\""), "{loaded}");
}

#[test]
fn check_config_reads_the_tls_files_the_config_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    keyfile::create(&dir.path().join("gateway.key")).expect("key file");
    let tls = GATEWAY_VALID.replace(
        "endpoint = \"http://127.0.0.1:7100\"\nallow_plaintext = true",
        "endpoint = \"https://127.0.0.1:7100\"\nca_file = \"ca.pem\"",
    );
    assert_ne!(tls, GATEWAY_VALID);
    let config = write(dir.path(), "gateway.toml", &tls);
    // Named but absent: a problem, before anything is bound.
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    assert_refused(&out, &["directory: ", "ca.pem"]);
    // Not PEM: a problem too.
    write(dir.path(), "ca.pem", "not a certificate\n");
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    assert_refused(&out, &["directory: ", "ca.pem"]);
    let ca = hsmgate_authz::pki::Ca::new("check CA").expect("CA");
    write(dir.path(), "ca.pem", ca.cert_pem());
    let out = run("hsmgate", &["check-config", "--config", text(&config)]);
    assert_eq!(out.code(), Some(0), "{out}");
}

//! Issue 9, part 6: no secret reaches a log through an error. Every error
//! path of the HSM node's key store, and of every program's config loader,
//! is driven with a secret in the offending place; every log line written
//! (captured from `tracing`), every error's text and debug form, and every
//! program's stderr are searched for the secret's bytes.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsmgate_hsm::keystore::KeyStore;
use hsmgate_tests::binary;
use hsmgate_tests::proc;
use hsmgate_wire::ops::{KeyType, Request};

/// The secret every test plants: the hex of a key store secret.
const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
/// What is searched for: any 16 consecutive hex digits of it would do.
const NEEDLE: &str = "5ec7e75ec7e75ec7";

/// Every log line written in this process while the test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(NEEDLE), "{what} shows the secret:\n{text}");
}

/// Key store files that are wrong in every way a parser or a check can
/// notice, each with the secret where it would hurt.
fn corrupt_key_stores() -> Vec<(&'static str, String)> {
    let record = |secret: &str, extra: &str| {
        format!(
            "version = 1\n[[keys]]\nlabel = \"k\"\ntype = \"aes256\"\nsecret = {secret}\npublic = \"\"\n{extra}"
        )
    };
    vec![
        ("unterminated string", record(&format!("\"{SECRET}"), "")),
        (
            "a number",
            record(&SECRET.replace(|c: char| c.is_ascii_alphabetic(), "1"), ""),
        ),
        ("a bare word", record(SECRET, "")),
        ("not hex", record(&format!("\"{}zz\"", &SECRET[..62]), "")),
        ("too short", record(&format!("\"{}\"", &SECRET[..30]), "")),
        (
            "an unknown field",
            record(&format!("\"{SECRET}\""), &format!("{SECRET} = 1\n")),
        ),
        (
            "a wrong type name",
            format!(
                "version = 1\n[[keys]]\nlabel = \"k\"\ntype = \"{SECRET}\"\nsecret = \"{SECRET}\"\npublic = \"\"\n"
            ),
        ),
        (
            "a duplicate key",
            format!(
                "{}{}",
                record(&format!("\"{SECRET}\""), ""),
                record(&format!("\"{SECRET}\""), "").replace("version = 1\n", "")
            ),
        ),
        (
            "a wrong version",
            record(&format!("\"{SECRET}\""), "").replace("version = 1", "version = 7"),
        ),
    ]
}

#[test]
fn no_error_path_of_the_key_store_or_a_config_loader_logs_a_secret() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let dir = tempfile::tempdir().expect("tempdir");
        key_store_paths(dir.path());
        config_loader_paths(dir.path());
    });
    let text = logs.text();
    assert!(
        text.contains("cannot load key store"),
        "the key store's error path was logged:\n{text}"
    );
    assert_clean("the log", &text);
    programs_stderr();
}

/// Open a corrupt store (the error), and run operations on a store whose
/// file turned corrupt (logged on every operation).
fn key_store_paths(dir: &Path) {
    for (i, (what, text)) in corrupt_key_stores().into_iter().enumerate() {
        let part = dir.join(format!("open-{i}"));
        std::fs::create_dir_all(&part).expect("dir");
        std::fs::write(part.join("keys.toml"), &text).expect("write");
        let err = KeyStore::open(&part, 256).expect_err(what);
        assert_clean(what, &format!("{err} {err:?}"));

        let part = dir.join(format!("run-{i}"));
        let store = std::sync::Mutex::new(KeyStore::open(&part, 256).expect("empty store"));
        let file = part.join("keys.toml");
        // A new version of the file (written whole, as another node would).
        let tmp = part.join("keys.toml.new");
        std::fs::write(&tmp, &text).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        for request in [
            Request::ListKeys,
            Request::GenerateKey {
                kind: KeyType::Aes256,
                label: "n".into(),
            },
            Request::Sign {
                label: "k".into(),
                data: vec![1],
            },
        ] {
            let result = hsmgate_hsm::ops::execute(&store, request, 2);
            assert!(
                result.is_err(),
                "{what}: an operation on a corrupt store fails"
            );
        }
    }
}

/// Every config loader, with a private key pasted where it does not belong.
fn config_loader_paths(dir: &Path) {
    let private = format!("private = \"x25519-private:{SECRET}\"\n");
    let cases = [
        private.clone(),
        format!("gateway_id = \"{SECRET}\"\n"),
        format!("gateway_id = {SECRET}\n"),
        format!("[limits]\nmax_connections = \"{SECRET}\"\n"),
        format!("{SECRET} = 1\n"),
        format!("x = \"{SECRET}\n"),
    ];
    for case in &cases {
        let e = hsmgate::GatewayConfig::from_toml(case, dir).expect_err("gateway config");
        assert_clean(
            "gateway config error",
            &format!("{e} {e:?} {:?}", e.problems()),
        );
        let e = hsmgate_hsm::HsmConfig::from_toml(case, dir).expect_err("node config");
        assert_clean(
            "node config error",
            &format!("{e} {e:?} {:?}", e.problems()),
        );
        let e = hsmgate_directory::DirectoryData::from_toml_str(case).expect_err("directory data");
        assert_clean("directory data error", &format!("{e} {e:?}"));
        let e = hsmgate_client::ClientConfig::from_toml(case, dir).expect_err("client config");
        assert_clean("client config error", &format!("{e} {e:?}"));
    }
}

/// The programs themselves: what they print on stderr for the same faults.
fn programs_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("private = \"x25519-private:{SECRET}\"\n")).expect("write");
    let limit = Duration::from_secs(20);
    let bad = bad.to_str().expect("utf-8");
    for (program, args) in [
        ("hsmgate", vec!["run", "--config", bad]),
        ("hsmgate-hsm", vec!["--config", bad]),
        (
            "hsmgate-directory",
            vec!["--data", bad, "--listen", "127.0.0.1:0"],
        ),
        ("hsmgate-client", vec!["--config", bad, "ping"]),
    ] {
        let out = proc::run(
            std::process::Command::new(binary(program)).args(&args),
            limit,
        );
        assert_eq!(out.code(), Some(2), "{program}: {out}");
        assert_clean(program, &format!("{}{}", out.stdout, out.stderr));
    }
    // A node whose key store is corrupt refuses to start, naming the file.
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("demo")).expect("dir");
    std::fs::write(
        state.join("demo/keys.toml"),
        format!("version = 1\n[[keys]]\nlabel = \"k\"\ntype = \"aes256\"\nsecret = \"{SECRET}\npublic = \"\"\n"),
    )
    .expect("write");
    let key = dir.path().join("hsm.key");
    hsmgate::keyfile::create(&key).expect("node key");
    let config = dir.path().join("hsm.toml");
    std::fs::write(
        &config,
        format!(
            "hsm_id = \"hsm-1\"\nlisten = \"127.0.0.1:0\"\nkey_file = \"hsm.key\"\nstate_dir = \"state\"\n\
             [gateways]\ntrusted_keys = [\"x25519:{}\"]\n[[partitions]]\nname = \"demo\"\n",
            "c3".repeat(32)
        ),
    )
    .expect("write");
    let out = proc::run(
        std::process::Command::new(binary("hsmgate-hsm"))
            .args(["--config", config.to_str().expect("utf-8")]),
        limit,
    );
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("keys.toml"), "{out}");
    assert_clean(
        "hsmgate-hsm with a corrupt key store",
        &format!("{}{}", out.stdout, out.stderr),
    );
}

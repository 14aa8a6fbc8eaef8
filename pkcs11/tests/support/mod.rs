//! What the PKCS#11 tests share: a deployment on loopback with the library
//! configured for its partition, the paths of the library and the CLI, and
//! the third-party consumers (found, or skipped with a loud line unless
//! `HSMGATE_REQUIRE_PKCS11_TOOLS=1`, which CI sets after installing them).
#![allow(dead_code)]

pub mod p11;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hsmgate_tests::proc::{self, Output};
use hsmgate_tests::{Options, World, binary};

/// Bound on one consumer run (Java starts slowly, RSA keys take a moment).
pub const RUN_LIMIT: Duration = Duration::from_secs(240);

/// A deployment with one HSM node (one key store) and the library's
/// config for its partition.
pub struct Deployment {
    pub world: World,
    pub client_config: PathBuf,
    pub pkcs11_config: PathBuf,
}

pub async fn deploy(store: hsmgate_tests::TestStore) -> Deployment {
    let world = World::start_with(Options {
        store,
        ..one_node()
    })
    .await;
    let pkcs11_config = world.dir.path().join("pkcs11.toml");
    deployment(world, &pkcs11_config)
}

/// One HSM node: one key store, whichever connection serves a call.
pub fn one_node() -> Options {
    Options {
        hsm_nodes: 1,
        ..Options::default()
    }
}

/// A deployment whose library config is written at `pkcs11_config` (a
/// path chosen before the world started).
pub async fn deploy_at(pkcs11_config: &Path, options: Options) -> Deployment {
    deployment(World::start_with(options).await, pkcs11_config)
}

fn deployment(world: World, pkcs11_config: &Path) -> Deployment {
    let client_config = world.write_client_config("");
    write_slots(pkcs11_config, &[&client_config]);
    Deployment {
        world,
        client_config,
        pkcs11_config: pkcs11_config.to_owned(),
    }
}

/// Write a library config with one slot per client config, in order.
pub fn write_slots(pkcs11_config: &Path, client_configs: &[&Path]) {
    let mut text = String::from("log_level = \"info\"\n");
    for c in client_configs {
        text.push_str(&format!(
            "[[slots]]\nclient_config = {:?}\n",
            c.display().to_string()
        ));
    }
    std::fs::write(pkcs11_config, text).expect("write pkcs11.toml");
}

impl Deployment {
    /// A file in the deployment's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.world.dir.path().join(name)
    }

    /// Run the hsmgate CLI on the deployment's client config.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("hsmgate-client"));
        cmd.arg("--config").arg(&self.client_config).args(args);
        proc::run_async(cmd, RUN_LIMIT).await
    }

    /// `cli`, which must succeed; its stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert_eq!(out.code(), Some(0), "hsmgate-client {args:?}: {out}");
        out.stdout
    }

    /// A consumer command with the library selected.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HSMGATE_PKCS11_CONFIG", &self.pkcs11_config);
        cmd
    }

    pub async fn run(&self, cmd: Command) -> Output {
        proc::run_async(cmd, RUN_LIMIT).await
    }
}

/// `libhsmgate_pkcs11.so` as this test run built it: `cargo test` builds
/// the library's every crate type into `deps/`, next to the test binaries
/// (only `cargo build` copies it up to the profile directory).
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("the test binaries' directory");
    let candidates = [
        deps.join("libhsmgate_pkcs11.so"),
        deps.parent()
            .map(|profile| profile.join("libhsmgate_pkcs11.so"))
            .unwrap_or_default(),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libhsmgate_pkcs11.so is missing next to {}: cargo test --workspace builds it",
                exe.display()
            )
        })
}

/// A consumer's source file under `tests/consumers`.
pub fn consumer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/consumers")
        .join(name)
}

fn required() -> bool {
    std::env::var("HSMGATE_REQUIRE_PKCS11_TOOLS").is_ok_and(|v| v == "1")
}

/// Whether `program` runs `args` successfully (with `must_succeed`) or at
/// all; when it does not, the test is skipped with a line saying so, or
/// fails when CI requires the tool.
pub fn available(program: &str, args: &[&str], must_succeed: bool, what: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success() || !must_succeed);
    if !found {
        assert!(
            !required(),
            "{what} is required (HSMGATE_REQUIRE_PKCS11_TOOLS=1) but `{program}` does not run"
        );
        eprintln!("SKIPPED: {what} is not installed (`{program}`); .ci/run installs it");
    }
    found
}

/// The Python that has python-pkcs11 and cryptography: `HSMGATE_PYTHON`
/// (set by CI to its virtualenv), else `python3`.
pub fn python() -> Option<String> {
    let python = std::env::var("HSMGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    available(
        &python,
        &["-c", "import pkcs11, cryptography"],
        true,
        "python-pkcs11 with cryptography",
    )
    .then_some(python)
}

/// Point the library at `config` for this test process. Called first
/// thing in a test binary's only test, before it starts any thread.
pub fn select_config(config: &Path) {
    // SAFETY: no other thread of this process reads or writes the
    // environment now: the binary has one test, and this runs before it
    // starts its runtime or any other thread.
    unsafe { std::env::set_var("HSMGATE_PKCS11_CONFIG", config) };
}

/// A runtime for the deployment's servers, separate from the threads that
/// call the library (which block while a call is in flight).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

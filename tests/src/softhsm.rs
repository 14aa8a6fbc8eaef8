//! SoftHSM2 tokens for tests: a token directory and config of the test's
//! own, initialized with `softhsm2-util`. The library reads its config from
//! `SOFTHSM2_CONF`, which is set only in the environment of the processes
//! that use the token (HSM nodes started as child processes), never in the
//! test process itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::proc;

/// The SoftHSM2 PKCS#11 library as Debian installs it.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token.
pub const PIN: &str = "hsmgate-test-pin";
const SO_PIN: &str = "hsmgate-test-so-pin";

/// Whether SoftHSM2 is installed; when it is not, the caller skips with a
/// line saying so, or fails when CI requires it
/// (`HSMGATE_REQUIRE_SOFTHSM=1`).
pub fn available() -> bool {
    let found = Path::new(MODULE).is_file()
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("HSMGATE_REQUIRE_SOFTHSM").as_deref() != Ok("1"),
            "SoftHSM2 is required (HSMGATE_REQUIRE_SOFTHSM=1) but {MODULE} or softhsm2-util is missing"
        );
        eprintln!(
            "SKIPPED: SoftHSM2 is not installed (apt-get install softhsm2); .ci/run installs it"
        );
    }
    found
}

/// One token in a directory of its own.
#[derive(Debug, Clone)]
pub struct Token {
    /// The `SOFTHSM2_CONF` file.
    pub conf: PathBuf,
    /// The token directory.
    pub dir: PathBuf,
    pub label: String,
    /// A file holding the user PIN (mode 0600).
    pub pin_file: PathBuf,
}

impl Token {
    /// Initialize token `label` under `root`.
    pub fn init(root: &Path, label: &str) -> Token {
        let dir = root.join("softhsm-tokens");
        std::fs::create_dir_all(&dir).expect("token directory");
        let conf = root.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.display()
            ),
        )
        .expect("write softhsm2.conf");
        let mut cmd = Command::new("softhsm2-util");
        cmd.env("SOFTHSM2_CONF", &conf).args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ]);
        let out = proc::run(&mut cmd, Duration::from_secs(30));
        assert_eq!(out.code(), Some(0), "softhsm2-util --init-token: {out}");
        let pin_file = root.join("token.pin");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pin_file)
                .expect("create pin file");
            writeln!(f, "{PIN}").expect("write pin file");
        }
        Token {
            conf,
            dir,
            label: label.to_owned(),
            pin_file,
        }
    }

    /// The `[partitions.pkcs11]` table of a node config for this token.
    pub fn partition_toml(&self, prefix: &str) -> String {
        format!(
            "store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"{MODULE}\"\ntoken_label = \"{}\"\n\
             pin_file = \"{}\"\nlabel_prefix = \"{prefix}\"\nsessions = 4\n",
            self.label,
            self.pin_file.display()
        )
    }

    /// `pkcs11-tool` on this token (SoftHSM's own library, not hsmgate).
    pub fn pkcs11_tool(&self, args: &[&str]) -> proc::Output {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                PIN,
            ])
            .args(args);
        proc::run(&mut cmd, Duration::from_secs(60))
    }
}

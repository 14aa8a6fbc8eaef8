//! Builds the kernel forwarding program (`bpf/forward.bpf.c`) with clang.
//!
//! Without a clang that targets BPF, the gateway is built without it and
//! `forwarding.mode = "kernel"` falls back to splice at start (logged).
//! `HSMGATE_REQUIRE_BPF=1` makes a missing clang a build error (CI sets it);
//! `HSMGATE_CLANG` names the compiler to use.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/forward.bpf.c";
const CANDIDATES: &[&str] = &[
    "clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14",
];

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=HSMGATE_CLANG");
    println!("cargo::rerun-if-env-changed=HSMGATE_REQUIRE_BPF");
    println!("cargo::rustc-check-cfg=cfg(hsmgate_bpf)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("forward.bpf.o");
    let required = std::env::var("HSMGATE_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let compilers: Vec<String> = match std::env::var("HSMGATE_CLANG") {
        Ok(c) => vec![c],
        Err(_) => CANDIDATES.iter().map(|c| c.to_string()).collect(),
    };
    let mut problems = Vec::new();
    for clang in &compilers {
        let result = Command::new(clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{}-linux-gnu", arch()))
            .args(["-c", SOURCE, "-o"])
            .arg(&object)
            .output();
        match result {
            Ok(o) if o.status.success() => {
                println!("cargo::rustc-cfg=hsmgate_bpf");
                return;
            }
            Ok(o) => problems.push(format!(
                "{clang}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => problems.push(format!("{clang}: {e}")),
        }
    }
    let why = problems.join("; ");
    if required {
        panic!("HSMGATE_REQUIRE_BPF=1 but {SOURCE} could not be built: {why}");
    }
    println!(
        "cargo::warning=kernel forwarding not built (no clang for BPF: apt install clang): {}",
        problems.last().map(String::as_str).unwrap_or("")
    );
}

fn arch() -> String {
    std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
}

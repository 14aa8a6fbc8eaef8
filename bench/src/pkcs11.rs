//! The `pkcs11` scenario: ECDSA P-256 signatures per second through the
//! PKCS#11 library (`C_SignInit` + `C_Sign` with `CKM_ECDSA_SHA256`, one
//! session per application thread) against the same signatures through the
//! SDK (SHA-256 here, `sign_digest` on the HSM), with the same number of
//! callers and the same two connections. The ratio is the library's
//! overhead: FFI, its runtime hand-off, sessions and object handles.
//!
//! The library is linked as a crate, the same code as
//! `libhsmgate_pkcs11.so`; its entry points are called as an application
//! calls them.

use std::ptr::null_mut;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use cryptoki_sys::*;
use hsmgate_client::{ClientConfig, SignScheme};
use hsmgate_pkcs11 as p11;

use crate::deploy::{CLIENT_ID, Deployment, PARTITION_HSM, TENANT};
use crate::hist::Latencies;
use crate::report::Pkcs11Row;

/// The key both paths sign with.
const LABEL: &str = "bench-p256";
/// Connections of each path.
const CONNECTIONS: usize = 2;

/// The library initialized on the deployment's HSM partition, the key, and
/// the SDK's connections.
pub struct Pkcs11Bench {
    key: CK_OBJECT_HANDLE,
    sdk: Vec<hsmgate_client::Session>,
}

fn check(rv: CK_RV, what: &str) -> anyhow::Result<()> {
    if rv != CKR_OK {
        bail!("{what}: CK_RV 0x{rv:x}");
    }
    Ok(())
}

fn open_session() -> anyhow::Result<CK_SESSION_HANDLE> {
    let mut session = 0;
    // SAFETY: a valid output handle, no callback.
    let rv = unsafe {
        p11::C_OpenSession(
            0,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            null_mut(),
            None,
            &mut session,
        )
    };
    check(rv, "C_OpenSession")?;
    Ok(session)
}

impl Pkcs11Bench {
    /// Write the client and library configs for the cached gateway,
    /// initialize the library, make the P-256 key through it, and connect
    /// the SDK.
    pub async fn setup(dep: &Deployment) -> anyhow::Result<Pkcs11Bench> {
        let dir = dep.dir.path();
        let id = &dep.identity;
        let hsm_keys = id
            .hsm_keys
            .iter()
            .map(|k| format!("\"{}\"", k.to_text()))
            .collect::<Vec<_>>()
            .join(", ");
        let client = dir.join("pkcs11-client.toml");
        std::fs::write(
            &client,
            format!(
                "gateway = \"{}\"\ngateway_key = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
                 tenant = \"{TENANT}\"\npartition = \"{PARTITION_HSM}\"\n\
                 identity_file = \"client.key\"\npartition_key_file = \"partition.key\"\n\
                 hsm_keys = [{hsm_keys}]\n",
                dep.gateway.addr,
                id.gateway_key.to_text()
            ),
        )?;
        let library = dir.join("pkcs11.toml");
        std::fs::write(
            &library,
            format!(
                "log_level = \"error\"\nconnections_per_slot = {CONNECTIONS}\n\
                 [[slots]]\nclient_config = \"pkcs11-client.toml\"\n"
            ),
        )?;
        p11::library::initialize_at(&library)
            .map_err(|rv| anyhow::anyhow!("initializing the PKCS#11 library: CK_RV 0x{rv:x}"))?;

        let key = tokio::task::spawn_blocking(generate_key).await??;
        let config = ClientConfig::load(&client).context("the benchmark's client config")?;
        let mut sdk = Vec::new();
        for _ in 0..CONNECTIONS {
            sdk.push(hsmgate_client::connect(&config, &Default::default()).await?);
        }
        Ok(Pkcs11Bench { key, sdk })
    }

    /// One row: `threads` callers on each path for `run` after `warmup`,
    /// at most `max_ops` measured signatures each.
    pub async fn row(
        &self,
        threads: usize,
        warmup: Duration,
        run: Duration,
        max_ops: u64,
    ) -> anyhow::Result<Pkcs11Row> {
        let sdk = self.sdk_run(threads, warmup, run, max_ops).await?;
        let key = self.key;
        let lib =
            tokio::task::spawn_blocking(move || library_run(key, threads, warmup, run, max_ops))
                .await??;
        let sdk_rate = sdk.hist.count() as f64 / sdk.seconds;
        let lib_rate = lib.hist.count() as f64 / lib.seconds;
        Ok(Pkcs11Row {
            threads,
            sdk_per_second: sdk_rate,
            sdk: sdk.hist.summary(),
            library_per_second: lib_rate,
            library: lib.hist.summary(),
            library_over_sdk: lib_rate / sdk_rate.max(1e-9),
            errors: sdk.errors + lib.errors,
            first_error: sdk.first_error.or(lib.first_error),
        })
    }

    async fn sdk_run(
        &self,
        tasks: usize,
        warmup: Duration,
        run: Duration,
        max_ops: u64,
    ) -> anyhow::Result<crate::scenario::LoadOutcome> {
        let start = tokio::time::Instant::now();
        let sessions = Arc::new(self.sdk.clone());
        crate::scenario::load(
            tasks,
            start + warmup,
            start + warmup + run,
            max_ops,
            move |n| {
                let sessions = sessions.clone();
                async move {
                    let message = format!("signature {n}");
                    let digest =
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message.as_bytes());
                    let session = &sessions[n as usize % sessions.len()];
                    let sig = session
                        .sign_digest(LABEL, SignScheme::Ecdsa, digest.as_ref())
                        .await?;
                    ensure!(sig.len() == 64, "a P-256 signature is 64 bytes");
                    Ok(())
                }
            },
        )
        .await
    }
}

fn generate_key() -> anyhow::Result<CK_OBJECT_HANDLE> {
    let session = open_session()?;
    let params = [0x06u8, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let token = [CK_TRUE];
    let attr = |kind, value: &[u8]| CK_ATTRIBUTE {
        type_: kind,
        pValue: value.as_ptr() as *mut _,
        ulValueLen: value.len() as CK_ULONG,
    };
    let public = [attr(CKA_EC_PARAMS, &params), attr(CKA_TOKEN, &token)];
    let private = [attr(CKA_LABEL, LABEL.as_bytes()), attr(CKA_TOKEN, &token)];
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut public_key, mut private_key) = (0, 0);
    // SAFETY: the templates point at live locals; the outputs are valid.
    let rv = unsafe {
        p11::C_GenerateKeyPair(
            session,
            &mut mechanism,
            public.as_ptr() as *mut _,
            public.len() as CK_ULONG,
            private.as_ptr() as *mut _,
            private.len() as CK_ULONG,
            &mut public_key,
            &mut private_key,
        )
    };
    check(rv, "C_GenerateKeyPair")?;
    check(p11::C_CloseSession(session), "C_CloseSession")?;
    Ok(private_key)
}

/// One signature through the library: `C_SignInit` and `C_Sign`.
fn library_sign(
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    message: &[u8],
) -> anyhow::Result<()> {
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_ECDSA_SHA256,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: a valid mechanism without parameters.
    check(
        unsafe { p11::C_SignInit(session, &mut mechanism, key) },
        "C_SignInit",
    )?;
    let mut signature = [0u8; 64];
    let mut len = signature.len() as CK_ULONG;
    // SAFETY: `message` is readable for its length; `signature` holds `len` bytes.
    let rv = unsafe {
        p11::C_Sign(
            session,
            message.as_ptr() as *mut u8,
            message.len() as CK_ULONG,
            signature.as_mut_ptr(),
            &mut len,
        )
    };
    check(rv, "C_Sign")?;
    ensure!(len == 64, "a P-256 signature is 64 bytes");
    Ok(())
}

struct ThreadOutcome {
    hist: Latencies,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
}

/// `threads` application threads, each with its own session, signing in a
/// loop until the deadline or the count.
fn library_run(
    key: CK_OBJECT_HANDLE,
    threads: usize,
    warmup: Duration,
    run: Duration,
    max_ops: u64,
) -> anyhow::Result<ThreadOutcome> {
    let start = Instant::now();
    let (warm_end, end) = (start + warmup, start + warmup + run);
    let counter = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let counter = counter.clone();
            std::thread::spawn(
                move || -> anyhow::Result<(Latencies, u64, Option<String>)> {
                    let session = open_session()?;
                    let (mut hist, mut errors, mut first) = (Latencies::default(), 0, None);
                    let mut n = 0u64;
                    loop {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        let measured = now >= warm_end;
                        if measured && counter.fetch_add(1, Ordering::Relaxed) >= max_ops {
                            break;
                        }
                        n += 1;
                        let message = format!("thread {t} signature {n}");
                        match library_sign(session, key, message.as_bytes()) {
                            Ok(()) if measured => hist.record(now.elapsed()),
                            Ok(()) => {}
                            Err(e) => {
                                errors += u64::from(measured);
                                first.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    check(p11::C_CloseSession(session), "C_CloseSession")?;
                    Ok((hist, errors, first))
                },
            )
        })
        .collect();
    let mut out = ThreadOutcome {
        hist: Latencies::default(),
        errors: 0,
        first_error: None,
        seconds: 0.0,
    };
    for w in workers {
        let (h, e, first) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
        out.hist.add(&h);
        out.errors += e;
        if out.first_error.is_none() {
            out.first_error = first;
        }
    }
    out.seconds = (Instant::now() - warm_end).as_secs_f64().max(1e-9);
    Ok(out)
}

//! The `stores` scenario: signatures per second through the whole path
//! (client SDK, gateway, HSM node) with the node's software store and with
//! a SoftHSM2 token behind the same node binary, so that the cost of the
//! node's PKCS#11 layer is a number. Each row: one key type, N concurrent
//! sessions, each signing in a loop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hsmgate_client::{ClientConfig, KeyType};

use crate::deploy::{CLIENT_ID, Deployment, PARTITION_SOFTWARE, PARTITION_TOKEN, TENANT};
use crate::report::StoreRow;
use crate::scenario::load;

/// One row: `concurrency` sessions to the partition on `store` signing with
/// a key of `kind`.
pub async fn row(
    dep: &Deployment,
    store: &str,
    kind: KeyType,
    concurrency: usize,
    warmup: Duration,
    run: Duration,
    max_ops: u64,
) -> anyhow::Result<StoreRow> {
    let partition = if store == "software" {
        PARTITION_SOFTWARE
    } else {
        PARTITION_TOKEN
    };
    let config = client_config(dep, partition)?;
    let mut sessions = Vec::new();
    for _ in 0..concurrency.max(1) {
        sessions.push(hsmgate_client::connect(&config, &Default::default()).await?);
    }
    let label = format!("bench-{}", kind.as_str());
    // The key exists after the first row of its kind.
    match sessions[0].generate_key(kind, &label).await {
        Ok(_) => {}
        Err(hsmgate_client::ClientError::Operation {
            status: hsmgate_client::Status::AlreadyExists,
            ..
        }) => {}
        Err(e) => return Err(e).context("generating the benchmark key"),
    }
    let sessions = Arc::new(sessions);
    let start = tokio::time::Instant::now();
    let outcome = load(
        concurrency,
        start + warmup,
        start + warmup + run,
        max_ops,
        move |n| {
            let (sessions, label) = (Arc::clone(&sessions), label.clone());
            async move {
                let session = &sessions[n as usize % sessions.len()];
                session
                    .sign(&label, format!("message {n}").as_bytes())
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(StoreRow {
        store: store.to_owned(),
        key: kind.as_str().to_owned(),
        concurrency,
        signatures: outcome.hist.count(),
        per_second: outcome.hist.count() as f64 / outcome.seconds,
        latency: outcome.hist.summary(),
        errors: outcome.errors,
        first_error: outcome.first_error,
    })
}

fn client_config(dep: &Deployment, partition: &str) -> anyhow::Result<ClientConfig> {
    let id = &dep.identity;
    let hsm_keys = dep
        .store_nodes
        .as_ref()
        .context("the stores scenario's nodes are not running")?
        .keys
        .iter()
        .map(|k| format!("\"{}\"", k.to_text()))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "gateway = \"{}\"\ngateway_key = \"{}\"\nclient_id = \"{CLIENT_ID}\"\ntenant = \"{TENANT}\"\n\
         partition = \"{partition}\"\nidentity_file = \"client.key\"\npartition_key_file = \"partition.key\"\n\
         hsm_keys = [{hsm_keys}]\n",
        dep.gateway.addr,
        id.gateway_key.to_text(),
    );
    ClientConfig::from_toml(&text, dep.dir.path()).context("the stores scenario's client config")
}

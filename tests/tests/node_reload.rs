//! Reloading an HSM node (what SIGHUP does to `hsmgate-hsm`): the trusted
//! gateway keys, each partition's client keys and the node's own key change
//! for new sessions without a restart; running sessions keep theirs; a
//! change that needs a restart is refused as a whole.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hsmgate::keyfile;
use hsmgate_client::ClientError;
use hsmgate_hsm::{HsmConfig, HsmNode};
use hsmgate_tests::proc::Daemon;
use hsmgate_tests::{Options, PATIENCE, World, binary};
use hsmgate_wire::{Code, StaticKeypair};

fn nodes(world: &World) -> Vec<Arc<HsmNode>> {
    world
        .hsms
        .iter()
        .map(|h| Arc::clone(h.node().expect("in-process node")))
        .collect()
}

/// Reload every node with its start config changed by `change`.
fn reload_all(world: &World, change: impl Fn(&mut HsmConfig)) {
    for node in nodes(world) {
        let mut config = node.config().clone();
        change(&mut config);
        let key = keyfile::load(&config.key_file).expect("node key");
        node.reload(&config, key).expect("reload");
    }
}

/// A session opened and one request served.
async fn served(world: &World, config: &hsmgate_client::ClientConfig) -> Result<(), ClientError> {
    let session = world.connect_with(config, &Default::default()).await?;
    session.ping().await?;
    session.close().await;
    Ok(())
}

fn one_node() -> Options {
    Options {
        hsm_nodes: 1,
        ..Options::default()
    }
}

#[tokio::test]
async fn partition_client_keys_change_without_a_restart() {
    let world = World::start_with(one_node()).await;
    let running = world.connect(None).await.expect("granted");
    let next = StaticKeypair::generate().expect("key pair");
    let mut with_next = world.client_config();
    with_next.partition_key = next.clone();
    let err = served(&world, &with_next)
        .await
        .expect_err("not yet authorized");
    assert_eq!(err.code(), Some(Code::Denied), "{err}");

    // Both keys, then only the new one.
    let old = world.client_config().partition_key.public().to_text();
    let new = next.public().to_text();
    reload_all(&world, |c| {
        c.partitions[0].client_keys = vec![old.clone(), new.clone()]
    });
    served(&world, &with_next)
        .await
        .expect("the new key is authorized");
    served(&world, &world.client_config())
        .await
        .expect("the old key too, during the overlap");

    reload_all(&world, |c| c.partitions[0].client_keys = vec![new.clone()]);
    let err = served(&world, &world.client_config())
        .await
        .expect_err("the old key is out");
    assert_eq!(err.code(), Some(Code::Denied), "{err}");
    running
        .ping()
        .await
        .expect("a session that was running keeps its authorization");
}

#[tokio::test]
async fn the_node_key_rotates_for_new_sessions() {
    let world = World::start_with(one_node()).await;
    let node = nodes(&world).remove(0);
    let old = node.public_key();
    let running = world.connect(None).await.expect("granted");
    let next_path = world.dir.path().join("hsm-next.key");
    let next = keyfile::create(&next_path).expect("next key");
    // Clients trust both node keys first.
    let mut both = world.client_config();
    both.hsm_keys.push(next.public());

    let mut config = node.config().clone();
    config.key_file = next_path;
    let reloaded = node.reload(&config, next.clone()).expect("reload");
    assert!(reloaded.key_changed);
    assert_eq!(reloaded.old_key, old);
    assert_eq!(node.public_key(), next.public());

    let session = world
        .connect_with(&both, &Default::default())
        .await
        .expect("the new key is trusted");
    assert_eq!(session.hsm_key(), next.public());
    // A client that trusts only the old key refuses the node and says what
    // it presented.
    let err = served(&world, &world.client_config())
        .await
        .expect_err("old key only");
    assert!(
        matches!(&err, ClientError::UntrustedHsm { presented, .. } if *presented == next.public()),
        "{err:?}"
    );
    assert_eq!(running.hsm_key(), old);
    running
        .ping()
        .await
        .expect("the running session keeps its channel");
}

#[tokio::test]
async fn a_gateway_taken_out_of_trust_gets_no_more_sessions() {
    let world = World::start_with(one_node()).await;
    world.connect(None).await.expect("granted").close().await;
    let node = nodes(&world).remove(0);
    assert_eq!(node.trust().live_keys(), 1, "the gateway's control channel");

    // Another gateway's key only: this gateway's grant key is withdrawn.
    let other = StaticKeypair::generate()
        .expect("key pair")
        .public()
        .to_text();
    let mut config = node.config().clone();
    config.gateways.trusted_keys = vec![other];
    let key = keyfile::load(&config.key_file).expect("node key");
    let reloaded = node.reload(&config, key.clone()).expect("reload");
    assert_eq!(reloaded.withdrawn_grant_keys, 1);
    let err = served(&world, &world.client_config())
        .await
        .expect_err("no trusted grant");
    assert!(err.is_retryable(), "{err}");

    // Trusted again: the gateway's channel comes back and sessions with it.
    let mut restored = node.config().clone();
    restored.gateways.trusted_keys = vec![world.gateway.public_key().to_text()];
    node.reload(&restored, key).expect("reload");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match world.connect(None).await {
            Ok(session) => {
                session.ping().await.expect("ping");
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_refused_as_a_whole() {
    let world = World::start_with(one_node()).await;
    let node = nodes(&world).remove(0);
    let next = StaticKeypair::generate().expect("key pair");
    let mut config = node.config().clone();
    config.limits.max_sessions += 1;
    config.partitions[0].client_keys = vec![next.public().to_text()];
    let key = keyfile::load(&config.key_file).expect("node key");
    let problems = node.reload(&config, key).expect_err("refused");
    assert!(
        problems.iter().any(|p| p.starts_with("limits")),
        "{problems:?}"
    );
    served(&world, &world.client_config())
        .await
        .expect("the old client keys are still in force");
}

#[test]
fn sighup_reloads_the_node_process_instead_of_ending_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("hsm.key");
    keyfile::create(&key_file).expect("key");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let gateway = StaticKeypair::generate()
        .expect("key pair")
        .public()
        .to_text();
    let client = StaticKeypair::generate()
        .expect("key pair")
        .public()
        .to_text();
    let config = |client_keys: &str, max_sessions: &str| {
        format!(
            "hsm_id = \"hsm-1\"\nlisten = \"{addr}\"\nkey_file = \"{}\"\nstate_dir = \"{}\"\n\
             {max_sessions}\n[gateways]\ntrusted_keys = [\"{gateway}\"]\n\
             [[partitions]]\nname = \"demo\"\nclient_keys = [{client_keys}]\n",
            key_file.display(),
            dir.path().join("state").display(),
        )
    };
    let path = dir.path().join("hsm.toml");
    std::fs::write(&path, config(&format!("\"{client}\""), "")).expect("write");
    let daemon = Daemon::spawn(
        Command::new(binary("hsmgate-hsm"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info"),
    );
    let wait_for = |needle: &str, count: usize| {
        let deadline = std::time::Instant::now() + PATIENCE;
        while daemon.transcript().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?}\n{}",
                daemon.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("listening", 1);
    let other = StaticKeypair::generate()
        .expect("key pair")
        .public()
        .to_text();
    std::fs::write(&path, config(&format!("\"{client}\", \"{other}\""), "")).expect("write");
    daemon.guard.signal("HUP");
    wait_for("config reloaded", 1);
    // A restart-only change: refused, logged, the process keeps serving.
    std::fs::write(
        &path,
        config(&format!("\"{client}\""), "[limits]\nmax_sessions = 7"),
    )
    .expect("write");
    daemon.guard.signal("HUP");
    wait_for("config reload refused", 1);
    assert!(
        daemon
            .transcript()
            .contains("limits: changes only with a restart"),
        "{}",
        daemon.transcript()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(hsmgate_hsm::probe::check(addr, Duration::from_secs(2)))
        .expect("still serving after both reloads");
}

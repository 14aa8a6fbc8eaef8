//! Reloading the gateway's config (what SIGHUP does): a valid file takes
//! effect for new connections, running sessions keep the config they started
//! with, and an invalid file changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use hsmgate::GatewayConfig;
use hsmgate_tests::{Options, World};

const RELOADS_OK: &str = r#"hsmgate_config_reloads_total{result="ok"}"#;
const RELOADS_ERROR: &str = r#"hsmgate_config_reloads_total{result="error"}"#;

fn world_options() -> Options {
    Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        ..Options::default()
    }
}

/// Write `config` as the gateway's config file.
fn write_config(world: &World, config: &GatewayConfig) -> PathBuf {
    let path = world.dir.path().join("gateway.toml");
    let text = toml::to_string(config).expect("config renders as TOML");
    std::fs::write(&path, text).expect("write gateway.toml");
    path
}

#[tokio::test]
async fn a_valid_reload_applies_to_new_connections_only() {
    let world = World::start_with(world_options()).await;
    let running = world
        .connect(Some("127.0.0.3"))
        .await
        .expect("127.0.0.3 allowed at first");
    running.ping().await.expect("ping");

    let mut config = world.gateway.config();
    config.admission.allow = vec!["127.0.0.1/32".parse().expect("net")];
    let path = write_config(&world, &config);
    assert!(world.gateway.reload_file(&path), "valid config reloads");
    assert_eq!(world.metric(RELOADS_OK), 1.0);

    let err = world
        .connect(Some("127.0.0.3"))
        .await
        .expect_err("new connections use the new allow-list");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="deny",stage="address"}"#),
        1.0
    );
    for _ in 0..3 {
        running
            .ping()
            .await
            .expect("the running session is untouched by the reload");
    }
    let fresh = world.connect(None).await.expect("127.0.0.1 still allowed");
    fresh.ping().await.expect("ping");
    assert!(
        world.gateway.effective_config().contains("generation 2"),
        "{}",
        world.gateway.effective_config()
    );
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_old_config_stays() {
    let world = World::start_with(world_options()).await;
    let path = world.dir.path().join("gateway.toml");
    std::fs::write(&path, "gateway_id = \"gw\"\nnot_a_field = 1\n").expect("write");
    assert!(!world.gateway.reload_file(&path), "broken file refused");
    assert_eq!(world.metric(RELOADS_ERROR), 1.0);
    assert_eq!(world.metric(RELOADS_OK), 0.0);

    // Valid TOML but an invalid value: refused too.
    let mut config = world.gateway.config();
    config.timeouts.handshake_ms = 0;
    let path = write_config(&world, &config);
    assert!(!world.gateway.reload_file(&path));
    assert_eq!(world.metric(RELOADS_ERROR), 2.0);

    let session = world
        .connect(Some("127.0.0.3"))
        .await
        .expect("the old config is still in force");
    session.ping().await.expect("ping");
    assert!(world.gateway.effective_config().contains("generation 1"));
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_refused() {
    let world = World::start_with(world_options()).await;
    let mut config = world.gateway.config();
    config.listeners[0].address = "127.0.0.1:1".parse().expect("addr");
    let path = write_config(&world, &config);
    assert!(!world.gateway.reload_file(&path));
    assert_eq!(world.metric(RELOADS_ERROR), 1.0);
    let session = world.connect(None).await.expect("still serving");
    session.ping().await.expect("ping");
}

#[tokio::test]
async fn a_reload_can_move_a_pool_to_other_members() {
    let world = World::start_with(Options {
        hsm_nodes: 3,
        ..world_options()
    })
    .await;
    let mut config = world.gateway.config();
    let only = world.hsms[2].pool_addr;
    config.pools[0].members = vec![only];
    let path = write_config(&world, &config);
    assert!(world.gateway.reload_file(&path));
    for _ in 0..4 {
        let session = world.connect(None).await.expect("granted");
        assert_eq!(session.hsm_id(), "hsm-3", "only the new member serves");
        session.close().await;
    }
}

#[tokio::test]
async fn a_reload_keeps_a_dead_member_out_of_rotation() {
    let mut world = World::start_with(world_options()).await;
    world.hsms[0].server.stop().await;
    let dead = world.hsms[0].pool_addr;
    let healthy = format!(r#"hsmgate_backend_healthy{{member="{dead}",pool="default"}}"#);
    let mut out = false;
    for _ in 0..100 {
        let text = world.gateway.metrics().render();
        if text.contains(&format!("{healthy} 0")) {
            out = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(out, "the health checks took the stopped node out");
    let failed_connects = format!(
        r#"hsmgate_backend_connect_total{{member="{dead}",pool="default",result="error"}}"#
    );
    let before = world.metric(&failed_connects);

    let mut config = world.gateway.config();
    config.timeouts.idle_ms += 1;
    let path = write_config(&world, &config);
    assert!(world.gateway.reload_file(&path));
    for _ in 0..6 {
        let session = world.connect(None).await.expect("granted");
        assert_ne!(
            session.hsm_id(),
            "hsm-1",
            "the dead node stays out after the reload"
        );
        session.ping().await.expect("ping");
        session.close().await;
    }
    assert_eq!(
        world.metric(&failed_connects),
        before,
        "no session was sent to the dead node"
    );
}

#[tokio::test]
async fn a_reload_that_removes_a_member_drops_its_series() {
    let world = World::start_with(Options {
        hsm_nodes: 3,
        ..world_options()
    })
    .await;
    let removed = world.hsms[0].pool_addr;
    let label = format!(r#"member="{removed}""#);
    // A session per member puts every member in the connect counter too.
    for _ in 0..3 {
        world.connect(None).await.expect("granted").close().await;
    }
    let series_of_removed = || {
        world
            .gateway
            .metrics()
            .render()
            .lines()
            .filter(|line| line.contains(&label))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut seen = false;
    for _ in 0..100 {
        if series_of_removed()
            .iter()
            .any(|l| l.starts_with("hsmgate_backend_healthy"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen, "the member is labelled before the reload");

    let mut config = world.gateway.config();
    config.pools[0].members = vec![world.hsms[1].pool_addr, world.hsms[2].pool_addr];
    let path = write_config(&world, &config);
    assert!(world.gateway.reload_file(&path));
    let mut gone = false;
    for _ in 0..100 {
        if series_of_removed().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "a removed member's series must go, not keep its last value: {:?}",
        series_of_removed()
    );
    let kept = format!(
        r#"hsmgate_backend_healthy{{member="{}",pool="default"}} 1"#,
        world.hsms[1].pool_addr
    );
    assert!(world.gateway.metrics().render().contains(&kept));
}

/// The gateway's next key, trusted by the nodes from the start (step 2 of
/// the rotation procedure, OPERATIONS.md §3.3).
static NEXT_GATEWAY_KEY: std::sync::OnceLock<hsmgate_wire::StaticKeypair> =
    std::sync::OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_gateway_key_without_a_failed_session() {
    let next = NEXT_GATEWAY_KEY
        .get_or_init(|| hsmgate_wire::StaticKeypair::generate().expect("key pair"))
        .clone();
    let world = World::start_with(Options {
        hsm_tweak: |c| {
            let next = NEXT_GATEWAY_KEY.get().expect("set before the world starts");
            c.gateways.trusted_keys.push(next.public().to_text());
        },
        // One client opens sessions back to back here.
        tweak: |c| c.limits.handshakes_per_second_per_source = 0,
        ..world_options()
    })
    .await;
    let old = world.gateway.public_key();
    // Step 1: clients pin both keys.
    let mut both = world.client_config();
    both.gateway_keys = vec![old, next.public()];
    let mut only_new = world.client_config();
    only_new.gateway_keys = vec![next.public()];
    assert!(
        world
            .connect_with(&only_new, &Default::default())
            .await
            .is_err()
    );
    let up_before = world.metric(r#"hsmgate_grant_channel_events_total{result="up"}"#);

    // Sessions open and run without a pause while the key changes.
    let world = std::sync::Arc::new(world);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let world = std::sync::Arc::clone(&world);
        let stop = std::sync::Arc::clone(&stop);
        let both = both.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match world.connect_with(&both, &Default::default()).await {
                    Ok(session) => match session.ping().await {
                        Ok(_) => {
                            ok += 1;
                            session.close().await;
                        }
                        Err(e) => failed.push(e.to_string()),
                    },
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let running = world
        .connect_with(&both, &Default::default())
        .await
        .expect("a session started under the old key");

    // Step 3: the gateway's key_file names the new key; SIGHUP.
    let next_path = world.dir.path().join("gateway-next.key");
    std::fs::write(&next_path, next.to_file_text()).expect("write key");
    std::fs::set_permissions(&next_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut config = world.gateway.config();
    config.key_file = next_path;
    let path = write_config(&world, &config);
    assert!(
        world.gateway.reload_file(&path),
        "the reload with a new key"
    );
    assert_eq!(world.gateway.public_key(), next.public());

    // Every node gets a control channel opened with the new key.
    let channels_renewed = async {
        loop {
            let up = world.metric(r#"hsmgate_grant_channel_events_total{result="up"}"#);
            if up >= up_before + 3.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(hsmgate_tests::PATIENCE, channels_renewed)
        .await
        .expect("control channels renewed with the new key");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load task");
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert!(ok > 10, "{ok} sessions only");
    running
        .ping()
        .await
        .expect("the session started under the old key runs on");

    // Step 4: clients that pin only the new key are served; the old key is gone.
    let session = world
        .connect_with(&only_new, &Default::default())
        .await
        .expect("the new key is in force");
    session.ping().await.expect("ping");
    let mut only_old = world.client_config();
    only_old.gateway_keys = vec![old];
    let err = world
        .connect_with(&only_old, &Default::default())
        .await
        .expect_err("the old key is retired");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains(&next.public().to_text()), "{err}");
}

//! Reloading the gateway's config (what SIGHUP does): a valid file takes
//! effect for new connections, running sessions keep the config they started
//! with, and an invalid file changes nothing.

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

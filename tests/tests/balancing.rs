//! Balancing policies through the real gateway: where sessions land, with
//! deterministic sequences (no timing).

use std::collections::BTreeMap;

use hsmgate::balance::Policy;
use hsmgate_tests::{Options, World};

fn options(tweak: fn(&mut hsmgate::GatewayConfig)) -> Options {
    Options {
        tweak,
        ..Options::default()
    }
}

/// Open `n` sessions one after the other, closing each; count per HSM node.
async fn sequential(world: &World, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let session = world.connect(None).await.expect("granted");
        session.ping().await.expect("ping");
        *counts.entry(session.hsm_id().to_owned()).or_insert(0) += 1;
        session.close().await;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let world = World::start().await;
    assert_eq!(
        sequential(&world, 9).await,
        counts(&[("hsm-1", 3), ("hsm-2", 3), ("hsm-3", 3)])
    );
}

#[tokio::test]
async fn weights_skew_round_robin_and_zero_drains() {
    let world = World::start_with(options(|c| c.pools[0].weights = vec![1, 2, 0])).await;
    assert_eq!(
        sequential(&world, 9).await,
        counts(&[("hsm-1", 3), ("hsm-2", 6)])
    );
}

#[tokio::test]
async fn least_connections_fills_the_idle_member() {
    let world = World::start_with(options(|c| c.pools[0].policy = Policy::LeastConnections)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = world.connect(None).await.expect("granted");
        s.ping().await.expect("ping");
        held.push(s);
    }
    let mut ids: Vec<String> = held.iter().map(|s| s.hsm_id().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["hsm-1", "hsm-2", "hsm-3"], "one open session each");
    // Free hsm-2: the next session goes there, the least loaded.
    let index = held
        .iter()
        .position(|s| s.hsm_id() == "hsm-2")
        .expect("a session on hsm-2");
    held.remove(index).close().await;
    let mut landed = None;
    // The gateway sees the close asynchronously: bounded retries.
    for _ in 0..50 {
        let s = world.connect(None).await.expect("granted");
        if s.hsm_id() == "hsm-2" {
            landed = Some(s);
            break;
        }
        s.close().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(landed.is_some(), "the freed member got the next session");
}

#[tokio::test]
async fn power_of_two_with_two_members_picks_the_less_loaded() {
    let world = World::start_with(Options {
        hsm_nodes: 2,
        tweak: |c| c.pools[0].policy = Policy::PowerOfTwo,
        ..Options::default()
    })
    .await;
    let first = world.connect(None).await.expect("granted");
    first.ping().await.expect("ping");
    for _ in 0..5 {
        let s = world.connect(None).await.expect("granted");
        assert_ne!(s.hsm_id(), first.hsm_id(), "the busy member is avoided");
        s.close().await;
        // Wait (bounded) until the gateway has seen this session end, so
        // that only `first` counts as active again.
        for _ in 0..100 {
            if world.metric(r#"hsmgate_sessions_active{pool="default"}"#) == 1.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn consistent_hash_keeps_a_client_on_one_member_and_moves_it_only_when_down() {
    let mut world =
        World::start_with(options(|c| c.pools[0].policy = Policy::ConsistentHash)).await;
    let home = sequential(&world, 6).await;
    assert_eq!(home.len(), 1, "always the same member: {home:?}");
    let (home_id, _) = home.into_iter().next().expect("one member");
    let index = world
        .hsms
        .iter()
        .position(|h| h.id == home_id)
        .expect("known member");
    world.hsms[index].server.stop().await;
    // Connect failures eject the member at once; health checks confirm.
    let moved = sequential(&world, 4).await;
    assert_eq!(
        moved.len(),
        1,
        "the client moves to one other member: {moved:?}"
    );
    assert!(!moved.contains_key(&home_id));
    world.restart_hsm(index).await;
    let mut back = false;
    for _ in 0..100 {
        let now = sequential(&world, 1).await;
        if now.contains_key(&home_id) {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the client returns home once its member is healthy again"
    );
}

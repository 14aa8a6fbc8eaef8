//! Forwarding between real loopback sockets: both data paths, byte-exact in
//! both directions, half-close propagated, counts exact.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Two connected socket pairs: (client app, gateway's client side) and
/// (gateway's HSM side, HSM app).
async fn sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = TcpStream::connect(l1.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (gw_client, _) = l1.accept().await.expect("accept");
    let l2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gw_hsm = TcpStream::connect(l2.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (hsm, _) = l2.accept().await.expect("accept");
    (app, gw_client, gw_hsm, hsm)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Send `up` from the app and `down` from the HSM, each side closing its
/// write half after sending, and check what each side received.
async fn exchange(config: ForwardingConfig, up: usize, down: usize) -> Forwarded {
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let held = b"held-".to_vec();
    let up_data = pattern(up, 1);
    let down_data = pattern(down, 7);
    let gateway = tokio::spawn(async move {
        forward(&gw_client, &gw_hsm, &held, &config, Duration::from_secs(30)).await
    });
    let app_side = {
        let up_data = up_data.clone();
        let down_data = down_data.clone();
        tokio::spawn(async move {
            let (mut r, mut w) = app.split();
            let send = async {
                w.write_all(&up_data).await.expect("app write");
                w.shutdown().await.expect("app shutdown");
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.expect("app read");
            assert!(
                got == down_data,
                "app received {} bytes, expected {}",
                got.len(),
                down_data.len()
            );
        })
    };
    let hsm_side = tokio::spawn(async move {
        let (mut r, mut w) = hsm.split();
        let send = async {
            w.write_all(&down_data).await.expect("hsm write");
            w.shutdown().await.expect("hsm shutdown");
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let ((), n) = tokio::join!(send, recv);
        n.expect("hsm read");
        let mut expected = b"held-".to_vec();
        expected.extend_from_slice(&up_data);
        assert!(
            got == expected,
            "hsm received {} bytes, expected {}",
            got.len(),
            expected.len()
        );
    });
    let bound = Duration::from_secs(60);
    tokio::time::timeout(bound, app_side)
        .await
        .expect("app in time")
        .expect("app side");
    tokio::time::timeout(bound, hsm_side)
        .await
        .expect("hsm in time")
        .expect("hsm side");
    tokio::time::timeout(bound, gateway)
        .await
        .expect("gateway in time")
        .expect("gateway task")
}

fn config(mode: ForwardMode) -> ForwardingConfig {
    ForwardingConfig {
        mode,
        ..ForwardingConfig::default()
    }
}

#[tokio::test]
async fn both_paths_move_every_size_exactly_both_ways() {
    for mode in [ForwardMode::Splice, ForwardMode::Copy] {
        for (up, down) in [
            (1, 0),
            (0, 1),
            (1000, 3),
            (70_000, 1 << 20),
            (4 << 20, 4 << 20),
        ] {
            let f = exchange(config(mode), up, down).await;
            assert!(
                matches!(f.end, End::Closed),
                "{mode:?} {up}/{down}: {:?}",
                f.end
            );
            assert_eq!(f.client_to_hsm, 5 + up as u64, "{mode:?} {up}/{down}");
            assert_eq!(f.hsm_to_client, down as u64, "{mode:?} {up}/{down}");
            let expected = match mode {
                ForwardMode::Splice => DataPath::Splice,
                ForwardMode::Copy => DataPath::Copy,
            };
            assert_eq!(f.path, expected);
        }
    }
}

#[tokio::test]
async fn half_close_lets_the_other_direction_finish() {
    // The app closes its sending side first; the HSM keeps sending after
    // seeing end of stream, and the app still gets everything.
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let gateway = tokio::spawn(async move {
        forward(
            &gw_client,
            &gw_hsm,
            b"",
            &ForwardingConfig::default(),
            Duration::from_secs(30),
        )
        .await
    });
    app.write_all(b"request").await.expect("write");
    app.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    hsm.read_to_end(&mut got)
        .await
        .expect("hsm sees end of stream");
    assert_eq!(got, b"request");
    hsm.write_all(b"late answer")
        .await
        .expect("write after peer's FIN");
    hsm.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    app.read_to_end(&mut answer).await.expect("read");
    assert_eq!(answer, b"late answer");
    let f = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("in time")
        .expect("task");
    assert!(matches!(f.end, End::Closed), "{:?}", f.end);
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    let (mut app, gw_client, gw_hsm, _hsm) = sockets().await;
    let f = forward(
        &gw_client,
        &gw_hsm,
        b"",
        &ForwardingConfig::default(),
        Duration::from_millis(200),
    )
    .await;
    assert!(matches!(f.end, End::Idle), "{:?}", f.end);
    drop((gw_client, gw_hsm));
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), app.read(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(n, 0, "the client sees the close");
}

#[tokio::test]
async fn a_reset_on_one_side_ends_the_session() {
    let (app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let gateway = tokio::spawn(async move {
        forward(
            &gw_client,
            &gw_hsm,
            b"",
            &ForwardingConfig::default(),
            Duration::from_secs(30),
        )
        .await
    });
    // Linger 0 turns close into a reset.
    socket2::SockRef::from(&app)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(app);
    let f = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("in time")
        .expect("task");
    assert!(matches!(f.end, End::Failed(Side::Client, _)), "{:?}", f.end);
    let mut rest = Vec::new();
    // The HSM side is closed by the gateway, not left hanging.
    let _ = tokio::time::timeout(Duration::from_secs(10), hsm.read_to_end(&mut rest))
        .await
        .expect("hsm side closed in time");
}

//! Forwarding between real loopback sockets: both data paths, byte-exact in
//! both directions, half-close propagated, counts exact.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::spliced::SMALL_READ;
use super::*;

/// Two connected socket pairs: (client app, gateway's client side) and
/// (gateway's HSM side, HSM app).
pub(super) async fn sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
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

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(super) fn options(splice: bool) -> Options {
    Options {
        pipes: splice.then(|| std::sync::Arc::new(PipePool::new(64 * 1024, 16))),
        copy_buffer: 16 * 1024,
        idle: Duration::from_secs(30),
        max_lifetime: None,
    }
}

/// Never completes: no external stop.
pub(super) async fn no_stop() -> Stop {
    std::future::pending().await
}

/// Forward with no stop from outside.
async fn forward_unstopped(
    client: &TcpStream,
    hsm: &TcpStream,
    preamble: &[u8],
    held: &[u8],
    opts: &Options,
) -> Forwarded {
    let first = First::new(Some(preamble.to_vec()), held);
    forward(client, hsm, first, opts, std::pin::pin!(no_stop())).await
}

/// Send `up` from the app and `down` from the HSM, each side closing its
/// write half after sending, and check what each side received: the HSM
/// gets the gateway's preamble, then the held bytes, then the app's.
async fn exchange(opts: Options, up: usize, down: usize) -> Forwarded {
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let held = b"held-".to_vec();
    let up_data = pattern(up, 1);
    let down_data = pattern(down, 7);
    let gateway = tokio::spawn(async move {
        forward_unstopped(&gw_client, &gw_hsm, b"grant-", &held, &opts).await
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
        let mut expected = b"grant-held-".to_vec();
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

#[tokio::test]
async fn both_paths_move_every_size_exactly_both_ways() {
    for splice in [true, false] {
        for (up, down) in [
            (1, 0),
            (0, 1),
            (1000, 3),
            (70_000, 1 << 20),
            (4 << 20, 4 << 20),
        ] {
            let opts = options(splice);
            let f = exchange(opts.clone(), up, down).await;
            assert!(
                matches!(f.end, End::Closed),
                "splice={splice} {up}/{down}: {:?}",
                f.end
            );
            assert_eq!(
                f.client_to_hsm,
                5 + up as u64,
                "splice={splice} {up}/{down}"
            );
            assert_eq!(f.hsm_to_client, down as u64, "splice={splice} {up}/{down}");
            let expected = if splice {
                DataPath::Splice
            } else {
                DataPath::Copy
            };
            assert_eq!(f.path, expected);
            if let Some(pool) = &opts.pipes {
                // Bursts that fit the small-read buffer take no pipe; a
                // direction with more takes one. All come back, empty.
                let big = usize::from(up + 5 > SMALL_READ) + usize::from(down > SMALL_READ);
                assert!(
                    pool.created() as usize <= 2 && (big == 0 || pool.created() >= 1),
                    "{up}/{down}: {} pipes",
                    pool.created()
                );
                assert_eq!(pool.idle() as u64, pool.created());
            }
        }
    }
}

/// Forward between the gateway's two sockets on a task of its own until
/// the returned sender fires (then the session ends as revoked).
fn forward_until_stopped(
    gw_client: TcpStream,
    gw_hsm: TcpStream,
    opts: Options,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Forwarded>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
            Stop::Revoked("test over".to_owned())
        };
        forward(
            &gw_client,
            &gw_hsm,
            First::default(),
            &opts,
            std::pin::pin!(stop),
        )
        .await
    });
    (stop_tx, gateway)
}

#[tokio::test]
async fn an_idle_session_holds_no_pipe() {
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let opts = options(true);
    let pool = opts.pipes.clone().expect("pool");
    let (stop_tx, gateway) = forward_until_stopped(gw_client, gw_hsm, opts);
    // Bursts larger than the small-read buffer: both directions splice.
    let burst = pattern(4 * SMALL_READ, 3);
    app.write_all(&burst).await.expect("write");
    let mut buf = vec![0u8; burst.len()];
    hsm.read_exact(&mut buf).await.expect("read");
    assert_eq!(buf, burst);
    hsm.write_all(&burst).await.expect("write");
    app.read_exact(&mut buf).await.expect("read");
    assert_eq!(buf, burst);
    // Quiet now: every pipe taken is back in the pool.
    let mut all_back = false;
    for _ in 0..100 {
        if pool.created() > 0 && pool.idle() as u64 == pool.created() {
            all_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(all_back, "created {} idle {}", pool.created(), pool.idle());
    let _ = stop_tx.send(());
    let f = gateway.await.expect("task");
    assert!(
        matches!(&f.end, End::Stopped(Stop::Revoked(r)) if r == "test over"),
        "{:?}",
        f.end
    );
}

#[tokio::test]
async fn the_lifetime_limit_ends_a_busy_session() {
    let (_app, gw_client, gw_hsm, _hsm) = sockets().await;
    let opts = Options {
        max_lifetime: Some(Duration::from_millis(100)),
        ..options(true)
    };
    let f = forward_unstopped(&gw_client, &gw_hsm, b"", b"", &opts).await;
    assert!(matches!(f.end, End::Lifetime), "{:?}", f.end);
}

#[tokio::test]
async fn half_close_lets_the_other_direction_finish() {
    // The app closes its sending side first; the HSM keeps sending after
    // seeing end of stream, and the app still gets everything.
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let gateway = tokio::spawn(async move {
        forward_unstopped(&gw_client, &gw_hsm, b"", b"", &options(true)).await
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
    let opts = Options {
        idle: Duration::from_millis(200),
        ..options(true)
    };
    let f = forward_unstopped(&gw_client, &gw_hsm, b"", b"", &opts).await;
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
        forward_unstopped(&gw_client, &gw_hsm, b"", b"", &options(true)).await
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

/// HSM-sized requests and answers go through the small-read buffer: a
/// thousand round trips take no splice pipe.
#[tokio::test]
async fn small_round_trips_take_no_pipe() {
    let (mut app, gw_client, gw_hsm, mut hsm) = sockets().await;
    let opts = options(true);
    let pool = opts.pipes.clone().expect("pool");
    let (stop_tx, gateway) = forward_until_stopped(gw_client, gw_hsm, opts);
    let request = pattern(200, 1);
    let answer = pattern(1000, 2);
    let mut got_request = vec![0u8; request.len()];
    let mut got_answer = vec![0u8; answer.len()];
    for _ in 0..1000 {
        app.write_all(&request).await.expect("write");
        hsm.read_exact(&mut got_request).await.expect("read");
        assert_eq!(got_request, request);
        hsm.write_all(&answer).await.expect("write");
        app.read_exact(&mut got_answer).await.expect("read");
        assert_eq!(got_answer, answer);
    }
    assert_eq!(pool.created(), 0, "a small round trip took a pipe");
    let _ = stop_tx.send(());
    let f = gateway.await.expect("task");
    assert_eq!(f.client_to_hsm, 200 * 1000);
    assert_eq!(f.hsm_to_client, 1000 * 1000);
}

//! Micro-benchmarks of the protocol crate: the frame codec and both
//! handshakes run in memory, both sides in one thread (no I/O), so each
//! number is the CPU cost a gateway, client or HSM node pays per message
//! or per handshake.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hsmgate_wire::StaticKeypair;
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::inner::{ClientInner, HsmInner};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake, Decision, GatewayHandshake};

fn body(bytes: &[u8], max: usize) -> &[u8] {
    frame::decode(bytes, max)
        .expect("valid frame")
        .expect("whole frame")
        .0
        .body
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [64usize, 16 * 1024] {
        let encoded = frame::encode(FrameType::InnerData, &vec![0x5a; size]).expect("encode");
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, bytes| {
            b.iter(|| frame::decode(black_box(bytes), MAX_FRAME_LEN))
        });
        let payload = vec![0xa5; size];
        let mut out = Vec::with_capacity(size + frame::HEADER_LEN);
        g.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                frame::encode_into(&mut out, FrameType::InnerData, black_box(payload))
            })
        });
    }
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let gateway = StaticKeypair::generate().expect("key");
    let client = StaticKeypair::generate().expect("key");
    let partition = StaticKeypair::generate().expect("key");
    let hsm = StaticKeypair::generate().expect("key");
    let request = AccessRequest {
        client_id: "bench-client".into(),
        tenant: "bench".into(),
        partition: "bench".into(),
    };
    let mut g = c.benchmark_group("handshake");
    // Hello → Challenge → Credentials → Decision, both sides.
    g.bench_function("outer_both_sides", |b| {
        b.iter(|| {
            let (mut cl, hello) =
                ClientHandshake::start(&client, gateway.public(), request.clone()).expect("hello");
            let (mut gw, challenge) =
                GatewayHandshake::respond(&gateway, "bench-gw", body(&hello, MAX_OUTER_FRAME_LEN))
                    .expect("challenge");
            let (creds, _) = cl
                .read_challenge(body(&challenge, MAX_OUTER_FRAME_LEN))
                .expect("credentials");
            let who = gw
                .read_credentials(body(&creds, MAX_OUTER_FRAME_LEN))
                .expect("verified");
            let decision = gw.decision_frame(Decision::GRANTED).expect("decision");
            let d = cl
                .read_decision(body(&decision, MAX_OUTER_FRAME_LEN))
                .expect("granted");
            black_box((who, d))
        })
    });
    // The first half of the gateway side (read Hello, write Challenge: three
    // of its four DH operations), which a flood of Hellos makes it pay.
    g.bench_function("outer_gateway_hello_to_challenge", |b| {
        b.iter_batched(
            || {
                let (mut cl, hello) =
                    ClientHandshake::start(&client, gateway.public(), request.clone())
                        .expect("hello");
                // A throwaway gateway run gives the client a challenge to answer;
                // the measured gateway below starts from the same Hello.
                let (_, challenge) = GatewayHandshake::respond(
                    &gateway,
                    "bench-gw",
                    body(&hello, MAX_OUTER_FRAME_LEN),
                )
                .expect("challenge");
                let _ = cl.read_challenge(body(&challenge, MAX_OUTER_FRAME_LEN));
                hello
            },
            |hello| {
                let (gw, challenge) = GatewayHandshake::respond(
                    &gateway,
                    "bench-gw",
                    body(&hello, MAX_OUTER_FRAME_LEN),
                )
                .expect("challenge");
                black_box((gw, challenge))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // InnerHello → InnerChallenge → InnerFinish, both sides.
    g.bench_function("inner_both_sides", |b| {
        b.iter(|| {
            let (cl, hello) = ClientInner::start(&partition, "bench").expect("hello");
            let (node, challenge) =
                HsmInner::respond(&hsm, "hsm-1", body(&hello, MAX_FRAME_LEN)).expect("challenge");
            let (finish, _, channel) = cl
                .finish(body(&challenge, MAX_FRAME_LEN), |k| *k == hsm.public())
                .expect("finish");
            let peer = node.finish(body(&finish, MAX_FRAME_LEN)).expect("peer");
            black_box((peer, channel))
        })
    });
    g.finish();
}

/// The gateway–node grant (PROTOCOL.md §8.3): what each new session adds on
/// the gateway (seal) and on the node (open, replay check, expiry), against
/// a per-session handshake it replaces (`handshake/inner_both_sides` is the
/// cost of one XX handshake on both sides).
fn grants(c: &mut Criterion) {
    use hsmgate_wire::grant::{Grant, GrantKey, SESSION_ID_LEN, SealedGrant};
    let key = GrantKey::new(7, &[0x4b; 32]);
    let grant = Grant {
        session_id: [0x53; SESSION_ID_LEN],
        expires_at: 1_800_000_000,
        source: "192.0.2.10:40000".parse().expect("addr"),
        client_key: StaticKeypair::generate().expect("key").public(),
        gateway_id: "bench-gw".into(),
        client_id: "bench-client".into(),
        tenant: "bench".into(),
        partition: "bench".into(),
    };
    let mut g = c.benchmark_group("grant");
    let mut counter = 0u64;
    g.bench_function("seal", |b| {
        b.iter(|| {
            counter += 1;
            black_box(key.seal(counter, black_box(&grant)).expect("seal"))
        })
    });
    let trust = std::sync::Arc::new(hsmgate_hsm::GatewayTrust::of([grant.client_key]));
    let (_registration, key_id, secret) = trust.register(grant.client_key);
    let node_key = GrantKey::new(key_id, &secret);
    let mut next = 0u64;
    g.bench_function("node_verify", |b| {
        b.iter_batched(
            || {
                next += 1;
                node_key.seal(next, &grant).expect("seal")
            },
            |frame| {
                let body = &frame[3..];
                black_box(
                    trust
                        .verify(
                            body,
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                        )
                        .expect("verified"),
                )
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("open_only", |b| {
        let frame = key.seal(1, &grant).expect("seal");
        b.iter(|| {
            black_box(
                key.open(&SealedGrant::parse(&frame[3..]).expect("parse"))
                    .expect("open"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, frames, handshakes, grants);
criterion_main!(benches);

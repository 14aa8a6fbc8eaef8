//! The worked example of docs/PROTOCOL.md §9: a full outer handshake, the
//! Decision, the inner handshake and one ping request/response, and between
//! gateway and HSM node the control channel, its grant key and the Grant
//! that opens the session, with fixed static AND ephemeral keys, printed
//! frame by frame in hex.
//!
//! The wire crate's state machines draw their ephemeral keys from the
//! operating system, so this example drives `snow` directly with fixed
//! ephemerals and rebuilds every byte layout by hand (prologue, payloads,
//! frame headers) from the specification. It then cross-checks each layer
//! against the wire crate itself, in both directions:
//!
//! - the wire crate's gateway / HSM state machines accept the hand-built
//!   client frames (Hello, Credentials, InnerHello, InnerFinish, InnerData);
//! - the wire crate's client state machines complete a handshake against the
//!   hand-built gateway / HSM side (Challenge, Decision, InnerChallenge).
//!
//! So the printed transcript is the real protocol, not a lookalike.
//!
//! Run: `cargo run -p hsmgate-wire --example transcript`

use hsmgate_wire::frame::{
    self, FrameType, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN, MAX_OUTER_FRAME_LEN,
};
use hsmgate_wire::inner::{ClientInner, HsmInner};
use hsmgate_wire::ops::{Reply, Request, Response};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake, Decision, GatewayHandshake};
use hsmgate_wire::{Code, NOISE_PARAMS, PublicKey, StaticKeypair};

// Fixed private keys. Every byte of the transcript follows from these.
const GATEWAY_STATIC: [u8; 32] = [0x47; 32]; // 'G'
const CLIENT_STATIC: [u8; 32] = [0x43; 32]; // 'C': the client's service key
const PARTITION_STATIC: [u8; 32] = [0x50; 32]; // 'P': the client's partition key
const HSM_STATIC: [u8; 32] = [0x48; 32]; // 'H'
const CLIENT_OUTER_E: [u8; 32] = [0x63; 32]; // 'c'
const GATEWAY_OUTER_E: [u8; 32] = [0x67; 32]; // 'g'
const CLIENT_INNER_E: [u8; 32] = [0x70; 32]; // 'p'
const HSM_INNER_E: [u8; 32] = [0x68; 32]; // 'h'
const GATEWAY_CONTROL_E: [u8; 32] = [0x6b; 32]; // 'k'
const HSM_CONTROL_E: [u8; 32] = [0x6e; 32]; // 'n'

// The control channel's grant key and the session's grant (§8.3).
const GRANT_KEY_ID: u64 = 0x0102_0304_0506_0708;
const GRANT_KEY: [u8; 32] = [0x4b; 32]; // 'K'
const GRANT_COUNTER: u64 = 1;
const SESSION_ID: [u8; 16] = [0x53; 16]; // 'S'
const EXPIRES_AT: u64 = 1_800_000_000;
const SOURCE: &str = "192.0.2.10:40000";

const GATEWAY_ID: &str = "gw-1";
const HSM_ID: &str = "hsm-1";
const CLIENT_ID: &str = "app-1";
const TENANT: &str = "acme";
const PARTITION: &str = "p1";
const VERSION: u8 = 1;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let gateway = StaticKeypair::from_private(GATEWAY_STATIC)?;
    let client = StaticKeypair::from_private(CLIENT_STATIC)?;
    let partition_key = StaticKeypair::from_private(PARTITION_STATIC)?;
    let hsm = StaticKeypair::from_private(HSM_STATIC)?;

    println!("# hsmgate worked example ({NOISE_PARAMS}, protocol version {VERSION})");
    println!();
    println!("## Keys (private -> public)");
    for (name, private) in [
        ("gateway static", GATEWAY_STATIC),
        ("client service static", CLIENT_STATIC),
        ("client partition static", PARTITION_STATIC),
        ("HSM static", HSM_STATIC),
        ("client outer ephemeral", CLIENT_OUTER_E),
        ("gateway outer ephemeral", GATEWAY_OUTER_E),
        ("client inner ephemeral", CLIENT_INNER_E),
        ("HSM inner ephemeral", HSM_INNER_E),
        ("gateway control ephemeral", GATEWAY_CONTROL_E),
        ("HSM control ephemeral", HSM_CONTROL_E),
    ] {
        let public = StaticKeypair::from_private(private)?.public();
        println!("{name:<25} {} -> {}", hex::encode(private), public);
    }

    // ------------------------------------------------------------ outer layer
    let outer_prologue = prologue(b"hsmgate-outer", b"HSMG", VERSION, VERSION);
    println!();
    println!("## Outer handshake (client <-> gateway)");
    println!();
    println!("outer prologue ({} bytes):", outer_prologue.len());
    dump("", &outer_prologue);

    let mut c_hs = noise(&client, &outer_prologue, &CLIENT_OUTER_E)?.build_initiator()?;
    let mut g_hs = noise(&gateway, &outer_prologue, &GATEWAY_OUTER_E)?.build_responder()?;

    // Message 1: Hello = "HSMG" min max | e
    let msg1 = write(&mut c_hs, &[])?;
    let hello = frame::encode(
        FrameType::Hello,
        &first_body(b"HSMG", VERSION, VERSION, &msg1),
    )?;
    assert_eq!(read(&mut g_hs, &msg1)?, b"");

    // Message 2: Challenge = e, ee, s, es + {version, gateway id}
    let mut challenge_payload = vec![VERSION];
    put_name(&mut challenge_payload, GATEWAY_ID);
    let msg2 = write(&mut g_hs, &challenge_payload)?;
    let challenge = frame::encode(FrameType::Challenge, &msg2)?;
    assert_eq!(read(&mut c_hs, &msg2)?, challenge_payload);
    // The client checks the pin before it sends anything that identifies it.
    assert_eq!(c_hs.get_remote_static(), Some(&gateway.public().0[..]));

    // Message 3: Credentials = s, se + {version, client id, tenant, partition}
    let mut creds_payload = vec![VERSION];
    put_name(&mut creds_payload, CLIENT_ID);
    put_name(&mut creds_payload, TENANT);
    put_name(&mut creds_payload, PARTITION);
    let msg3 = write(&mut c_hs, &creds_payload)?;
    let credentials = frame::encode(FrameType::Credentials, &msg3)?;
    assert_eq!(read(&mut g_hs, &msg3)?, creds_payload);
    assert_eq!(g_hs.get_remote_static(), Some(&client.public().0[..]));
    assert_eq!(c_hs.get_handshake_hash(), g_hs.get_handshake_hash());
    let outer_hash = c_hs.get_handshake_hash().to_vec();

    // Decision: first transport message gateway -> client, nonce 0.
    let mut c_ts = c_hs.into_transport_mode()?;
    let mut g_ts = g_hs.into_transport_mode()?;
    let decision_plain = [Code::Granted.as_byte(), 0, 0];
    let mut buf = vec![0u8; 64];
    let n = g_ts.write_message(&decision_plain, &mut buf)?;
    let decision = frame::encode(FrameType::Decision, &buf[..n])?;
    let mut out = vec![0u8; 64];
    let m = c_ts.read_message(&buf[..n], &mut out)?;
    assert_eq!(&out[..m], decision_plain);
    // Both sides now drop the outer session.
    drop((c_ts, g_ts));

    // ------------------------------------------------------------ inner layer
    let inner_prologue = prologue(b"hsmgate-inner", b"HSMI", VERSION, VERSION);
    let mut ci_hs = noise(&partition_key, &inner_prologue, &CLIENT_INNER_E)?.build_initiator()?;
    let mut hi_hs = noise(&hsm, &inner_prologue, &HSM_INNER_E)?.build_responder()?;

    let imsg1 = write(&mut ci_hs, &[])?;
    let inner_hello = frame::encode(
        FrameType::InnerHello,
        &first_body(b"HSMI", VERSION, VERSION, &imsg1),
    )?;
    assert_eq!(read(&mut hi_hs, &imsg1)?, b"");

    let mut ichallenge_payload = vec![VERSION];
    put_name(&mut ichallenge_payload, HSM_ID);
    let imsg2 = write(&mut hi_hs, &ichallenge_payload)?;
    let inner_challenge = frame::encode(FrameType::InnerChallenge, &imsg2)?;
    assert_eq!(read(&mut ci_hs, &imsg2)?, ichallenge_payload);
    assert_eq!(ci_hs.get_remote_static(), Some(&hsm.public().0[..]));

    let mut ifinish_payload = vec![VERSION];
    put_name(&mut ifinish_payload, PARTITION);
    let imsg3 = write(&mut ci_hs, &ifinish_payload)?;
    let inner_finish = frame::encode(FrameType::InnerFinish, &imsg3)?;
    assert_eq!(read(&mut hi_hs, &imsg3)?, ifinish_payload);
    assert_eq!(
        hi_hs.get_remote_static(),
        Some(&partition_key.public().0[..])
    );
    let inner_hash = ci_hs.get_handshake_hash().to_vec();

    let mut ci_ts = ci_hs.into_transport_mode()?;
    let mut hi_ts = hi_hs.into_transport_mode()?;

    let request_plain = Request::Ping.encode(1)?;
    let n = ci_ts.write_message(&request_plain, &mut buf)?;
    let request = frame::encode(FrameType::InnerData, &buf[..n])?;
    let m = hi_ts.read_message(&buf[..n], &mut out)?;
    assert_eq!(Request::decode(&out[..m])?, (1, Request::Ping));

    let response_plain = Response {
        id: 1,
        result: Ok(Reply::Pong),
    }
    .encode(VERSION);
    let n = hi_ts.write_message(&response_plain, &mut buf)?;
    let response = frame::encode(FrameType::InnerData, &buf[..n])?;
    let m = ci_ts.read_message(&buf[..n], &mut out)?;
    assert_eq!(
        Response::decode(&out[..m], VERSION)?.result,
        Ok(Reply::Pong)
    );

    // ---------------------------------------------------------------- print
    println!();
    println!("### 1. client -> gateway: Hello ({} bytes)", hello.len());
    header(&hello);
    dump("magic \"HSMG\"", &hello[3..7]);
    dump("offer min, max", &hello[7..9]);
    dump("Noise msg 1: e (client ephemeral public)", &hello[9..41]);
    assert_eq!(hello.len(), 41);

    println!();
    println!(
        "### 2. gateway -> client: Challenge ({} bytes)",
        challenge.len()
    );
    header(&challenge);
    dump("e (gateway ephemeral public)", &challenge[3..35]);
    dump("s (gateway static, encrypted)", &challenge[35..67]);
    dump("  tag of s", &challenge[67..83]);
    dump("payload (encrypted)", &challenge[83..challenge.len() - 16]);
    dump("  tag of payload", &challenge[challenge.len() - 16..]);
    dump(
        "payload plaintext: version, name(gateway id)",
        &challenge_payload,
    );

    println!();
    println!(
        "### 3. client -> gateway: Credentials ({} bytes)",
        credentials.len()
    );
    header(&credentials);
    dump("s (client service static, encrypted)", &credentials[3..35]);
    dump("  tag of s", &credentials[35..51]);
    dump(
        "payload (encrypted)",
        &credentials[51..credentials.len() - 16],
    );
    dump("  tag of payload", &credentials[credentials.len() - 16..]);
    dump(
        "payload plaintext: version, name(client id), name(tenant), name(partition)",
        &creds_payload,
    );
    println!("outer handshake hash h = {}", hex::encode(&outer_hash));
    println!(
        "(the client may append frame 5, InnerHello, to this same write: pipelining, section 4)"
    );

    println!();
    println!(
        "### 4. gateway -> client: Decision ({} bytes)",
        decision.len()
    );
    header(&decision);
    dump("AES-256-GCM ciphertext of the decision", &decision[3..6]);
    dump("  tag", &decision[6..]);
    dump(
        "plaintext: code, retry_after_secs (u16 BE)",
        &decision_plain,
    );

    println!();
    println!("### Inner channel (client <-> HSM node, through the gateway)");
    println!();
    println!("inner prologue ({} bytes):", inner_prologue.len());
    dump("", &inner_prologue);

    println!();
    println!(
        "### 5. client -> HSM: InnerHello ({} bytes)",
        inner_hello.len()
    );
    header(&inner_hello);
    dump("magic \"HSMI\"", &inner_hello[3..7]);
    dump("offer min, max", &inner_hello[7..9]);
    dump(
        "Noise msg 1: e (client inner ephemeral public)",
        &inner_hello[9..],
    );

    println!();
    println!(
        "### 6. HSM -> client: InnerChallenge ({} bytes)",
        inner_challenge.len()
    );
    header(&inner_challenge);
    dump("e (HSM ephemeral public)", &inner_challenge[3..35]);
    dump("s (HSM static, encrypted)", &inner_challenge[35..67]);
    dump("  tag of s", &inner_challenge[67..83]);
    let l = inner_challenge.len();
    dump("payload (encrypted)", &inner_challenge[83..l - 16]);
    dump("  tag of payload", &inner_challenge[l - 16..]);
    dump(
        "payload plaintext: version, name(hsm id)",
        &ichallenge_payload,
    );

    println!();
    println!(
        "### 7. client -> HSM: InnerFinish ({} bytes)",
        inner_finish.len()
    );
    header(&inner_finish);
    dump(
        "s (client partition static, encrypted)",
        &inner_finish[3..35],
    );
    dump("  tag of s", &inner_finish[35..51]);
    let l = inner_finish.len();
    dump("payload (encrypted)", &inner_finish[51..l - 16]);
    dump("  tag of payload", &inner_finish[l - 16..]);
    dump(
        "payload plaintext: version, name(partition)",
        &ifinish_payload,
    );
    println!("inner handshake hash h = {}", hex::encode(&inner_hash));

    println!();
    println!(
        "### 8. client -> HSM: InnerData, ping request ({} bytes)",
        request.len()
    );
    header(&request);
    let l = request.len();
    dump("ciphertext (client->HSM nonce 0)", &request[3..l - 16]);
    dump("  tag", &request[l - 16..]);
    dump("plaintext: id u32, op 0x01 ping", &request_plain);

    println!();
    println!(
        "### 9. HSM -> client: InnerData, pong response ({} bytes)",
        response.len()
    );
    header(&response);
    let l = response.len();
    dump("ciphertext (HSM->client nonce 0)", &response[3..l - 16]);
    dump("  tag", &response[l - 16..]);
    dump(
        "plaintext: id u32, status 0 (ok), reply tag 0x01 pong",
        &response_plain,
    );

    println!();
    println!("### Error frame example: code 3 (over limit)");
    dump("", &frame::error_frame(Code::OverLimit));

    // ------------------------------------------ gateway <-> HSM node (§8)
    gateway_and_node(&gateway, &hsm, &client)?;

    // ------------------------------------------- cross-checks with the crate
    cross_check_gateway_side(&gateway, &client, &hello, &outer_prologue)?;
    cross_check_client_side(&gateway, &client, &outer_prologue)?;
    cross_check_inner(&hsm, &partition_key, &inner_hello, &inner_prologue)?;
    println!();
    println!(
        "cross-check: hsmgate-wire's own state machines accept these frames in both roles: OK"
    );

    // ------------------------------------------------- QUIC mapping (§11)
    quic_mapping(&gateway, &client)?;
    Ok(())
}

/// The outer handshake on the first stream of a QUIC connection, bound to
/// it by a (fixed, for the example) TLS exporter value, and the Open and
/// Answer frames of a further stream; checked against the wire crate.
fn quic_mapping(gateway: &StaticKeypair, client: &StaticKeypair) -> Res<()> {
    use hsmgate_wire::quic::{self, BINDING_LEN};
    // In a real connection: TLS-Exporter("EXPORTER-hsmgate-channel-binding",
    // "", 32) of the connection's TLS 1.3 session.
    const BINDING: [u8; BINDING_LEN] = [0x42; BINDING_LEN]; // 'B'
    let mut bound_prologue = prologue(b"hsmgate-outer", b"HSMG", VERSION, VERSION);
    bound_prologue.extend_from_slice(&BINDING);

    let mut c_hs = noise(client, &bound_prologue, &CLIENT_OUTER_E)?.build_initiator()?;
    let mut g_hs = noise(gateway, &bound_prologue, &GATEWAY_OUTER_E)?.build_responder()?;
    let msg1 = write(&mut c_hs, &[])?;
    let hello = frame::encode(
        FrameType::Hello,
        &first_body(b"HSMG", VERSION, VERSION, &msg1),
    )?;
    assert_eq!(read(&mut g_hs, &msg1)?, b"");
    let mut challenge_payload = vec![VERSION];
    put_name(&mut challenge_payload, GATEWAY_ID);
    let challenge = frame::encode(FrameType::Challenge, &write(&mut g_hs, &challenge_payload)?)?;
    assert_eq!(
        read(&mut c_hs, body(&challenge, MAX_OUTER_FRAME_LEN)?)?,
        challenge_payload
    );
    let mut creds_payload = vec![VERSION];
    put_name(&mut creds_payload, CLIENT_ID);
    put_name(&mut creds_payload, TENANT);
    put_name(&mut creds_payload, PARTITION);
    let credentials = frame::encode(FrameType::Credentials, &write(&mut c_hs, &creds_payload)?)?;
    assert_eq!(
        read(&mut g_hs, body(&credentials, MAX_OUTER_FRAME_LEN)?)?,
        creds_payload
    );
    let bound_hash = c_hs.get_handshake_hash().to_vec();
    let mut g_ts = g_hs.into_transport_mode()?;
    let mut buf = [0u8; 64];
    let n = g_ts.write_message(&[Code::Granted.as_byte(), 0, 0], &mut buf)?;
    let decision = frame::encode(FrameType::Decision, &buf[..n])?;
    let open = quic::open_frame("p2")?;
    let answer = quic::answer_frame(Decision {
        code: Code::Granted,
        retry_after_secs: 0,
    });
    let refused = quic::answer_frame(Decision {
        code: Code::Denied,
        retry_after_secs: 0,
    });

    println!();
    println!("## QUIC mapping (section 11)");
    println!();
    println!("channel binding (the connection's TLS exporter value; fixed here):");
    dump("", &BINDING);
    println!("bound outer prologue ({} bytes):", bound_prologue.len());
    dump("", &bound_prologue);
    println!();
    println!("### First stream: the outer handshake, bound");
    println!("Hello (the same bytes as over TCP: message 1 carries no payload):");
    dump("", &hello);
    println!("Challenge ({} bytes):", challenge.len());
    dump("", &challenge);
    println!("Credentials ({} bytes):", credentials.len());
    dump("", &credentials);
    println!("bound handshake hash h = {}", hex::encode(&bound_hash));
    println!("Decision ({} bytes, granted):", decision.len());
    dump("", &decision);
    println!();
    println!("### A further stream");
    println!("Open, partition \"p2\" ({} bytes):", open.len());
    header(&open);
    dump("name(partition)", &open[3..]);
    println!("Answer, granted ({} bytes):", answer.len());
    header(&answer);
    dump(
        "code, retry_after_secs (u16 BE), in the clear",
        &answer[3..],
    );
    println!("Answer, denied:");
    dump("", &refused);

    // The wire crate's gateway, bound the same, completes the handshake
    // with a hand-built client...
    let (mut real_gw, real_challenge) = GatewayHandshake::respond_bound(
        gateway,
        GATEWAY_ID,
        body(&hello, MAX_OUTER_FRAME_LEN)?,
        &BINDING,
    )?;
    let mut c1 = noise(client, &bound_prologue, &CLIENT_OUTER_E)?.build_initiator()?;
    write(&mut c1, &[])?;
    read(&mut c1, body(&real_challenge, MAX_OUTER_FRAME_LEN)?)?;
    let creds1 = frame::encode(FrameType::Credentials, &write(&mut c1, &creds_payload)?)?;
    let verified = real_gw.read_credentials(body(&creds1, MAX_OUTER_FRAME_LEN)?)?;
    assert_eq!(verified.static_key, client.public());
    // ...and its client reads a hand-built gateway's Challenge only when
    // both bind the same value: another binding fails before the client
    // says who it is.
    let request = AccessRequest {
        client_id: CLIENT_ID.into(),
        tenant: TENANT.into(),
        partition: PARTITION.into(),
    };
    for (binding, ok) in [(BINDING, true), ([0x43; BINDING_LEN], false)] {
        let (mut real_client, hello) =
            ClientHandshake::start_bound(client, &[gateway.public()], request.clone(), &binding)?;
        let mut g = noise(gateway, &bound_prologue, &GATEWAY_OUTER_E)?.build_responder()?;
        read(&mut g, &body(&hello, MAX_OUTER_FRAME_LEN)?[6..])?;
        let challenge = frame::encode(FrameType::Challenge, &write(&mut g, &challenge_payload)?)?;
        let read = real_client.read_challenge(body(&challenge, MAX_OUTER_FRAME_LEN)?);
        assert_eq!(read.is_ok(), ok);
    }
    assert_eq!(quic::read_open(body(&open, MAX_OUTER_FRAME_LEN)?)?, "p2");
    assert_eq!(
        quic::read_answer(body(&answer, MAX_OUTER_FRAME_LEN)?)?.code,
        Code::Granted
    );
    println!();
    println!("cross-check: hsmgate-wire's bound handshake and stream frames agree: OK");
    Ok(())
}

/// The control channel (gateway initiator, node responder), the GrantKey
/// message, and the Grant frame of the session, built by hand and checked
/// against the wire crate's state machines and grant codec.
fn gateway_and_node(
    gateway: &StaticKeypair,
    hsm: &StaticKeypair,
    client: &StaticKeypair,
) -> Res<()> {
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, KeyInit};
    use hsmgate_wire::control::{ControlMessage, GatewayControl, NodeControl};
    use hsmgate_wire::frame::MAX_GATEWAY_NODE_FRAME_LEN;
    use hsmgate_wire::grant::{Grant, GrantKey, SealedGrant};
    const MAX: usize = MAX_GATEWAY_NODE_FRAME_LEN;

    let control_prologue = prologue(b"hsmgate-control", b"HSMC", VERSION, VERSION);
    println!();
    println!("## Gateway <-> HSM node: control channel and grant");
    println!();
    println!("control prologue ({} bytes):", control_prologue.len());
    dump("", &control_prologue);

    let mut g_hs = noise(gateway, &control_prologue, &GATEWAY_CONTROL_E)?.build_initiator()?;
    let mut n_hs = noise(hsm, &control_prologue, &HSM_CONTROL_E)?.build_responder()?;
    let msg1 = write(&mut g_hs, &[])?;
    let hello = frame::encode(
        FrameType::ControlHello,
        &first_body(b"HSMC", VERSION, VERSION, &msg1),
    )?;
    assert_eq!(read(&mut n_hs, &msg1)?, b"");
    let mut challenge_payload = vec![VERSION];
    put_name(&mut challenge_payload, HSM_ID);
    let msg2 = write(&mut n_hs, &challenge_payload)?;
    let challenge = frame::encode(FrameType::ControlChallenge, &msg2)?;
    assert_eq!(read(&mut g_hs, &msg2)?, challenge_payload);
    let mut finish_payload = vec![VERSION];
    put_name(&mut finish_payload, GATEWAY_ID);
    let msg3 = write(&mut g_hs, &finish_payload)?;
    let finish = frame::encode(FrameType::ControlFinish, &msg3)?;
    assert_eq!(read(&mut n_hs, &msg3)?, finish_payload);
    // The node checks the gateway's static key against its trusted keys.
    assert_eq!(n_hs.get_remote_static(), Some(&gateway.public().0[..]));
    let mut g_ts = g_hs.into_transport_mode()?;
    let mut n_ts = n_hs.into_transport_mode()?;

    // The node's first transport message: GrantKey = 0x01 | key_id | key.
    let mut key_plain = vec![0x01];
    key_plain.extend_from_slice(&GRANT_KEY_ID.to_be_bytes());
    key_plain.extend_from_slice(&GRANT_KEY);
    let mut buf = vec![0u8; 128];
    let n = n_ts.write_message(&key_plain, &mut buf)?;
    let grant_key_frame = frame::encode(FrameType::ControlData, &buf[..n])?;
    let mut out = vec![0u8; 128];
    let m = g_ts.read_message(&buf[..n], &mut out)?;
    assert_eq!(&out[..m], &key_plain[..]);

    // The Grant: AES-256-GCM under the grant key, nonce 0^4 | counter,
    // aad = key_id | counter.
    let source: std::net::SocketAddr = SOURCE.parse()?;
    let mut grant_plain = vec![1u8];
    grant_plain.extend_from_slice(&SESSION_ID);
    grant_plain.extend_from_slice(&EXPIRES_AT.to_be_bytes());
    grant_plain.push(4);
    match source.ip() {
        std::net::IpAddr::V4(a) => grant_plain.extend_from_slice(&a.octets()),
        std::net::IpAddr::V6(_) => return Err("the example's source is IPv4".into()),
    }
    grant_plain.extend_from_slice(&source.port().to_be_bytes());
    grant_plain.extend_from_slice(&client.public().0);
    for name in [GATEWAY_ID, CLIENT_ID, TENANT, PARTITION] {
        put_name(&mut grant_plain, name);
    }
    let mut clear = GRANT_KEY_ID.to_be_bytes().to_vec();
    clear.extend_from_slice(&GRANT_COUNTER.to_be_bytes());
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&GRANT_COUNTER.to_be_bytes());
    let cipher = Aes256Gcm::new((&GRANT_KEY).into());
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &grant_plain,
                aad: &clear,
            },
        )
        .map_err(|_| "grant encryption")?;
    let grant_frame = frame::encode(FrameType::Grant, &[clear.clone(), sealed.clone()].concat())?;

    println!();
    println!(
        "### 10. gateway -> HSM: ControlHello ({} bytes)",
        hello.len()
    );
    header(&hello);
    dump("magic \"HSMC\", min, max", &hello[3..9]);
    dump("Noise msg 1: e = gateway control ephemeral", &hello[9..]);
    println!();
    println!(
        "### 11. HSM -> gateway: ControlChallenge ({} bytes)",
        challenge.len()
    );
    header(&challenge);
    dump("e = HSM control ephemeral", &challenge[3..35]);
    dump("s = HSM static, encrypted", &challenge[35..67]);
    dump("  tag", &challenge[67..83]);
    dump("payload, encrypted", &challenge[83..challenge.len() - 16]);
    dump("  tag", &challenge[challenge.len() - 16..]);
    dump("payload plaintext: version, hsm id", &challenge_payload);
    println!();
    println!(
        "### 12. gateway -> HSM: ControlFinish ({} bytes)",
        finish.len()
    );
    header(&finish);
    dump("s = gateway static, encrypted", &finish[3..35]);
    dump("  tag", &finish[35..51]);
    dump("payload, encrypted", &finish[51..finish.len() - 16]);
    dump("  tag", &finish[finish.len() - 16..]);
    dump("payload plaintext: version, gateway id", &finish_payload);
    println!();
    println!(
        "### 13. HSM -> gateway: ControlData, GrantKey ({} bytes)",
        grant_key_frame.len()
    );
    header(&grant_key_frame);
    let l = grant_key_frame.len();
    dump(
        "ciphertext (HSM->gateway nonce 0)",
        &grant_key_frame[3..l - 16],
    );
    dump("  tag", &grant_key_frame[l - 16..]);
    dump("plaintext: tag 0x01, key_id u64, key", &key_plain);
    println!();
    println!(
        "### 14. gateway -> HSM, first bytes of the session's connection: Grant ({} bytes)",
        grant_frame.len()
    );
    header(&grant_frame);
    dump("key_id u64", &grant_frame[3..11]);
    dump("counter u64", &grant_frame[11..19]);
    dump(
        "AES-256-GCM ciphertext",
        &grant_frame[19..grant_frame.len() - 16],
    );
    dump("  tag", &grant_frame[grant_frame.len() - 16..]);
    dump(
        "plaintext: version, session id, expires_at, family 4, address, port, client key, gateway id, client id, tenant, partition",
        &grant_plain,
    );
    println!("(the InnerHello of §9.2 follows it on the same connection)");

    // Cross-check: the wire crate's node accepts the hand-built gateway.
    let (node, real_challenge) = NodeControl::respond(hsm, HSM_ID, body(&hello, MAX)?)?;
    let mut g2 = noise(gateway, &control_prologue, &GATEWAY_CONTROL_E)?.build_initiator()?;
    write(&mut g2, &[])?;
    assert_eq!(
        read(&mut g2, body(&real_challenge, MAX)?)?,
        challenge_payload
    );
    let finish2 = frame::encode(FrameType::ControlFinish, &write(&mut g2, &finish_payload)?)?;
    let (peer, mut node_channel) = node.finish(body(&finish2, MAX)?)?;
    assert_eq!(peer.static_key, gateway.public());
    assert_eq!(peer.gateway_id, GATEWAY_ID);
    let sealed_key = node_channel.seal(&ControlMessage::GrantKey {
        key_id: GRANT_KEY_ID,
        key: zeroize::Zeroizing::new(GRANT_KEY),
    })?;
    let mut g2_ts = g2.into_transport_mode()?;
    let m = g2_ts.read_message(body(&sealed_key, MAX)?, &mut out)?;
    assert_eq!(&out[..m], &key_plain[..]);
    // And the wire crate's gateway against the hand-built node.
    let (real_gateway, real_hello) = GatewayControl::start(gateway)?;
    let mut n2 = noise(
        hsm,
        &prologue(b"hsmgate-control", b"HSMC", VERSION, VERSION),
        &HSM_CONTROL_E,
    )?
    .build_responder()?;
    assert_eq!(read(&mut n2, &body(&real_hello, MAX)?[6..])?, b"");
    let challenge2 = frame::encode(
        FrameType::ControlChallenge,
        &write(&mut n2, &challenge_payload)?,
    )?;
    let hsm_public = hsm.public();
    let (real_finish, info, mut gateway_channel) =
        real_gateway.finish(body(&challenge2, MAX)?, GATEWAY_ID, |k| *k == hsm_public)?;
    assert_eq!(info.hsm_id, HSM_ID);
    assert_eq!(read(&mut n2, body(&real_finish, MAX)?)?, finish_payload);
    let mut n2_ts = n2.into_transport_mode()?;
    let n = n2_ts.write_message(&key_plain, &mut buf)?;
    let got = gateway_channel.open(&buf[..n])?;
    assert_eq!(
        got,
        ControlMessage::GrantKey {
            key_id: GRANT_KEY_ID,
            key: zeroize::Zeroizing::new(GRANT_KEY)
        }
    );
    // The crate seals the same Grant byte for byte, and opens it.
    let key = GrantKey::new(GRANT_KEY_ID, &GRANT_KEY);
    let grant = Grant {
        session_id: SESSION_ID,
        expires_at: EXPIRES_AT,
        source,
        client_key: client.public(),
        gateway_id: GATEWAY_ID.into(),
        client_id: CLIENT_ID.into(),
        tenant: TENANT.into(),
        partition: PARTITION.into(),
    };
    assert_eq!(key.seal(GRANT_COUNTER, &grant)?, grant_frame);
    assert_eq!(
        key.open(&SealedGrant::parse(body(&grant_frame, MAX)?)?)?,
        grant
    );
    Ok(())
}

/// The wire crate's gateway accepts the hand-built client frames.
fn cross_check_gateway_side(
    gateway: &StaticKeypair,
    client: &StaticKeypair,
    hello: &[u8],
    outer_prologue: &[u8],
) -> Res<()> {
    let (mut real_gw, real_challenge) =
        GatewayHandshake::respond(gateway, GATEWAY_ID, body(hello, MAX_OUTER_FRAME_LEN)?)?;
    // A second hand-built client with the same fixed ephemeral: its Hello is
    // the transcript's Hello byte for byte.
    let mut c_hs = noise(client, outer_prologue, &CLIENT_OUTER_E)?.build_initiator()?;
    let msg1 = write(&mut c_hs, &[])?;
    assert_eq!(&hello[9..], &msg1[..]);
    let challenge_body = body(&real_challenge, MAX_OUTER_FRAME_LEN)?;
    let payload = read(&mut c_hs, challenge_body)?;
    let mut expected = vec![VERSION];
    put_name(&mut expected, GATEWAY_ID);
    assert_eq!(payload, expected, "challenge payload layout");
    assert_eq!(c_hs.get_remote_static(), Some(&gateway.public().0[..]));

    let mut creds = vec![VERSION];
    put_name(&mut creds, CLIENT_ID);
    put_name(&mut creds, TENANT);
    put_name(&mut creds, PARTITION);
    let msg3 = write(&mut c_hs, &creds)?;
    let credentials = frame::encode(FrameType::Credentials, &msg3)?;
    let verified = real_gw.read_credentials(body(&credentials, MAX_OUTER_FRAME_LEN)?)?;
    assert_eq!(verified.static_key, client.public());
    assert_eq!(verified.request.client_id, CLIENT_ID);
    assert_eq!(verified.request.tenant, TENANT);
    assert_eq!(verified.request.partition, PARTITION);
    assert_eq!(verified.version, VERSION);

    let refusal = Decision {
        code: Code::Unavailable,
        retry_after_secs: 30,
    };
    let decision = real_gw.decision_frame(refusal)?;
    let mut ts = c_hs.into_transport_mode()?;
    let mut out = [0u8; 64];
    let n = ts.read_message(body(&decision, MAX_OUTER_FRAME_LEN)?, &mut out)?;
    assert_eq!(&out[..n], [Code::Unavailable.as_byte(), 0, 30]);
    Ok(())
}

/// The wire crate's client completes a handshake with a hand-built gateway.
fn cross_check_client_side(
    gateway: &StaticKeypair,
    client: &StaticKeypair,
    outer_prologue: &[u8],
) -> Res<()> {
    let request = AccessRequest {
        client_id: CLIENT_ID.into(),
        tenant: TENANT.into(),
        partition: PARTITION.into(),
    };
    let (mut real_client, hello) = ClientHandshake::start(client, gateway.public(), request)?;
    let hello_body = body(&hello, MAX_OUTER_FRAME_LEN)?;
    assert_eq!(&hello_body[..6], b"HSMG\x01\x01");
    assert_eq!(hello_body.len(), 6 + 32);

    let mut g_hs = noise(gateway, outer_prologue, &GATEWAY_OUTER_E)?.build_responder()?;
    assert_eq!(read(&mut g_hs, &hello_body[6..])?, b"");
    let mut payload = vec![VERSION];
    put_name(&mut payload, GATEWAY_ID);
    let challenge = frame::encode(FrameType::Challenge, &write(&mut g_hs, &payload)?)?;
    let (credentials, info) = real_client.read_challenge(body(&challenge, MAX_OUTER_FRAME_LEN)?)?;
    assert_eq!(info.gateway_id, GATEWAY_ID);
    let creds_payload = read(&mut g_hs, body(&credentials, MAX_OUTER_FRAME_LEN)?)?;
    assert_eq!(creds_payload, b"\x01\x05app-1\x04acme\x02p1");
    let mut ts = g_hs.into_transport_mode()?;
    let mut buf = [0u8; 64];
    let n = ts.write_message(&[Code::OverLimit.as_byte(), 0x01, 0x2c], &mut buf)?;
    let decision = frame::encode(FrameType::Decision, &buf[..n])?;
    let got = real_client.read_decision(body(&decision, MAX_OUTER_FRAME_LEN)?)?;
    assert_eq!(
        got,
        Decision {
            code: Code::OverLimit,
            retry_after_secs: 300
        }
    );
    Ok(())
}

/// Both inner roles of the wire crate against hand-built peers.
fn cross_check_inner(
    hsm: &StaticKeypair,
    partition_key: &StaticKeypair,
    inner_hello: &[u8],
    inner_prologue: &[u8],
) -> Res<()> {
    // Real HSM, hand-built client.
    let (real_hsm, real_challenge) =
        HsmInner::respond(hsm, HSM_ID, body(inner_hello, MAX_HANDSHAKE_FRAME_LEN)?)?;
    let mut c_hs = noise(partition_key, inner_prologue, &CLIENT_INNER_E)?.build_initiator()?;
    assert_eq!(&inner_hello[9..], &write(&mut c_hs, &[])?[..]);
    let payload = read(&mut c_hs, body(&real_challenge, MAX_FRAME_LEN)?)?;
    assert_eq!(payload, b"\x01\x05hsm-1");
    let finish = frame::encode(FrameType::InnerFinish, &write(&mut c_hs, b"\x01\x02p1")?)?;
    let (peer, mut hsm_channel) = real_hsm.finish(body(&finish, MAX_HANDSHAKE_FRAME_LEN)?)?;
    assert_eq!(peer.partition, PARTITION);
    assert_eq!(peer.static_key, partition_key.public());
    let mut ts = c_hs.into_transport_mode()?;
    let mut buf = vec![0u8; 256];
    let n = ts.write_message(&Request::Ping.encode(7)?, &mut buf)?;
    let data = frame::encode(FrameType::InnerData, &buf[..n])?;
    let plain = hsm_channel.open(body(&data, MAX_FRAME_LEN)?)?;
    assert_eq!(Request::decode(&plain)?, (7, Request::Ping));
    let sealed = hsm_channel.seal(
        &Response {
            id: 7,
            result: Ok(Reply::Pong),
        }
        .encode(VERSION),
    )?;
    let mut out = vec![0u8; 256];
    let m = ts.read_message(body(&sealed, MAX_FRAME_LEN)?, &mut out)?;
    assert_eq!(&out[..m], b"\x00\x00\x00\x07\x00\x01");

    // Real client, hand-built HSM. The SDK offers versions 1 to 2 (§7.6):
    // its prologue ends in `01 02`, and this HSM answers version 2.
    let (real_client, hello) = ClientInner::start(partition_key, PARTITION)?;
    let hello_body = body(&hello, MAX_HANDSHAKE_FRAME_LEN)?;
    assert_eq!(&hello_body[..6], b"HSMI\x01\x02");
    let offer_prologue = prologue(b"hsmgate-inner", b"HSMI", 1, 2);
    let mut h_hs = noise(hsm, &offer_prologue, &HSM_INNER_E)?.build_responder()?;
    assert_eq!(read(&mut h_hs, &hello_body[6..])?, b"");
    let challenge = frame::encode(
        FrameType::InnerChallenge,
        &write(&mut h_hs, b"\x02\x05hsm-1")?,
    )?;
    let hsm_public: PublicKey = hsm.public();
    let (finish, info, mut channel) =
        real_client.finish(body(&challenge, MAX_FRAME_LEN)?, |k| *k == hsm_public)?;
    assert_eq!(info.hsm_id, HSM_ID);
    assert_eq!(info.version, 2);
    assert_eq!(
        read(&mut h_hs, body(&finish, MAX_HANDSHAKE_FRAME_LEN)?)?,
        b"\x02\x02p1"
    );
    let mut ts = h_hs.into_transport_mode()?;
    let sealed = channel.seal(&Request::ListKeys.encode(9)?)?;
    let m = ts.read_message(body(&sealed, MAX_FRAME_LEN)?, &mut out)?;
    assert_eq!(&out[..m], b"\x00\x00\x00\x09\x04");
    Ok(())
}

// ------------------------------------------------------------------ helpers

/// `label || magic || min || max`.
fn prologue(label: &[u8], magic: &[u8; 4], min: u8, max: u8) -> Vec<u8> {
    let mut p = label.to_vec();
    p.extend_from_slice(magic);
    p.extend_from_slice(&[min, max]);
    p
}

/// Body of a first frame: `magic || min || max || Noise message 1`.
fn first_body(magic: &[u8; 4], min: u8, max: u8, msg1: &[u8]) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&[min, max]);
    b.extend_from_slice(msg1);
    b
}

/// A name: one length byte, then the bytes.
fn put_name(out: &mut Vec<u8>, name: &str) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn noise<'a>(
    key: &'a StaticKeypair,
    prologue: &'a [u8],
    ephemeral: &'a [u8; 32],
) -> Res<snow::Builder<'a>> {
    Ok(snow::Builder::new(NOISE_PARAMS.parse()?)
        .local_private_key(key.private_bytes())?
        .prologue(prologue)?
        .fixed_ephemeral_key_for_testing_only(ephemeral))
}

fn write(hs: &mut snow::HandshakeState, payload: &[u8]) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(payload, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn read(hs: &mut snow::HandshakeState, message: &[u8]) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = hs.read_message(message, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The body of a whole frame, checking that nothing trails it.
fn body(bytes: &[u8], max: usize) -> Res<&[u8]> {
    let (f, used) = frame::decode(bytes, max)?.ok_or("incomplete frame")?;
    assert_eq!(used, bytes.len());
    Ok(f.body)
}

fn header(frame: &[u8]) {
    let len = u16::from_be_bytes([frame[0], frame[1]]);
    dump(&format!("length = {len}"), &frame[..2]);
    let kind = FrameType::from_byte(frame[2]).map_or("?".into(), |k| format!("{k:?}"));
    dump(&format!("type = {kind}"), &frame[2..3]);
}

/// Print `bytes` as hex, 32 bytes a line, with a label.
fn dump(label: &str, bytes: &[u8]) {
    if !label.is_empty() {
        println!("  # {label} ({} bytes)", bytes.len());
    }
    for chunk in bytes.chunks(32) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {}", line.join(" "));
    }
}

//! Shared pieces of the fuzz targets: fixed keys, so that a crash found in
//! one run replays in the next, and small helpers.
//!
//! The targets themselves live in `fuzz_targets/`, one per decoder that sees
//! untrusted bytes; README.md says how to run them.

use hsmgate_wire::StaticKeypair;

/// A static key pair from a fixed private key (`seed` repeated): the same in
/// every run, unlike `StaticKeypair::generate`.
pub fn fixed_keypair(seed: u8) -> StaticKeypair {
    StaticKeypair::from_private([seed; 32]).expect("any 32 bytes are an X25519 private key")
}

/// The phases of the protocol and the frame `length` each allows
/// (PROTOCOL.md §2.4): outer handshake, inner handshake, gateway–node, data.
pub const PHASE_LIMITS: [usize; 4] = [
    hsmgate_wire::frame::MAX_OUTER_FRAME_LEN,
    hsmgate_wire::frame::MAX_HANDSHAKE_FRAME_LEN,
    hsmgate_wire::frame::MAX_GATEWAY_NODE_FRAME_LEN,
    hsmgate_wire::frame::MAX_FRAME_LEN,
];

/// Split `bytes` into reads of the sizes `cuts` gives (cycled; a size of 0
/// counts as 1), as a socket might deliver them.
pub fn chunks<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let size = cuts
            .get(i % cuts.len().max(1))
            .map_or(rest.len(), |&c| usize::from(c).max(1));
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// A directory of fixture files the loaders may read (key files with mode
/// 0600), made once per process and removed at exit.
pub fn fixture_dir() -> &'static std::path::Path {
    use std::sync::OnceLock;
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        for (name, seed) in [
            ("client.key", 1u8),
            ("partition.key", 2),
            ("gateway.key", 3),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, fixed_keypair(seed).to_file_text()).expect("write key");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
        }
        dir
    })
    .path()
}

/// Whether a path a config names is safe for a loader to open during
/// fuzzing: a plain file name, looked up in [`fixture_dir`]. Anything else
/// (`/dev/stdin`, a FIFO, `..`) could block or read outside the fixtures.
pub fn is_fixture_name(path: &std::path::Path) -> bool {
    let text = path.to_string_lossy();
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Checks shared by the PROXY protocol targets (`proxy_v1`, `proxy_v2`):
/// properties of `hsmgate::proxy_protocol::parse` on the first bytes of a
/// connection, `buf`. Returns the header when one parsed.
pub fn check_proxy_parse(buf: &[u8]) -> Option<hsmgate::proxy_protocol::ProxyHeader> {
    use hsmgate::proxy_protocol::{MAX_HEADER_LEN, Parsed, parse};
    match parse(buf) {
        Ok(Parsed::Incomplete) => {
            // Every byte seen may still belong to a header, and there are
            // fewer than the most a header may take.
            assert!(
                buf.len() < MAX_HEADER_LEN,
                "incomplete at {} bytes",
                buf.len()
            );
            None
        }
        Ok(Parsed::Header { header, consumed }) => {
            assert!(consumed <= buf.len() && consumed <= MAX_HEADER_LEN);
            // Never looks past the header: the same answer on the header alone,
            // and Incomplete on any shorter prefix of it.
            match parse(&buf[..consumed]) {
                Ok(Parsed::Header {
                    header: h,
                    consumed: c,
                }) => {
                    assert_eq!((h, c), (header, consumed));
                }
                other => panic!("the header alone parses as {other:?}"),
            }
            for cut in prefixes(consumed) {
                assert!(
                    matches!(parse(&buf[..cut]), Ok(Parsed::Incomplete)),
                    "a {cut}-byte prefix of a {consumed}-byte header is not Incomplete"
                );
            }
            // Both addresses or neither.
            assert_eq!(header.source.is_some(), header.destination.is_some());
            Some(header)
        }
        Err(e) => {
            // Refused on what was seen: more bytes do not make it a header.
            let mut more = buf.to_vec();
            more.extend_from_slice(b"\r\n\r\n");
            assert!(
                parse(&more).is_err(),
                "{e} turned into a header with more bytes"
            );
            None
        }
    }
}

/// Prefix lengths worth checking of a header of `len` bytes: all of them
/// for a short header, the first 20 and the last 20 otherwise.
fn prefixes(len: usize) -> impl Iterator<Item = usize> {
    (0..len).filter(move |&i| len <= 128 || i < 20 || i + 20 >= len)
}

/// With `FUZZ_OUTCOMES=1` in the environment, print how each input ended
/// (for the structure-aware targets: how far the handshake got), so that a
/// run over a corpus shows what it reaches:
/// `FUZZ_OUTCOMES=1 BIN -runs=0 CORPUS 2>&1 | grep ^outcome | sort | uniq -c`.
pub fn outcome(what: &str) {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_OUTCOMES").is_some()) {
        eprintln!("outcome: {what}");
    }
}

//! The frame reader (PROTOCOL.md §2, `hsmgate_wire::frame::decode`) on any
//! bytes, with each phase's limit.
//!
//! Properties: a decoded frame never claims more than its phase allows and
//! never more bytes than were given; re-encoding a frame gives back exactly
//! the bytes it was read from; a stream of frames decodes to the same frames
//! whether it arrives whole or in pieces; an incomplete answer never hides a
//! length over the limit.
#![no_main]

use hsmgate_fuzz::PHASE_LIMITS;
use hsmgate_wire::frame::{self, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let max = PHASE_LIMITS[usize::from(selector) % PHASE_LIMITS.len()];

    // Whole buffer: take frames off the front until it fails or runs out.
    let mut whole = Vec::new();
    let mut rest = bytes;
    let outcome = loop {
        match frame::decode(rest, max) {
            Ok(Some((f, used))) => {
                assert!(used <= rest.len());
                assert!(used >= HEADER_LEN);
                assert!(used - 2 <= max, "frame of {} bytes over {max}", used - 2);
                assert_eq!(f.body.len() + HEADER_LEN, used);
                // decode → encode is the identity on the bytes taken.
                let again = frame::encode(f.kind, f.body).expect("a decoded frame re-encodes");
                assert_eq!(again, rest[..used]);
                let (back, back_used) = frame::decode(&again, max).unwrap().unwrap();
                assert_eq!((back, back_used), (f, used));
                whole.push((f.kind, f.body.to_vec()));
                rest = &rest[used..];
            }
            Ok(None) => {
                if rest.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    assert!((1..=max).contains(&len), "incomplete frame claims {len}");
                    assert!(rest.len() < 2 + len);
                }
                break Ok(rest.len());
            }
            Err(e) => {
                // Errors are the peer's fault, never a local one.
                assert_ne!(e.code(), hsmgate_wire::Code::Internal, "{e:?}");
                break Err(e);
            }
        }
    };

    // The same bytes fed in pieces, as a reader that appends each read to
    // its buffer: same frames, same end.
    let cuts: Vec<u16> = bytes
        .iter()
        .take(8)
        .map(|&b| u16::from(b % 64) + 1)
        .collect();
    let mut pieces = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut streamed = Ok(0);
    'read: for chunk in hsmgate_fuzz::chunks(bytes, &cuts) {
        buf.extend_from_slice(chunk);
        loop {
            match frame::decode(&buf, max) {
                Ok(Some((f, used))) => {
                    pieces.push((f.kind, f.body.to_vec()));
                    buf.drain(..used);
                }
                Ok(None) => {
                    streamed = Ok(buf.len());
                    break;
                }
                Err(e) => {
                    streamed = Err(e);
                    break 'read;
                }
            }
        }
    }
    assert_eq!(pieces, whole);
    assert_eq!(streamed, outcome);
});

//! The BPF program's maps, as the gateway uses them (their definitions are
//! in `gateway/bpf/forward.bpf.c`).

use std::os::fd::AsRawFd;

use aya::maps::{HashMap, MapData, RingBuf, SockHash};
#[cfg(hsmgate_bpf)]
use aya::programs::SkSkb;

use super::KernelError;

/// One direction's budget; the layout of `struct direction` in the program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Direction {
    pub base: u64,
    pub limit: u64,
    pub redirected: u64,
}

impl Direction {
    pub fn new(base: u64, limit: u64) -> Direction {
        Direction {
            base,
            limit,
            redirected: 0,
        }
    }
}

// SAFETY: `Direction` is repr(C), all u64 fields, no padding: every bit
// pattern is a valid value.
unsafe impl aya::Pod for Direction {}

#[cfg(hsmgate_bpf)]
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forward.bpf.o"));

/// Bytes of the overflow ring: a direction leaves the kernel at most once
/// (its cookie then stays in HSMGATE_STOPPED), and each leaving takes one
/// record of 16 bytes (8 of header, the cookie), so a ring with room for
/// every direction at once can never drop one. A power of two of pages.
#[cfg(hsmgate_bpf)]
fn overflow_ring_bytes(directions: u32) -> u32 {
    directions
        .saturating_mul(16)
        .max(64 * 1024)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The maps, and the loaded program (kept: dropping it detaches it).
pub struct Maps {
    peers: SockHash<MapData, u64>,
    directions: HashMap<MapData, u64, Direction>,
    stopped: HashMap<MapData, u64, u32>,
    _ebpf: aya::Ebpf,
}

fn map_error(e: impl std::error::Error) -> KernelError {
    KernelError::Map(with_causes(&e))
}

#[cfg(hsmgate_bpf)]
fn load_error(e: impl std::error::Error) -> KernelError {
    KernelError::Load(with_causes(&e))
}

/// An error and every cause under it (aya's errors keep the system's
/// reason, e.g. "Operation not permitted", in their source), with what
/// to do about a refusal.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut denied = false;
    let mut cause = e.source();
    while let Some(c) = cause {
        // Some layers repeat the one below in their own message.
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        denied |= c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
        cause = c.source();
    }
    if denied {
        text.push_str(" (the gateway needs CAP_BPF and CAP_NET_ADMIN for kernel forwarding)");
    }
    text
}

impl Maps {
    #[cfg(not(hsmgate_bpf))]
    pub fn load(_max_sessions: u32) -> Result<(Maps, RingBuf<MapData>), KernelError> {
        Err(KernelError::NotBuilt)
    }

    /// Load the program with room for `max_sessions` sessions and attach it
    /// to the socket map; returns the maps and the overflow ring.
    #[cfg(hsmgate_bpf)]
    pub fn load(max_sessions: u32) -> Result<(Maps, RingBuf<MapData>), KernelError> {
        let entries = max_sessions.saturating_mul(2).max(2);
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("HSMGATE_PEERS", entries)
            .map_max_entries("HSMGATE_DIRECTIONS", entries)
            .map_max_entries("HSMGATE_STOPPED", entries)
            .map_max_entries("HSMGATE_OVERFLOWS", overflow_ring_bytes(entries))
            .load(PROGRAM)
            .map_err(load_error)?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| KernelError::Load(format!("the program has no map {name}")))
        };
        let peers = SockHash::<MapData, u64>::try_from(take(&mut ebpf, "HSMGATE_PEERS")?)
            .map_err(load_error)?;
        let directions =
            HashMap::try_from(take(&mut ebpf, "HSMGATE_DIRECTIONS")?).map_err(load_error)?;
        let stopped = HashMap::try_from(take(&mut ebpf, "HSMGATE_STOPPED")?).map_err(load_error)?;
        let overflows =
            RingBuf::try_from(take(&mut ebpf, "HSMGATE_OVERFLOWS")?).map_err(load_error)?;
        let map_fd = peers.fd().try_clone().map_err(load_error)?;
        let program: &mut SkSkb = ebpf
            .program_mut("hsmgate_forward")
            .ok_or_else(|| KernelError::Load("the object has no program hsmgate_forward".into()))?
            .try_into()
            .map_err(load_error)?;
        program.load().map_err(load_error)?;
        program.attach(&map_fd).map_err(load_error)?;
        Ok((
            Maps {
                peers,
                directions,
                stopped,
                _ebpf: ebpf,
            },
            overflows,
        ))
    }

    /// Enter a session: each direction under its receiving socket's
    /// cookie, then each socket under its peer's cookie. On an error the
    /// caller's guard takes out what went in.
    ///
    /// A socket is forwarded from when it enters as a value, and its chunks
    /// find their way once its peer is in too: between the two entries a
    /// chunk makes the session leave the kernel. The client's socket goes
    /// in first: the client waits for the node's answer to the bytes the
    /// gateway just wrote, while that answer may be on its way, so the
    /// node's socket enters last, when everything is in place.
    pub fn insert(
        &mut self,
        client_cookie: u64,
        up: Direction,
        hsm: &impl AsRawFd,
        hsm_cookie: u64,
        down: Direction,
        client: &impl AsRawFd,
    ) -> Result<(), KernelError> {
        self.directions
            .insert(client_cookie, up, 0)
            .map_err(map_error)?;
        self.directions
            .insert(hsm_cookie, down, 0)
            .map_err(map_error)?;
        self.peers
            .insert(hsm_cookie, client.as_raw_fd(), 0)
            .map_err(map_error)?;
        self.peers
            .insert(client_cookie, hsm.as_raw_fd(), 0)
            .map_err(map_error)
    }

    /// Bytes redirected from the socket with `cookie` so far.
    pub fn redirected(&self, cookie: u64) -> u64 {
        self.directions
            .get(&cookie, 0)
            .map(|d| d.redirected)
            .unwrap_or(0)
    }

    /// Whether the direction from the socket with `cookie` left the
    /// kernel (the program or the gateway stopped it).
    pub fn is_stopped(&self, cookie: u64) -> bool {
        self.stopped.get(&cookie, 0).is_ok()
    }

    /// No more chunks from the socket with `cookie` are redirected.
    pub fn stop(&mut self, cookie: u64) -> Result<(), KernelError> {
        self.stopped.insert(cookie, 1, 0).map_err(map_error)
    }

    /// Directions in the map (each session has two).
    #[cfg(test)]
    pub fn directions(&self) -> usize {
        self.directions.keys().count()
    }

    /// Take a session out of every map (entries that are not there are
    /// skipped). A socket leaves the socket map by itself when closed.
    pub fn remove(&mut self, client_cookie: u64, hsm_cookie: u64) {
        for cookie in [client_cookie, hsm_cookie] {
            let _ = self.peers.remove(&cookie);
            let _ = self.directions.remove(&cookie);
            let _ = self.stopped.remove(&cookie);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `M`")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `M`")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_refusal_names_its_reason_once_and_what_is_missing() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = with_causes(&Outer(Inner(denied)));
        assert_eq!(text.matches("failed to create map").count(), 1, "{text}");
        assert!(text.contains("permission denied"), "{text}");
        assert!(text.contains("CAP_BPF and CAP_NET_ADMIN"), "{text}");
        let other = std::io::Error::from(std::io::ErrorKind::OutOfMemory);
        assert!(!with_causes(&Inner(other)).contains("CAP_BPF"));
    }
}

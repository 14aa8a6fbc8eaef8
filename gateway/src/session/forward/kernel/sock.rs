//! What the gateway reads from and sets on a socket the kernel forwards:
//! its cookie, how many bytes were written into it and received by it, how
//! long since its last byte, and the nudge that makes it hand over bytes
//! that arrived before it entered the map.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The kernel's id of a socket (`SO_COOKIE`): unique until reboot, so a
/// map key of a closed socket never names a new one.
pub fn cookie(socket: &impl std::os::fd::AsFd) -> io::Result<u64> {
    socket2::SockRef::from(socket).cookie()
}

fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn queue_bytes(fd: RawFd, request: libc::Ioctl) -> io::Result<u64> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: SIOCINQ and SIOCOUTQ write one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, request, &mut bytes as *mut libc::c_int) };
    if rc == 0 {
        Ok(u64::try_from(bytes).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every byte ever written into the socket, sent or still queued: its
/// `bytes_acked` plus its send queue (`SIOCOUTQ`). The kernel program's
/// budget compares `bytes_acked` against the same count.
pub fn written(fd: &impl AsRawFd) -> io::Result<u64> {
    let fd = fd.as_raw_fd();
    let info = tcp_info(fd)?;
    Ok(info.tcpi_bytes_acked + queue_bytes(fd, libc::TIOCOUTQ)?)
}

/// Bytes received and not yet read from the socket (`SIOCINQ`).
pub fn unread(fd: &impl AsRawFd) -> io::Result<u64> {
    queue_bytes(fd.as_raw_fd(), libc::FIONREAD)
}

/// Milliseconds since the socket last received a byte.
pub fn since_last_received_ms(fd: &impl AsRawFd) -> io::Result<u64> {
    Ok(u64::from(tcp_info(fd.as_raw_fd())?.tcpi_last_data_recv))
}

/// Set `SO_RCVLOWAT` to one byte. Setting it makes TCP check whether the
/// socket has data and, if so, call its data-ready hook: the kernel
/// program then forwards what arrived between the gateway's last read and
/// the socket's entry into the map, which would otherwise wait for the
/// next byte from the peer.
pub fn nudge(fd: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value is one int, valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's pending error (`SO_ERROR`), taken; a hang-up without one
/// reads as a reset.
pub fn take_error(socket: &std::net::TcpStream) -> io::Error {
    match socket.take_error() {
        Ok(Some(e)) | Err(e) => e,
        Ok(None) => io::Error::new(io::ErrorKind::ConnectionReset, "socket hung up"),
    }
}

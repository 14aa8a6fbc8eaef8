//! Zero-copy moves between two TCP sockets through a pipe, with Linux
//! `splice(2)`. The only unsafe code of the gateway lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One kernel pipe: bytes spliced in from a socket wait here until they are
/// spliced out to the other socket, without passing through user space.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe, resized to `size` bytes when the
    /// kernel allows (pipe-max-size may refuse; the default then stays).
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2
        // requires; on success both entries are fresh descriptors we own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
        // nobody else; OwnedFd takes over closing them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wanted = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ take an int argument and only
        // act on the open pipe descriptor we own.
        let capacity = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, wanted);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).map_err(|_| io::Error::last_os_error())?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The pipe's buffer size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Move up to `max` bytes from the socket `src` into the pipe. Ok(0) is
    /// end of stream; WouldBlock means the socket has nothing to read.
    pub fn fill_from(&self, src: RawFd, max: usize) -> io::Result<usize> {
        splice(src, self.write.as_raw_fd(), max)
    }

    /// Move up to `max` bytes from the pipe into the socket `dst`.
    /// WouldBlock means the socket's send buffer is full.
    pub fn drain_to(&self, dst: RawFd, max: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), dst, max)
    }
}

fn splice(from: RawFd, to: RawFd, max: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // caller holds the sockets and the pipe); null offsets are required for
    // pipes and sockets; splice reads and writes no user memory.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            max,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn pipe_moves_bytes_between_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut a = TcpStream::connect(addr).expect("connect");
        let (b, _) = listener.accept().expect("accept");
        let c_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c_addr = c_listener.local_addr().expect("addr");
        let c = TcpStream::connect(c_addr).expect("connect");
        let (mut d, _) = c_listener.accept().expect("accept");

        let pipe = Pipe::new(64 * 1024).expect("pipe");
        assert!(pipe.capacity() >= 4096);
        a.write_all(b"opaque bytes").expect("write");
        let mut moved = 0;
        for _ in 0..100 {
            match pipe.fill_from(b.as_raw_fd(), 1024) {
                Ok(n) => {
                    moved = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("splice in: {e}"),
            }
        }
        assert_eq!(moved, 12);
        assert_eq!(pipe.drain_to(c.as_raw_fd(), moved).expect("splice out"), 12);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"opaque bytes");
    }
}

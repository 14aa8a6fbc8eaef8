//! The floor relay of hsmgate-bench (issue 15): the simplest event-driven
//! TCP relay, as a measure of what any user-space relay adds. One thread,
//! one epoll set (mio), `recv` into a fixed buffer per direction and `send`
//! from it, `TCP_NODELAY` on both sockets, nothing else: no timeouts, no
//! limits, no logging, no splice.
//!
//!     hsmgate-floor LISTEN=UPSTREAM [LISTEN=UPSTREAM ...]
//!
//! prints `ready` on stdout once every listener is bound, then relays each
//! accepted connection to its listener's upstream until either side closes.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Bytes buffered per direction of a connection.
const BUFFER: usize = 64 * 1024;

/// One direction of a relayed connection: bytes read from one socket and
/// not yet written to the other.
struct Direction {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reading side reached end of stream.
    eof: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }

    /// Read from `from` and write to `to` until one would block; true when
    /// the direction is finished (end of stream, everything written).
    fn pump(&mut self, from: &mut TcpStream, to: &mut TcpStream) -> io::Result<bool> {
        loop {
            while self.pending() {
                match to.write(&self.buf[self.start..self.end]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                let _ = to.shutdown(Shutdown::Write);
                return Ok(true);
            }
            match from.read(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A client connection and its upstream connection.
struct Pair {
    client: TcpStream,
    upstream: TcpStream,
    up: Direction,
    down: Direction,
    up_done: bool,
    down_done: bool,
}

impl Pair {
    /// Move what can be moved both ways; true when the pair is finished.
    fn pump(&mut self) -> bool {
        if !self.up_done {
            match self.up.pump(&mut self.client, &mut self.upstream) {
                Ok(done) => self.up_done = done,
                Err(_) => return true,
            }
        }
        if !self.down_done {
            match self.down.pump(&mut self.upstream, &mut self.client) {
                Ok(done) => self.down_done = done,
                Err(_) => return true,
            }
        }
        self.up_done && self.down_done
    }
}

fn parse_routes(args: &[String]) -> Result<Vec<(SocketAddr, SocketAddr)>, String> {
    if args.is_empty() {
        return Err("usage: hsmgate-floor LISTEN=UPSTREAM [LISTEN=UPSTREAM ...]".into());
    }
    args.iter()
        .map(|a| {
            let (listen, upstream) = a
                .split_once('=')
                .ok_or_else(|| format!("{a:?}: expected LISTEN=UPSTREAM"))?;
            let listen = listen.parse().map_err(|e| format!("{listen:?}: {e}"))?;
            let upstream = upstream.parse().map_err(|e| format!("{upstream:?}: {e}"))?;
            Ok((listen, upstream))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let routes = match parse_routes(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hsmgate-floor: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&routes) {
        eprintln!("hsmgate-floor: {e}");
        std::process::exit(1);
    }
}

fn run(routes: &[(SocketAddr, SocketAddr)]) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listeners = Vec::new();
    for (i, (listen, upstream)) in routes.iter().enumerate() {
        let mut l = TcpListener::bind(*listen)?;
        poll.registry()
            .register(&mut l, Token(i), Interest::READABLE)?;
        listeners.push((l, *upstream));
    }
    println!("ready");
    io::stdout().flush()?;
    // Tokens from listeners.len() on: two per pair (client, upstream).
    let first = listeners.len();
    let mut pairs: HashMap<usize, Pair> = HashMap::new();
    let mut next = first;
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            let Token(t) = event.token();
            if t < first {
                let (listener, upstream) = &listeners[t];
                loop {
                    let (mut client, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    };
                    let Ok(mut up) = TcpStream::connect(*upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let id = next;
                    next += 2;
                    let both = Interest::READABLE | Interest::WRITABLE;
                    if poll
                        .registry()
                        .register(&mut client, Token(id), both)
                        .is_err()
                        || poll
                            .registry()
                            .register(&mut up, Token(id + 1), both)
                            .is_err()
                    {
                        continue;
                    }
                    pairs.insert(
                        id,
                        Pair {
                            client,
                            upstream: up,
                            up: Direction::new(),
                            down: Direction::new(),
                            up_done: false,
                            down_done: false,
                        },
                    );
                }
                continue;
            }
            let id = first + (t - first) / 2 * 2;
            let finished = pairs.get_mut(&id).is_some_and(Pair::pump);
            if finished && let Some(mut pair) = pairs.remove(&id) {
                let _ = poll.registry().deregister(&mut pair.client);
                let _ = poll.registry().deregister(&mut pair.upstream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_listen_equals_upstream() {
        let routes = parse_routes(&["127.0.0.1:1=127.0.0.1:2".into()]).expect("parsed");
        assert_eq!(
            routes,
            vec![(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            )]
        );
        assert!(parse_routes(&[]).is_err());
        assert!(parse_routes(&["127.0.0.1:1".into()]).is_err());
        assert!(parse_routes(&["nowhere=127.0.0.1:2".into()]).is_err());
    }
}

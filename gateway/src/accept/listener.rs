//! Binding the client-facing TCP listeners with the socket options an L4
//! proxy wants, through socket2.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Keepalive probes start after this much silence, so that peers that
/// vanished without a FIN are found even on an idle session.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 5;

/// Bind `addr` with SO_REUSEADDR (restart without waiting out TIME_WAIT),
/// IPV6_V6ONLY off for `[::]` (one dual-stack socket), and `backlog`. With
/// `reuse_port`, SO_REUSEPORT too, so that several sockets (one per accept
/// loop) share the address.
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

/// Options for every connected socket, client or HSM side: no Nagle delay
/// (handshake messages are small and latency-bound) and TCP keepalive.
pub fn tune(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_listener_accepts_and_tunes() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 16, false).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        tune(&server).expect("tune");
        assert!(server.nodelay().expect("nodelay"));
        assert!(SockRef::from(&server).keepalive().expect("keepalive"));
        assert!(SockRef::from(&listener).reuse_address().expect("reuseaddr"));
        drop(client);
    }

    #[tokio::test]
    async fn reuse_port_lets_two_sockets_share_an_address() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), 16, true).expect("bind");
        let addr = first.local_addr().expect("addr");
        let second = bind(addr, 16, true).expect("second socket on the same port");
        assert_eq!(second.local_addr().expect("addr"), addr);
        assert!(
            bind(addr, 16, false).is_err(),
            "without SO_REUSEPORT the port is taken"
        );
    }
}

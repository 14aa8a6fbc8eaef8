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
///
/// The listening socket carries the options of [`tune`]: Linux copies them
/// to every connection it accepts, so an accepted client socket needs no
/// `setsockopt` of its own (five system calls fewer per connection).
pub fn bind(addr: SocketAddr, backlog: u32, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    set_options(&SockRef::from(&socket))?;
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
/// Client sockets get them from their listener ([`bind`]); the gateway's
/// connections to HSM nodes call this.
pub fn tune(stream: &TcpStream) -> std::io::Result<()> {
    set_options(&SockRef::from(stream))
}

fn set_options(socket: &SockRef<'_>) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_tuned(stream: &TcpStream) {
        let socket = SockRef::from(stream);
        assert!(stream.nodelay().expect("nodelay"));
        assert!(socket.keepalive().expect("keepalive"));
        assert_eq!(socket.tcp_keepalive_time().expect("idle"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().expect("retries"),
            KEEPALIVE_RETRIES
        );
    }

    /// The accept path sets no options of its own: an accepted socket must
    /// carry them from the listener.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 16, false).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_tuned(&server);
        assert!(SockRef::from(&listener).reuse_address().expect("reuseaddr"));
        drop(client);
    }

    #[tokio::test]
    async fn a_connected_socket_is_tuned_by_tune() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(
            !client.nodelay().expect("nodelay"),
            "the default is Nagle on"
        );
        tune(&client).expect("tune");
        assert_tuned(&client);
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

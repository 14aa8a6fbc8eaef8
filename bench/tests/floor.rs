//! The floor relay (`hsmgate-floor`) as a process: it relays bytes both
//! ways unchanged, passes a half-close on, and refuses bad arguments.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(10);

/// An echo server on loopback: each connection gets its bytes back, and
/// its write side closed once the client closed its own.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(listen: SocketAddr, upstream: SocketAddr) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsmgate-floor"))
        .arg(format!("{listen}={upstream}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hsmgate-floor");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
    Relay(child)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

#[test]
fn relays_both_ways_unchanged_and_passes_the_half_close_on() {
    let echo = echo_server();
    let listen = free_port();
    let _relay = start_relay(listen, echo);
    let mut client = TcpStream::connect(listen).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    // More than the relay's buffer per direction, in several writes.
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut client = client.try_clone().expect("clone");
        let sent = sent.clone();
        std::thread::spawn(move || {
            for chunk in sent.chunks(7_000) {
                client.write_all(chunk).expect("write");
            }
            client.shutdown(Shutdown::Write).expect("half-close");
        })
    };
    let mut received = Vec::new();
    client.read_to_end(&mut received).expect("read to the end");
    writer.join().expect("writer");
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "the bytes came back changed");
}

#[test]
fn bad_arguments_are_refused_with_exit_2() {
    for args in [&[][..], &["127.0.0.1:1"][..], &["nowhere=127.0.0.1:2"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_hsmgate-floor"))
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("hsmgate-floor:"));
    }
}

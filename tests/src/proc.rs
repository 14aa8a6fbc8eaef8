//! Child processes under bounds: every run has a deadline, and every child
//! is killed and reaped on every path (a [`Drop`] guard), so a hanging
//! binary fails its test instead of hanging it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a running child is polled.
const POLL: Duration = Duration::from_millis(20);

/// What a finished child left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code; `None` when a signal ended the child.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A child that is killed and reaped when dropped.
pub struct Guard(Option<Child>);

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Guard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Guard(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("the child is still owned by the guard")
    }

    pub fn id(&self) -> u32 {
        self.0
            .as_ref()
            .expect("the child is still owned by the guard")
            .id()
    }

    /// Wait at most `timeout` for the child to exit; `None` if it is still
    /// running (it is left running: the guard kills it when dropped).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait on the child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Send `signal` (a name such as `TERM`) with the `kill` program.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} failed: {status}",
            self.id()
        );
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // Errors mean it already exited; reaping it is all that is left.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Read a pipe to its end on a thread.
fn drain(pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = BufReader::new(pipe).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Run `cmd` to completion with no stdin, capturing its output. Panics, with
/// the command, if it does not exit within `timeout` (the child is killed).
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn(cmd);
    let stdout = drain(guard.child().stdout.take().expect("piped stdout"));
    let stderr = drain(guard.child().stderr.take().expect("piped stderr"));
    let status = guard.wait_timeout(timeout);
    // Kills the child if it is still running, which closes its pipes.
    drop(guard);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not exit within {timeout:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        ),
    }
}

/// [`run`] off the async runtime, so that in-process servers keep serving.
pub async fn run_async(mut cmd: Command, timeout: Duration) -> Output {
    tokio::task::spawn_blocking(move || run(&mut cmd, timeout))
        .await
        .expect("the process runner did not panic")
}

/// A long-running child whose stdout is read line by line and whose stderr
/// is collected, both continuously (so the child never blocks on a full pipe).
pub struct Daemon {
    pub guard: Guard,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = Guard::spawn(cmd);
        let out = guard.child().stdout.take().expect("piped stdout");
        let err = guard.child().stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    stdout.lock().expect("stdout lock").push(line.clone());
                    // The receiver may be gone; the line is kept above.
                    let _ = tx.send(line);
                }
            });
        }
        {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(err);
                let mut line = String::new();
                while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    stderr.lock().expect("stderr lock").push_str(&line);
                    line.clear();
                }
            });
        }
        Daemon {
            guard,
            lines,
            stdout,
            stderr,
        }
    }

    /// Wait at most `timeout` for a stdout line containing `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                // Timed out, or stdout closed (the child exited).
                Err(_) => return None,
            }
        }
    }

    /// Whether the child wrote `needle` to stderr so far.
    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.lock().expect("stderr lock").contains(needle)
    }

    /// A stdout line already read that contains `needle`.
    pub fn seen_line(&self, needle: &str) -> Option<String> {
        let lines = self.stdout.lock().expect("stdout lock");
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Everything read so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().expect("stdout lock").join("\n"),
            self.stderr.lock().expect("stderr lock")
        )
    }
}

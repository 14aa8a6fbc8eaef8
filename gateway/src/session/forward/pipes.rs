//! A bounded pool of splice pipes shared by every session of a gateway.
//!
//! A direction of a session takes a pipe only while bytes are moving and
//! gives it back, empty, as soon as its source socket has nothing more to
//! read: an idle session pins no pipe (no kernel pipe buffers, no pipe file
//! descriptors). At most `max_idle` empty pipes are kept for reuse; more are
//! closed when given back.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::splice::Pipe;

#[derive(Debug)]
pub struct PipePool {
    pipe_size: usize,
    max_idle: usize,
    idle: Mutex<Vec<Pipe>>,
    created: AtomicU64,
}

impl PipePool {
    pub fn new(pipe_size: usize, max_idle: usize) -> PipePool {
        PipePool {
            pipe_size,
            max_idle,
            idle: Mutex::new(Vec::new()),
            created: AtomicU64::new(0),
        }
    }

    /// An empty pipe: a pooled one, or a new one.
    pub fn take(&self) -> io::Result<Pipe> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match reused {
            Some(pipe) => Ok(pipe),
            None => {
                let pipe = Pipe::new(self.pipe_size)?;
                self.created.fetch_add(1, Ordering::Relaxed);
                Ok(pipe)
            }
        }
    }

    /// Return a pipe the caller has drained completely. A pipe that may hold
    /// bytes must be dropped instead, never given back.
    pub fn give(&self, pipe: Pipe) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(pipe);
        }
    }

    /// Empty pipes waiting for reuse.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Pipes created since start.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_reused_and_the_idle_set_is_bounded() {
        let pool = PipePool::new(64 * 1024, 2);
        let a = pool.take().expect("pipe");
        let b = pool.take().expect("pipe");
        let c = pool.take().expect("pipe");
        assert_eq!(pool.created(), 3);
        pool.give(a);
        pool.give(b);
        pool.give(c);
        assert_eq!(pool.idle(), 2, "the third is closed");
        let _d = pool.take().expect("pipe");
        assert_eq!(pool.created(), 3, "reused");
        assert_eq!(pool.idle(), 1);
    }
}

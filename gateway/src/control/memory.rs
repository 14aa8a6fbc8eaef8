//! Giving the heap back to the system after a peak of sessions.
//!
//! Sessions allocate a few kilobytes each (handshake state, futures, buffers)
//! on whichever worker thread runs them. When thousands of them end, glibc's
//! allocator keeps the freed memory inside its arenas: it only returns the
//! free space at the very top of a heap, and one live allocation above the
//! freed ones (a cache entry, a grown table) holds everything below it. The
//! soak (issue 12, part 2) saw the gateway stay at its peak RSS after every
//! session had closed: 14 MiB before 9,000 sessions, 89 MiB after.
//! Two things bring it back (soak, 1,000 sessions, debug build: +26 % with
//! either alone, +7 % with both):
//!
//! - [`reserve_session_spans`]: the tracing registry's long-lived per-span
//!   allocations are made once, before any session, instead of one in the
//!   middle of each session's memory at a peak;
//! - `malloc_trim(0)` ([`release_free_heap`]) then gives back the free pages
//!   inside the arenas, which glibc does not do by itself.
//!
//! The decision is made in the accept loop of `server.rs` as sessions end
//! ([`ReleasePolicy`]: no clock, no I/O), once per halving of the number of
//! sessions since the last peak, never per request; the trim itself runs on
//! a blocking thread in [`release_when_asked`], at most once a second.
//!
//! Besides `session/forward/splice.rs` and the kernel forwarding's socket
//! and epoll calls (`session/forward/kernel/`), the only unsafe code is here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Below this peak the memory at stake is too small to be worth a trim.
const MIN_PEAK: usize = 128;

/// Trims wanted while one runs, or less than this after one, wait for it.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When to give free heap back: whenever the number of live sessions has
/// fallen to half the highest it reached since the last release, and that
/// highest was at least [`MIN_PEAK`]. A drain from `n` sessions to none
/// thus asks for about `log2(n / MIN_PEAK)` releases; a steady load asks
/// for none.
#[derive(Debug, Default)]
pub struct ReleasePolicy {
    peak: usize,
}

impl ReleasePolicy {
    /// A session started; `live` sessions are running now.
    pub fn opened(&mut self, live: usize) {
        self.peak = self.peak.max(live);
    }

    /// A session ended; `live` sessions are still running. True when free
    /// memory should be given back now.
    pub fn closed(&mut self, live: usize) -> bool {
        if self.peak >= MIN_PEAK && live <= self.peak / 2 {
            self.peak = live;
            true
        } else {
            false
        }
    }
}

/// Have the tracing registry hold a slot for each of `n` session spans from
/// now on, so that a peak of sessions does not scatter them over the heap.
///
/// The registry (tracing-subscriber) keeps every slot it ever used, and a
/// used slot keeps the table of its span's extensions, where the log layer
/// puts the span's formatted fields. A slot first used at a peak of
/// sessions gets its table between the allocations of those sessions, and
/// that table, a hundred bytes alive forever, keeps the page around it from
/// ever going back to the system: one page per session of the peak. Made
/// here, on the thread that creates the session spans, before any session,
/// the slots and their tables sit together, and later spans reuse them.
/// Without a subscriber, or with `session` spans disabled, this does
/// nothing.
pub fn reserve_session_spans(n: usize) {
    let spans: Vec<tracing::Span> = (0..n)
        .map(|_| tracing::info_span!("session", id = 0u64))
        .collect();
    drop(spans);
}

/// Give free heap back each time `asked` is notified, until the task is
/// dropped. Requests that arrive while a release runs, or within
/// [`MIN_INTERVAL`] of it, are served by one release after it.
pub async fn release_when_asked(asked: Arc<Notify>) {
    loop {
        asked.notified().await;
        let started = tokio::time::Instant::now();
        if tokio::task::spawn_blocking(release_free_heap).await.is_ok() {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "released free heap after sessions ended"
            );
        }
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}

/// Return the allocator's free pages to the system (glibc); a no-op with
/// other C libraries.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own arenas
    // under their locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policy: &mut ReleasePolicy, from: usize, to: usize) -> Vec<usize> {
        let mut released_at = Vec::new();
        if from < to {
            for live in from + 1..=to {
                policy.opened(live);
            }
        } else {
            for live in (to..from).rev() {
                if policy.closed(live) {
                    released_at.push(live);
                }
            }
        }
        released_at
    }

    #[test]
    fn releases_at_each_halving_after_a_peak() {
        let mut p = ReleasePolicy::default();
        assert!(run(&mut p, 0, 1000).is_empty());
        assert_eq!(run(&mut p, 1000, 0), vec![500, 250, 125]);
    }

    #[test]
    fn does_not_release_under_a_steady_load() {
        let mut p = ReleasePolicy::default();
        run(&mut p, 0, 1000);
        for _ in 0..100 {
            assert!(run(&mut p, 1000, 600).is_empty());
            assert!(run(&mut p, 600, 1000).is_empty());
        }
    }

    #[test]
    fn does_not_release_after_a_small_peak() {
        let mut p = ReleasePolicy::default();
        run(&mut p, 0, MIN_PEAK - 1);
        assert!(run(&mut p, MIN_PEAK - 1, 0).is_empty());
    }

    #[test]
    fn a_new_peak_after_a_release_counts_from_the_release() {
        let mut p = ReleasePolicy::default();
        run(&mut p, 0, 400);
        assert_eq!(run(&mut p, 400, 150), vec![200]);
        run(&mut p, 150, 300);
        assert_eq!(run(&mut p, 300, 100), vec![150]);
    }

    #[test]
    fn release_free_heap_can_be_called_from_any_thread() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(release_free_heap))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}

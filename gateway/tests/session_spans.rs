//! The session spans reserved before serving (`memory::reserve_session_spans`)
//! are the only long-lived allocations session spans make: spans created and
//! closed afterwards leave nothing behind that could pin heap pages after a
//! peak of sessions (issue 12, part 2). A test binary of its own, because it
//! counts every allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// Allocations alive now, over the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on unchanged to the system allocator; the
// counter is the only addition.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above, that is from System.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PEAK: usize = 2_000;

/// Open `n` session spans at once, then close them all; the allocations
/// still alive afterwards that were not before.
fn left_behind_by_a_peak(n: usize) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let spans: Vec<tracing::Span> = (0..n)
        .map(|i| tracing::info_span!("session", id = i as u64))
        .collect();
    drop(spans);
    LIVE.load(Ordering::Relaxed) - before
}

#[test]
fn reserved_session_spans_leave_no_allocation_behind_a_peak() {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // Without the reservation, each new slot of the registry keeps an
        // allocation (its extensions) for good.
        let unreserved = left_behind_by_a_peak(PEAK);
        assert!(
            unreserved >= PEAK as isize,
            "the registry keeps {unreserved} allocations after {PEAK} spans: \
             this test no longer sees what it is about"
        );
        // A higher peak than any before, within the reservation.
        hsmgate::memory::reserve_session_spans(4 * PEAK);
        assert_eq!(left_behind_by_a_peak(3 * PEAK), 0);
        assert_eq!(left_behind_by_a_peak(4 * PEAK), 0);
    });
}

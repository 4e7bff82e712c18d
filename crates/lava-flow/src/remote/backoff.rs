//! Waiting for MPI messages without a blocking call (so waits can time out): spin first, since a
//! frame or credit usually arrives within microseconds, then yield, then sleep.

use std::time::{Duration, Instant};

/// Spinning this long costs a core but keeps a hand-off in the microseconds.
const SPIN: Duration = Duration::from_micros(200);
/// Yielding this long lets other threads run while still answering fast.
const YIELD: Duration = Duration::from_millis(5);

pub(super) struct Backoff {
    started: Instant,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { started: Instant::now() }
    }

    /// Pauses before the next poll: longer the longer the wait has lasted.
    pub(super) fn pause(&self) {
        let waited = self.started.elapsed();
        if waited < SPIN {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        } else if waited < YIELD {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

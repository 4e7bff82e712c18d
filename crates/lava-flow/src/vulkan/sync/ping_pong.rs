//! Two queues taking turns on one shared timeline semaphore, on the device only: the semaphore
//! path of `lava-flow selftest` (two devices, or two processes each running one side) and the
//! round trip `lava-flow bench` measures.

use std::time::{Duration, Instant};

use ash::vk;
use raw_gpu_handle::SemaphoreKind;

use super::{Semaphore, Submission};
use crate::{Error, Result};

/// Which turns a side takes: the first signals 1, 3, 5, ...; the second 2, 4, 6, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Signals the odd values, starting the exchange.
    First,
    /// Signals the even values.
    Second,
}

/// What one side saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingPong {
    /// Rounds completed (each is one signal by each side).
    pub rounds: u64,
    /// From the first submission to the host seeing the last value.
    pub elapsed: Duration,
    /// The semaphore's value at the end (`2 * rounds` above where it started).
    pub final_value: u64,
}

/// Plays one side of `rounds` rounds on `semaphore` (shared with the other side through an
/// export, starting from its current value, which both sides must agree on): queues one empty
/// batch per turn that waits on the device for the other side's value and signals the next,
/// then waits on the host for the last value.
///
/// Both sides must run on different queues (two devices, two processes, or another API): one
/// queue runs its batches in order, and a batch waiting for a value a later batch of the same
/// queue signals never finishes. On an error (a [`Error::Timeout`] when the other side does not
/// play) the host plays the other side's remaining turns for the batches already queued, so that
/// no queue stays blocked; the exchange is then over.
pub fn ping_pong(semaphore: &Semaphore, turn: Turn, start: u64, rounds: u64, timeout: Duration) -> Result<PingPong> {
    if semaphore.kind() != SemaphoreKind::Timeline {
        return Err(Error::invalid(
            "ping-pong semaphore",
            "it is a binary semaphore",
            "share a timeline semaphore (Semaphore::exportable with SemaphoreKind::Timeline)",
        ));
    }
    let ctx = semaphore.context();
    let started = Instant::now();
    let offset = match turn {
        Turn::First => 1,
        Turn::Second => 2,
    };
    // (wait value, signal value) of each batch queued so far.
    let mut queued: Vec<(u64, u64)> = Vec::with_capacity(rounds as usize);
    let outcome = (|| {
        for round in 0..rounds {
            let value = start + 2 * round + offset;
            Submission::new()
                .wait(semaphore, value - 1, vk::PipelineStageFlags::ALL_COMMANDS)
                .signal(semaphore, value)
                .submit(ctx)?;
            queued.push((value - 1, value));
        }
        let last = start + 2 * rounds;
        semaphore.wait(last, timeout.saturating_sub(started.elapsed()))?;
        Ok(PingPong { rounds, elapsed: started.elapsed(), final_value: last })
    })();
    if outcome.is_err() {
        release(semaphore, &queued);
    }
    outcome
}

/// Plays the missing side for batches still queued: signals each one's wait value from the host
/// and lets it signal its own, in order. Signalling far ahead in one step would not do: the
/// batches behind would then signal values below the current one, which Vulkan forbids.
fn release(semaphore: &Semaphore, queued: &[(u64, u64)]) {
    for &(wait, signal) in queued {
        let Ok(current) = semaphore.value() else { return };
        if current >= signal {
            continue;
        }
        if current < wait && semaphore.signal(wait).is_err() {
            return;
        }
        if semaphore.wait(signal, Duration::from_secs(1)).is_err() {
            return;
        }
    }
}

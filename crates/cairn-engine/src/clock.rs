//! Where the engine reads the time: a [`Clock`] passed in [`crate::EngineOptions`].
//!
//! Every timestamp the engine records (events, leases, snapshots) and every deadline it computes
//! from one (a retry's backoff, a paused plan's `resume_at`) comes from the clock; the engine's
//! timers then sleep on tokio's clock for the difference. The default is the system clock.
//! [`TokioClock`] follows tokio's `Instant` instead, so a test on paused tokio time
//! (`#[tokio::test(start_paused = true)]`) sees hours of backoff pass at once and still reads
//! consistent timestamps.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_core::Timestamp;

/// A source of the current time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now, as microseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| Timestamp::from_micros(d.as_micros() as i64))
            .unwrap_or(Timestamp::EPOCH)
    }
}

/// A clock that starts at the wall clock's time when it is made and then moves exactly as tokio's
/// `Instant` does: on paused tokio time it advances only when the runtime's timers do.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the wall clock's now, from here on driven by tokio's time.
    pub fn new() -> TokioClock {
        TokioClock::starting_at(SystemClock.now())
    }

    /// A clock reading `start` now, from here on driven by tokio's time.
    pub fn starting_at(start: Timestamp) -> TokioClock {
        TokioClock {
            start,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        self.start + i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
    }
}

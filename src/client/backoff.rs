//! Reconnect delays: exponential (1, 2, 4 … s), capped (30 s), with "equal jitter" so that
//! many clients cut off at once do not reconnect in lockstep; and [`Retries`], the budget of
//! failures in a row (reset by progress) that both clients give up after.
//!
//! Pure arithmetic plus one random draw; this module must not sleep or know about sockets.

use std::time::Duration;

/// How delays grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// No delay exceeds this.
    pub max: Duration,
    /// Share of each delay that is randomised, 0.0–1.0: 0.5 draws from [d/2, d].
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

/// The delays of one run of failures; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The growth rule.
    config: BackoffConfig,
    /// Failures since the last reset: the exponent of the next delay.
    failures: u32,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// The un-jittered delay after `failures` earlier failures: initial × 2^failures, capped.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.min(31));
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// The next delay to wait, jittered; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.jittered(self.base_delay(self.failures), fastrand::f64());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// `base` with its jittered share scaled by `draw` (0.0–1.0).
    pub fn jittered(&self, base: Duration, draw: f64) -> Duration {
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter + jitter * draw.clamp(0.0, 1.0))
    }

    /// Starts over from the initial delay (after a connection made progress).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The retry budget of one job: consecutive failures without progress, up to a maximum.
#[derive(Debug, Clone)]
pub struct Retries {
    /// The delays between attempts.
    backoff: Backoff,
    /// Failures since the last attempt that made progress.
    failures: u32,
    /// Failures tolerated in a row before giving up.
    max: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait `delay`, then make attempt number `attempt` of this run of failures.
    Retry {
        /// Failures in a row so far.
        attempt: u32,
        /// How long to wait.
        delay: Duration,
    },
    /// Too many failures in a row: stop after `attempts`.
    GiveUp {
        /// Failures in a row.
        attempts: u32,
    },
}

impl Retries {
    /// A fresh budget of `max` failures in a row.
    pub fn new(config: BackoffConfig, max: u32) -> Self {
        Retries {
            backoff: Backoff::new(config),
            failures: 0,
            max,
        }
    }

    /// The tolerated failures in a row.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Counts a failed attempt; an attempt that made `progress` starts the count afresh. The
    /// server's `retry_after` hint, when it gave one, wins over the backoff schedule.
    pub fn failed(&mut self, progress: bool, retry_after: Option<Duration>) -> Next {
        if progress {
            self.failures = 0;
            self.backoff.reset();
        }
        self.failures += 1;
        if self.failures > self.max {
            return Next::GiveUp {
                attempts: self.failures,
            };
        }
        Next::Retry {
            attempt: self.failures,
            delay: retry_after.unwrap_or_else(|| self.backoff.next_delay()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_up_to_the_cap() {
        let b = Backoff::new(BackoffConfig::default());
        let secs: Vec<u64> = (0..8).map(|n| b.base_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        // No overflow however long the run of failures.
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_the_full_delay() {
        let b = Backoff::new(BackoffConfig::default());
        let base = Duration::from_secs(8);
        assert_eq!(b.jittered(base, 0.0), Duration::from_secs(4));
        assert_eq!(b.jittered(base, 1.0), base);
        assert_eq!(b.jittered(base, 7.0), base, "draws are clamped");
        let mut b = Backoff::new(BackoffConfig::default());
        for n in 0..20 {
            let d = b.next_delay();
            let full = b.base_delay(n);
            assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        });
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(4));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn retries_give_up_after_the_budget_and_progress_starts_it_afresh() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        let mut retries = Retries::new(config, 2);
        let hint = Some(Duration::from_millis(7));
        assert_eq!(
            retries.failed(false, hint),
            Next::Retry {
                attempt: 1,
                delay: Duration::from_millis(7)
            }
        );
        assert!(matches!(
            retries.failed(false, None),
            Next::Retry { attempt: 2, .. }
        ));
        assert_eq!(retries.failed(false, None), Next::GiveUp { attempts: 3 });
        assert!(matches!(
            retries.failed(true, None),
            Next::Retry { attempt: 1, .. }
        ));
    }
}

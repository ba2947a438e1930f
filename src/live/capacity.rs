//! Live capacity: how much of the Whisper workers' time the open live streams use, measured
//! from their recent hypotheses, and whether one more stream fits.
//!
//! Each admitted stream holds a [`StreamLoad`] and reports every hypothesis: the worker time
//! it took and the wall time since the stream's previous report. Its demand is the smoothed
//! ratio (worker-seconds per second: a stream that keeps a worker busy half the time demands
//! 0.5; one that lags has jobs back to back and demands about 1). A new stream is admitted
//! while the streams' demands, plus what a typical stream has demanded lately, stay within the
//! limit (the workers times the share live streams may fill). The first stream is always
//! admitted; a machine slowed by other work shows it as longer hypotheses, hence higher
//! demands, and takes fewer streams. Dropping a `StreamLoad` frees its share.
//!
//! This module must not read the clock, block, or know sockets and Whisper: callers measure and
//! report, this only adds up (everything here is testable with plain values).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Weight of the newest measurement in a stream's smoothed demand.
const WEIGHT: f64 = 0.3;

/// The live streams' shared account of worker time.
#[derive(Debug)]
pub struct LiveCapacity {
    /// Worker-seconds per second all live streams may use together.
    limit: f64,
    /// The admitted streams' demands.
    loads: Mutex<Loads>,
}

#[derive(Debug, Default)]
struct Loads {
    /// Id of the next admitted stream.
    next_id: u64,
    /// Demand of each admitted stream; `None` until its first report.
    streams: HashMap<u64, Option<f64>>,
    /// A typical stream's demand (smoothed over every report of every stream), counted for a
    /// stream that has not reported yet and for the one asking to join; kept after streams end.
    typical: Option<f64>,
}

impl Loads {
    /// What the admitted streams demand together.
    fn total(&self) -> f64 {
        let typical = self.typical.unwrap_or(0.0);
        self.streams.values().map(|d| d.unwrap_or(typical)).sum()
    }
}

/// Live capacity is exhausted; the client should retry later.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("live streams use {demand:.2} of {limit:.2} worker-seconds per second")]
pub struct Full {
    /// What the open streams demand (worker-seconds per second), for the log.
    pub demand: f64,
    /// The limit it was measured against.
    pub limit: f64,
}

impl LiveCapacity {
    /// An account for `workers` Whisper workers of which live streams may fill `share`
    /// (0.75: three quarters of each worker's time).
    pub fn new(workers: usize, share: f64) -> Arc<Self> {
        Arc::new(LiveCapacity {
            limit: workers.max(1) as f64 * share.max(0.0),
            loads: Mutex::new(Loads::default()),
        })
    }

    fn loads(&self) -> std::sync::MutexGuard<'_, Loads> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a stream if it fits: the first always does, a later one while the open streams
    /// and a typical one more stay within the limit.
    pub fn admit(self: &Arc<Self>) -> Result<StreamLoad, Full> {
        let mut loads = self.loads();
        let demand = loads.total();
        let next = loads.typical.unwrap_or(0.0);
        if !loads.streams.is_empty() && demand + next > self.limit {
            return Err(Full {
                demand,
                limit: self.limit,
            });
        }
        let id = loads.next_id;
        loads.next_id += 1;
        loads.streams.insert(id, None);
        Ok(StreamLoad {
            capacity: self.clone(),
            id,
        })
    }

    /// What the open streams demand now (worker-seconds per second).
    pub fn demand(&self) -> f64 {
        self.loads().total()
    }

    /// Live streams open now.
    pub fn streams(&self) -> usize {
        self.loads().streams.len()
    }
}

/// One admitted stream's share; dropping it frees the share.
#[derive(Debug)]
pub struct StreamLoad {
    /// The account this share is in.
    capacity: Arc<LiveCapacity>,
    /// The stream's key in the account.
    id: u64,
}

impl StreamLoad {
    /// Reports a hypothesis: `busy_secs` of worker time over `wall_secs` since the stream's
    /// previous report (or its start).
    pub fn record(&self, busy_secs: f64, wall_secs: f64) {
        if !(busy_secs.is_finite() && wall_secs.is_finite()) || busy_secs < 0.0 {
            return;
        }
        let ratio = (busy_secs / wall_secs.max(busy_secs).max(1e-3)).min(1.0);
        let smooth = |old: Option<f64>| old.map_or(ratio, |d| d + WEIGHT * (ratio - d));
        let mut loads = self.capacity.loads();
        loads.typical = Some(smooth(loads.typical));
        if let Some(demand) = loads.streams.get_mut(&self.id) {
            *demand = Some(smooth(*demand));
        }
    }
}

/// A stream's share and when it last reported: what a transport holds for each live stream
/// (WebSocket stream, Realtime session, Wyoming utterance). The caller passes the time in.
#[derive(Debug)]
pub struct Metered {
    /// The share in the account; dropping this frees it.
    load: StreamLoad,
    /// When the stream last reported (or was admitted): the wall time of the next report
    /// counts from here.
    last: Instant,
}

impl Metered {
    /// A share admitted at `now`.
    pub fn new(load: StreamLoad, now: Instant) -> Self {
        Metered { load, last: now }
    }

    /// Reports a hypothesis of `busy_secs` that finished at `now`, over at least
    /// `min_wall_secs` (the stream's longest step: a stream demands what it needs at its
    /// slowest pace, not the spare time its step takes up).
    pub fn report(&mut self, busy_secs: f64, now: Instant, min_wall_secs: f64) {
        let wall = now
            .saturating_duration_since(std::mem::replace(&mut self.last, now))
            .as_secs_f64();
        self.load.record(busy_secs, wall.max(min_wall_secs));
    }
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.capacity.loads().streams.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stream_is_always_admitted() {
        let capacity = LiveCapacity::new(1, 0.0);
        let first = capacity.admit().expect("nothing open yet");
        first.record(5.0, 1.0);
        assert!(capacity.admit().is_err());
        drop(first);
        assert!(capacity.admit().is_ok(), "its share is freed");
    }

    #[test]
    fn streams_are_admitted_while_their_measured_demand_fits() {
        let capacity = LiveCapacity::new(1, 0.75);
        let a = capacity.admit().unwrap();
        a.record(0.25, 1.0);
        let b = capacity.admit().expect("0.25 + 0.25 fits in 0.75");
        b.record(0.25, 1.0);
        let c = capacity.admit().expect("0.5 + 0.25 fits");
        let full = capacity.admit().expect_err("0.75 + 0.25 does not");
        assert!((full.demand - 0.75).abs() < 1e-9, "{full:?}");
        drop(c);
        assert_eq!(capacity.streams(), 2);
        assert!(capacity.admit().is_ok());
    }

    #[test]
    fn a_slower_machine_shows_in_the_demand_and_takes_fewer_streams() {
        let capacity = LiveCapacity::new(1, 0.75);
        let a = capacity.admit().unwrap();
        for _ in 0..20 {
            a.record(0.2, 1.0);
        }
        assert!(capacity.admit().is_ok());
        for _ in 0..20 {
            a.record(0.5, 1.0);
        }
        assert!(
            capacity.admit().is_err(),
            "0.5 now, and a typical stream as much"
        );
    }

    #[test]
    fn a_metered_share_reports_over_the_time_since_its_last_report() {
        let capacity = LiveCapacity::new(1, 0.75);
        let start = Instant::now();
        let mut share = Metered::new(capacity.admit().unwrap(), start);
        share.report(0.5, start + std::time::Duration::from_secs(2), 1.0);
        assert!((capacity.demand() - 0.25).abs() < 1e-9, "0.5 s of 2 s");
        // 0.1 s later, but the wall time counts at least the step of 1 s.
        share.report(0.5, start + std::time::Duration::from_millis(2100), 1.0);
        assert!((capacity.demand() - (0.25 + 0.3 * 0.25)).abs() < 1e-9);
        drop(share);
        assert_eq!(capacity.streams(), 0);
    }

    #[test]
    fn a_lagging_stream_counts_as_a_whole_worker() {
        let capacity = LiveCapacity::new(2, 0.75);
        let a = capacity.admit().unwrap();
        a.record(3.0, 0.5);
        assert!((capacity.demand() - 1.0).abs() < 1e-9);
        a.record(f64::NAN, 1.0);
        assert!(
            (capacity.demand() - 1.0).abs() < 1e-9,
            "nonsense is ignored"
        );
    }
}

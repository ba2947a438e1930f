//! How many whisper.cpp threads a live stream's next hypothesis uses.
//!
//! whisper.cpp's threads wait for each other at barriers by spinning: on a machine whose cores
//! are busy with other work, a hypothesis on all the configured threads can take several times
//! longer than on one (docs/BENCHMARKS.md, "Live latency", the `--hog` rows). So a stream
//! measures what its hypotheses cost on the configured count and, now and then, on one thread
//! (inference seconds per second of audio, the least of the last few: one slow hypothesis is
//! often a moment's preemption, a load that stays raises them all), and moves to one thread
//! once that is clearly cheaper. It stays there: a hypothesis run on all threads to see
//! whether the load has gone stalled a stream for 8 s under load, while one thread keeps a
//! stream at real time on a quiet machine too; new streams start on the configured count.
//!
//! This module must not measure time, read the machine's load or run Whisper: the caller
//! reports what each hypothesis cost.

/// Hypotheses on the configured count between two measurements of one thread.
const PROBE_EVERY: u32 = 8;
/// How much cheaper one thread must be to move to it: less is noise.
const CLEARLY: f64 = 1.25;
/// Costs kept per count: a load that lasts this many hypotheses counts.
const RECENT: usize = 4;
/// Audio shorter than this says little about the cost per second (fixed costs dominate).
const MIN_AUDIO_SECS: f64 = 0.5;
/// Inference time has a fixed part worth about this much audio (measured with tiny.en: 0.1 s
/// plus 0.021 s per audio second on two threads, 0.13 s plus 0.035 s on one); costs are per
/// second of audio plus this, so short and long hypotheses compare.
const FIXED_AUDIO_SECS: f64 = 4.0;

/// Per-stream choice between the configured thread count and one thread.
#[derive(Debug, Clone)]
pub struct ThreadChoice {
    /// The configured count (`--threads`); the only other candidate is 1.
    max: usize,
    /// Costs (inference seconds per audio second plus [`FIXED_AUDIO_SECS`]) of the last
    /// hypotheses with `max` threads.
    with_max: Costs,
    /// The cost of the latest hypothesis on one thread: it runs once in a while, so the
    /// latest is the one that says what one thread costs now.
    with_one: Option<f64>,
    /// Hypotheses since one thread was last measured.
    since_probe: u32,
    /// Whether the stream moved to one thread (for good).
    on_one: bool,
}

impl ThreadChoice {
    /// A stream allowed `max` threads per hypothesis (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            with_max: Costs::default(),
            with_one: None,
            since_probe: 0,
            on_one: max <= 1,
        }
    }

    /// The thread count for the next hypothesis.
    pub fn next_count(&mut self) -> usize {
        if self.on_one {
            return 1;
        }
        let Some(max) = self.with_max.estimate() else {
            return self.max;
        };
        let Some(one) = self.with_one else {
            return 1;
        };
        if max > CLEARLY * one {
            self.on_one = true;
            return 1;
        }
        self.since_probe += 1;
        if self.since_probe > PROBE_EVERY {
            self.since_probe = 0;
            return 1;
        }
        self.max
    }

    /// What a hypothesis on `threads` threads cost: `busy_secs` of inference for `audio_secs`
    /// of audio.
    pub fn observe(&mut self, threads: usize, audio_secs: f64, busy_secs: f64) {
        if audio_secs < MIN_AUDIO_SECS || !busy_secs.is_finite() || busy_secs < 0.0 {
            return;
        }
        let cost = busy_secs / (audio_secs + FIXED_AUDIO_SECS);
        if threads == 1 {
            self.with_one = Some(cost);
        } else if threads == self.max {
            self.with_max.add(cost);
        }
    }
}

/// The last [`RECENT`] costs of one thread count.
#[derive(Debug, Clone, Default)]
struct Costs(std::collections::VecDeque<f64>);

impl Costs {
    /// The least of the recent costs; `None` until one is measured.
    fn estimate(&self) -> Option<f64> {
        self.0.iter().copied().reduce(f64::min)
    }

    /// Adds a cost, forgetting the oldest beyond [`RECENT`].
    fn add(&mut self, cost: f64) {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` hypotheses of 5 s whose cost per audio second is `cost(threads)`; returns the
    /// counts used.
    fn run(choice: &mut ThreadChoice, n: usize, mut cost: impl FnMut(usize) -> f64) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let threads = choice.next_count();
                choice.observe(threads, 5.0, 5.0 * cost(threads));
                threads
            })
            .collect()
    }

    fn quiet(threads: usize) -> f64 {
        if threads == 1 {
            0.1
        } else {
            0.06
        }
    }

    #[test]
    fn one_configured_thread_is_always_one() {
        let mut c = ThreadChoice::new(1);
        assert!(run(&mut c, 20, |_| 0.1).iter().all(|&t| t == 1));
    }

    #[test]
    fn a_quiet_machine_keeps_the_configured_threads() {
        let mut c = ThreadChoice::new(2);
        let used = run(&mut c, 40, quiet);
        assert_eq!(&used[..2], &[2, 1], "both counts measured first");
        let ones = used[2..].iter().filter(|&&t| t == 1).count();
        assert!(ones <= 38 / PROBE_EVERY as usize + 1, "{used:?}");
        assert_eq!(used.last(), Some(&2));
    }

    #[test]
    fn busy_cores_move_the_stream_to_one_thread_for_good() {
        let mut c = ThreadChoice::new(2);
        run(&mut c, 10, quiet);
        // Another process takes a core: two threads spin at barriers and cost three times more.
        let loaded = run(&mut c, 30, |t| if t == 2 { 0.3 } else { 0.1 });
        let last_on_two = loaded.iter().rposition(|&t| t == 2).unwrap_or(0);
        assert!(last_on_two < RECENT + PROBE_EVERY as usize, "{loaded:?}");
        assert!(run(&mut c, 30, quiet).iter().all(|&t| t == 1));
        assert_eq!(
            ThreadChoice::new(2).next_count(),
            2,
            "a new stream starts over"
        );
    }

    #[test]
    fn one_slow_hypothesis_does_not_switch() {
        let mut c = ThreadChoice::new(2);
        run(&mut c, 10, quiet);
        let mut spikes = [0.5].into_iter();
        let used = run(&mut c, 6, |t| {
            if t == 2 {
                spikes.next().unwrap_or(quiet(t))
            } else {
                quiet(t)
            }
        });
        let ones = used.iter().filter(|&&t| t == 1).count();
        assert!(
            ones <= 1 && used.last() == Some(&2),
            "only a scheduled probe: {used:?}"
        );
    }

    #[test]
    fn short_and_long_hypotheses_compare() {
        // tiny.en on two threads: 0.14 s for 2 s of audio, 0.30 s for 10 s; on one thread
        // 0.21 s for 2 s, 0.44 s for 9 s. A short hypothesis on two threads is still cheaper.
        let mut c = ThreadChoice::new(2);
        c.observe(2, 10.0, 0.30);
        c.observe(1, 9.0, 0.44);
        c.observe(2, 2.0, 0.14);
        assert_eq!(c.next_count(), 2);
        c.observe(1, 2.0, 0.21);
        assert_eq!(c.next_count(), 2);
    }

    #[test]
    fn nonsense_measurements_are_ignored() {
        let mut c = ThreadChoice::new(2);
        assert_eq!(c.next_count(), 2);
        c.observe(2, 0.1, 50.0);
        c.observe(2, 5.0, f64::NAN);
        c.observe(3, 5.0, 1.0);
        assert_eq!(c.next_count(), 2, "nothing measured yet");
    }
}

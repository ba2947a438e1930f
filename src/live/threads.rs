//! How many whisper.cpp threads a live stream's next hypothesis uses.
//!
//! whisper.cpp's threads wait for each other at barriers by spinning: on a machine whose cores
//! are busy with other work, a hypothesis on all the configured threads can take several times
//! longer than on one (docs/BENCHMARKS.md, "Live latency", the `--hog` rows). Two signals move
//! a stream between the configured count and one thread:
//! - **What its hypotheses cost** (inference seconds per second of audio, the least of the last
//!   few: one slow hypothesis is often a moment's preemption, a load that stays raises them
//!   all), measured on the configured count and, now and then, on one thread. One thread
//!   clearly cheaper moves the stream there. This sees every kind of contention, its own
//!   server's other streams too.
//! - **How many cores other processes leave free**, as the caller reads them between
//!   hypotheses. Too few for the configured count, twice in a row, moves the stream to one
//!   thread before its costs show it; enough again, for a few readings in a row, moves it back
//!   (a hypothesis on all threads to *see* whether a load has gone stalled a stream for 8 s).
//!   A move back that the costs undo soon (the contention was the server's own streams, which
//!   the reading does not count) doubles the readings the next one waits for.
//!
//! This module must not measure time, read the machine's load or run Whisper: the caller
//! reports what each hypothesis cost and how many cores were free.

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
/// Free cores count as enough for the configured count when at least this close to it: a
/// client, a shell or the kernel's own work take a few per cent of a core all the time.
const FREE_SLACK: f64 = 0.3;
/// Readings in a row that say the same before the stream moves on them: one is a moment.
const BUSY_READINGS: u32 = 2;
/// Readings of enough free cores in a row before the first move back to the configured count.
const FIRST_WAIT: u32 = 2;
/// The most readings a move back waits for, however often the costs undid it.
const MAX_WAIT: u32 = 64;
/// A move back that lasts this many hypotheses was right: the next waits [`FIRST_WAIT`] again.
const HELD: u32 = 16;

/// Per-stream choice between the configured thread count and one thread.
#[derive(Debug, Clone)]
pub struct ThreadChoice {
    /// The configured count (`--threads`); the only other candidate is 1.
    max: usize,
    /// Costs (inference seconds per audio second plus [`FIXED_AUDIO_SECS`]) of the last
    /// hypotheses with `max` threads; forgotten on a move back (they were measured under load).
    with_max: Costs,
    /// The cost of the latest hypothesis on one thread: it runs once in a while, so the
    /// latest is the one that says what one thread costs now.
    with_one: Option<f64>,
    /// Hypotheses since one thread was last measured.
    since_probe: u32,
    /// Whether the stream runs on one thread until the cores are free again.
    on_one: bool,
    /// Readings in a row that disagree with where the stream is (too few free cores while on
    /// `max`, enough while on one).
    readings: u32,
    /// Readings of enough free cores a move back waits for (doubles when the costs undo one).
    wait: u32,
    /// Hypotheses on `max` since the last move back, while fewer than [`HELD`]: a move to one
    /// thread within them means the move back was wrong.
    since_back: Option<u32>,
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
            readings: 0,
            wait: FIRST_WAIT,
            since_back: None,
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
            self.move_to_one(true);
            return 1;
        }
        self.since_back = self.since_back.map(|n| n + 1).filter(|&n| n < HELD);
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

    /// How many cores other processes left free since the previous reading (on average; the
    /// stream's own server excluded).
    pub fn observe_free_cores(&mut self, free: f64) {
        if self.max <= 1 || !free.is_finite() {
            return;
        }
        let enough = free >= self.max as f64 - FREE_SLACK;
        self.readings = if enough == self.on_one {
            self.readings + 1
        } else {
            0
        };
        if self.on_one && self.readings >= self.wait {
            self.move_back();
        } else if !self.on_one && self.readings >= BUSY_READINGS {
            self.move_to_one(false);
        }
    }

    /// Moves to one thread; `by_costs` when the costs said so, which right after a move back
    /// means that move was wrong.
    fn move_to_one(&mut self, by_costs: bool) {
        self.wait = match self.since_back {
            Some(_) if by_costs => (self.wait * 2).min(MAX_WAIT),
            Some(_) => self.wait,
            None => FIRST_WAIT,
        };
        self.on_one = true;
        self.readings = 0;
        self.since_back = None;
    }

    fn move_back(&mut self) {
        self.on_one = false;
        self.readings = 0;
        self.with_max = Costs::default();
        self.since_probe = 0;
        self.since_back = Some(0);
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

    /// Runs `n` hypotheses of 5 s whose cost per audio second is `cost(threads)`, each followed
    /// by a reading of `free` cores (NaN: none); returns the counts used.
    fn run_reading(
        choice: &mut ThreadChoice,
        n: usize,
        free: f64,
        mut cost: impl FnMut(usize) -> f64,
    ) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let threads = choice.next_count();
                choice.observe(threads, 5.0, 5.0 * cost(threads));
                choice.observe_free_cores(free);
                threads
            })
            .collect()
    }

    /// [`run_reading`] without readings (a machine whose load cannot be read).
    fn run(choice: &mut ThreadChoice, n: usize, cost: impl FnMut(usize) -> f64) -> Vec<usize> {
        run_reading(choice, n, f64::NAN, cost)
    }

    /// Cost per audio second on a quiet machine: two threads are cheaper.
    fn quiet(threads: usize) -> f64 {
        [0.1, 0.06][usize::from(threads > 1)]
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
    fn busy_cores_move_the_stream_to_one_thread() {
        let mut c = ThreadChoice::new(2);
        run(&mut c, 10, quiet);
        // Another process takes a core: two threads spin at barriers and cost three times more.
        let loaded = run(&mut c, 30, |t| if t == 2 { 0.3 } else { 0.1 });
        let last_on_two = loaded.iter().rposition(|&t| t == 2).unwrap_or(0);
        assert!(last_on_two < RECENT + PROBE_EVERY as usize, "{loaded:?}");
        assert!(
            run(&mut c, 30, quiet).iter().all(|&t| t == 1),
            "without readings of free cores nothing says the load has gone"
        );
        assert_eq!(
            ThreadChoice::new(2).next_count(),
            2,
            "a new stream starts over"
        );
    }

    /// Cost per audio second with another process on a core: two threads spin.
    fn hogged(threads: usize) -> f64 {
        [0.1, 0.3][usize::from(threads > 1)]
    }

    #[test]
    fn the_stream_follows_a_load_that_comes_and_goes() {
        let mut c = ThreadChoice::new(2);
        run_reading(&mut c, 10, 1.95, quiet);
        // A hog takes a core: two readings say so before the costs could.
        let loaded = run_reading(&mut c, 20, 1.0, hogged);
        assert_eq!(&loaded[2..], &[1; 18], "{loaded:?}");
        // It ends: the stream is back on two threads after a few readings, and stays.
        let after = run_reading(&mut c, 30, 1.95, quiet);
        let back = after.iter().position(|&t| t == 2).expect("moves back");
        assert!(back <= FIRST_WAIT as usize, "{after:?}");
        let ones = after[back..].iter().filter(|&&t| t == 1).count();
        assert!(
            ones <= 30 / PROBE_EVERY as usize + 1,
            "only probes: {after:?}"
        );
    }

    #[test]
    fn a_single_busy_reading_does_not_move_the_stream() {
        let mut c = ThreadChoice::new(2);
        run_reading(&mut c, 10, 1.95, quiet);
        for free in [0.9, 1.95, 0.9, 1.95, 0.9, 1.95] {
            let before = c.clone().on_one;
            c.observe_free_cores(free);
            assert_eq!(c.on_one, before);
        }
        assert!(c.next_count() == 2 || c.since_probe == 0);
    }

    #[test]
    fn contention_the_readings_miss_is_tried_ever_more_rarely() {
        // The server's own streams share the cores: the readings (other processes only) say
        // the cores are free, the costs say two threads spin. Each move back is undone by the
        // costs, and waits twice as long as the one before.
        let mut c = ThreadChoice::new(2);
        let used = run_reading(&mut c, 400, 2.0, hogged);
        let backs: Vec<usize> = (1..used.len())
            .filter(|&i| used[i - 1] == 1 && used[i] == 2)
            .collect();
        let gaps: Vec<usize> = backs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{gaps:?}");
        assert!(
            gaps.len() >= 3 && gaps[gaps.len() - 1] > 4 * gaps[0],
            "{gaps:?}"
        );
        let on_two = used.iter().filter(|&&t| t == 2).count();
        assert!(
            on_two <= 2 * backs.len(),
            "{on_two} hypotheses spun: {used:?}"
        );
        assert_eq!(c.wait, MAX_WAIT);
    }

    #[test]
    fn a_move_back_that_holds_resets_the_wait() {
        let mut c = ThreadChoice::new(2);
        run_reading(&mut c, 60, 2.0, hogged);
        assert!(c.wait > FIRST_WAIT);
        run_reading(&mut c, 200, 2.0, quiet);
        run_reading(&mut c, 10, 1.0, hogged);
        assert!(c.on_one);
        assert_eq!(c.wait, FIRST_WAIT, "a load after a good stretch is new");
    }

    #[test]
    fn nonsense_readings_are_ignored() {
        let mut c = ThreadChoice::new(2);
        for free in [f64::NAN, f64::NEG_INFINITY, f64::NAN] {
            c.observe_free_cores(free);
        }
        assert_eq!(c.next_count(), 2);
        let mut one = ThreadChoice::new(1);
        one.observe_free_cores(8.0);
        assert_eq!(one.next_count(), 1, "one configured thread is always one");
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

//! A live stream's whisper.cpp thread count: [`StreamThreads`] joins the pure choice
//! (`live::ThreadChoice`) to what the machine says — each hypothesis' cost, and how many cores
//! other processes left free since the previous one (Linux: `/proc/stat` less this process'
//! own time in `/proc/self/stat`). The WebSocket streams, Realtime sessions and Wyoming
//! utterances each hold one.
//!
//! This module must not decide the count (that is `live::threads`), run Whisper or keep
//! anything between streams: a reading covers one stream's time between two hypotheses.

use crate::inference::pool::JobSummary;
use crate::live::ThreadChoice;

/// One stream's thread choice and the machine readings that feed it.
#[derive(Debug)]
pub struct StreamThreads {
    /// The pure choice.
    choice: ThreadChoice,
    /// The machine's CPU counters at the previous hypothesis, to read the time since; `None`
    /// where they are not read: one configured thread leaves nothing to choose, or they
    /// could not be read at the stream's start (the choice then goes by costs alone).
    last: Option<CpuTicks>,
}

impl StreamThreads {
    /// A stream allowed `max` threads per hypothesis.
    pub fn new(max: usize) -> Self {
        Self {
            choice: ThreadChoice::new(max),
            last: (max > 1).then(CpuTicks::read).flatten(),
        }
    }

    /// The thread count for the next hypothesis.
    pub fn next_count(&mut self) -> usize {
        self.choice.next_count()
    }

    /// What a hypothesis on `threads` threads cost, and how busy the cores were meanwhile.
    pub fn observe(&mut self, threads: usize, summary: &JobSummary) {
        self.choice
            .observe(threads, summary.audio_secs, summary.processing_secs);
        let Some(before) = self.last else { return };
        let Some(now) = CpuTicks::read() else { return };
        if let Some(free) = now.free_cores_since(&before) {
            self.choice.observe_free_cores(free);
        }
        self.last = Some(now);
    }
}

/// The machine's CPU time counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTicks {
    /// Every tick of every core, idle or not.
    all: u64,
    /// Ticks some process (or the kernel) kept a core busy.
    busy: u64,
    /// Ticks this process ran (user and system).
    ours: u64,
    /// Cores the counters cover.
    cores: usize,
}

impl CpuTicks {
    /// Cores other processes left free between `before` and `self`, on average; `None` when
    /// no time passed (or the counters went backwards).
    fn free_cores_since(&self, before: &CpuTicks) -> Option<f64> {
        let all = self.all.checked_sub(before.all).filter(|&t| t > 0)?;
        let busy = self.busy.checked_sub(before.busy)?;
        let ours = self.ours.saturating_sub(before.ours);
        let others = busy.saturating_sub(ours) as f64 / all as f64;
        Some(self.cores as f64 * (1.0 - others.min(1.0)))
    }

    #[cfg(target_os = "linux")]
    fn read() -> Option<CpuTicks> {
        use procfs::CurrentSI;
        let stats = procfs::KernelStats::current().ok()?;
        let me = procfs::process::Process::myself().ok()?.stat().ok()?;
        let t = stats.total;
        let opt = |v: Option<u64>| v.unwrap_or(0);
        // guest time is counted in user already
        let busy = t.user + t.nice + t.system + opt(t.irq) + opt(t.softirq) + opt(t.steal);
        Some(CpuTicks {
            all: busy + t.idle + opt(t.iowait),
            busy,
            ours: me.utime + me.stime,
            cores: stats.cpu_time.len().max(1),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<CpuTicks> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(all: u64, busy: u64, ours: u64) -> CpuTicks {
        CpuTicks {
            all,
            busy,
            ours,
            cores: 2,
        }
    }

    #[test]
    fn our_own_work_leaves_the_cores_free() {
        let before = ticks(1000, 300, 100);
        // 200 ticks pass (100 per core): we ran 120 of them, nothing else did.
        let free = ticks(1200, 420, 220).free_cores_since(&before).unwrap();
        assert!((free - 2.0).abs() < 1e-9, "{free}");
    }

    #[test]
    fn another_process_on_one_core_leaves_one() {
        let before = ticks(1000, 300, 100);
        // 200 ticks: a hog ran 100 (one core), we ran 60.
        let free = ticks(1200, 460, 160).free_cores_since(&before).unwrap();
        assert!((free - 1.0).abs() < 1e-9, "{free}");
    }

    #[test]
    fn no_time_or_counters_going_back_read_nothing() {
        let t = ticks(1000, 300, 100);
        assert_eq!(t.free_cores_since(&t), None);
        assert_eq!(ticks(900, 300, 100).free_cores_since(&t), None);
        assert_eq!(ticks(1200, 200, 100).free_cores_since(&t), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_can_be_read() {
        let before = CpuTicks::read().expect("/proc/stat and /proc/self/stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = CpuTicks::read().unwrap();
        assert!(
            after.ours > before.ours,
            "our busy loop counted as ours ({x})"
        );
        let free = after.free_cores_since(&before).unwrap();
        assert!((0.0..=after.cores as f64).contains(&free), "{free}");
    }
}

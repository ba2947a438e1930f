//! Which models may be in memory at once: the memory budget, who uses each model, and which
//! idle model goes when another one needs the room ([`Residency`]).
//!
//! Pure bookkeeping over names, byte counts and instants the caller passes in, so every rule is
//! unit-tested without a model, a clock or a thread. The caller (`inference::served`) does the
//! loading and unloading this module decides on.
//!
//! This module must not load, free or read models, and must not read the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The models resident (or being loaded) and the budget they share. Cloning gives a copy to
/// try a decision on without making it.
#[derive(Debug, Clone)]
pub struct Residency {
    /// Bytes all resident models together may take (`--model-memory`).
    budget: u64,
    /// Every model loaded or being loaded, by name.
    models: HashMap<String, Resident>,
}

/// One model in memory, or on its way there.
#[derive(Debug, Clone)]
struct Resident {
    /// What it counts against the budget (its file size).
    bytes: u64,
    /// Leases held on it: requests, streams and jobs using it now. A model in use never goes.
    users: usize,
    /// When the last user let go (or it was loaded): the idle clock and the LRU order.
    last_used: Instant,
    /// Still being loaded: counted against the budget, not evictable, not usable yet.
    loading: bool,
    /// Never unloaded (the default model).
    pinned: bool,
}

impl Resident {
    /// A model no one uses yet, as of `now`.
    fn unused(bytes: u64, now: Instant, loading: bool, pinned: bool) -> Self {
        Self {
            bytes,
            users: 0,
            last_used: now,
            loading,
            pinned,
        }
    }
}

/// What must happen before a model can be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Idle models to unload to make room, least recently used first; they are already
    /// forgotten here.
    pub evict: Vec<String>,
}

/// Why a model cannot be loaded now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// The model alone is bigger than the whole budget; it can never be loaded.
    #[error("model {name} needs {needed} bytes, more than the whole model memory budget ({budget} bytes)")]
    TooBig {
        /// The model asked for.
        name: String,
        /// Its size.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// The models in use (or loading) leave too little room; it may fit once one of them is idle.
    #[error("model {name} does not fit in the model memory budget: the models in use ({}) leave too little room", busy.join(", "))]
    Busy {
        /// The model asked for.
        name: String,
        /// The models that hold the room and cannot be unloaded now.
        busy: Vec<String>,
    },
}

impl Residency {
    /// Nothing resident, `budget` bytes to share.
    pub fn new(budget: u64) -> Self {
        Residency {
            budget,
            models: HashMap::new(),
        }
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Changes the budget (the automatic one grows as model sizes become known). Models already
    /// resident stay even when they no longer fit; only admissions see the new budget.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Bytes taken by resident and loading models.
    pub fn used(&self) -> u64 {
        self.models.values().map(|m| m.bytes).sum()
    }

    /// Whether `name` is loaded and usable (not still loading).
    pub fn is_loaded(&self, name: &str) -> bool {
        self.models.get(name).is_some_and(|m| !m.loading)
    }

    /// Leases held on `name` now (0 when it is not resident).
    pub fn users(&self, name: &str) -> usize {
        self.models.get(name).map_or(0, |m| m.users)
    }

    /// Makes room for `name` (`bytes`) and reserves it as loading. Idle models go first by
    /// least recent use, only as many as needed; models in use, loading or pinned never go.
    /// Nothing changes when the answer is [`NoRoom`].
    pub fn admit(&mut self, name: &str, bytes: u64, now: Instant) -> Result<Admission, NoRoom> {
        if bytes > self.budget {
            return Err(NoRoom::TooBig {
                name: name.into(),
                needed: bytes,
                budget: self.budget,
            });
        }
        let evict = self.victims(bytes).ok_or_else(|| NoRoom::Busy {
            name: name.into(),
            busy: self.held(),
        })?;
        for victim in &evict {
            self.models.remove(victim);
        }
        self.models
            .insert(name.into(), Resident::unused(bytes, now, true, false));
        Ok(Admission { evict })
    }

    /// `name` finished loading and is usable.
    pub fn loaded(&mut self, name: &str, now: Instant) {
        if let Some(m) = self.models.get_mut(name) {
            m.loading = false;
            m.last_used = now;
        }
    }

    /// `name` could not be loaded: its reservation is given back.
    pub fn failed(&mut self, name: &str) {
        self.models.remove(name);
    }

    /// Records a model that is loaded and must never be unloaded (the default model). It counts
    /// against the budget like any other.
    pub fn pin(&mut self, name: &str, bytes: u64, now: Instant) {
        self.models
            .insert(name.into(), Resident::unused(bytes, now, false, true));
    }

    /// One more user of `name`; false when it is not loaded (the caller must load it first).
    pub fn acquire(&mut self, name: &str) -> bool {
        match self.models.get_mut(name) {
            Some(m) if !m.loading => {
                m.users += 1;
                true
            }
            _ => false,
        }
    }

    /// One user of `name` let go at `now`.
    pub fn release(&mut self, name: &str, now: Instant) {
        if let Some(m) = self.models.get_mut(name) {
            m.users = m.users.saturating_sub(1);
            m.last_used = now;
        }
    }

    /// Forgets and returns the models idle for at least `idle` at `now` (never pinned ones).
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<String> {
        let mut gone: Vec<String> = self
            .models
            .iter()
            .filter(|(_, m)| m.evictable() && now.saturating_duration_since(m.last_used) >= idle)
            .map(|(name, _)| name.clone())
            .collect();
        gone.sort();
        for name in &gone {
            self.models.remove(name);
        }
        gone
    }

    /// The idle models to unload, least recently used first, so that `bytes` more fit; `None`
    /// when even unloading every idle model would not make room.
    fn victims(&self, bytes: u64) -> Option<Vec<String>> {
        let mut idle: Vec<(&String, &Resident)> =
            self.models.iter().filter(|(_, m)| m.evictable()).collect();
        idle.sort_by_key(|(name, m)| (m.last_used, (*name).clone()));
        let mut used = self.used();
        let mut evict = Vec::new();
        for (name, m) in idle {
            if used + bytes <= self.budget {
                break;
            }
            used -= m.bytes;
            evict.push(name.clone());
        }
        (used + bytes <= self.budget).then_some(evict)
    }

    /// The models that cannot be unloaded now (in use, loading or pinned), sorted.
    fn held(&self) -> Vec<String> {
        let mut held: Vec<String> = self
            .models
            .iter()
            .filter(|(_, m)| !m.evictable())
            .map(|(name, _)| name.clone())
            .collect();
        held.sort();
        held
    }
}

impl Resident {
    /// Idle, loaded and not pinned: free to unload.
    fn evictable(&self) -> bool {
        self.users == 0 && !self.loading && !self.pinned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn load(r: &mut Residency, name: &str, bytes: u64, now: Instant) -> Vec<String> {
        let admission = r.admit(name, bytes, now).unwrap();
        r.loaded(name, now);
        admission.evict
    }

    /// A 300 MB budget full with a, b, c (100 MB each), loaded a second apart from `t`.
    fn full_of_three(t: Instant) -> Residency {
        let mut r = Residency::new(300 * MB);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            load(&mut r, name, 100 * MB, t + Duration::from_secs(i as u64));
        }
        r
    }

    #[test]
    fn models_that_fit_load_without_evicting() {
        let t = Instant::now();
        let mut r = Residency::new(300 * MB);
        assert!(load(&mut r, "a", 100 * MB, t).is_empty());
        assert!(load(&mut r, "b", 200 * MB, t).is_empty());
        assert_eq!(r.used(), 300 * MB);
        assert!(r.is_loaded("a") && r.is_loaded("b"));
    }

    #[test]
    fn the_least_recently_used_idle_model_goes_first() {
        let t = Instant::now();
        let mut r = full_of_three(t);
        // a is used again, so b is now the oldest
        assert!(r.acquire("a"));
        r.release("a", t + Duration::from_secs(3));
        let evicted = load(&mut r, "d", 100 * MB, t + Duration::from_secs(4));
        assert_eq!(evicted, ["b"]);
        assert!(!r.is_loaded("b") && r.is_loaded("a") && r.is_loaded("d"));
    }

    #[test]
    fn only_as_many_as_needed_go() {
        let t = Instant::now();
        let mut r = full_of_three(t);
        let evicted = load(&mut r, "big", 200 * MB, t + Duration::from_secs(3));
        assert_eq!(evicted, ["a", "b"]);
        assert_eq!(r.used(), 300 * MB);
    }

    #[test]
    fn models_in_use_loading_or_pinned_never_go_and_the_answer_is_busy() {
        let t = Instant::now();
        let mut r = Residency::new(300 * MB);
        r.pin("default", 100 * MB, t);
        load(&mut r, "a", 100 * MB, t);
        assert!(r.acquire("a"));
        r.admit("b", 100 * MB, t).unwrap(); // still loading
        let refused = r.admit("c", 100 * MB, t).unwrap_err();
        assert_eq!(
            refused,
            NoRoom::Busy {
                name: "c".into(),
                busy: vec!["a".into(), "b".into(), "default".into()],
            }
        );
        assert!(refused.to_string().contains("a, b, default"), "{refused}");
        // nothing changed by the refusal
        assert_eq!(r.used(), 300 * MB);
        // once a is idle it can go
        r.release("a", t + Duration::from_secs(1));
        r.loaded("b", t);
        assert_eq!(
            load(&mut r, "c", 100 * MB, t + Duration::from_secs(2)),
            ["b"]
        );
    }

    #[test]
    fn a_model_bigger_than_the_budget_is_refused_for_good() {
        let mut r = Residency::new(100 * MB);
        let err = r.admit("huge", 101 * MB, Instant::now()).unwrap_err();
        assert!(matches!(err, NoRoom::TooBig { .. }), "{err:?}");
        assert_eq!(r.used(), 0);
    }

    #[test]
    fn a_failed_load_gives_its_room_back() {
        let t = Instant::now();
        let mut r = Residency::new(100 * MB);
        r.admit("a", 100 * MB, t).unwrap();
        assert!(!r.acquire("a"), "a loading model is not usable");
        r.failed("a");
        assert_eq!(r.used(), 0);
        assert!(r.admit("b", 100 * MB, t).is_ok());
    }

    #[test]
    fn idle_models_expire_but_used_and_pinned_ones_stay() {
        let t = Instant::now();
        let idle = Duration::from_secs(600);
        let mut r = Residency::new(1000 * MB);
        r.pin("default", 100 * MB, t);
        load(&mut r, "a", 100 * MB, t);
        load(&mut r, "b", 100 * MB, t);
        assert!(r.acquire("b"));
        assert!(r.expire(t + Duration::from_secs(599), idle).is_empty());
        assert_eq!(r.expire(t + idle, idle), ["a"]);
        // b is still in use long after: it stays; once let go its idle clock starts then
        assert!(r.expire(t + 3 * idle, idle).is_empty());
        r.release("b", t + 3 * idle);
        assert!(r
            .expire(t + 3 * idle + Duration::from_secs(1), idle)
            .is_empty());
        assert_eq!(r.expire(t + 4 * idle, idle), ["b"]);
        assert!(r.is_loaded("default"));
        assert_eq!(r.used(), 100 * MB);
    }

    #[test]
    fn users_are_counted() {
        let t = Instant::now();
        let mut r = Residency::new(100 * MB);
        load(&mut r, "a", 10 * MB, t);
        assert!(r.acquire("a") && r.acquire("a"));
        assert_eq!(r.users("a"), 2);
        r.release("a", t);
        assert_eq!(r.users("a"), 1);
        assert!(!r.acquire("nothing"));
    }
}

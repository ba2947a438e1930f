//! The connections waiting for a request head, oldest first, and the cap on how many may wait.
//!
//! A connection waits from the moment it is accepted until its request head is complete, and
//! again between keep-alive requests; it does not while a request runs or once it is a
//! WebSocket. Waiting connections hold a descriptor and do nothing, so they are the ones to
//! shed: when one more would exceed the cap, the one that has waited longest is told to close.
//! A flood of silent sockets thus pushes out its own oldest members while a health check, which
//! sends its head at once, gets through.
//!
//! Book-keeping only: this module must not touch sockets or HTTP. It cancels a connection's
//! token; the connection's task does the closing.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::metrics;

/// The queue of waiting connections.
pub struct Pending {
    /// Most connections that may wait at once (at least 1).
    cap: usize,
    /// The queue itself, behind a lock held only for map operations.
    queue: Mutex<Queue>,
}

/// Waiting connections by place; a lower place waited longer.
struct Queue {
    /// The place the next connection to wait gets; only grows, so places order by age.
    next: u64,
    /// Each waiting connection's close token, by place.
    waiting: BTreeMap<u64, CancellationToken>,
}

impl Pending {
    /// An empty queue with room for `cap` connections (0 is taken as 1).
    pub fn new(cap: usize) -> Self {
        Pending {
            cap: cap.max(1),
            queue: Mutex::new(Queue {
                next: 0,
                waiting: BTreeMap::new(),
            }),
        }
    }

    /// Puts a connection at the back of the queue and returns its place; if the queue is then
    /// over the cap, the connections at the front are told to close.
    pub fn enter(&self, close: &CancellationToken) -> u64 {
        let mut queue = self.lock();
        let place = queue.next;
        queue.next += 1;
        queue.waiting.insert(place, close.clone());
        while queue.waiting.len() > self.cap {
            shed_first(&mut queue);
        }
        metrics::pending_connections(queue.waiting.len());
        place
    }

    /// Takes a connection out of the queue (its head arrived, or it ended). Nothing happens if
    /// it was shed already.
    pub fn leave(&self, place: u64) {
        let mut queue = self.lock();
        queue.waiting.remove(&place);
        metrics::pending_connections(queue.waiting.len());
    }

    /// Tells the connection that has waited longest to close, to free its descriptor; whether
    /// there was one.
    pub fn shed_oldest(&self) -> bool {
        let mut queue = self.lock();
        let shed = shed_first(&mut queue);
        metrics::pending_connections(queue.waiting.len());
        shed
    }

    /// How many connections wait now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The queue, even if a thread panicked while holding it (the map stays consistent: every
    /// operation on it is a single insert or remove).
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes the front of the queue and cancels its token; whether there was one.
fn shed_first(queue: &mut Queue) -> bool {
    let Some((_, close)) = queue.waiting.pop_first() else {
        return false;
    };
    close.cancel();
    metrics::connection_shed("evicted");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_cap_the_oldest_is_told_to_close() {
        let pending = Pending::new(2);
        let tokens: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let places: Vec<u64> = tokens.iter().map(|t| pending.enter(t)).collect();
        assert!(tokens[0].is_cancelled());
        assert!(!tokens[1].is_cancelled() && !tokens[2].is_cancelled());
        assert_eq!(pending.len(), 2);

        pending.leave(places[1]); // its head arrived
        let newcomer = CancellationToken::new();
        pending.enter(&newcomer);
        assert!(
            !tokens[2].is_cancelled(),
            "room was made by leaving, not shedding"
        );
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn shedding_takes_the_longest_waiting_and_stops_when_empty() {
        let pending = Pending::new(8);
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        pending.enter(&a);
        pending.enter(&b);
        assert!(pending.shed_oldest());
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert!(pending.shed_oldest());
        assert!(!pending.shed_oldest());
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn leaving_after_being_shed_is_harmless() {
        let pending = Pending::new(1);
        let a = CancellationToken::new();
        let place = pending.enter(&a);
        pending.enter(&CancellationToken::new());
        pending.leave(place);
        assert_eq!(pending.len(), 1);
    }
}

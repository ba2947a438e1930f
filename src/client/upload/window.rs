//! Which chunks may go now on the binary path: the window rule of docs/PROTOCOL.md §4 as
//! pure bookkeeping, so it is tested without a server.
//!
//! This module must NOT do I/O, know about connections or clocks, or decide when to give up
//! beyond counting a chunk's refusals.

use std::collections::{BTreeSet, HashMap};

use super::{refused_too_often, MAX_REFUSALS_PER_CHUNK};
use crate::client::ClientError;

/// Which chunks may go now on the binary path (pure bookkeeping, no I/O).
///
/// The window rule of docs/PROTOCOL.md §4: with the latest `received_through` R and window W,
/// chunk `i` may be sent only if `i < R + W`. Refused chunks are queued again.
#[derive(Debug)]
pub(crate) struct SendWindow {
    /// Chunks still to send, lowest first.
    queue: BTreeSet<u32>,
    /// Chunks sent at or above `received_through` (not yet known stored).
    in_flight: BTreeSet<u32>,
    /// Every chunk below this is stored on the server.
    received_through: u32,
    /// W.
    window: u32,
    /// Times each chunk was refused, to stop resending a chunk that always fails.
    refusals: HashMap<u32, u32>,
}

impl SendWindow {
    /// A window over `chunks` (everything below the lowest is taken as stored).
    pub(crate) fn new(queue: BTreeSet<u32>, window: u32) -> Self {
        let received_through = queue.first().copied().unwrap_or(0);
        SendWindow {
            queue,
            in_flight: BTreeSet::new(),
            received_through,
            window: window.max(1),
            refusals: HashMap::new(),
        }
    }

    /// The next chunk to send now, if the window allows one.
    pub(crate) fn next(&mut self) -> Option<u32> {
        let &index = self.queue.first()?;
        let limit = self.received_through.saturating_add(self.window);
        if index >= limit {
            return None;
        }
        self.queue.pop_first();
        self.in_flight.insert(index);
        Some(index)
    }

    /// A cumulative ack: slides the window and requeues holes nobody is resending.
    pub(crate) fn on_ack(&mut self, received_through: u32, missing: &[u32]) {
        self.received_through = self.received_through.max(received_through);
        self.in_flight = self.in_flight.split_off(&self.received_through);
        for &index in missing {
            // A refused chunk's error arrives before any ack that lists it (one ordered
            // socket), so a listed chunk is normally queued or already resent.
            if !self.in_flight.contains(&index) {
                self.queue.insert(index);
            }
        }
    }

    /// Whether every chunk has been sent at least once (some may still be unacknowledged).
    pub(crate) fn all_sent(&self) -> bool {
        self.queue.is_empty()
    }

    /// The server refused chunk `index` (hash mismatch): send it again, a few times at most.
    pub(crate) fn on_refused(&mut self, index: u32) -> Result<(), ClientError> {
        let count = self.refusals.entry(index).or_insert(0);
        *count += 1;
        if *count >= MAX_REFUSALS_PER_CHUNK {
            return Err(refused_too_often(index));
        }
        self.in_flight.remove(&index);
        self.queue.insert(index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(w: &mut SendWindow) -> Vec<u32> {
        std::iter::from_fn(|| w.next()).collect()
    }

    #[test]
    fn the_window_limits_chunks_ahead_of_the_ack() {
        let mut w = SendWindow::new((0..40).collect(), 16);
        assert_eq!(drain(&mut w), (0..16).collect::<Vec<_>>());
        w.on_ack(8, &[]);
        assert_eq!(drain(&mut w), (16..24).collect::<Vec<_>>());
        // An older ack never moves the window back.
        w.on_ack(3, &[]);
        assert!(drain(&mut w).is_empty());
        w.on_ack(40, &[]);
        assert_eq!(drain(&mut w), (24..40).collect::<Vec<_>>());
        assert!(w.next().is_none());
    }

    #[test]
    fn refused_chunks_are_resent_once_and_not_again_for_the_ack_that_lists_them() {
        let mut w = SendWindow::new((0..10).collect(), 4);
        assert_eq!(drain(&mut w), [0, 1, 2, 3]);
        w.on_refused(1).unwrap();
        assert_eq!(drain(&mut w), [1]);
        // The ack for 0, 2, 3 lists 1 as missing: it is already on its way again.
        w.on_ack(1, &[1]);
        assert_eq!(drain(&mut w), [4]);
        w.on_ack(5, &[]);
        assert_eq!(drain(&mut w), [5, 6, 7, 8]);
    }

    #[test]
    fn a_hole_reported_without_an_error_is_queued() {
        let mut w = SendWindow::new((0..8).collect(), 8);
        assert_eq!(drain(&mut w).len(), 8);
        w.on_ack(2, &[2]);
        w.in_flight.remove(&2); // as if its send had been lost without a word
        w.on_ack(2, &[2]);
        assert_eq!(drain(&mut w), [2]);
    }

    #[test]
    fn a_chunk_refused_again_and_again_ends_the_upload() {
        let mut w = SendWindow::new((0..2).collect(), 2);
        drain(&mut w);
        assert!(w.on_refused(0).is_ok());
        assert!(w.on_refused(0).is_ok());
        assert!(w.on_refused(0).is_err());
    }

    #[test]
    fn resume_starts_at_the_lowest_missing_chunk() {
        let mut w = SendWindow::new(BTreeSet::from([30, 31, 45]), 4);
        assert_eq!(drain(&mut w), [30, 31]);
        w.on_ack(32, &[]);
        assert!(w.next().is_none(), "45 >= 32 + 4");
        w.on_ack(44, &[]);
        assert_eq!(drain(&mut w), [45]);
    }
}

//! Audio lent without copying: [`SharedBuffer`] grows at the end and drops from the front, and
//! hands out [`SharedAudio`] snapshots (a reference-counted handle) of what it holds.
//!
//! A live stream re-reads its uncommitted buffer (or its first part) several times a second;
//! copying it for every hypothesis would be pure overhead. The buffer and its snapshot share one
//! allocation instead. While a snapshot is alive the samples are not touched: new audio waits
//! at the side and dropped audio is only counted, and both are applied in place once the
//! snapshot is gone. A snapshot still alive when the buffer needs the samples contiguous is the
//! one case that copies (never the normal flow, where a job lets go of its audio before its
//! result arrives).
//!
//! This module must not change samples (no clamping, no resampling) or hold more than the
//! buffer's own audio plus one generation a snapshot still holds.

use std::ops::Deref;
use std::sync::Arc;

/// A read-only view of 16 kHz samples, cheap to clone and to move between threads.
#[derive(Debug, Clone, Default)]
pub struct SharedAudio {
    /// The samples; never changed while more than one handle exists.
    samples: Arc<Vec<f32>>,
    /// How many leading samples of `samples` this view covers (a live job may read only the
    /// first part of its buffer, so that its work stays bounded).
    len: usize,
}

impl Deref for SharedAudio {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.samples[..self.len]
    }
}

impl From<Vec<f32>> for SharedAudio {
    /// Takes the vector as it is (no copy).
    fn from(samples: Vec<f32>) -> Self {
        SharedAudio {
            len: samples.len(),
            samples: Arc::new(samples),
        }
    }
}

/// Audio appended at the end and dropped from the front, lent out as [`SharedAudio`].
#[derive(Debug, Default)]
pub struct SharedBuffer {
    /// `samples[head..]` followed by `tail` is the buffer; shared with the last snapshot while
    /// that is alive.
    samples: Arc<Vec<f32>>,
    /// Leading samples of `samples` already dropped, removed once nothing else shares them.
    head: usize,
    /// Audio pushed while `samples` was shared, appended once nothing else shares it.
    tail: Vec<f32>,
}

impl SharedBuffer {
    /// Samples in the buffer.
    pub fn len(&self) -> usize {
        self.samples.len() - self.head + self.tail.len()
    }

    /// Whether the buffer holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `audio`.
    pub fn push(&mut self, audio: &[f32]) {
        match self.exclusive() {
            Some(samples) => samples.extend_from_slice(audio),
            None => self.tail.extend_from_slice(audio),
        }
    }

    /// Drops the first `n` samples (all of them if there are fewer).
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len());
        let settled = self.samples.len() - self.head;
        if n <= settled {
            self.head += n;
        } else {
            self.head = self.samples.len();
            self.tail.drain(..n - settled);
        }
        self.exclusive();
    }

    /// The whole buffer as one slice.
    pub fn as_slice(&mut self) -> &[f32] {
        self.settle();
        &self.samples
    }

    /// A handle on the whole buffer as it is now; later pushes and drops do not change it.
    pub fn snapshot(&mut self) -> SharedAudio {
        self.snapshot_first(usize::MAX)
    }

    /// A handle on the first `n` samples of the buffer (all of them if there are fewer), shared
    /// like [`snapshot`](Self::snapshot).
    pub fn snapshot_first(&mut self, n: usize) -> SharedAudio {
        self.settle();
        SharedAudio {
            len: n.min(self.samples.len()),
            samples: self.samples.clone(),
        }
    }

    /// The samples for writing, with pending drops and appends applied, when no snapshot
    /// shares them.
    fn exclusive(&mut self) -> Option<&mut Vec<f32>> {
        let samples = Arc::get_mut(&mut self.samples)?;
        samples.drain(..self.head);
        self.head = 0;
        samples.append(&mut self.tail);
        Some(samples)
    }

    /// Makes `samples` exactly the buffer, copying it away from a snapshot still alive.
    fn settle(&mut self) {
        if self.exclusive().is_none() {
            let mut samples = Vec::with_capacity(self.len());
            samples.extend_from_slice(&self.samples[self.head..]);
            samples.append(&mut self.tail);
            self.samples = Arc::new(samples);
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(from: usize, to: usize) -> Vec<f32> {
        (from..to).map(|i| i as f32).collect()
    }

    /// A buffer of `0..lent` with a snapshot of that out, then `lent..total` pushed.
    fn lent_then_pushed(lent: usize, total: usize) -> (SharedBuffer, SharedAudio) {
        let mut buffer = SharedBuffer::default();
        buffer.push(&ramp(0, lent));
        let snapshot = buffer.snapshot();
        buffer.push(&ramp(lent, total));
        (buffer, snapshot)
    }

    #[test]
    fn a_snapshot_of_the_first_samples_shows_only_those() {
        let mut buffer = SharedBuffer::default();
        buffer.push(&ramp(0, 10));
        let first = buffer.snapshot_first(4);
        assert_eq!(&first[..], &ramp(0, 4)[..]);
        assert!(
            std::ptr::eq(first.as_ptr(), buffer.samples.as_ptr()),
            "no copy"
        );
        assert_eq!(buffer.snapshot_first(99).len(), 10);
    }

    #[test]
    fn a_snapshot_shares_the_samples_and_keeps_its_view() {
        let (mut buffer, snapshot) = lent_then_pushed(10, 15);
        assert!(
            std::ptr::eq(snapshot.as_ptr(), buffer.samples.as_ptr()),
            "no copy"
        );
        buffer.drop_front(12);
        assert_eq!(&snapshot[..], &ramp(0, 10)[..], "the snapshot is unchanged");
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.as_slice(), &ramp(12, 15)[..]);
    }

    #[test]
    fn changes_made_while_shared_are_applied_in_place_once_the_snapshot_is_gone() {
        let (mut buffer, snapshot) = lent_then_pushed(10, 20);
        buffer.drop_front(4);
        let shared = Arc::as_ptr(&buffer.samples);
        drop(snapshot);
        buffer.push(&ramp(20, 21));
        assert_eq!(buffer.as_slice(), &ramp(4, 21)[..]);
        assert!(
            std::ptr::eq(Arc::as_ptr(&buffer.samples), shared),
            "settled in place, not copied"
        );
    }

    #[test]
    fn dropping_more_than_is_held_empties_the_buffer() {
        let (mut buffer, _snapshot) = lent_then_pushed(5, 8);
        buffer.drop_front(6);
        assert_eq!(buffer.as_slice(), &ramp(6, 8)[..]);
        buffer.drop_front(100);
        assert!(buffer.is_empty());
        assert_eq!(buffer.as_slice(), &[] as &[f32]);
    }

    #[test]
    fn a_vector_becomes_shared_audio_without_a_copy() {
        let samples = ramp(0, 4);
        let pointer = samples.as_ptr();
        let audio = SharedAudio::from(samples);
        assert!(std::ptr::eq(audio.as_ptr(), pointer));
        assert_eq!(audio.len(), 4);
    }
}

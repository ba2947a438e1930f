//! Chunk bookkeeping for one upload: how a file of `file_size` bytes is cut into chunks,
//! where chunk `i` lives in the file, and which chunks have arrived.
//!
//! Pure arithmetic and a bitmap. This module must NOT touch the disk, the network or the
//! clock; the durable store ([`super::store`]) and the protocol layer build on it.

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Upper bounds a plan must respect. They protect memory (the bitmap, the received log)
/// and disk (the reserved `data.part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    /// Largest file the server accepts; a bigger `file_size` is refused before any disk is reserved.
    pub max_file_bytes: u64,
    /// Largest chunk; bounds the memory one chunk message costs to decode and verify.
    pub max_chunk_bytes: u64,
    /// Most chunks one upload may have; bounds the bitmap and the received log (4 bytes each).
    pub max_total_chunks: u32,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_file_bytes: 4 << 30,
            max_chunk_bytes: 5 << 20,
            max_total_chunks: 1 << 20,
        }
    }
}

/// Why a plan or a chunk does not fit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    /// A zero-byte file cannot hold audio.
    #[error("file_size must be greater than 0")]
    EmptyFile,
    /// `chunk_size` 0 would need infinitely many chunks.
    #[error("chunk_size must be greater than 0")]
    ZeroChunkSize,
    /// The file is bigger than the server accepts.
    #[error("file_size {size} exceeds the limit of {max} bytes")]
    FileTooLarge {
        /// The announced size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// One chunk is bigger than the server accepts.
    #[error("chunk_size {size} exceeds the limit of {max} bytes")]
    ChunkTooLarge {
        /// The announced chunk size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file would need more chunks than the server tracks; use a larger chunk_size.
    #[error("{chunks} chunks exceed the limit of {max}; use a larger chunk_size")]
    TooManyChunks {
        /// Chunks the plan would need.
        chunks: u64,
        /// The limit.
        max: u32,
    },
    /// `total_chunks` disagrees with `ceil(file_size / chunk_size)`.
    #[error("total_chunks is {got} but file_size and chunk_size give {expected}")]
    InconsistentTotal {
        /// `ceil(file_size / chunk_size)`.
        expected: u64,
        /// What the client sent.
        got: u64,
    },
    /// A chunk index at or past `total_chunks`.
    #[error("chunk_index {index} is out of range (total_chunks {total})")]
    IndexOutOfRange {
        /// The offending index.
        index: u64,
        /// Chunks in the plan.
        total: u32,
    },
    /// A chunk whose length is not the one the plan expects at that index.
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    WrongChunkLength {
        /// Which chunk.
        index: u32,
        /// Bytes the plan expects there.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
}

/// How one file is cut into chunks. Every chunk is `chunk_size` bytes except the last,
/// which holds the remainder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// Total bytes of the file; the size `data.part` is reserved at.
    pub file_size: u64,
    /// Bytes per chunk (the last one may be shorter); chunk `i` starts at `i * chunk_size`.
    pub chunk_size: u64,
    /// Number of chunks, always `ceil(file_size / chunk_size)`.
    pub total_chunks: u32,
}

impl ChunkPlan {
    /// Checks a client's plan against the limits and itself.
    pub fn new(
        file_size: u64,
        chunk_size: u64,
        total_chunks: u64,
        limits: &PlanLimits,
    ) -> Result<Self, PlanError> {
        if file_size == 0 {
            return Err(PlanError::EmptyFile);
        }
        if chunk_size == 0 {
            return Err(PlanError::ZeroChunkSize);
        }
        if file_size > limits.max_file_bytes {
            return Err(PlanError::FileTooLarge {
                size: file_size,
                max: limits.max_file_bytes,
            });
        }
        if chunk_size > limits.max_chunk_bytes {
            return Err(PlanError::ChunkTooLarge {
                size: chunk_size,
                max: limits.max_chunk_bytes,
            });
        }
        let expected = file_size.div_ceil(chunk_size);
        if expected > u64::from(limits.max_total_chunks) {
            return Err(PlanError::TooManyChunks {
                chunks: expected,
                max: limits.max_total_chunks,
            });
        }
        if total_chunks != expected {
            return Err(PlanError::InconsistentTotal {
                expected,
                got: total_chunks,
            });
        }
        Ok(ChunkPlan {
            file_size,
            chunk_size,
            // expected <= max_total_chunks (a u32), so this cannot truncate.
            total_chunks: expected as u32,
        })
    }

    /// A plan for a file sent whole in one message ("single" mode): one chunk.
    /// `max_chunk_bytes` does not apply (the message-size limit does), `max_file_bytes` does.
    pub fn single(file_size: u64, limits: &PlanLimits) -> Result<Self, PlanError> {
        let relaxed = PlanLimits {
            max_chunk_bytes: u64::MAX,
            ..*limits
        };
        ChunkPlan::new(file_size, file_size.max(1), 1, &relaxed)
    }

    /// Byte offset of chunk `index` in the file, `None` if out of range.
    pub fn chunk_offset(&self, index: u32) -> Option<u64> {
        (index < self.total_chunks).then(|| u64::from(index) * self.chunk_size)
    }

    /// Length of chunk `index` (the last may be shorter), `None` if out of range.
    pub fn chunk_len(&self, index: u32) -> Option<u64> {
        let offset = self.chunk_offset(index)?;
        Some((self.file_size - offset).min(self.chunk_size))
    }

    /// Checks that `len` bytes are exactly what chunk `index` should hold.
    pub fn check_chunk(&self, index: u32, len: u64) -> Result<(), PlanError> {
        let expected = self.chunk_len(index).ok_or(PlanError::IndexOutOfRange {
            index: u64::from(index),
            total: self.total_chunks,
        })?;
        if len != expected {
            return Err(PlanError::WrongChunkLength {
                index,
                expected,
                got: len,
            });
        }
        Ok(())
    }
}

/// What inserting a chunk index did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The chunk was not there before.
    New,
    /// The chunk was already recorded (a retry or a resend after resume).
    Duplicate,
}

/// Which chunks of a plan have arrived: a bitmap plus a running count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSet {
    /// One bit per chunk; set once the chunk is stored.
    bits: FixedBitSet,
    /// Number of set bits, kept so `count` is O(1) on every ack.
    count: u32,
}

impl ReceivedSet {
    /// An empty set for `total_chunks` chunks.
    pub fn new(total_chunks: u32) -> Self {
        ReceivedSet {
            bits: FixedBitSet::with_capacity(total_chunks as usize),
            count: 0,
        }
    }

    /// Number of chunks the plan has.
    pub fn total(&self) -> u32 {
        self.bits.len() as u32
    }

    /// Records chunk `index`.
    pub fn insert(&mut self, index: u32) -> Result<Insert, PlanError> {
        if index >= self.total() {
            return Err(PlanError::IndexOutOfRange {
                index: u64::from(index),
                total: self.total(),
            });
        }
        if self.bits.put(index as usize) {
            Ok(Insert::Duplicate)
        } else {
            self.count += 1;
            Ok(Insert::New)
        }
    }

    /// Whether chunk `index` has arrived (false when out of range).
    pub fn contains(&self, index: u32) -> bool {
        self.bits.contains(index as usize)
    }

    /// Number of chunks received.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.count == self.total()
    }

    /// Up to `limit` missing indices, lowest first (a message must stay small even
    /// when a million chunks are missing).
    pub fn missing(&self, limit: usize) -> Vec<u32> {
        self.bits.zeroes().take(limit).map(|i| i as u32).collect()
    }

    /// Up to `limit` missing indices below the highest received one: the holes a pipelined
    /// sender should fill now (chunks above the highest are simply not sent yet).
    pub fn gaps(&self, limit: usize) -> Vec<u32> {
        let Some(highest) = self.bits.maximum() else {
            return Vec::new();
        };
        self.bits
            .zeroes()
            .take_while(|&i| i < highest)
            .take(limit)
            .map(|i| i as u32)
            .collect()
    }

    /// The number of leading chunks all received: every index below it is present.
    /// This is what a cumulative ack reports as `received_through`.
    pub fn contiguous_prefix(&self) -> u32 {
        self.bits.zeroes().next().map_or(self.total(), |i| i as u32)
    }

    /// Share of chunks received, 0–100, rounded to two decimals.
    pub fn progress(&self) -> f64 {
        if self.total() == 0 {
            return 100.0;
        }
        let pct = f64::from(self.count) * 100.0 / f64::from(self.total());
        (pct * 100.0).round() / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits {
            max_file_bytes: 1 << 30,
            max_chunk_bytes: 1 << 20,
            max_total_chunks: 10_000,
        }
    }

    #[test]
    fn plan_accepts_consistent_totals() {
        let p = ChunkPlan::new(10, 4, 3, &limits()).unwrap();
        assert_eq!(p.total_chunks, 3);
        let p = ChunkPlan::new(8, 4, 2, &limits()).unwrap();
        assert_eq!(p.chunk_len(1), Some(4));
    }

    #[test]
    fn plan_rejects_bad_values() {
        let l = limits();
        assert_eq!(ChunkPlan::new(0, 4, 0, &l), Err(PlanError::EmptyFile));
        assert_eq!(ChunkPlan::new(10, 0, 3, &l), Err(PlanError::ZeroChunkSize));
        assert_eq!(
            ChunkPlan::new(10, 4, 2, &l),
            Err(PlanError::InconsistentTotal {
                expected: 3,
                got: 2
            })
        );
        assert!(matches!(
            ChunkPlan::new(10, 4, 4, &l),
            Err(PlanError::InconsistentTotal { .. })
        ));
        assert!(matches!(
            ChunkPlan::new((1 << 30) + 1, 1 << 20, 1025, &l),
            Err(PlanError::FileTooLarge { .. })
        ));
        assert!(matches!(
            ChunkPlan::new(10 << 20, 2 << 20, 5, &l),
            Err(PlanError::ChunkTooLarge { .. })
        ));
        assert!(matches!(
            ChunkPlan::new(1 << 20, 1, 1 << 20, &l),
            Err(PlanError::TooManyChunks { .. })
        ));
        assert!(matches!(
            ChunkPlan::new(u64::MAX, 1, u64::MAX, &l),
            Err(PlanError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn offsets_and_lengths() {
        let p = ChunkPlan::new(10, 4, 3, &limits()).unwrap();
        assert_eq!(p.chunk_offset(0), Some(0));
        assert_eq!(p.chunk_offset(2), Some(8));
        assert_eq!(p.chunk_len(0), Some(4));
        assert_eq!(p.chunk_len(2), Some(2));
        assert_eq!(p.chunk_len(3), None);
        assert_eq!(p.chunk_offset(u32::MAX), None);
        assert!(p.check_chunk(2, 2).is_ok());
        assert_eq!(
            p.check_chunk(2, 4),
            Err(PlanError::WrongChunkLength {
                index: 2,
                expected: 2,
                got: 4
            })
        );
        assert!(matches!(
            p.check_chunk(3, 4),
            Err(PlanError::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn single_plan_is_one_chunk_of_any_size_up_to_the_file_limit() {
        let p = ChunkPlan::single(3 << 20, &limits()).unwrap();
        assert_eq!(p.total_chunks, 1);
        assert_eq!(p.chunk_len(0), Some(3 << 20));
        assert_eq!(ChunkPlan::single(0, &limits()), Err(PlanError::EmptyFile));
        assert!(ChunkPlan::single(2 << 30, &limits()).is_err());
    }

    #[test]
    fn received_set_tracks_new_and_duplicates() {
        let mut s = ReceivedSet::new(5);
        assert_eq!(s.insert(3), Ok(Insert::New));
        assert_eq!(s.insert(3), Ok(Insert::Duplicate));
        assert_eq!(s.count(), 1);
        assert!(s.contains(3) && !s.contains(2) && !s.contains(99));
        assert!(matches!(
            s.insert(5),
            Err(PlanError::IndexOutOfRange { .. })
        ));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn missing_prefix_and_progress() {
        let mut s = ReceivedSet::new(8);
        assert_eq!(s.contiguous_prefix(), 0);
        assert!(s.gaps(100).is_empty());
        assert_eq!(s.missing(100), (0..8).collect::<Vec<_>>());
        for i in [0, 1, 2, 5, 7] {
            s.insert(i).unwrap();
        }
        assert_eq!(s.contiguous_prefix(), 3);
        assert_eq!(s.missing(100), vec![3, 4, 6]);
        assert_eq!(s.missing(2), vec![3, 4]);
        assert_eq!(s.gaps(100), vec![3, 4, 6]);
        assert_eq!(s.gaps(1), vec![3]);
        assert_eq!(s.progress(), 62.5);
        for i in [3, 4, 6] {
            s.insert(i).unwrap();
        }
        assert!(s.is_complete());
        assert_eq!(s.contiguous_prefix(), 8);
        assert!(s.missing(10).is_empty());
        assert!(s.gaps(10).is_empty());
        assert_eq!(s.progress(), 100.0);
    }

    #[test]
    fn progress_rounds_to_two_decimals() {
        let mut s = ReceivedSet::new(3);
        s.insert(0).unwrap();
        assert_eq!(s.progress(), 33.33);
    }

    #[test]
    fn large_bitmap_prefix_crosses_word_boundaries() {
        let mut s = ReceivedSet::new(1000);
        for i in 0..700 {
            s.insert(i).unwrap();
        }
        s.insert(999).unwrap();
        assert_eq!(s.contiguous_prefix(), 700);
        assert_eq!(s.missing(3), vec![700, 701, 702]);
    }
}

//! An upload's record in the cluster (`earshot_uploads` KV bucket, one key per upload) and the
//! decisions taken on it: which node may write the upload now (the lease), which chunks are
//! stored and under which lease generation their bytes were written. Pure: no NATS, no clock
//! (times are passed in), unit-tested without sockets.
//!
//! Why generations: chunk bytes are published to `earshot.upload.<id>.<gen>.<index>.<piece>`
//! by the node holding lease generation `gen`, and a chunk counts as stored only once the
//! record naming it under that generation is written with compare-and-set. A node that lost
//! the lease (paused past it, or fenced by an `upload_resume` elsewhere) may still publish
//! bytes late, but only to its own old generation's subjects, which no record names for that
//! chunk: its chunk is refused (the CAS fails), never merged.
//!
//! This module must not talk to NATS or read the clock; a field added here must stay
//! readable by a node running the previous version (`#[serde(default)]`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::domain::TaskId;
use crate::upload::plan::ReceivedSet;
use crate::upload::store::Meta;

/// Subject prefix of upload chunk bytes (`earshot.upload.<id>.<gen>.<index>.<piece>`).
pub const UPLOAD_PREFIX: &str = "earshot.upload";

/// Most bytes of a chunk in one NATS message (a 2.9 server's default max payload is 1 MiB).
pub const PIECE: usize = 256 * 1024;

/// The subject of one piece of a chunk, written under lease generation `gen`.
pub fn piece_subject(task_id: TaskId, gen: u64, index: u32, piece: usize) -> String {
    format!("{UPLOAD_PREFIX}.{task_id}.{gen}.{index}.{piece}")
}

/// The filter matching every chunk byte of an upload, for purging it.
pub fn chunks_of(task_id: TaskId) -> String {
    format!("{UPLOAD_PREFIX}.{task_id}.>")
}

/// How many pieces a chunk of `len` bytes is published as.
pub fn pieces(len: u64) -> usize {
    (len as usize).div_ceil(PIECE).max(1)
}

/// Which node may write the upload, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's name (node address and a per-process id, so a restarted node is another).
    pub holder: String,
    /// Raised by every takeover; chunk bytes are written under it.
    pub gen: u64,
    /// Unix milliseconds when the lease lapses unless renewed (every commit renews it).
    pub until_ms: u64,
}

/// Chunks stored under one lease generation, as sorted half-open runs `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The generation whose subjects hold these chunks' bytes.
    pub gen: u64,
    /// Disjoint, non-adjacent, ascending runs of chunk indices.
    pub runs: Vec<(u32, u32)>,
}

impl Stored {
    /// Whether chunk `index` is in these runs.
    pub fn contains(&self, index: u32) -> bool {
        let at = self.runs.partition_point(|&(_, end)| end <= index);
        self.runs.get(at).is_some_and(|&(start, _)| start <= index)
    }

    /// Adds chunk `index`, merging runs; `false` if it was there already.
    pub fn insert(&mut self, index: u32) -> bool {
        let at = self.runs.partition_point(|&(_, end)| end < index);
        match self.runs.get(at).copied() {
            Some((start, end)) if start <= index && index < end => false,
            Some((start, end)) if end == index => {
                self.runs[at] = (start, index + 1);
                if self
                    .runs
                    .get(at + 1)
                    .is_some_and(|&(next, _)| next == index + 1)
                {
                    self.runs[at].1 = self.runs.remove(at + 1).1;
                }
                true
            }
            Some((start, end)) if start == index + 1 => {
                self.runs[at] = (index, end);
                true
            }
            _ => {
                self.runs.insert(at, (index, index + 1));
                true
            }
        }
    }

    /// Every index, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|&(start, end)| start..end)
    }
}

/// One upload as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// What was asked, the status, the owner: the same record a single node keeps on disk.
    pub meta: Meta,
    /// Who writes it now.
    pub lease: Lease,
    /// Stored chunks, by the generation that wrote them (a handful: one per takeover).
    #[serde(default)]
    pub stored: Vec<Stored>,
}

/// What a node may do with an upload's lease at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It holds the lease already (same generation): renew it.
    Renew,
    /// The lease is free (lapsed) or taken over on purpose: the next generation is the node's.
    Take,
    /// Another holder's lease runs until then: the node must not write.
    Refused {
        /// When the other lease lapses.
        until_ms: u64,
    },
}

impl UploadRecord {
    /// A new upload held by `holder` from `now_ms`, generation 1.
    pub fn new(meta: Meta, holder: &str, now_ms: u64, lease_ms: u64) -> Self {
        UploadRecord {
            meta,
            lease: Lease {
                holder: holder.to_string(),
                gen: 1,
                until_ms: now_ms + lease_ms,
            },
            stored: Vec::new(),
        }
    }

    /// Whether `holder`, which knows generation `known` (0: none), may write at `now_ms`;
    /// `force` takes the lease even from a live holder (`upload_resume`: the client moved).
    /// A holder fenced by a newer generation stays refused, lapsed or not, until its client
    /// resumes: its connection is the stale one.
    pub fn claim(&self, holder: &str, known: u64, now_ms: u64, force: bool) -> Claim {
        let lease = &self.lease;
        if lease.holder == holder && lease.gen == known {
            return Claim::Renew;
        }
        let fenced = known != 0 && known != lease.gen;
        if force || (lease.until_ms <= now_ms && !fenced) {
            return Claim::Take;
        }
        Claim::Refused {
            until_ms: lease.until_ms,
        }
    }

    /// Applies a claim for `holder` at `now_ms`: the record to write with compare-and-set,
    /// or `None` when refused.
    pub fn claimed(&self, claim: Claim, holder: &str, now_ms: u64, lease_ms: u64) -> Option<Self> {
        let gen = match claim {
            Claim::Renew => self.lease.gen,
            Claim::Take => self.lease.gen + 1,
            Claim::Refused { .. } => return None,
        };
        let mut next = self.clone();
        next.lease = Lease {
            holder: holder.to_string(),
            gen,
            until_ms: now_ms + lease_ms,
        };
        Some(next)
    }

    /// The generation whose subjects hold chunk `index`, if it is stored.
    pub fn gen_of(&self, index: u32) -> Option<u64> {
        self.stored
            .iter()
            .find(|s| s.contains(index))
            .map(|s| s.gen)
    }

    /// Whether chunk `index` is stored.
    pub fn contains(&self, index: u32) -> bool {
        self.gen_of(index).is_some()
    }

    /// Records `indices` as stored under the current lease's generation.
    pub fn add(&mut self, indices: &[u32]) {
        let gen = self.lease.gen;
        let at = match self.stored.iter().position(|s| s.gen == gen) {
            Some(at) => at,
            None => {
                self.stored.push(Stored {
                    gen,
                    runs: Vec::new(),
                });
                self.stored.len() - 1
            }
        };
        for &index in indices {
            if !self.contains(index) {
                self.stored[at].insert(index);
            }
        }
    }

    /// Whether a node's local copy holds the file exactly as this record names it: every chunk
    /// stored, and each written there under the generation the record stores it under
    /// (`written`: chunk → the generation it was published under when the copy got it). Only
    /// then may the copy become the file; a chunk the record has from another generation (a
    /// takeover, a stale node's bytes) sends the node to NATS's pieces.
    pub fn matches_copy(&self, written: &HashMap<u32, u64>) -> bool {
        (0..self.meta.plan.total_chunks).all(|i| {
            self.gen_of(i)
                .is_some_and(|gen| written.get(&i) == Some(&gen))
        })
    }

    /// The stored chunks as the plan's bitmap.
    pub fn received(&self) -> ReceivedSet {
        let mut set = ReceivedSet::new(self.meta.plan.total_chunks);
        for index in self.stored.iter().flat_map(Stored::indices) {
            let _ = set.insert(index);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::plan::ChunkPlan;
    use crate::upload::store::{NewUpload, UploadStatus};

    fn record(total: u32) -> UploadRecord {
        let plan = ChunkPlan::new(
            u64::from(total) * 10,
            10,
            u64::from(total),
            &Default::default(),
        )
        .unwrap();
        let new = NewUpload {
            file_name: "a.wav".into(),
            extension: Some("wav".into()),
            plan,
            hashes: Default::default(),
            transport: Default::default(),
            options: Default::default(),
            owner: None,
            client: String::new(),
        };
        let meta = Meta::new(TaskId::from_bytes([1; 16]), new, std::time::UNIX_EPOCH);
        UploadRecord::new(meta, "a", 1_000, 10_000)
    }

    #[test]
    fn runs_merge_and_answer_membership() {
        let mut s = Stored::default();
        for i in [5, 3, 4, 9, 0, 1, 7, 8] {
            assert!(s.insert(i));
        }
        assert!(!s.insert(4));
        assert_eq!(s.runs, vec![(0, 2), (3, 6), (7, 10)]);
        assert!(s.insert(2));
        assert!(s.insert(6));
        assert_eq!(s.runs, vec![(0, 10)]);
        assert!((0..10).all(|i| s.contains(i)));
        assert!(!s.contains(10));
        assert_eq!(s.indices().count(), 10);
    }

    #[test]
    fn the_holder_renews_a_live_lease_others_wait_or_take_over() {
        let r = record(4);
        assert_eq!(r.claim("a", 1, 2_000, false), Claim::Renew);
        assert_eq!(
            r.claim("b", 0, 2_000, false),
            Claim::Refused { until_ms: 11_000 }
        );
        // Lapsed: anyone takes it, with the next generation.
        assert_eq!(r.claim("b", 0, 11_000, false), Claim::Take);
        // Forced (upload_resume on another node): taken even while live.
        assert_eq!(r.claim("b", 0, 2_000, true), Claim::Take);
        let taken = r.claimed(Claim::Take, "b", 2_000, 10_000).unwrap();
        assert_eq!(taken.lease.gen, 2);
        assert_eq!(taken.lease.holder, "b");
        // The old holder knows generation 1 only: it is not the holder any more.
        assert_eq!(
            taken.claim("a", 1, 3_000, false),
            Claim::Refused { until_ms: 12_000 }
        );
        assert!(r
            .claimed(Claim::Refused { until_ms: 1 }, "b", 2_000, 1)
            .is_none());
        // Fenced, it stays out even once the new lease lapsed, unless its client resumes.
        assert_eq!(
            taken.claim("a", 1, 20_000, false),
            Claim::Refused { until_ms: 12_000 }
        );
        assert_eq!(taken.claim("a", 1, 20_000, true), Claim::Take);
        // A node restarted under the same address is another process: its name differs.
        assert_eq!(
            r.claim("a", 0, 2_000, false),
            Claim::Refused { until_ms: 11_000 }
        );
    }

    #[test]
    fn chunks_are_kept_under_the_generation_that_stored_them() {
        let mut r = record(6);
        r.add(&[0, 1, 2]);
        let mut r = r.claimed(Claim::Take, "b", 2_000, 10_000).unwrap();
        // Chunk 2 again (a resend) stays with generation 1; 3 and 4 are generation 2's.
        r.add(&[2, 3, 4]);
        assert_eq!(r.gen_of(2), Some(1));
        assert_eq!(r.gen_of(4), Some(2));
        assert_eq!(r.gen_of(5), None);
        let received = r.received();
        assert_eq!(received.count(), 5);
        assert_eq!(received.missing(10), vec![5]);
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<UploadRecord>(&bytes).unwrap(), r);
        assert_eq!(r.meta.status, UploadStatus::Uploading);
    }

    #[test]
    fn a_local_copy_is_the_file_only_if_every_chunk_is_in_it_under_the_stored_generation() {
        let mut r = record(3);
        let copy: HashMap<u32, u64> = [(0, 1), (1, 1), (2, 1)].into();
        // Written here but not all stored yet: not the file.
        r.add(&[0, 1]);
        assert!(!r.matches_copy(&copy));
        r.add(&[2]);
        assert!(r.matches_copy(&copy));
        // A chunk missing from the copy (its local write failed): NATS has the last word.
        let partial: HashMap<u32, u64> = [(0, 1), (2, 1)].into();
        assert!(!r.matches_copy(&partial));
        // Another node took over and stored chunk 2 under generation 2: the copy's chunk 2 is
        // this node's late (generation 1) bytes, which the record does not name.
        let mut taken = record(3).claimed(Claim::Take, "b", 2_000, 10_000).unwrap();
        taken.lease.gen = 1;
        taken.add(&[0, 1]);
        taken.lease.gen = 2;
        taken.add(&[2]);
        assert!(!taken.matches_copy(&copy));
        let moved: HashMap<u32, u64> = [(0, 1), (1, 1), (2, 2)].into();
        assert!(taken.matches_copy(&moved));
    }

    #[test]
    fn chunks_are_cut_into_pieces_that_fit_a_message() {
        assert_eq!(pieces(1), 1);
        assert_eq!(pieces(PIECE as u64), 1);
        assert_eq!(pieces(PIECE as u64 + 1), 2);
        assert_eq!(pieces(5 << 20), 20);
        let id = TaskId::from_bytes([2; 16]);
        assert_eq!(
            piece_subject(id, 3, 7, 1),
            format!("earshot.upload.{id}.3.7.1")
        );
        assert_eq!(chunks_of(id), format!("earshot.upload.{id}.>"));
    }
}

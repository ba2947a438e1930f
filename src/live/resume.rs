//! Which live streams a client may continue after its connection dropped, and for how long.
//!
//! Every open live stream is registered here with its owner (the API key that started it), the
//! client its share is counted under, and a handle the session layer uses to hand the stream a
//! new connection. A stream whose connection drops without `stream_end` is *detached*: it
//! waits, with its audio buffer and commit state intact, until a `stream_start` with its
//! `task_id` and `resume: true` attaches a new connection, or its grace period ends and it is
//! finished as interrupted. Detached streams are capped in total and per client, because each
//! one holds a stream's memory without holding a connection.
//!
//! [`Resumable`] is the shared table; its pure core [`Table`] takes the time as an argument, so
//! the grace bookkeeping is tested with plain values. This module must not do I/O, spawn, sleep
//! or know what the handle is (the session layer's business).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::access::{ClientKey, Owner};
use crate::domain::TaskId;

/// How many streams may be detached at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachLimits {
    /// How long a detached stream waits for its client; zero = streams are never detached.
    pub grace: Duration,
    /// Detached streams across all clients.
    pub total: usize,
    /// Detached streams of one client (its API key, or its address without keys).
    pub per_client: usize,
}

/// Why a stream could not be detached: it is finished as interrupted at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDetach {
    /// Resume is switched off (`grace` is zero).
    Disabled,
    /// The server holds [`DetachLimits::total`] detached streams already.
    Full,
    /// This client holds [`DetachLimits::per_client`] detached streams already.
    ClientShare,
    /// The stream is not registered (it ended meanwhile).
    Unknown,
}

/// Why a resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResume {
    /// No open stream has this id for this caller: never was, finished, grace over, or
    /// another key's stream (which must look exactly like none).
    NotFound,
}

/// A stream handed to a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume<H> {
    /// The stream's handle, to give it the new connection.
    pub handle: H,
    /// Whether the stream was still attached to another connection, which loses it.
    pub took_over: bool,
}

/// One registered stream.
#[derive(Debug)]
struct Entry<H> {
    /// Who may resume it (`None`: anyone who knows the id, as with every task without keys).
    owner: Option<Owner>,
    /// Whose detached-stream share it uses while detached.
    client: ClientKey,
    /// How the session layer reaches the stream.
    handle: H,
    /// When its grace period ends, while detached; `None` while a connection is attached.
    detached_until: Option<Instant>,
}

/// The pure bookkeeping: registered streams, their grace deadlines and the caps.
#[derive(Debug)]
pub struct Table<H> {
    /// The caps and the grace period.
    limits: DetachLimits,
    /// Open streams by task id, attached or detached.
    entries: HashMap<TaskId, Entry<H>>,
}

impl<H: Clone> Table<H> {
    /// An empty table.
    pub fn new(limits: DetachLimits) -> Self {
        Table {
            limits,
            entries: HashMap::new(),
        }
    }

    /// Registers a stream that has just started on a connection.
    pub fn register(
        &mut self,
        task_id: TaskId,
        owner: Option<Owner>,
        client: ClientKey,
        handle: H,
    ) {
        let entry = Entry {
            owner,
            client,
            handle,
            detached_until: None,
        };
        self.entries.insert(task_id, entry);
    }

    /// The stream lost its connection at `now`: it waits until the returned deadline, or is
    /// refused (and must be finished at once) when resume is off or the caps are reached.
    pub fn detach(&mut self, task_id: TaskId, now: Instant) -> Result<Instant, NoDetach> {
        if self.limits.grace.is_zero() {
            return Err(NoDetach::Disabled);
        }
        let client = match self.entries.get(&task_id) {
            None => return Err(NoDetach::Unknown),
            Some(e) if e.detached_until.is_some() => return Err(NoDetach::Unknown),
            Some(e) => e.client.clone(),
        };
        let detached = self.entries.values().filter(|e| e.detached_until.is_some());
        let (total, mine) = detached.fold((0, 0), |(t, m), e| {
            (t + 1, m + usize::from(e.client == client))
        });
        if total >= self.limits.total {
            return Err(NoDetach::Full);
        }
        if mine >= self.limits.per_client {
            return Err(NoDetach::ClientShare);
        }
        let deadline = now + self.limits.grace;
        if let Some(e) = self.entries.get_mut(&task_id) {
            e.detached_until = Some(deadline);
        }
        Ok(deadline)
    }

    /// Hands the stream to a caller whose key is `caller`; it is attached from now on.
    pub fn resume(
        &mut self,
        task_id: TaskId,
        caller: Option<&Owner>,
    ) -> Result<Resume<H>, NoResume> {
        let entry = self.entries.get_mut(&task_id).ok_or(NoResume::NotFound)?;
        if !Owner::permits(entry.owner.as_ref(), caller) {
            return Err(NoResume::NotFound);
        }
        let took_over = entry.detached_until.take().is_none();
        Ok(Resume {
            handle: entry.handle.clone(),
            took_over,
        })
    }

    /// The stream has its new connection: it is attached, whatever happened between the
    /// resume and now (its old connection may have been seen to drop meanwhile).
    pub fn attached(&mut self, task_id: TaskId) {
        if let Some(e) = self.entries.get_mut(&task_id) {
            e.detached_until = None;
        }
    }

    /// The stream's deadline came at `now`: whether its grace is over (it is then forgotten and
    /// must be finished). `false` when a resume attached it in time.
    pub fn expire(&mut self, task_id: TaskId, now: Instant) -> bool {
        let over = self
            .entries
            .get(&task_id)
            .and_then(|e| e.detached_until)
            .is_some_and(|deadline| deadline <= now);
        if over {
            self.entries.remove(&task_id);
        }
        over
    }

    /// Forgets a stream that ended (or was finished), so it can no longer be resumed.
    pub fn remove(&mut self, task_id: TaskId) {
        self.entries.remove(&task_id);
    }

    /// Streams waiting for their client now.
    pub fn detached(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.detached_until.is_some())
            .count()
    }
}

/// The table shared by every connection of the server.
#[derive(Debug)]
pub struct Resumable<H> {
    /// The bookkeeping, behind a lock held only for a table operation.
    table: Mutex<Table<H>>,
}

impl<H: Clone> Resumable<H> {
    /// An empty shared table.
    pub fn new(limits: DetachLimits) -> Self {
        Resumable {
            table: Mutex::new(Table::new(limits)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<H>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Table::register`].
    pub fn register(&self, task_id: TaskId, owner: Option<Owner>, client: ClientKey, handle: H) {
        self.lock().register(task_id, owner, client, handle);
    }

    /// See [`Table::detach`]; the deadline is on the clock of `Instant::now()`.
    pub fn detach(&self, task_id: TaskId) -> Result<Instant, NoDetach> {
        self.lock().detach(task_id, Instant::now())
    }

    /// See [`Table::resume`].
    pub fn resume(&self, task_id: TaskId, caller: Option<&Owner>) -> Result<Resume<H>, NoResume> {
        self.lock().resume(task_id, caller)
    }

    /// See [`Table::attached`].
    pub fn attached(&self, task_id: TaskId) {
        self.lock().attached(task_id);
    }

    /// See [`Table::expire`].
    pub fn expire(&self, task_id: TaskId) -> bool {
        self.lock().expire(task_id, Instant::now())
    }

    /// See [`Table::remove`].
    pub fn remove(&self, task_id: TaskId) {
        self.lock().remove(task_id);
    }

    /// See [`Table::detached`].
    pub fn detached(&self) -> usize {
        self.lock().detached()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const GRACE: Duration = Duration::from_secs(30);

    fn limits() -> DetachLimits {
        DetachLimits {
            grace: GRACE,
            total: 3,
            per_client: 2,
        }
    }

    fn client(n: u8) -> ClientKey {
        ClientKey::Addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    fn table_with(ids: &[(TaskId, u8)]) -> Table<u32> {
        let mut t = Table::new(limits());
        for (i, (id, c)) in ids.iter().enumerate() {
            t.register(*id, None, client(*c), i as u32);
        }
        t
    }

    #[test]
    fn a_detached_stream_waits_its_grace_then_expires() {
        let id = TaskId::new_v4();
        let mut t = table_with(&[(id, 1)]);
        let now = Instant::now();
        let deadline = t.detach(id, now).unwrap();
        assert_eq!(deadline, now + GRACE);
        assert_eq!(t.detached(), 1);
        assert!(!t.expire(id, now + GRACE / 2), "still within its grace");
        assert!(t.expire(id, deadline));
        assert_eq!(
            t.resume(id, None),
            Err(NoResume::NotFound),
            "gone after expiry"
        );
        assert!(!t.expire(id, deadline), "expires once");
    }

    #[test]
    fn a_resume_in_time_cancels_the_expiry() {
        let id = TaskId::new_v4();
        let mut t = table_with(&[(id, 1)]);
        let now = Instant::now();
        let deadline = t.detach(id, now).unwrap();
        let r = t.resume(id, None).unwrap();
        assert_eq!(
            r,
            Resume {
                handle: 0,
                took_over: false
            }
        );
        assert!(
            !t.expire(id, deadline + GRACE),
            "attached streams never expire"
        );
        // It may drop and be detached again, with a fresh grace period.
        let later = now + GRACE * 3;
        assert_eq!(t.detach(id, later), Ok(later + GRACE));
    }

    #[test]
    fn resuming_an_attached_stream_takes_it_over() {
        let id = TaskId::new_v4();
        let mut t = table_with(&[(id, 1)]);
        assert!(t.resume(id, None).unwrap().took_over);
        // The old connection's drop is noticed after the takeover: the new connection, once
        // it reaches the stream, makes it attached again, so it neither expires nor counts.
        let now = Instant::now();
        let deadline = t.detach(id, now).unwrap();
        t.attached(id);
        assert_eq!(t.detached(), 0);
        assert!(!t.expire(id, deadline));
        assert_eq!(
            t.detach(id, now),
            Ok(deadline),
            "a later drop gets its grace"
        );
    }

    #[test]
    fn only_the_owner_resumes_and_unknown_ids_are_refused() {
        let id = TaskId::new_v4();
        let alice = Owner::of_key("alice");
        let mut t = Table::new(limits());
        t.register(id, Some(alice.clone()), ClientKey::Key(alice.clone()), 7u32);
        t.detach(id, Instant::now()).unwrap();
        let bob = Owner::of_key("bob");
        assert_eq!(t.resume(id, Some(&bob)), Err(NoResume::NotFound));
        assert_eq!(t.resume(id, None), Err(NoResume::NotFound));
        assert_eq!(
            t.resume(TaskId::new_v4(), Some(&alice)),
            Err(NoResume::NotFound)
        );
        assert_eq!(t.resume(id, Some(&alice)).unwrap().handle, 7);
    }

    #[test]
    fn detached_streams_are_capped_per_client_and_in_total() {
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new_v4()).collect();
        let mut t = table_with(&[
            (ids[0], 1),
            (ids[1], 1),
            (ids[2], 1),
            (ids[3], 2),
            (ids[4], 3),
        ]);
        let now = Instant::now();
        assert!(t.detach(ids[0], now).is_ok());
        assert!(t.detach(ids[1], now).is_ok());
        assert_eq!(t.detach(ids[2], now), Err(NoDetach::ClientShare));
        assert!(t.detach(ids[3], now).is_ok());
        assert_eq!(t.detach(ids[4], now), Err(NoDetach::Full));
        // A resumed stream gives its share back.
        t.resume(ids[0], None).unwrap();
        assert!(t.detach(ids[4], now).is_ok());
        assert_eq!(t.detach(ids[0], now), Err(NoDetach::Full));
    }

    #[test]
    fn no_grace_means_no_detaching_and_removed_streams_are_gone() {
        let id = TaskId::new_v4();
        let mut t: Table<u32> = Table::new(DetachLimits {
            grace: Duration::ZERO,
            ..limits()
        });
        t.register(id, None, client(1), 0);
        assert_eq!(t.detach(id, Instant::now()), Err(NoDetach::Disabled));
        let mut t = table_with(&[(id, 1)]);
        t.remove(id);
        assert_eq!(t.detach(id, Instant::now()), Err(NoDetach::Unknown));
        assert_eq!(t.resume(id, None), Err(NoResume::NotFound));
    }
}

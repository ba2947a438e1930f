//! File descriptors: raises the process's soft `RLIMIT_NOFILE` to its hard limit at start, and
//! works out how many accepted sockets fit while a reserve stays free for files (upload data,
//! HTTP spool files, models, logs) so that a flood of sockets cannot make the server fail
//! to open a file.
//!
//! One `getrlimit`/`setrlimit` pair and arithmetic; this module must not accept or close anything.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::server::ServerConfig;

/// Descriptors kept for what every server has open whatever the load: standard streams, the
/// listener, the runtime's epoll and wake-up descriptors, log files, the models while they
/// load, `/proc` reads for metrics, directories synced after writes.
const BASE_RESERVE: u64 = 128;

/// How many accepted sockets the server may hold, and what that was worked out from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft descriptor limit in force (after raising it).
    pub limit: u64,
    /// Descriptors never given to accepted sockets.
    pub reserve: u64,
    /// Accepted sockets at most: the limit less the reserve (at least 1).
    pub sockets: usize,
}

/// Raises the soft limit as far as allowed and returns the budget for `config`, warning if
/// its caps do not fit.
pub fn prepare(config: &ServerConfig) -> Budget {
    let budget = budget(raise_limit(), reserve(config));
    let wanted = config.max_connections as u64 + config.max_pending_connections as u64;
    if wanted.saturating_add(budget.reserve) > budget.limit {
        tracing::warn!(
            limit = budget.limit,
            reserve = budget.reserve,
            max_connections = config.max_connections,
            max_pending_connections = config.max_pending_connections,
            sockets = budget.sockets,
            "--max-connections + --max-pending-connections + the file reserve exceed the \
             descriptor limit (ulimit -n); accepted sockets are held to the budget"
        );
    }
    budget
}

/// Descriptors kept for files: the base, one data file per upload receiving, and for every
/// HTTP job admitted (running or queued) its spool file plus the file being decoded.
fn reserve(config: &ServerConfig) -> u64 {
    let jobs = (config.max_processing + config.queue) as u64;
    BASE_RESERVE + config.max_uploads as u64 + 2 * jobs
}

/// The budget a soft limit and a reserve leave.
fn budget(limit: u64, reserve: u64) -> Budget {
    let sockets = limit.saturating_sub(reserve).max(1);
    let sockets = usize::try_from(sockets)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    Budget {
        limit,
        reserve,
        sockets,
    }
}

/// Sets the soft descriptor limit to the hard one; returns the soft limit now in force
/// (unlimited counts as `u64::MAX`).
fn raise_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!(%err, "cannot read the descriptor limit; assuming 1024");
            return 1024;
        }
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return as_count(hard),
            // macOS refuses more than OPEN_MAX even when the hard limit is unlimited.
            Err(err) => tracing::info!(%err, soft, hard, "descriptor limit not raised"),
        }
    }
    as_count(soft)
}

#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn as_count(limit: nix::sys::resource::rlim_t) -> u64 {
    if limit == RLIM_INFINITY {
        u64::MAX
    } else {
        limit as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_get_what_the_reserve_leaves() {
        let b = budget(20_000, 200);
        assert_eq!(b.sockets, 19_800);
        assert_eq!(
            budget(100, 200).sockets,
            1,
            "never zero, or nothing is accepted"
        );
        assert_eq!(
            budget(u64::MAX, 200).sockets,
            tokio::sync::Semaphore::MAX_PERMITS
        );
    }

    #[test]
    fn the_reserve_grows_with_uploads_and_jobs() {
        let mut config = ServerConfig::for_tests("tiny.en", "unused".into());
        let small = reserve(&config);
        config.max_uploads += 10;
        config.queue += 5;
        assert_eq!(reserve(&config), small + 10 + 10);
    }

    #[test]
    fn the_limit_is_at_least_what_it_was() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert!(raise_limit() >= as_count(soft));
    }
}

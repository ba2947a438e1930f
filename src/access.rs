//! Who a request comes from, as the rest of the server needs to know it: the [`Owner`] whose
//! tasks it may read, and the [`ClientKey`] its fair share of shared resources is counted under.
//! [`Shares`] counts what each client holds against a per-client limit.
//!
//! The HTTP guard (`crate::http::auth`) checks keys and builds a [`Caller`]; everything after it
//! only compares these values. This module must not see a key itself (only its fingerprint),
//! look at requests, or touch the disk.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The API key a task belongs to, as a fingerprint (never the key): with keys configured only
/// the key that created a task may read, resume or follow it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Owner(String);

impl Owner {
    /// The fingerprint of `key`: the first 16 bytes of its SHA-256, in hex. Enough to tell keys
    /// apart, useless for recovering them; it is stored beside results and upload sessions.
    pub fn of_key(key: &str) -> Self {
        let digest = Sha256::digest(key.trim().as_bytes());
        Owner(hex::encode(&digest[..16]))
    }

    /// Whether `caller` may see a task owned by `owner`. A task without an owner (created
    /// while the server had no keys) is visible to everyone, as it was then.
    pub fn permits(owner: Option<&Owner>, caller: Option<&Owner>) -> bool {
        match owner {
            None => true,
            Some(owner) => caller == Some(owner),
        }
    }
}

/// What a client's share of upload slots and disk quota is counted under: its API key when the
/// server has keys, else its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The key's fingerprint.
    Key(Owner),
    /// The peer address (behind a reverse proxy, the proxy's).
    Addr(IpAddr),
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Key(owner) => write!(f, "key:{}", owner.0),
            ClientKey::Addr(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// The caller of one request or WebSocket session, as admitted by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key it presented, when the server requires keys.
    pub owner: Option<Owner>,
    /// Its address.
    pub addr: IpAddr,
}

impl Caller {
    /// A caller without a key (open server, tests).
    pub fn anonymous(addr: IpAddr) -> Self {
        Caller { owner: None, addr }
    }

    /// Whose share this caller uses.
    pub fn client(&self) -> ClientKey {
        match &self.owner {
            Some(owner) => ClientKey::Key(owner.clone()),
            None => ClientKey::Addr(self.addr),
        }
    }

    /// Whether this caller may see a task owned by `owner`.
    pub fn may_see(&self, owner: Option<&Owner>) -> bool {
        Owner::permits(owner, self.owner.as_ref())
    }
}

/// How many of something each client holds, against a per-client limit.
pub struct Shares<K: Eq + Hash + Clone> {
    /// Most each client may hold at once; 0 = unlimited (nothing is tracked).
    limit: usize,
    /// Held counts per client; a client leaves the map when its count drops to zero, so the
    /// map is as small as the set of clients holding something.
    held: Mutex<HashMap<K, usize>>,
}

/// One held share; given back when dropped.
pub struct Share<K: Eq + Hash + Clone> {
    /// The map to give the share back to, `None` when no limit is configured.
    shares: Option<Arc<Shares<K>>>,
    /// Whose share it is.
    key: K,
}

impl<K: Eq + Hash + Clone> Shares<K> {
    /// A tracker allowing `limit` per client (0 = unlimited).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Shares {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a share for `key`, or `None` when it already holds the limit.
    pub fn acquire(self: &Arc<Self>, key: K) -> Option<Share<K>> {
        if self.limit == 0 {
            return Some(Share { shares: None, key });
        }
        let mut held = self.lock();
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: Some(self.clone()),
            key,
        })
    }

    /// How many `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let Some(shares) = &self.shares else { return };
        let mut held = shares.lock();
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_see_their_own_and_unowned_tasks() {
        let a = Owner::of_key("alpha");
        let b = Owner::of_key("beta");
        assert_eq!(a, Owner::of_key(" alpha "));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains("alpha"));
        assert!(Owner::permits(Some(&a), Some(&a)));
        assert!(!Owner::permits(Some(&a), Some(&b)));
        assert!(!Owner::permits(Some(&a), None));
        assert!(Owner::permits(None, Some(&b)));
        assert!(Owner::permits(None, None));
    }

    #[test]
    fn clients_are_keys_when_there_are_keys_else_addresses() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Caller::anonymous(ip).client(), ClientKey::Addr(ip));
        let keyed = Caller {
            owner: Some(Owner::of_key("k")),
            addr: ip,
        };
        assert_eq!(keyed.client(), ClientKey::Key(Owner::of_key("k")));
        assert!(keyed.client().to_string().starts_with("key:"));
    }

    #[test]
    fn shares_are_per_client_and_given_back() {
        let shares = Shares::new(2);
        let first = shares.acquire("a").unwrap();
        let _second = shares.acquire("a").unwrap();
        assert!(shares.acquire("a").is_none());
        assert!(shares.acquire("b").is_some());
        assert_eq!(shares.held(&"a"), 2);
        drop(first);
        assert!(shares.acquire("a").is_some());
        let unlimited = Shares::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.acquire("a")).collect();
        assert_eq!(held.len(), 100);
    }
}

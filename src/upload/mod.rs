//! Resumable uploads: chunk bookkeeping ([`plan`]), durable on-disk state ([`store`]) and
//! whole-file hashes computed as chunks arrive ([`digest`]).
//!
//! This module must NOT speak the wire protocol or run tasks: the server parses messages
//! with [`crate::protocol`] and calls the (synchronous) store from blocking threads.

pub mod digest;
pub mod plan;
pub mod store;

//! Resumable uploads: chunk bookkeeping ([`plan`]) and durable on-disk state ([`store`]).
//!
//! This module must NOT speak the wire protocol or run tasks: the server parses messages
//! with [`crate::protocol`] and calls the (synchronous) store from blocking threads.

pub mod plan;
pub mod store;

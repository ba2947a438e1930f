//! The task vocabulary every layer speaks: what a task is called ([`TaskId`]), what was asked
//! of it ([`Task`], [`OutputFormat`], [`ZhScript`]) and why it failed ([`FailureCode`]).
//!
//! This is the bottom of the crate: plain types with their parsing and serde shapes. It must
//! not import any other module of the crate, do I/O, or know how a type travels on a wire
//! (the protocol maps these types to its messages and error codes).

mod task;
mod task_id;

pub use task::{split_language_tag, FailureCode, OutputFormat, Task, TaskOptions, ZhScript};
pub use task_id::{TaskId, TaskIdError};

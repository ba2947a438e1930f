//! Speech to text: a bounded pool of Whisper workers and the logic that feeds it.
//!
//! - [`engine`]: one Whisper state running one job, with segments reported as they appear.
//! - [`model`]: one loaded model (whisper.cpp context, name, languages).
//! - [`pool`]: worker threads and the bounded job queue; each job names its model.
//! - [`served`]: the models a server offers, loaded on first use, unloaded when idle or for room.
//! - [`vad`]: where speech is (Silero VAD, or an energy fallback), to cut windows at pauses;
//!   and Silero on a live stream as it arrives, for the live policy's pauses.
//! - [`script`]: Mandarin output put in the requested script (Simplified, Traditional, as is).
//! - [`long`]: a stream of 16 kHz audio of any length → windows → jobs → one continuous timeline.
//!
//! This module must not know about sockets or file formats; it takes 16 kHz mono `f32`.

pub mod engine;
pub mod long;
pub mod model;
pub mod pool;
pub mod script;
pub mod served;
pub mod vad;

pub use engine::{InferenceError, Options};
pub use long::{LongError, LongEvent};
pub use pool::{Busy, JobEvent, JobHandle, JobSummary, Pool, PoolConfig, PoolStats};
pub use vad::{SpeechProbe, Vad, VadError};

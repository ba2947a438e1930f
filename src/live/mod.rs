//! Live transcription: turning a growing stream of 16 kHz audio into revisable partial text and
//! committed segments.
//!
//! [`policy`] is the pure state machine (no threads, no Whisper, no sockets): it decides when a
//! stream needs a new hypothesis, which text is final, and how far behind the stream is. The
//! session layer feeds it audio and Whisper results and sends what it returns. [`resume`] keeps
//! the table of streams a client may continue after a dropped connection, with their grace
//! periods and caps (pure bookkeeping; the session layer holds the streams themselves).
//! [`capacity`] adds up what the open streams demand of the Whisper workers, measured from
//! their hypotheses, and says whether one more stream fits. [`language`] pins a stream's
//! detected language once Whisper is sure of it. [`threads`] picks each hypothesis' thread
//! count from what recent ones cost, so a stream on a loaded machine does not spin.
//!
//! This module must not do I/O, spawn, or run Whisper: everything here is testable with plain
//! values.

pub mod capacity;
pub mod language;
pub mod policy;
pub mod resume;
pub mod threads;

pub use capacity::{Full, LiveCapacity, Metered, StreamLoad};
pub use language::LanguagePin;
pub use policy::{JobSpan, LiveConfig, LiveJob, LiveOutput, LivePolicy};
pub use threads::ThreadChoice;

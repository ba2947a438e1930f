//! One Whisper state running one job: options → whisper.cpp parameters → segments as they appear.
//!
//! Segments are handed out from whisper.cpp's new-segment callback, so a caller sees text while
//! the rest of the audio is still being decoded. Cancellation goes through whisper.cpp's abort
//! callback, checked between graph computations.
//!
//! This module must not own threads, queues or models: the pool decides who runs what, where.
//! It must not copy a job's audio unless it has to sanitise or pad it.

use std::borrow::Cow;
use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use whisper_rs::{
    whisper_rs_sys as sys, FullParams, SamplingStrategy, WhisperContextParameters, WhisperState,
};

use super::script;
use crate::audio::SAMPLE_RATE;
use crate::domain::ZhScript;
use crate::transcript::{Segment, Token};

/// How one job should be decoded. Every field has a sensible default (see [`Options::default`]).
/// Serializable so a job can travel to another node of a cluster with the options it was given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Spoken language as a Whisper code ("en", "zh", …); `None` asks Whisper to detect it
    /// (English-only models always use "en").
    pub language: Option<String>,
    /// Translate into English instead of transcribing in the spoken language.
    pub translate: bool,
    /// Text that primes the decoder (spelling of names, script, style), as whisper.cpp's `--prompt`.
    pub initial_prompt: Option<String>,
    /// Beam width for beam search ([`DEFAULT_BEAM_SIZE`], whisper-cli's default, unless asked
    /// otherwise); `None` or 1 decodes greedily (best of 5 candidates when sampling), which is
    /// faster. Ignored in low-latency mode, which is always greedy.
    pub beam_size: Option<u32>,
    /// CPU threads whisper.cpp may use for this job.
    pub threads: usize,
    /// Report per-token timing on every segment (costs a little decode time).
    pub token_timestamps: bool,
    /// Trade a little accuracy for speed, for live partial hypotheses that are recomputed
    /// every second anyway: no temperature fallback, one greedy candidate, and an encoder
    /// context cut to the audio's length and a margin ([`audio_ctx_for`]) instead of
    /// Whisper's fixed 30 s.
    pub low_latency: bool,
    /// Sampling temperature Whisper starts at (OpenAI's `temperature`): 0 decodes the most
    /// likely text; either way whisper.cpp raises it by 0.2 per retry when a window decodes to
    /// repetitive or unlikely text (not in low-latency mode).
    pub temperature: f32,
    /// Script for Mandarin output ([`super::script`]); `None` = the pool's default.
    pub zh_script: Option<ZhScript>,
}

/// Beam width batch transcription uses unless asked otherwise: whisper-cli's (1.9.3) default, so
/// Earshot is never less accurate than whisper.cpp's own CLI on the same audio (docs/ACCURACY.md
/// measures both).
pub const DEFAULT_BEAM_SIZE: u32 = 5;

impl Default for Options {
    fn default() -> Self {
        Options {
            language: None,
            translate: false,
            initial_prompt: None,
            beam_size: Some(DEFAULT_BEAM_SIZE),
            threads: 2,
            token_timestamps: false,
            low_latency: false,
            temperature: 0.0,
            zh_script: None,
        }
    }
}

/// Why a job (or the pool) could not produce a transcript.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    /// The model file could not be loaded.
    #[error("could not load the model at {path}: {reason}")]
    ModelLoad {
        /// The path that was tried, so the user can fix it.
        path: String,
        /// What whisper.cpp reported.
        reason: String,
    },
    /// A worker could not allocate its Whisper state (usually memory).
    #[error("could not start a transcription worker: {0}")]
    Worker(String),
    /// The job's options cannot be used (unknown language, zero threads, …).
    #[error("invalid transcription options: {0}")]
    InvalidOptions(String),
    /// whisper.cpp returned an error while transcribing.
    #[error("transcription failed: {0}")]
    Whisper(String),
    /// The requester went away, so the job was stopped.
    #[error("the transcription was cancelled")]
    Aborted,
    /// The worker hit a bug on this job; it keeps serving other jobs.
    #[error("the transcription worker failed on this audio")]
    Panicked,
    /// The pool is shutting down and takes no more work.
    #[error("the transcription service is shutting down")]
    ShutDown,
}

/// Shortest audio handed to whisper.cpp: shorter inputs are padded with silence up to this
/// (whisper.cpp refuses under 100 ms and does poorly under one second).
const MIN_SAMPLES: usize = SAMPLE_RATE as usize + SAMPLE_RATE as usize / 20;

/// Why a model cannot be asked for a language.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanguageError {
    /// Whisper has no such language code.
    #[error("unknown language {0:?}")]
    Unknown(String),
    /// An English-only (`.en`) model was asked for another language.
    #[error(
        "the model is English-only: language {0:?} needs a multilingual model; send \"en\" or \"auto\""
    )]
    EnglishOnly(String),
}

/// The one rule for which languages a model takes: a Whisper code (`en`, `zh`, …) Whisper
/// knows, or `auto` (detect it); on an English-only model only `en` and `auto`. Callers turn
/// their own spellings (`zh-Hans`, `en-US`, upper case) into a Whisper code first.
pub fn check_language(language: &str, multilingual: bool) -> Result<(), LanguageError> {
    if language == "auto" {
        return Ok(());
    }
    if whisper_rs::get_lang_id(language).is_none() {
        return Err(LanguageError::Unknown(language.to_owned()));
    }
    if !multilingual && language != "en" {
        return Err(LanguageError::EnglishOnly(language.to_owned()));
    }
    Ok(())
}

/// Checks options before any work is queued, so a bad request fails fast and clearly.
/// (An English-only model given another language transcribes English: refusing that is the
/// caller's decision, through [`check_language`].)
pub fn validate(options: &Options) -> Result<(), InferenceError> {
    if options.threads == 0 {
        return Err(InferenceError::InvalidOptions(
            "threads must be at least 1".into(),
        ));
    }
    if let Some(language) = &options.language {
        check_language(language, true)
            .map_err(|e| InferenceError::InvalidOptions(e.to_string()))?;
    }
    if options.beam_size == Some(0) {
        return Err(InferenceError::InvalidOptions(
            "beam size must be at least 1".into(),
        ));
    }
    if options
        .initial_prompt
        .as_deref()
        .is_some_and(|p| p.contains('\0'))
    {
        return Err(InferenceError::InvalidOptions(
            "the prompt contains a NUL character".into(),
        ));
    }
    Ok(())
}

/// The language a job was transcribed in.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Whisper's code ("en", "zh", …), as asked for or as detected.
    pub language: String,
    /// Whisper's probability for the detected language; `None` when the caller named it
    /// (or the model is English-only).
    pub probability: Option<f32>,
}

impl Detection {
    /// A language the job was told to use.
    pub fn given(language: &str) -> Self {
        Detection {
            language: language.to_owned(),
            probability: None,
        }
    }
}

/// Runs one transcription on `state`, calling `on_segment` for every segment as whisper.cpp
/// finalises it (times relative to the start of `audio`). `should_abort` is polled from
/// whisper.cpp's compute threads; when it returns true the job stops with
/// [`InferenceError::Aborted`]. Returns the language Whisper used.
pub fn run(
    state: &mut WhisperState,
    multilingual: bool,
    audio: &[f32],
    options: &Options,
    on_segment: &mut dyn FnMut(Segment),
    should_abort: &(dyn Fn() -> bool + Sync),
) -> Result<Detection, InferenceError> {
    validate(options)?;
    let language = job_language(options, multilingual);
    if audio.is_empty() {
        return Ok(Detection::given(language.unwrap_or("en")));
    }
    let audio = prepare_audio(audio);
    let detection = match language {
        Some(language) => Detection::given(language),
        None => detect_language(state, &audio, options.threads)?,
    };
    // Detected here rather than inside `full`, which would not say how sure it was; the same
    // computation (the first 30 s, offset 0), so the text is what auto-detection gives.
    let options = Options {
        language: Some(detection.language.clone()),
        ..options.clone()
    };
    let options = &options;
    let mut sink = SegmentSink {
        on_segment,
        token_timestamps: options.token_timestamps,
        translate: options.translate && multilingual,
        zh_script: options.zh_script.unwrap_or_default(),
        failed: &AtomicBool::new(false),
    };
    let abort = AbortCheck {
        should_abort,
        failed: sink.failed,
    };
    let mut params = whisper_params(options, multilingual);
    if options.low_latency {
        params.set_audio_ctx(audio_ctx_for(audio.len()));
        params.set_max_tokens(token_cap_for(audio.len()));
    }
    // SAFETY: both user-data pointers outlive `full`, which is the only place whisper.cpp
    // calls the trampolines; the trampolines cast them back to exactly these types.
    unsafe {
        params.set_new_segment_callback(Some(on_new_segment));
        params.set_new_segment_callback_user_data(&mut sink as *mut SegmentSink as *mut c_void);
        params.set_abort_callback(Some(on_abort_check));
        params.set_abort_callback_user_data(&abort as *const AbortCheck as *mut c_void);
    }
    let result = state.full(params, &audio);
    if sink.failed.load(Ordering::SeqCst) {
        return Err(InferenceError::Panicked);
    }
    if should_abort() {
        return Err(InferenceError::Aborted);
    }
    result.map_err(|e| InferenceError::Whisper(e.to_string()))?;
    Ok(detection)
}

/// Whisper's language detection on the start of `audio`: the most likely language and its
/// probability.
fn detect_language(
    state: &mut WhisperState,
    audio: &[f32],
    threads: usize,
) -> Result<Detection, InferenceError> {
    let threads = threads.clamp(1, 64);
    let failed = |e: whisper_rs::WhisperError| {
        InferenceError::Whisper(format!("language detection failed: {e}"))
    };
    state.pcm_to_mel(audio, threads).map_err(failed)?;
    let (id, probabilities) = state.lang_detect(0, threads).map_err(failed)?;
    let language = whisper_rs::get_lang_str(id).unwrap_or("en");
    Ok(Detection {
        language: language.to_owned(),
        probability: usize::try_from(id)
            .ok()
            .and_then(|i| probabilities.get(i).copied()),
    })
}

/// The language to force, or `None` to let Whisper detect it.
fn job_language(options: &Options, multilingual: bool) -> Option<&str> {
    if !multilingual {
        return Some("en");
    }
    options.language.as_deref().filter(|l| *l != "auto")
}

/// Replaces non-finite samples (which would poison the spectrogram) and pads very short input.
/// Audio that needs neither (the usual case: every input path bounds its samples) is used as it
/// is, not copied.
fn prepare_audio(audio: &[f32]) -> Cow<'_, [f32]> {
    if audio.len() >= MIN_SAMPLES && crate::audio::is_sanitized(audio) {
        return Cow::Borrowed(audio);
    }
    let mut prepared: Vec<f32> = audio
        .iter()
        .copied()
        .map(crate::audio::sanitize_sample)
        .collect();
    if prepared.len() < MIN_SAMPLES {
        prepared.resize(MIN_SAMPLES, 0.0);
    }
    Cow::Owned(prepared)
}

/// The whisper.cpp parameters a model is loaded with. Public so benchmarks can load it on equal
/// terms.
///
/// Flash attention on, as whisper.cpp's and whisper-cli's default: it roughly halves the
/// encoder's cost. whisper.cpp 1.9.3 attended over unwritten, unmasked padding with it (in a
/// state reused with a shorter `audio_ctx`, [`audio_ctx_for`], tiny.en decoded music into "The
/// The The…"); the vendored copy carries the fix (vendor/whisper-rs-sys/patches).
pub fn context_params() -> WhisperContextParameters<'static> {
    let mut params = WhisperContextParameters::default();
    params.flash_attn(true);
    params
}

/// The whisper.cpp parameters a job runs with, without the callbacks: whisper-cli 1.9.3's
/// decoding (beam 5, best of 5 when a window falls back to sampling, temperature raised by 0.2
/// per retry, its entropy, log-probability and no-speech thresholds, non-speech tokens allowed;
/// a 30 s window gives whisper-cli's transcript to the token) unless the options say
/// otherwise. Low-latency jobs decode greedily with one candidate and no fallback, to stay real
/// time. Public so benchmarks can run whisper-rs directly on equal terms.
pub fn whisper_params(options: &Options, multilingual: bool) -> FullParams<'_, '_> {
    let language = job_language(options, multilingual);
    let strategy = match options.beam_size {
        _ if options.low_latency => SamplingStrategy::Greedy { best_of: 1 },
        // Beam search also samples 5 candidates on fallback: the vendored whisper.cpp's beam
        // defaults carry best_of 5 (vendor/whisper-rs-sys/patches/0004), as whisper-cli's do.
        Some(beam_size) if beam_size > 1 => SamplingStrategy::BeamSearch {
            beam_size: beam_size.min(16) as c_int,
            patience: -1.0,
        },
        _ => SamplingStrategy::Greedy { best_of: 5 },
    };
    let mut params = FullParams::new(strategy);
    params.set_n_threads(options.threads.clamp(1, 64) as c_int);
    params.set_language(language);
    params.set_translate(options.translate && multilingual);
    if let Some(prompt) = options.initial_prompt.as_deref().filter(|p| !p.is_empty()) {
        params.set_initial_prompt(prompt);
    }
    params.set_token_timestamps(options.token_timestamps);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_special(false);
    params.set_print_timestamps(false);
    params.set_suppress_blank(true);
    // whisper-cli leaves non-speech tokens (♪, [ ], ( ), …) allowed, and suppressing them changes
    // which words a beam keeps; `clean_text` removes the marks they make. Live hypotheses keep
    // them suppressed: a partial shown for a moment should not be a sound mark.
    params.set_suppress_nst(options.low_latency);
    params.set_temperature(options.temperature.clamp(0.0, 1.0));
    params.set_temperature_inc(0.2);
    params.set_entropy_thold(2.4);
    params.set_logprob_thold(-1.0);
    params.set_no_speech_thold(0.6);
    if options.low_latency {
        params.set_temperature_inc(0.0);
    }
    params
}

/// Most tokens a low-latency job decodes per pass over its audio: more than fast Mandarin
/// needs (about 6 characters a second, up to two tokens each), far fewer than the 220 a
/// repetition loop ("be willing to be willing to …") runs to, which cost a live hypothesis
/// on 3 s of audio a second instead of 0.15 s (docs/BENCHMARKS.md, "Live latency"). At the
/// cap whisper.cpp ends the segment with a timestamp and decodes on from there.
pub fn token_cap_for(samples: usize) -> c_int {
    const BASE: f64 = 16.0;
    const PER_SEC: f64 = 15.0;
    let secs = samples as f64 / f64::from(SAMPLE_RATE);
    (BASE + PER_SEC * secs).ceil().min(220.0) as c_int
}

/// Silence after a low-latency job's audio in the encoder's window ([`audio_ctx_for`]).
/// Whisper learnt on 30 s windows, where speech that ends early is followed by padding and
/// words cut by the window's edge go untranscribed: with 1 s after the audio, tiny.en dropped
/// and misheard more of a live buffer's last words than with 3 s (`scripts/bench-live`,
/// docs/BENCHMARKS.md "Room after the audio"); the whole 30 s window was too slow to keep up.
/// The room costs encoder time: 448 frames instead of 320 for a 5 s buffer.
pub const AUDIO_CTX_MARGIN_SECS: f64 = 3.0;

/// Encoder frames (of Whisper's 1500 per 30 s) for a low-latency job on `samples` of audio:
/// the audio and [`AUDIO_CTX_MARGIN_SECS`], rounded up to a multiple of 64, at least 256.
/// A short window costs less to encode than the full 30 s.
pub fn audio_ctx_for(samples: usize) -> c_int {
    const FULL: usize = 1500;
    let secs = samples as f64 / f64::from(SAMPLE_RATE) + AUDIO_CTX_MARGIN_SECS;
    let frames = (secs / 30.0 * FULL as f64).ceil() as usize;
    let rounded = frames.div_ceil(64) * 64;
    rounded.clamp(256, FULL) as c_int
}

/// Removes what Whisper writes for sounds rather than words: `[BLANK_AUDIO]`, `(music)`,
/// `♪ … ♪`, `*laughs*` (an unclosed mark removes the rest of the segment). Returns an empty
/// string when nothing spoken is left.
pub fn clean_text(raw: &str) -> String {
    let mut kept = String::with_capacity(raw.len());
    let mut closing: Option<char> = None;
    for c in raw.chars() {
        if let Some(close) = closing {
            if c == close {
                closing = None;
            }
            continue;
        }
        match c {
            '[' => closing = Some(']'),
            '(' => closing = Some(')'),
            '（' => closing = Some('）'),
            '【' => closing = Some('】'),
            '*' => closing = Some('*'),
            // Sung lyrics between notes are, in practice, invented over music.
            '♪' | '♫' | '♬' | '♩' => closing = Some(c),
            _ => kept.push(c),
        }
    }
    let kept = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    if kept.chars().any(char::is_alphanumeric) {
        kept
    } else {
        String::new()
    }
}

/// What the new-segment trampoline needs; lives on the stack of [`run`].
struct SegmentSink<'a> {
    /// Where segments go (the job's reply channel, in the pool).
    on_segment: &'a mut dyn FnMut(Segment),
    /// Whether to read per-token timing.
    token_timestamps: bool,
    /// Whether the job translates (then the text is English, never converted).
    translate: bool,
    /// The script Mandarin text is put in, if the language turns out to be Mandarin.
    zh_script: ZhScript,
    /// Set when the callback panicked, so the job fails and whisper.cpp is told to stop.
    failed: &'a AtomicBool,
}

/// What the abort trampoline needs; read from whisper.cpp's compute threads, hence `Sync`.
struct AbortCheck<'a> {
    /// The caller's test (in the pool: "is the requester gone?").
    should_abort: &'a (dyn Fn() -> bool + Sync),
    /// Set by the segment callback on a panic: no point finishing the job.
    failed: &'a AtomicBool,
}

unsafe extern "C" fn on_new_segment(
    ctx: *mut sys::whisper_context,
    state: *mut sys::whisper_state,
    n_new: c_int,
    user_data: *mut c_void,
) {
    // SAFETY: `user_data` is the `SegmentSink` set in `run`, alive for the whole `full` call.
    let sink = unsafe { &mut *(user_data as *mut SegmentSink) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: whisper.cpp passes its live context and state for this call.
        let total = unsafe { sys::whisper_full_n_segments_from_state(state) };
        // Forced or detected, the language is settled before the first segment.
        let language = unsafe { sys::whisper_full_lang_id_from_state(state) };
        let language = whisper_rs::get_lang_str(language).unwrap_or("en");
        let conversion = script::conversion_for(language, sink.translate, sink.zh_script);
        for index in (total - n_new).max(0)..total {
            let mut segment = unsafe { read_segment(ctx, state, index, sink.token_timestamps) };
            if let Some(to) = conversion {
                script::apply(&mut segment, to);
            }
            if !segment.text.is_empty() {
                (sink.on_segment)(segment);
            }
        }
    }));
    if outcome.is_err() {
        sink.failed.store(true, Ordering::SeqCst);
    }
}

unsafe extern "C" fn on_abort_check(user_data: *mut c_void) -> bool {
    // SAFETY: `user_data` is the `AbortCheck` set in `run`, alive for the whole `full` call.
    let check = unsafe { &*(user_data as *const AbortCheck) };
    if check.failed.load(Ordering::SeqCst) {
        return true;
    }
    catch_unwind(AssertUnwindSafe(|| (check.should_abort)())).unwrap_or(true)
}

/// Reads segment `index` from a state in the middle of `whisper_full`.
///
/// # Safety
/// `ctx` and `state` must be the live pointers whisper.cpp passed to the callback and
/// `index` must be below the state's segment count.
unsafe fn read_segment(
    ctx: *mut sys::whisper_context,
    state: *mut sys::whisper_state,
    index: c_int,
    with_tokens: bool,
) -> Segment {
    let text = unsafe { c_text(sys::whisper_full_get_segment_text_from_state(state, index)) };
    let start = unsafe { sys::whisper_full_get_segment_t0_from_state(state, index) };
    let end = unsafe { sys::whisper_full_get_segment_t1_from_state(state, index) };
    let no_speech_prob =
        unsafe { sys::whisper_full_get_segment_no_speech_prob_from_state(state, index) };
    let tokens = with_tokens.then(|| unsafe { read_tokens(ctx, state, index) });
    Segment {
        start: centis(start),
        end: centis(end).max(centis(start)),
        text: clean_text(&text),
        no_speech_prob,
        tokens,
    }
}

/// The text tokens of one segment with their timing (special tokens left out).
///
/// # Safety
/// As for [`read_segment`].
unsafe fn read_tokens(
    ctx: *mut sys::whisper_context,
    state: *mut sys::whisper_state,
    index: c_int,
) -> Vec<Token> {
    let eot = unsafe { sys::whisper_token_eot(ctx) };
    let count = unsafe { sys::whisper_full_n_tokens_from_state(state, index) };
    let mut tokens = Vec::with_capacity(count.max(0) as usize);
    let mut text = Utf8Joiner::default();
    for t in 0..count {
        let data = unsafe { sys::whisper_full_get_token_data_from_state(state, index, t) };
        if data.id >= eot {
            continue;
        }
        let bytes = unsafe {
            c_bytes(sys::whisper_full_get_token_text_from_state(
                ctx, state, index, t,
            ))
        };
        tokens.push(Token {
            text: text.push(bytes),
            start: centis(data.t0),
            end: centis(data.t1).max(centis(data.t0)),
            probability: data.p,
        });
    }
    if let Some(last) = tokens.last_mut() {
        last.text.push_str(&text.finish());
    }
    tokens
}

/// Whisper's byte-level tokens can split a multi-byte character (common in Chinese and
/// Japanese); this carries the incomplete tail over to the next token instead of
/// producing replacement characters.
#[derive(Default)]
struct Utf8Joiner {
    /// Bytes of a character whose remaining bytes are in the next token.
    pending: Vec<u8>,
}

impl Utf8Joiner {
    /// The complete characters available after adding `bytes`.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                return String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
            }
        };
        let rest = self.pending.split_off(valid);
        String::from_utf8(std::mem::replace(&mut self.pending, rest)).unwrap_or_default()
    }

    /// Whatever is left, with broken bytes replaced.
    fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// # Safety
/// `ptr` must be null or a NUL-terminated string owned by whisper.cpp, alive while the
/// returned slice is used.
unsafe fn c_bytes<'a>(ptr: *const std::ffi::c_char) -> &'a [u8] {
    if ptr.is_null() {
        return &[];
    }
    unsafe { CStr::from_ptr(ptr) }.to_bytes()
}

/// # Safety
/// `ptr` must be null or a NUL-terminated string owned by whisper.cpp.
unsafe fn c_text(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// whisper.cpp times are in centiseconds.
fn centis(t: i64) -> f64 {
    t.max(0) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cap_leaves_room_for_fast_speech_and_stops_loops() {
        let cap = |secs: f64| token_cap_for((secs * f64::from(SAMPLE_RATE)) as usize);
        // Fast Mandarin: 6 characters a second, two tokens each, a timestamp pair per 3 s.
        for secs in [1.0, 3.0, 10.0, 12.0] {
            assert!(
                f64::from(cap(secs)) >= 12.0 * secs + 2.0 * (secs / 3.0).ceil(),
                "{secs}"
            );
        }
        assert!(cap(3.0) <= 64, "a loop on 3 s stops well before 220 tokens");
    }

    #[test]
    fn a_live_window_covers_the_audio_and_its_margin_in_whole_blocks() {
        let frames_per_sec = 1500.0 / 30.0;
        for secs in [1.0, 4.7, 10.0, 26.0] {
            let ctx = audio_ctx_for((secs * f64::from(SAMPLE_RATE)) as usize);
            assert_eq!(ctx % 64, 0, "{secs} s: {ctx}");
            let covered = f64::from(ctx) / frames_per_sec;
            assert!(covered >= secs + AUDIO_CTX_MARGIN_SECS, "{secs} s: {ctx}");
            assert!(covered < secs + AUDIO_CTX_MARGIN_SECS + 64.0 / frames_per_sec + 0.01);
        }
        assert_eq!(audio_ctx_for(0), 256, "the shortest window");
        assert_eq!(
            audio_ctx_for(40 * SAMPLE_RATE as usize),
            1500,
            "never past 30 s"
        );
    }

    #[test]
    fn clean_text_drops_annotations() {
        assert_eq!(clean_text(" [BLANK_AUDIO]"), "");
        assert_eq!(clean_text("(music)"), "");
        assert_eq!(clean_text(" ♪ ♪ "), "");
        assert_eq!(clean_text("♪ Never gonna give you up ♪"), "");
        assert_eq!(clean_text("*laughs*"), "");
        assert_eq!(clean_text("（笑）"), "");
        assert_eq!(clean_text(" ..."), "");
    }

    #[test]
    fn clean_text_keeps_speech() {
        assert_eq!(clean_text(" And so, my fellow"), "And so, my fellow");
        assert_eq!(clean_text("[MUSIC] Hello there."), "Hello there.");
        assert_eq!(clean_text("换一首歌。"), "换一首歌。");
    }

    #[test]
    fn validate_rejects_bad_options() {
        assert!(validate(&Options::default()).is_ok());
        let zero_threads = Options {
            threads: 0,
            ..Options::default()
        };
        assert!(validate(&zero_threads).is_err());
        let klingon = Options {
            language: Some("tlh-x".into()),
            ..Options::default()
        };
        assert!(validate(&klingon).is_err());
        let nul = Options {
            initial_prompt: Some("a\0b".into()),
            ..Options::default()
        };
        assert!(validate(&nul).is_err());
    }

    #[test]
    fn languages_a_model_takes() {
        assert_eq!(check_language("auto", false), Ok(()));
        assert_eq!(check_language("en", false), Ok(()));
        assert_eq!(check_language("de", true), Ok(()));
        assert_eq!(
            check_language("de", false),
            Err(LanguageError::EnglishOnly("de".into()))
        );
        assert_eq!(
            check_language("klingon", true),
            Err(LanguageError::Unknown("klingon".into()))
        );
        assert_eq!(
            check_language("klingon", false),
            Err(LanguageError::Unknown("klingon".into()))
        );
    }

    #[test]
    fn english_only_models_force_english() {
        let zh = Options {
            language: Some("zh".into()),
            ..Options::default()
        };
        assert_eq!(job_language(&zh, false), Some("en"));
        assert_eq!(job_language(&zh, true), Some("zh"));
        assert_eq!(job_language(&Options::default(), true), None);
    }

    #[test]
    fn split_characters_are_joined_across_tokens() {
        let bytes = "换一".as_bytes();
        let mut joiner = Utf8Joiner::default();
        assert_eq!(joiner.push(&bytes[..2]), "");
        assert_eq!(joiner.push(&bytes[2..4]), "换");
        assert_eq!(joiner.push(&bytes[4..]), "一");
        assert_eq!(joiner.push(&[0xe6]), "");
        assert_eq!(joiner.finish(), "\u{fffd}");
        assert_eq!(joiner.push(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn prepare_audio_pads_and_sanitises() {
        let out = prepare_audio(&[f32::NAN, 2.0, -0.5]);
        assert_eq!(out.len(), MIN_SAMPLES);
        assert_eq!(&out[..3], &[0.0, 1.0, -0.5]);
        let mut long = vec![0.5; MIN_SAMPLES];
        assert!(
            matches!(prepare_audio(&long), Cow::Borrowed(_)),
            "clean audio is not copied"
        );
        long[7] = f32::INFINITY;
        let out = prepare_audio(&long);
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!((out.len(), out[7]), (MIN_SAMPLES, 1.0));
    }
}

//! Decoding: any container/codec symphonia (plus libopus) understands → mono `f32` blocks at the
//! source sample rate.
//!
//! - [`Decoder`]: incremental demux + decode from a file path or from any blocking reader
//!   (for bytes that arrive over time, see [`byte_feed`]). Multi-channel audio is averaged to mono.
//! - [`PcmDecoder`]: raw interleaved PCM (`s16le` / `f32le`) for live streams.
//!
//! Hostile input is expected: every demuxer/decoder call runs under `catch_unwind`, channel counts
//! and packet sizes are bounded, the decoded length is capped by [`DecodeLimits`], and every
//! sample handed out is finite and within [-1, 1] ([`crate::audio::sanitize_sample`]).
//!
//! This module must NOT resample (see [`crate::audio::resample`]), must not read a whole input
//! into memory, and knows nothing about Whisper or the network.

mod feed;
mod pcm;

pub use feed::{byte_feed, ByteFeedReader, ByteFeedSender, FeedClosed};
pub use pcm::{PcmDecoder, PcmFormat};

use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::LazyLock;

use symphonia::core::audio::conv::FromSample;
use symphonia::core::audio::sample::Sample;
use symphonia::core::audio::{Audio, AudioBuffer, GenericAudioBufferRef};
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::{Hint, Probe};
use symphonia::core::formats::{FormatOptions, FormatReader, Track, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;
use symphonia_adapter_libopus::OpusDecoder;

/// Every codec symphonia was built with, plus Opus through libopus.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
    let mut registry = CodecRegistry::new();
    symphonia::default::register_enabled_codecs(&mut registry);
    registry.register_audio_decoder::<OpusDecoder>();
    registry
});

/// Every container and metadata reader symphonia was built with.
static PROBE: LazyLock<Probe> = LazyLock::new(|| {
    let mut probe = Probe::default();
    symphonia::default::register_enabled_formats(&mut probe);
    probe
});

/// Bounds that keep a hostile or simply huge input from exhausting memory or time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Longest audio accepted, in seconds; decoding stops with [`DecodeError::TooLong`] past it.
    /// Counted on decoded samples, because container headers can lie.
    pub max_duration_secs: f64,
    /// Most channels accepted. Real files have at most a few dozen; a header claiming thousands
    /// would make decoders allocate huge buffers.
    pub max_channels: usize,
    /// Highest sample rate accepted, in Hz. Rates above this are corrupt headers, not audio.
    pub max_sample_rate: u32,
    /// Largest compressed packet accepted, in bytes. A packet this big is a corrupt length field.
    pub max_packet_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_duration_secs: 6.0 * 3600.0,
            max_channels: 64,
            max_sample_rate: 768_000,
            max_packet_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why audio could not be decoded. Messages are meant for end users.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an audio format or codec we can read (e.g. a text file named `.wav`).
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// The input holds no audio samples at all.
    #[error("the input contains no audio")]
    Empty,
    /// The input could not be read (missing file, directory, broken upload, ...).
    #[error("could not read the input: {}", io_reason(.0))]
    Io(#[from] io::Error),
    /// The audio data is damaged beyond what can be skipped.
    #[error("the audio data is damaged: {0}")]
    Malformed(String),
    /// The audio is longer than [`DecodeLimits::max_duration_secs`].
    #[error("the audio is longer than the limit of {limit_secs} seconds")]
    TooLong {
        /// The limit that was exceeded, in seconds.
        limit_secs: f64,
    },
    /// The decoder crashed on this input; it was contained and decoding stopped.
    #[error("the audio could not be decoded: the decoder failed on this input")]
    Panicked,
    /// Raw PCM settings that cannot work (e.g. zero channels).
    #[error("invalid raw audio settings: {0}")]
    InvalidPcm(String),
}

/// A short, user-facing reason for an I/O failure.
fn io_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "file not found".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::IsADirectory => "it is a directory, not a file".to_string(),
        _ => err.to_string(),
    }
}

/// Runs a symphonia (or rubato) call, turning a panic into [`DecodeError::Panicked`]. The
/// panic's message is logged, never put in the error: clients see only that decoding failed.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, DecodeError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::warn!(
            detail,
            "audio decoding panicked on hostile input; contained"
        );
        DecodeError::Panicked
    })
}

/// Maps a symphonia error that stops decoding to a user-facing [`DecodeError`].
fn fatal(err: SymphoniaError) -> DecodeError {
    tracing::debug!(error = %err, "decode stopped");
    match err {
        SymphoniaError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            DecodeError::Malformed("the input ends unexpectedly".to_string())
        }
        SymphoniaError::IoError(e) => DecodeError::Io(e),
        SymphoniaError::DecodeError(_) | SymphoniaError::SeekError(_) => {
            DecodeError::Malformed("the container is corrupt".to_string())
        }
        SymphoniaError::Unsupported(_) => {
            DecodeError::Unsupported("this audio feature is not supported".to_string())
        }
        SymphoniaError::LimitError(_) => {
            DecodeError::Malformed("the input exceeds a safety limit".to_string())
        }
        _ => DecodeError::Malformed("the stream changed in an unsupported way".to_string()),
    }
}

/// Incremental decoder: one audio track → mono `f32` blocks at the source sample rate.
pub struct Decoder {
    /// The demuxer that splits the container into packets; owns the byte source.
    format: Box<dyn FormatReader>,
    /// The codec decoder for the chosen track.
    codec: Box<dyn AudioDecoder>,
    /// Which track's packets to decode; others (video, second audio) are skipped.
    track_id: u32,
    /// Sample rate of the decoded audio, learned from the first decoded block (more reliable
    /// than the container header).
    sample_rate: u32,
    /// Duration the container announces, in seconds, if any.
    duration_hint: Option<f64>,
    /// Bounds enforced while decoding.
    limits: DecodeLimits,
    /// Mono samples decoded so far, to enforce `limits.max_duration_secs`.
    decoded_samples: u64,
    /// The first block, decoded during opening to learn the rate; handed out first.
    pending: Option<Vec<f32>>,
    /// Set once the end (or a fatal error) is reached, so later calls return `None`.
    finished: bool,
    /// Packets skipped because they failed to decode; reported in the log at the end.
    skipped_packets: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("sample_rate", &self.sample_rate)
            .field("duration_hint", &self.duration_hint)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// Opens an audio file. The file is read incrementally, never loaded whole.
    pub fn open_path(path: &Path, limits: DecodeLimits) -> Result<Decoder, DecodeError> {
        if path.is_dir() {
            return Err(DecodeError::Io(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            )));
        }
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(DecodeError::Empty);
        }
        let ext = path.extension().and_then(|e| e.to_str());
        Decoder::open(Box::new(file), ext, limits)
    }

    /// Decodes from any blocking reader (e.g. a [`ByteFeedReader`]). The source cannot seek, so
    /// formats that need the end of the file first (MP4 with its index at the end) may fail.
    pub fn from_reader(
        reader: Box<dyn io::Read + Send + Sync>,
        ext_hint: Option<&str>,
        limits: DecodeLimits,
    ) -> Result<Decoder, DecodeError> {
        Decoder::open(Box::new(ReadOnlySource::new(reader)), ext_hint, limits)
    }

    fn open(
        source: Box<dyn MediaSource>,
        ext_hint: Option<&str>,
        limits: DecodeLimits,
    ) -> Result<Decoder, DecodeError> {
        let mss = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = ext_hint {
            hint.with_extension(ext);
        }
        let probed = guarded(|| {
            PROBE.probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        })?;
        let format = probed.map_err(probe_error)?;
        let track = pick_track(format.tracks())?;
        let track_id = track.id;
        let duration_hint = track_duration(track);
        let codec = make_codec(track, &limits)?;
        let mut decoder = Decoder {
            format,
            codec,
            track_id,
            sample_rate: 0,
            duration_hint,
            limits,
            decoded_samples: 0,
            pending: None,
            finished: false,
            skipped_packets: 0,
        };
        decoder.pending = Some(decoder.decode_next()?.ok_or(DecodeError::Empty)?);
        Ok(decoder)
    }

    /// Sample rate of the decoded audio in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Duration announced by the container, in seconds, when it states one.
    pub fn duration_hint(&self) -> Option<f64> {
        self.duration_hint
    }

    /// Seconds of audio decoded so far (all of it once [`Decoder::next_block`] returned `None`).
    pub fn decoded_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.decoded_samples as f64 / f64::from(self.sample_rate)
    }

    /// The next block of mono samples at [`Decoder::sample_rate`]; `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        if let Some(block) = self.pending.take() {
            return Ok(Some(block));
        }
        self.decode_next()
    }

    /// Reads packets until one decodes to a non-empty block, following symphonia's error policy:
    /// skip undecodable packets, reset on request, stop at the end or on anything else.
    fn decode_next(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        while !self.finished {
            let result = self.decode_one();
            if result.is_err() {
                self.finished = true;
            }
            if let Some(block) = result? {
                return Ok(Some(block));
            }
        }
        Ok(None)
    }

    /// Reads one packet. `Ok(None)` means "nothing to hand out yet"; `finished` marks the end.
    fn decode_one(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        let packet = match guarded(|| self.format.next_packet())? {
            Ok(Some(packet)) => packet,
            Ok(None) => return self.end(),
            Err(SymphoniaError::ResetRequired) => {
                self.reset_track()?;
                return Ok(None);
            }
            Err(SymphoniaError::IoError(e))
                if e.kind() == io::ErrorKind::UnexpectedEof && self.decoded_samples > 0 =>
            {
                tracing::warn!("input ends mid-stream (truncated?); keeping what was decoded");
                return self.end();
            }
            Err(err) => return Err(fatal(err)),
        };
        if packet.track_id != self.track_id {
            return Ok(None);
        }
        if packet.data.len() > self.limits.max_packet_bytes {
            return Err(DecodeError::Malformed(
                "a packet is larger than any real audio packet".to_string(),
            ));
        }
        let max_channels = self.limits.max_channels;
        let mono = match guarded(|| {
            self.codec
                .decode(&packet)
                .map(|buf| mix_to_mono(&buf, max_channels))
        })? {
            Ok(mono) => mono?,
            Err(SymphoniaError::DecodeError(msg)) => {
                tracing::debug!(msg, "skipping a packet that does not decode");
                self.skipped_packets += 1;
                return Ok(None);
            }
            Err(SymphoniaError::IoError(e)) => {
                tracing::debug!(error = %e, "skipping a packet that does not decode");
                self.skipped_packets += 1;
                return Ok(None);
            }
            Err(SymphoniaError::ResetRequired) => {
                self.codec.reset();
                return Ok(None);
            }
            Err(err) => return Err(fatal(err)),
        };
        let Some((rate, samples)) = mono else {
            return Ok(None);
        };
        self.accept_block(rate, samples).map(Some)
    }

    /// Checks a decoded block against the rate seen so far and the duration limit.
    fn accept_block(&mut self, rate: u32, samples: Vec<f32>) -> Result<Vec<f32>, DecodeError> {
        if rate == 0 || rate > self.limits.max_sample_rate {
            return Err(DecodeError::Unsupported(format!(
                "a sample rate of {rate} Hz is not supported"
            )));
        }
        if self.sample_rate == 0 {
            self.sample_rate = rate;
        } else if rate != self.sample_rate {
            return Err(DecodeError::Unsupported(
                "the sample rate changes in the middle of the audio".to_string(),
            ));
        }
        self.decoded_samples += samples.len() as u64;
        let max_samples = self.limits.max_duration_secs * f64::from(self.sample_rate);
        if self.decoded_samples as f64 > max_samples {
            return Err(DecodeError::TooLong {
                limit_secs: self.limits.max_duration_secs,
            });
        }
        Ok(samples)
    }

    /// Marks the end of the stream.
    fn end(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        self.finished = true;
        if self.skipped_packets > 0 {
            tracing::warn!(
                skipped = self.skipped_packets,
                "some packets could not be decoded and were skipped"
            );
        }
        Ok(None)
    }

    /// The track list changed (e.g. chained Ogg streams): pick the audio track again.
    fn reset_track(&mut self) -> Result<(), DecodeError> {
        let track = pick_track(self.format.tracks())?;
        self.track_id = track.id;
        self.codec = make_codec(track, &self.limits)?;
        Ok(())
    }
}

/// Maps a failed probe to a user-facing error.
fn probe_error(err: SymphoniaError) -> DecodeError {
    tracing::debug!(error = %err, "probe failed");
    match err {
        SymphoniaError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            DecodeError::Unsupported("the input is empty or not a recognised audio format".into())
        }
        SymphoniaError::IoError(e) => DecodeError::Io(e),
        // The MP4 reader stops at the audio data when it cannot seek; without the index read
        // first ("moov" atom) a stream cannot be decoded.
        SymphoniaError::Unsupported(msg) if msg.contains("missing moov") => {
            DecodeError::Unsupported(
                "this MP4/M4A keeps its index at the end, so it cannot be decoded while it \
                 streams in; send it as a whole file or re-encode it with the index first \
                 (ffmpeg -movflags +faststart)"
                    .to_string(),
            )
        }
        SymphoniaError::Unsupported(_) => {
            DecodeError::Unsupported("not a recognised audio format".to_string())
        }
        other => fatal(other),
    }
}

/// The default audio track when it is decodable, else the first decodable audio track.
fn pick_track(tracks: &[Track]) -> Result<&Track, DecodeError> {
    let audio: Vec<&Track> = tracks
        .iter()
        .filter(|t| t.track_type() == Some(TrackType::Audio))
        .collect();
    if audio.is_empty() {
        return Err(DecodeError::Unsupported(
            "the file has no audio track".to_string(),
        ));
    }
    audio
        .into_iter()
        .find(|t| audio_params(t).is_some_and(|p| CODECS.get_audio_decoder(p.codec).is_some()))
        .ok_or_else(|| DecodeError::Unsupported("the audio codec is not supported".to_string()))
}

fn audio_params(track: &Track) -> Option<&AudioCodecParameters> {
    track.codec_params.as_ref().and_then(|p| p.audio())
}

/// Builds the codec decoder after checking the header against the limits.
fn make_codec(track: &Track, limits: &DecodeLimits) -> Result<Box<dyn AudioDecoder>, DecodeError> {
    let params = audio_params(track)
        .ok_or_else(|| DecodeError::Unsupported("the audio codec is not supported".into()))?;
    let channels = params.channels.as_ref().map_or(0, |c| c.count());
    if channels > limits.max_channels {
        return Err(DecodeError::Unsupported(format!(
            "{channels} channels is more than the {} supported",
            limits.max_channels
        )));
    }
    if params
        .sample_rate
        .is_some_and(|r| r == 0 || r > limits.max_sample_rate)
    {
        return Err(DecodeError::Unsupported(
            "the sample rate in the header is not valid".to_string(),
        ));
    }
    let made = guarded(|| CODECS.make_audio_decoder(params, &AudioDecoderOptions::default()))?;
    made.map_err(|err| {
        tracing::debug!(error = %err, "codec refused the stream");
        match err {
            SymphoniaError::Unsupported(_) => {
                DecodeError::Unsupported("the audio codec is not supported".to_string())
            }
            other => fatal(other),
        }
    })
}

/// Seconds the container announces for the track: frame count when known, else its duration.
fn track_duration(track: &Track) -> Option<f64> {
    let rate = audio_params(track).and_then(|p| p.sample_rate);
    if let (Some(frames), Some(rate)) = (track.num_frames, rate) {
        if rate > 0 {
            return Some(frames as f64 / f64::from(rate));
        }
    }
    let time = track.time_base?.calc_duration(track.duration?)?;
    Some(time.as_secs_f64())
}

/// Averages all channels of a decoded buffer to mono. `Ok(None)` for an empty buffer.
fn mix_to_mono(
    buf: &GenericAudioBufferRef<'_>,
    max_channels: usize,
) -> Result<Option<(u32, Vec<f32>)>, DecodeError> {
    let spec = buf.spec();
    if buf.num_planes() > max_channels {
        return Err(DecodeError::Unsupported(format!(
            "more than {max_channels} channels is not supported"
        )));
    }
    if buf.frames() == 0 || buf.num_planes() == 0 {
        return Ok(None);
    }
    let rate = spec.rate();
    let samples = match buf {
        GenericAudioBufferRef::U8(b) => average_planes(b),
        GenericAudioBufferRef::U16(b) => average_planes(b),
        GenericAudioBufferRef::U24(b) => average_planes(b),
        GenericAudioBufferRef::U32(b) => average_planes(b),
        GenericAudioBufferRef::S8(b) => average_planes(b),
        GenericAudioBufferRef::S16(b) => average_planes(b),
        GenericAudioBufferRef::S24(b) => average_planes(b),
        GenericAudioBufferRef::S32(b) => average_planes(b),
        GenericAudioBufferRef::F32(b) => average_planes(b),
        GenericAudioBufferRef::F64(b) => average_planes(b),
    };
    Ok(Some((rate, samples)))
}

/// Converts each plane to `f32` (sanitised: float formats can hold NaN, infinities and values
/// far outside [-1, 1]) and averages them sample by sample.
fn average_planes<S>(buf: &AudioBuffer<S>) -> Vec<f32>
where
    S: Sample,
    f32: FromSample<S>,
{
    let convert = |s: S| super::sanitize_sample(f32::from_sample(s));
    let mut planes = buf.iter_planes();
    let Some(first) = planes.next() else {
        return Vec::new();
    };
    let mut out: Vec<f32> = first.iter().map(|&s| convert(s)).collect();
    let mut count = 1usize;
    for plane in planes {
        for (o, &s) in out.iter_mut().zip(plane) {
            *o += convert(s);
        }
        count += 1;
    }
    if count > 1 {
        let scale = 1.0 / count as f32;
        out.iter_mut().for_each(|o| *o *= scale);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_typed_error() {
        let result: Result<(), DecodeError> = guarded(|| panic!("decoder bug"));
        let err = result.unwrap_err();
        assert!(matches!(err, DecodeError::Panicked));
        assert!(
            !err.to_string().contains("decoder bug"),
            "internal detail leaked"
        );
    }

    #[test]
    fn io_errors_read_plainly() {
        let err = DecodeError::from(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(err.to_string(), "could not read the input: file not found");
    }

    #[test]
    fn default_limits_allow_six_hours() {
        assert_eq!(DecodeLimits::default().max_duration_secs, 21_600.0);
    }
}

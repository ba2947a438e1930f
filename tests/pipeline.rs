//! The local pipeline as a library: real files through `AudioStream` (symphonia + rubato) into
//! `long::transcribe` on a real model, pulled lazily one chunk at a time.
//!
//! Models come from `EARSHOT_MODEL_MIRROR` (default `../shared/models`), recordings from
//! `../shared/corpus`.

mod common;

use std::collections::VecDeque;
use std::ops::Range;

use common::{corpus_file, model, reference};
use earshot::audio::{AudioStream, DecodeError, DecodeLimits, SAMPLE_RATE};
use earshot::eval::wer;
use earshot::inference::long::{self, LongEvent};
use earshot::inference::{Options, Pool, PoolConfig};
use earshot::transcript::Segment;
use tokio_util::sync::CancellationToken;

const RATE: usize = SAMPLE_RATE as usize;
/// Silence handed out in chunks of this many samples.
const SILENCE_CHUNK: usize = RATE;

/// One piece of the long input: a corpus file decoded on demand, or silence.
enum Piece {
    File(&'static str),
    Silence(usize),
}

/// A lazy concatenation of corpus files and silences: only the file being read is open, and
/// every chunk is handed out as soon as it is decoded. Records where each file landed.
struct Playlist {
    /// What is still to come.
    pieces: VecDeque<Piece>,
    /// The file being decoded and where it started, if any.
    current: Option<(&'static str, AudioStream, usize)>,
    /// Silence still to hand out for the current silence piece.
    silence_left: usize,
    /// Samples handed out so far.
    produced: usize,
    /// Each file and the samples it occupies in the output, once fully read.
    placed: Vec<(&'static str, Range<usize>)>,
    /// Largest chunk handed out, to show nothing was read whole.
    largest_chunk: usize,
}

impl Playlist {
    fn new(pieces: Vec<Piece>) -> Self {
        Playlist {
            pieces: pieces.into(),
            current: None,
            silence_left: 0,
            produced: 0,
            placed: Vec::new(),
            largest_chunk: 0,
        }
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<f32>>, DecodeError> {
        let chunk = loop {
            if let Some((name, stream, start)) = self.current.as_mut() {
                match stream.next_chunk()? {
                    Some(chunk) => break chunk,
                    None => {
                        self.placed.push((name, *start..self.produced));
                        self.current = None;
                    }
                }
            }
            if self.silence_left > 0 {
                let n = self.silence_left.min(SILENCE_CHUNK);
                self.silence_left -= n;
                break vec![0.0; n];
            }
            match self.pieces.pop_front() {
                Some(Piece::File(name)) => {
                    let stream = AudioStream::open(&corpus_file(name), DecodeLimits::default())?;
                    self.current = Some((name, stream, self.produced));
                }
                Some(Piece::Silence(samples)) => self.silence_left = samples,
                None => return Ok(None),
            }
        };
        self.produced += chunk.len();
        self.largest_chunk = self.largest_chunk.max(chunk.len());
        Ok(Some(chunk))
    }
}

/// 20 minutes: speech in seven formats (WAV, MP3, FLAC 44.1 kHz stereo, AAC, 146 s of Vorbis,
/// FLAC 48 kHz) plus noise and Opus music, with long silences between them.
fn twenty_minutes() -> Vec<Piece> {
    let files = [
        "en_jfk.mp3",
        "noise_speechbrain_noise2.wav",
        "en_JFK_inaugural_146s.ogg",
        "en_jfk_44k_stereo.flac",
        "music_rodio_music.opus",
        "en_harvard_birch_canoe.wav",
        "zh_chinese_48k.flac",
        "en_jfk_441khz.m4a",
        "en_arctic_a0024.wav",
    ];
    let speech_secs: f64 = 11.1 + 5.0 + 146.4 + 11.0 + 10.2 + 3.3 + 1.0 + 11.1 + 4.0;
    let gap = ((1200.0 - speech_secs) / files.len() as f64 * RATE as f64) as usize;
    files
        .into_iter()
        .flat_map(|file| [Piece::Silence(gap), Piece::File(file)])
        .collect()
}

#[test]
fn twenty_minutes_through_the_decoder_stay_in_order_and_in_range() {
    let pool = Pool::start(PoolConfig {
        model_path: model("ggml-tiny.en.bin"),
        workers: 1,
        queue_capacity: 2,
        zh_script: Default::default(),
    })
    .expect("tiny.en loads");
    let vad = model("ggml-silero-v6.2.0.bin");
    let options = Options {
        threads: 2,
        ..Options::default()
    };
    let mut playlist = Playlist::new(twenty_minutes());
    let mut streamed: Vec<Segment> = Vec::new();
    let mut progress: Vec<f64> = Vec::new();
    let transcript = long::transcribe(
        &pool,
        || playlist.next_chunk(),
        &options,
        Some(&vad),
        &CancellationToken::new(),
        |event| match event {
            LongEvent::Segment(segment) => streamed.push(segment),
            LongEvent::Progress { processed_secs } => progress.push(processed_secs),
        },
    )
    .expect("the long transcription succeeds");

    let duration = playlist.produced as f64 / RATE as f64;
    eprintln!(
        "{duration:.1} s in, {} segments, {} progress marks, largest chunk {} samples",
        transcript.segments.len(),
        progress.len(),
        playlist.largest_chunk
    );
    assert!((1190.0..1210.0).contains(&duration), "built {duration} s");
    assert!((transcript.duration - duration).abs() < 1e-6);
    assert_eq!(transcript.language, "en");
    assert_eq!(
        streamed, transcript.segments,
        "streamed segments = returned segments"
    );
    assert!(playlist.largest_chunk < 10 * RATE, "chunks must be small");

    // Progress only moves forward and reaches the end.
    assert!(progress.windows(2).all(|p| p[0] <= p[1]), "{progress:?}");
    assert!((progress.last().copied().unwrap_or(0.0) - duration).abs() < 1e-6);

    // Segments in order, inside the input, and each on (or next to) a speech file.
    let mut previous_end = 0.0;
    for segment in &transcript.segments {
        assert!(
            segment.start >= previous_end - 1e-6
                && segment.end >= segment.start
                && segment.end <= duration + 1e-6,
            "out of order or range (previous end {previous_end}): {segment:?}"
        );
        previous_end = segment.end;
        let middle = (segment.start + segment.end) / 2.0;
        let source = playlist.placed.iter().find(|(_, range)| {
            let (start, end) = (
                range.start as f64 / RATE as f64,
                range.end as f64 / RATE as f64,
            );
            (start - 1.0..=end + 1.0).contains(&middle)
        });
        assert!(
            source.is_some(),
            "segment in a silence: {segment:?}; files at {:?}",
            playlist.placed
        );
    }

    // What each English file says is found where that file was placed.
    for (name, range) in &playlist.placed {
        let reference = reference(name);
        if !name.starts_with("en_") || reference.is_empty() {
            continue;
        }
        let (start, end) = (
            range.start as f64 / RATE as f64,
            range.end as f64 / RATE as f64,
        );
        let text: Vec<&str> = transcript
            .segments
            .iter()
            .filter(|s| s.end > start - 1.0 && s.start < end + 1.0)
            .map(|s| s.text.as_str())
            .collect();
        let text = text.join(" ");
        let score = wer(&reference, &text);
        eprintln!("{name} at {start:.1}-{end:.1} s: WER {score:.3}: {text}");
        assert!(score <= 0.25, "{name}: WER {score:.3}: {text}");
    }
    let inaugural = playlist
        .placed
        .iter()
        .find(|(name, _)| *name == "en_JFK_inaugural_146s.ogg")
        .map(|(_, range)| range.clone())
        .expect("the Ogg was read");
    let inaugural_words: usize = transcript
        .segments
        .iter()
        .filter(|s| s.start * RATE as f64 >= inaugural.start as f64 - RATE as f64)
        .filter(|s| s.end * RATE as f64 <= inaugural.end as f64 + RATE as f64)
        .map(|s| s.text.split_whitespace().count())
        .sum();
    assert!(
        inaugural_words > 200,
        "146 s of speech gave {inaugural_words} words"
    );
}

//! Decoding real files (the shared corpus) and hostile ones, through the public audio API.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use earshot::audio::{
    byte_feed, AudioStream, DecodeError, DecodeLimits, Decoder, PcmDecoder, PcmFormat, SAMPLE_RATE,
};

/// Every 16 kHz sample of a file, through `AudioStream`.
fn stream_all(path: &Path) -> Result<Vec<f32>, DecodeError> {
    let mut stream = AudioStream::open(path, DecodeLimits::default())?;
    let mut all = Vec::new();
    while let Some(chunk) = stream.next_chunk()? {
        assert!(!chunk.is_empty(), "next_chunk returned an empty chunk");
        all.extend(chunk);
    }
    Ok(all)
}

/// Every source-rate sample from a decoder.
fn decode_all(mut decoder: Decoder) -> Result<Vec<f32>, DecodeError> {
    let mut all = Vec::new();
    while let Some(block) = decoder.next_block()? {
        all.extend(block);
    }
    Ok(all)
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

#[test]
fn every_corpus_file_decodes_to_its_duration() {
    let dir = common::corpus_dir();
    let entries = common::manifest();
    assert!(
        entries.len() >= 20,
        "manifest lists only {} files",
        entries.len()
    );
    let mut failures = Vec::new();
    for entry in &entries {
        let path = common::corpus_file(&entry.file);
        let hint = AudioStream::open(&path, DecodeLimits::default())
            .ok()
            .and_then(|s| s.duration_hint());
        match stream_all(&dir.join(&entry.file)) {
            Ok(samples) => {
                let secs = samples.len() as f64 / f64::from(SAMPLE_RATE);
                let error = (secs - entry.duration_s).abs() / entry.duration_s;
                let finite = samples.iter().all(|s| s.is_finite());
                println!(
                    "{:<42} {:<40} manifest {:>8.3} s  decoded {:>8.3} s  ({:+.2} %)  hint {:?}  rms {:.4}",
                    entry.file,
                    entry.format.split(',').next().unwrap_or(""),
                    entry.duration_s,
                    secs,
                    100.0 * (secs - entry.duration_s) / entry.duration_s,
                    hint.map(|h| (h * 1000.0).round() / 1000.0),
                    rms(&samples),
                );
                if error > 0.01 || !finite {
                    failures.push(format!(
                        "{}: {secs:.3} s vs {}",
                        entry.file, entry.duration_s
                    ));
                }
                if entry.language != "none" && rms(&samples) < 1e-3 {
                    failures.push(format!("{}: speech file decoded to silence", entry.file));
                }
            }
            Err(err) => failures.push(format!("{}: {err}", entry.file)),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn stereo_is_averaged_to_mono() {
    // Left and right carry different speakers; mono must be their average, not one channel.
    let path = common::corpus_file("en_stereo_diarization.wav");
    let bytes = std::fs::read(&path).unwrap();
    let data = wav_data(&bytes);
    let frames: Vec<(f32, f32)> = data
        .chunks_exact(4)
        .map(|f| {
            let l = f32::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0;
            let r = f32::from(i16::from_le_bytes([f[2], f[3]])) / 32768.0;
            (l, r)
        })
        .collect();
    let decoded = decode_all(Decoder::open_path(&path, DecodeLimits::default()).unwrap()).unwrap();
    assert_eq!(decoded.len(), frames.len());
    for (i, (d, (l, r))) in decoded.iter().zip(&frames).enumerate() {
        assert!(
            (d - (l + r) / 2.0).abs() < 1e-6,
            "frame {i}: {d} vs {l}/{r}"
        );
    }
}

/// The bytes of the `data` chunk of a RIFF/WAVE file.
fn wav_data(bytes: &[u8]) -> &[u8] {
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            return &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

/// A canonical 16-bit PCM WAV header.
fn wav_header(channels: u16, rate: u32, data_len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(b"RIFF");
    h.extend(data_len.saturating_add(36).to_le_bytes());
    h.extend(b"WAVEfmt ");
    h.extend(16u32.to_le_bytes());
    h.extend(1u16.to_le_bytes());
    h.extend(channels.to_le_bytes());
    h.extend(rate.to_le_bytes());
    h.extend((rate * u32::from(channels) * 2).to_le_bytes());
    h.extend((channels * 2).to_le_bytes());
    h.extend(16u16.to_le_bytes());
    h.extend(b"data");
    h.extend(data_len.to_le_bytes());
    h
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn noise_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect()
}

/// Opens and fully decodes; the outcome must be a value, never a panic.
fn outcome(path: &Path) -> Result<Vec<f32>, DecodeError> {
    std::panic::catch_unwind(|| stream_all(path)).expect("decoding panicked instead of erroring")
}

fn assert_clear(err: &DecodeError) {
    let msg = err.to_string();
    println!("  -> {msg}");
    assert!(msg.len() > 10, "message too terse: {msg:?}");
    assert!(
        !msg.contains("core (probe)"),
        "internal detail leaked: {msg:?}"
    );
}

#[test]
fn empty_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = outcome(&write(dir.path(), "empty.wav", b"")).unwrap_err();
    assert_clear(&err);
    assert!(matches!(err, DecodeError::Empty), "{err:?}");

    // A valid header with no samples is empty too.
    let err = outcome(&write(
        dir.path(),
        "header_only.wav",
        &wav_header(1, 16_000, 0),
    ))
    .unwrap_err();
    assert_clear(&err);
    assert!(matches!(err, DecodeError::Empty), "{err:?}");

    // And an empty stream through a byte feed.
    let (tx, rx) = byte_feed(1);
    drop(tx);
    let err = Decoder::from_reader(Box::new(rx), Some("wav"), DecodeLimits::default()).unwrap_err();
    assert_clear(&err);
}

#[test]
fn random_bytes_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "noise.bin",
        "noise.mp3",
        "noise.wav",
        "noise.ogg",
        "noise.m4a",
    ]
    .iter()
    .enumerate()
    {
        println!("{name}");
        let path = write(
            dir.path(),
            name,
            &noise_bytes(200_000, 0x9E37_79B9_7F4A_7C15 + i as u64),
        );
        let err = outcome(&path).expect_err("random bytes decoded as audio");
        assert_clear(&err);
    }
}

#[test]
fn text_file_named_wav_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let text = "This is not audio, just a text file with the wrong extension.\n".repeat(50);
    let err = outcome(&write(dir.path(), "notes.wav", text.as_bytes())).unwrap_err();
    assert_clear(&err);
    assert!(matches!(err, DecodeError::Unsupported(_)), "{err:?}");
}

#[test]
fn directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = outcome(dir.path()).unwrap_err();
    assert_clear(&err);
    assert!(matches!(err, DecodeError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn missing_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = outcome(&dir.path().join("nope.mp3")).unwrap_err();
    assert_clear(&err);
    assert!(err.to_string().contains("not found"), "{err}");
}

#[test]
fn truncated_mp3_decodes_partially_or_errors_cleanly() {
    let bytes = std::fs::read(common::corpus_file("en_jfk.mp3")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "half.mp3", &bytes[..bytes.len() / 2]);
    match outcome(&path) {
        Ok(samples) => {
            let secs = samples.len() as f64 / 16_000.0;
            println!("truncated mp3 decoded {secs:.2} s");
            assert!((4.0..7.0).contains(&secs), "half of 11 s gave {secs} s");
        }
        Err(err) => assert_clear(&err),
    }
}

#[test]
fn nan_infinite_and_huge_float_samples_come_out_finite_and_bounded() {
    // Before sanitising, the 48 kHz → 16 kHz resampler panicked on the NaN.
    let dir = tempfile::tempdir().unwrap();
    let samples = stream_all(&common::jfk_with_bad_samples(dir.path()))
        .expect("a float WAV with bad samples still decodes");
    assert!((samples.len() as f64 / 16_000.0 - 11.0).abs() < 0.01);
    assert!(
        samples.iter().all(|s| s.is_finite() && s.abs() <= 1.5),
        "every sample is finite and near [-1, 1] (the resampler may ring a little)"
    );
    assert!(rms(&samples) > 0.01, "the speech is still there");
}

#[test]
fn wav_claiming_4gb_decodes_only_the_real_data() {
    // Streaming WAV writers put 0xFFFFFFFF as the data size; the real audio must still decode,
    // without trusting the header for any allocation.
    let mut bytes = wav_header(1, 16_000, 0xFFFF_FFF0);
    let tone: Vec<i16> = (0..16_000)
        .map(|i| ((i as f32 * 0.2).sin() * 8000.0) as i16)
        .collect();
    bytes.extend(tone.iter().flat_map(|s| s.to_le_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "huge.wav", &bytes);
    let samples = outcome(&path).expect("the real data after a 4 GB header should decode");
    assert_eq!(samples.len(), tone.len());
    let expected: Vec<f32> = tone.iter().map(|&s| f32::from(s) / 32768.0).collect();
    assert!(samples
        .iter()
        .zip(&expected)
        .all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn absurd_channel_count_is_rejected() {
    let mut bytes = wav_header(10_000, 16_000, 20_000 * 100);
    bytes.extend(vec![0u8; 20_000 * 100]);
    let dir = tempfile::tempdir().unwrap();
    let err = outcome(&write(dir.path(), "many.wav", &bytes)).unwrap_err();
    assert_clear(&err);
    assert!(
        matches!(err, DecodeError::Unsupported(_) | DecodeError::Malformed(_)),
        "{err:?}"
    );

    // Our own bound applies before any decoder is built.
    let limits = DecodeLimits {
        max_channels: 1,
        ..DecodeLimits::default()
    };
    let stereo = common::corpus_file("en_stereo_diarization.wav");
    let err = AudioStream::open(&stereo, limits).unwrap_err();
    assert_clear(&err);
    assert!(matches!(err, DecodeError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("channels"), "{err}");
}

#[test]
fn duration_limit_is_enforced_on_decoded_samples() {
    let limits = DecodeLimits {
        max_duration_secs: 5.0,
        ..DecodeLimits::default()
    };
    let path = common::corpus_file("en_jfk.mp3");
    let mut stream = AudioStream::open(&path, limits).unwrap();
    let mut got = 0usize;
    let err = loop {
        match stream.next_chunk() {
            Ok(Some(chunk)) => got += chunk.len(),
            Ok(None) => panic!("11 s file passed a 5 s limit"),
            Err(err) => break err,
        }
    };
    assert!(matches!(err, DecodeError::TooLong { .. }), "{err:?}");
    assert!(
        got <= 5 * 16_000,
        "handed out {got} samples before stopping"
    );
    assert!(err.to_string().contains('5'), "{err}");
    assert!(
        stream.next_chunk().unwrap().is_none(),
        "stream continued after the error"
    );
}

#[test]
fn byte_feed_in_small_pieces_matches_open_path() {
    for name in [
        "en_jfk.mp3",
        "en_JFK_inaugural_146s.ogg",
        "music_rodio_music.opus",
        "en_jfk_44k_stereo.flac",
        "en_jfk_441khz.m4a",
        "fr_dictee_44k.aiff",
    ] {
        let path = common::corpus_file(name);
        let direct =
            decode_all(Decoder::open_path(&path, DecodeLimits::default()).unwrap()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (tx, rx) = byte_feed(4);
        let producer = std::thread::spawn(move || {
            for piece in bytes.chunks(997) {
                tx.send(piece.to_vec()).unwrap();
            }
        });
        let ext = path.extension().and_then(|e| e.to_str());
        let fed =
            decode_all(Decoder::from_reader(Box::new(rx), ext, DecodeLimits::default()).unwrap())
                .unwrap();
        producer.join().unwrap();
        println!("{name}: {} samples direct, {} fed", direct.len(), fed.len());
        assert_eq!(direct.len(), fed.len(), "{name}");
        assert!(direct == fed, "{name}: samples differ");
    }
}

#[test]
fn byte_feed_abort_is_not_taken_for_a_complete_file() {
    let bytes = std::fs::read(common::corpus_file("en_jfk.wav")).unwrap();
    let (tx, rx) = byte_feed(4);
    let producer = std::thread::spawn(move || {
        for piece in bytes[..bytes.len() / 2].chunks(4096) {
            tx.send(piece.to_vec()).unwrap();
        }
        tx.abort();
    });
    let decoder = Decoder::from_reader(Box::new(rx), Some("wav"), DecodeLimits::default()).unwrap();
    let err = decode_all(decoder).unwrap_err();
    producer.join().unwrap();
    assert_clear(&err);
    assert!(err.to_string().contains("interrupted"), "{err}");
}

#[test]
fn pcm_decoder_split_at_odd_bytes_equals_one_push() {
    let bytes = std::fs::read(common::corpus_file("en_stereo_diarization.wav")).unwrap();
    let data = wav_data(&bytes);
    let mut whole = PcmDecoder::new(PcmFormat::S16Le, 2).unwrap();
    let one_push = whole.push(data);
    assert_eq!(one_push.len(), data.len() / 4);

    let mut split = PcmDecoder::new(PcmFormat::S16Le, 2).unwrap();
    let mut pieces = Vec::new();
    let mut rest = data;
    for size in [1usize, 3, 5, 7, 333, 1001].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*size).min(rest.len());
        pieces.extend(split.push(&rest[..n]));
        rest = &rest[n..];
    }
    assert_eq!(split.pending_bytes(), 0);
    assert_eq!(one_push, pieces);

    // And it agrees with symphonia decoding the same WAV.
    let path = common::corpus_file("en_stereo_diarization.wav");
    let decoded = decode_all(Decoder::open_path(&path, DecodeLimits::default()).unwrap()).unwrap();
    assert_eq!(decoded.len(), one_push.len());
    assert!(decoded
        .iter()
        .zip(&one_push)
        .all(|(a, b)| (a - b).abs() < 1e-6));
}

/// Transcodes `src` with ffmpeg into `dst` (format from the extension plus `args`).
fn ffmpeg(src: &Path, dst: &Path, args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(src)
        .args(args)
        .arg(dst)
        .status()
        .expect("ffmpeg is needed to build the container test files: install ffmpeg");
    assert!(status.success(), "ffmpeg failed for {}", dst.display());
}

#[test]
fn other_containers_and_codecs_decode() {
    // The corpus covers WAV/MP3/FLAC/M4A-AAC/Ogg-Vorbis/Opus/AIFF; build the rest from it.
    let src = common::corpus_file("en_jfk_44k_stereo.flac");
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("s24.wav", &["-c:a", "pcm_s24le"]),
        ("f32.wav", &["-c:a", "pcm_f32le"]),
        ("u8_8k.wav", &["-c:a", "pcm_u8", "-ar", "8000"]),
        ("alac.m4a", &["-c:a", "alac"]),
        ("alac.caf", &["-c:a", "alac"]),
        ("pcm.caf", &["-c:a", "pcm_s16be"]),
        ("flac.mkv", &["-c:a", "flac"]),
        ("vorbis.webm", &["-c:a", "libvorbis"]),
        ("opus.webm", &["-c:a", "libopus", "-b:a", "48k"]),
        (
            "opus_mono.ogg",
            &["-c:a", "libopus", "-af", "pan=mono|c0=0.5*c0+0.5*c1"],
        ),
        ("aac.m4a", &["-c:a", "aac", "-b:a", "96k"]),
        ("mp3_48k.mp3", &["-c:a", "libmp3lame", "-ar", "48000"]),
        (
            "surround.flac",
            &["-af", "pan=5.1|FL=FL|FR=FR|FC=FL|LFE=FR|BL=FL|BR=FR"],
        ),
    ];
    let reference = stream_all(&src).unwrap();
    let mut failures = Vec::new();
    for (name, args) in cases {
        let path = dir.path().join(name);
        ffmpeg(&src, &path, args);
        match stream_all(&path) {
            Ok(samples) => {
                let secs = samples.len() as f64 / 16_000.0;
                let loudness = rms(&samples) / rms(&reference);
                println!("{name:<16} {secs:>7.3} s  rms ratio {loudness:.3}");
                if (secs - 11.0).abs() > 0.11 {
                    failures.push(format!("{name}: {secs} s"));
                }
                if !(0.7..1.3).contains(&loudness) {
                    failures.push(format!("{name}: loudness ratio {loudness}"));
                }
            }
            Err(err) => failures.push(format!("{name}: {err}")),
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn corrupted_corpus_files_never_panic_or_hang() {
    // Deterministic damage to real files of every corpus format: byte flips in the header and
    // body, zeroed runs, truncation. Each must end with audio or a clear error.
    let names = [
        "en_jfk.wav",
        "en_jfk.mp3",
        "en_jfk_44k_stereo.flac",
        "en_jfk_441khz.m4a",
        "en_JFK_inaugural_146s.ogg",
        "music_rodio_music.opus",
        "fr_dictee_44k.aiff",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = (0usize, 0usize);
    for (n, name) in names.iter().enumerate() {
        let original = std::fs::read(common::corpus_file(name)).unwrap();
        let ext = Path::new(name).extension().unwrap().to_str().unwrap();
        for variant in 0..24u64 {
            let mut bytes = original.clone();
            let noise = noise_bytes(64, 0xC0FFEE ^ (n as u64) << 8 ^ variant);
            let len = bytes.len();
            match variant % 4 {
                // Flip bytes in the first 4 KiB (headers, tables).
                0 => noise
                    .chunks(2)
                    .for_each(|c| bytes[usize::from(c[0]) * 16 % 4096.min(len)] ^= c[1] | 1),
                // Flip bytes anywhere.
                1 => noise.chunks(4).for_each(|c| {
                    let at = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize % len;
                    bytes[at] ^= 0xFF;
                }),
                // Zero a run in the middle.
                2 => {
                    let at = len / 3 + usize::from(noise[0]) * 37;
                    bytes[at.min(len)..(at + 2048).min(len)].fill(0);
                }
                // Truncate at a pseudo-random point.
                _ => bytes.truncate(len * usize::from(noise[1]) / 256),
            }
            let path = write(dir.path(), &format!("damaged_{variant}.{ext}"), &bytes);
            match outcome(&path) {
                Ok(_) => outcomes.0 += 1,
                Err(err) => {
                    assert!(err.to_string().len() > 10, "{name} #{variant}: terse error");
                    outcomes.1 += 1;
                }
            }
        }
    }
    println!(
        "damaged files: {} decoded, {} clear errors",
        outcomes.0, outcomes.1
    );
}

#[test]
fn streams_can_move_to_worker_threads() {
    fn is_send<T: Send + 'static>() {}
    is_send::<AudioStream>();
    is_send::<Decoder>();
    is_send::<PcmDecoder>();
}

#[test]
fn byte_feed_of_mp4_with_index_at_end_errors_cleanly() {
    // ffmpeg writes the MP4 index (moov) after the audio unless told otherwise; an unseekable
    // stream cannot go back for the audio. This must be a clear error, not a hang or a panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moov_at_end.m4a");
    ffmpeg(&common::corpus_file("en_jfk.wav"), &path, &["-c:a", "aac"]);
    let direct = decode_all(Decoder::open_path(&path, DecodeLimits::default()).unwrap()).unwrap();
    assert!(direct.len() > 16_000 * 10);
    let bytes = std::fs::read(&path).unwrap();
    let (tx, rx) = byte_feed(4);
    let producer = std::thread::spawn(move || {
        for piece in bytes.chunks(4096) {
            if tx.send(piece.to_vec()).is_err() {
                break; // the decoder gave up early
            }
        }
    });
    let fed = Decoder::from_reader(Box::new(rx), Some("m4a"), DecodeLimits::default())
        .and_then(decode_all);
    producer.join().unwrap();
    let err = fed.expect_err("an unseekable MP4 with its index at the end cannot decode");
    assert_clear(&err);
    assert!(err.to_string().contains("faststart"), "{err}");
}

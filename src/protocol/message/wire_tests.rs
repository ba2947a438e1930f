//! Tests for parsing client text frames.

use super::*;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

fn limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        max_file_bytes: 100 << 20,
        max_chunk_bytes: 64 << 10,
        max_total_chunks: 10_000,
        chunk_window: 16,
    }
}

fn parse(v: serde_json::Value) -> Result<ClientMessage, ProtocolError> {
    parse_client(&v.to_string(), &limits())
}

fn err(v: serde_json::Value) -> ProtocolError {
    parse(v).expect_err("expected an error")
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

fn seed_request() -> serde_json::Value {
    // Exactly what the seed document's client sends for a chunked upload.
    json!({"type": "upload_request", "data": {
        "file_name": "meeting.mp3", "file_size": 10_000, "file_hash": md5_hex(b"whatever"),
        "chunk_size": 4096, "total_chunks": 3, "upload_mode": "chunked"
    }})
}

fn seed_chunk(data: &[u8]) -> serde_json::Value {
    json!({"type": "upload_chunk", "data": {
        "task_id": ID, "chunk_index": 2, "chunk_size": data.len(),
        "chunk_hash": md5_hex(data), "chunk_data": B64.encode(data), "is_last": true
    }})
}

#[test]
fn seed_upload_request_parses() {
    let ClientMessage::UploadRequest(r) = parse(seed_request()).unwrap() else {
        panic!()
    };
    assert_eq!(r.file_name, "meeting.mp3");
    assert_eq!(r.extension.as_deref(), Some("mp3"));
    assert_eq!(r.plan.total_chunks, 3);
    assert_eq!(r.plan.chunk_size, 4096);
    assert_eq!(r.mode, UploadMode::Chunked);
    assert_eq!(r.transport, Transport::Json);
    assert_eq!(r.options, TaskOptions::default());
    assert_eq!(r.hashes.md5.as_deref(), Some(md5_hex(b"whatever").as_str()));
}

#[test]
fn fast_path_fields_parse() {
    let mut v = seed_request();
    let d = v["data"].as_object_mut().unwrap();
    d.insert("transport".into(), json!("binary"));
    d.insert("file_sha256".into(), json!("AB".repeat(32)));
    d.insert("language".into(), json!("ZH"));
    d.insert("translate".into(), json!(true));
    d.insert("format".into(), json!("srt"));
    d.insert("some_future_field".into(), json!({"x": 1}));
    let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
        panic!()
    };
    assert_eq!(r.transport, Transport::Binary);
    assert_eq!(r.hashes.sha256.unwrap(), "ab".repeat(32));
    assert_eq!(r.options.language.as_deref(), Some("zh"));
    assert!(r.options.translate);
    assert_eq!(r.options.format, Some(crate::domain::OutputFormat::Srt));
}

#[test]
fn single_upload_decodes_file_data() {
    let data = b"RIFF....WAVEfmt ";
    let v = json!({"type": "upload_request", "data": {
        "file_name": "a.wav", "file_size": data.len(), "file_hash": md5_hex(data),
        "file_data": B64.encode(data)
    }});
    let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.mode,
        UploadMode::Single {
            data: data.to_vec()
        }
    );
    assert_eq!(r.plan.total_chunks, 1);
    assert_eq!(r.plan.chunk_size, data.len() as u64);

    // file_size disagreeing with file_data.
    let v = json!({"type": "upload_request", "data": {
        "file_name": "a.wav", "file_size": 3, "file_hash": md5_hex(data),
        "upload_mode": "single", "file_data": B64.encode(data)
    }});
    assert_eq!(err(v).code, ErrorCode::InvalidMessage);
    // Single without file_data.
    let v = json!({"type": "upload_request", "data": {
        "file_name": "a.wav", "file_size": 3, "file_hash": md5_hex(data), "upload_mode": "single"
    }});
    assert!(err(v).message.contains("file_data"));
}

#[test]
fn not_json_or_not_an_object_is_invalid_message() {
    for text in [
        "",
        "   ",
        "not json",
        "{",
        "{\"type\": \"upload_request\",",
        "[]",
        "[1,2]",
        "42",
        "\"upload_request\"",
        "null",
        "{} trailing",
        "{\"type\":\"get_result\",\"data\":{}} {}",
        "\u{feff}{}",
    ] {
        let e = parse_client(text, &limits()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage, "{text:?}: {e}");
    }
}

#[test]
fn missing_or_mistyped_type_is_invalid_message() {
    let e = err(json!({"data": {}}));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("type"), "{}", e.message);
    let e = err(json!({"type": 5, "data": {}}));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("type"), "{}", e.message);
    let e = err(json!({"type": null}));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
}

#[test]
fn unknown_type_is_named_and_truncated() {
    let e = err(json!({"type": "upload_teleport", "data": {}}));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.contains("upload_teleport"));
    let long = "x".repeat(10_000);
    let e = err(json!({"type": long, "data": {}}));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.len() < 100, "{}", e.message);
}

#[test]
fn missing_fields_are_named() {
    for field in ["file_name", "file_size"] {
        let mut v = seed_request();
        v["data"].as_object_mut().unwrap().remove(field);
        let e = err(v);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains(field), "{field}: {}", e.message);
    }
    for field in ["chunk_size", "total_chunks", "file_hash"] {
        let mut v = seed_request();
        v["data"].as_object_mut().unwrap().remove(field);
        if field == "chunk_size" {
            // Without upload_mode the request would be read as single; keep it chunked.
        }
        let e = err(v);
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains(field), "{field}: {}", e.message);
    }
    // No data at all.
    let e = err(json!({"type": "upload_chunk"}));
    assert!(e.message.contains("task_id"), "{}", e.message);
}

#[test]
fn mistyped_fields_are_named_without_positions() {
    let cases = [
        ("file_size", json!("10000")),
        ("file_size", json!(-1)),
        ("file_size", json!(1.5)),
        ("file_size", json!(1e300)),
        ("chunk_size", json!(-4096)),
        ("total_chunks", json!([3])),
        ("file_name", json!(7)),
        ("upload_mode", json!("parallel")),
        ("transport", json!("carrier_pigeon")),
        ("translate", json!("yes")),
    ];
    for (field, value) in cases {
        let mut v = seed_request();
        v["data"][field] = value.clone();
        let e = err(v);
        assert_eq!(e.code, ErrorCode::InvalidMessage, "{field}={value}");
        assert!(e.message.contains(field), "{field}={value}: {}", e.message);
        assert!(!e.message.contains("line"), "{}", e.message);
        assert!(!e.message.contains("column"), "{}", e.message);
    }
    let e = err(json!({"type": "upload_request", "data": 5}));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    let e = err(json!({"type": "upload_request", "data": "x"}));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
}

#[test]
fn huge_string_values_are_not_echoed_whole() {
    let mut v = seed_request();
    v["data"]["file_size"] = json!("9".repeat(100_000));
    let e = err(v);
    assert!(e.message.len() < 300, "{}", e.message.len());
}

#[test]
fn plan_values_are_checked() {
    let set = |field: &str, value: serde_json::Value| {
        let mut v = seed_request();
        v["data"][field] = value;
        err(v)
    };
    assert_eq!(set("chunk_size", json!(0)).code, ErrorCode::InvalidMessage);
    assert_eq!(set("file_size", json!(0)).code, ErrorCode::InvalidMessage);
    let e = set("total_chunks", json!(2));
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("total_chunks"));
    assert_eq!(
        set("total_chunks", json!(4)).code,
        ErrorCode::InvalidMessage
    );
    assert_eq!(set("file_size", json!(u64::MAX)).code, ErrorCode::TooLarge);
    assert_eq!(
        set("chunk_size", json!(1u64 << 30)).code,
        ErrorCode::TooLarge
    );
    // Too many tiny chunks.
    let mut v = seed_request();
    v["data"]["file_size"] = json!(50_000);
    v["data"]["chunk_size"] = json!(1);
    v["data"]["total_chunks"] = json!(50_000);
    assert_eq!(err(v).code, ErrorCode::TooLarge);
}

#[test]
fn hashes_must_be_hex_of_the_right_length() {
    for bad in [
        "",
        "abc",
        &"g".repeat(32),
        &"a".repeat(31),
        &"a".repeat(33),
        &"a".repeat(64),
    ] {
        let mut v = seed_request();
        v["data"]["file_hash"] = json!(bad);
        let e = err(v);
        assert_eq!(e.code, ErrorCode::InvalidMessage, "{bad:?}");
        assert!(e.message.contains("file_hash"));
    }
    let mut v = seed_request();
    v["data"]["file_sha256"] = json!("a".repeat(32));
    assert!(err(v).message.contains("file_sha256"));
    // sha256 alone is enough.
    let mut v = seed_request();
    v["data"].as_object_mut().unwrap().remove("file_hash");
    v["data"]["file_sha256"] = json!("0".repeat(64));
    assert!(parse(v).is_ok());
}

#[test]
fn path_like_file_names_become_base_names() {
    for (name, expected) in [
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("..", "upload"),
        ("", "upload"),
    ] {
        let mut v = seed_request();
        v["data"]["file_name"] = json!(name);
        let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
            panic!()
        };
        assert_eq!(r.file_name, expected);
        assert!(!r.file_name.contains('/') && !r.file_name.contains('\\'));
    }
}

#[test]
fn language_and_format_are_validated() {
    let mut v = seed_request();
    v["data"]["language"] = json!("auto");
    let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
        panic!()
    };
    assert_eq!(r.options.language, None);
    for (tag, script) in [
        ("zh-Hans", ZhScript::Simplified),
        ("ZH-HANT", ZhScript::Traditional),
    ] {
        let mut v = seed_request();
        v["data"]["language"] = json!(tag);
        let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
            panic!()
        };
        assert_eq!(r.options.language.as_deref(), Some("zh"), "{tag}");
        assert_eq!(r.options.zh_script, Some(script), "{tag}");
    }
    for bad in ["e", "en-US", "../x", "english language", "en-Hans"] {
        let mut v = seed_request();
        v["data"]["language"] = json!(bad);
        assert!(err(v).message.contains("language"), "{bad}");
    }
    let mut v = seed_request();
    v["data"]["format"] = json!("docx");
    assert!(err(v).message.contains("format"));
}

#[test]
fn seed_chunk_parses_and_verifies() {
    let data = b"some chunk bytes";
    let ClientMessage::UploadChunk(c) = parse(seed_chunk(data)).unwrap() else {
        panic!()
    };
    assert_eq!(c.task_id.to_string(), ID);
    assert_eq!(c.chunk_index, 2);
    assert_eq!(c.data, data);
    assert!(c.is_last);
}

#[test]
fn escaped_base64_is_unescaped_before_decoding() {
    // JSON may escape `/` as `\/` (PHP's json_encode does); the payload then cannot be
    // borrowed from the frame as it is and must still decode to the same bytes.
    let data = [0xffu8; 30];
    let plain = seed_chunk(&data).to_string();
    assert!(plain.contains("////"));
    let escaped = plain.replace('/', "\\/");
    for text in [plain, escaped] {
        let ClientMessage::UploadChunk(c) = parse_client(&text, &limits()).unwrap() else {
            panic!()
        };
        assert_eq!(c.data, data);
    }
}

#[test]
fn chunk_with_wrong_hash_is_chunk_hash_mismatch() {
    let mut v = seed_chunk(b"some chunk bytes");
    v["data"]["chunk_hash"] = json!(md5_hex(b"other bytes"));
    let e = err(v);
    assert_eq!(e.code, ErrorCode::ChunkHashMismatch);
    assert_eq!(e.chunk_index, Some(2));
    assert_eq!(e.task_id.unwrap().to_string(), ID);
}

#[test]
fn chunk_field_errors() {
    let data = b"0123456789";
    let mut v = seed_chunk(data);
    v["data"]["chunk_size"] = json!(9);
    assert_eq!(err(v).code, ErrorCode::InvalidChunk);

    let mut v = seed_chunk(data);
    v["data"]["chunk_data"] = json!("!!!not base64!!!");
    let e = err(v);
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("chunk_data"));

    let mut v = seed_chunk(b"");
    v["data"]["chunk_hash"] = json!(md5_hex(b""));
    assert_eq!(err(v).code, ErrorCode::InvalidChunk);

    for bad_index in [
        json!(-1),
        json!(1u64 << 40),
        json!("3"),
        json!(2.5),
        json!(null),
    ] {
        let mut v = seed_chunk(data);
        v["data"]["chunk_index"] = bad_index.clone();
        let e = err(v);
        assert_eq!(e.code, ErrorCode::InvalidMessage, "{bad_index}");
        assert!(e.message.contains("chunk_index"), "{}", e.message);
    }

    for bad_id in ["", "../../etc", "not-a-uuid", &format!("{ID}/..")] {
        let mut v = seed_chunk(data);
        v["data"]["task_id"] = json!(bad_id);
        assert_eq!(err(v).code, ErrorCode::SessionNotFound, "{bad_id}");
    }

    let big = vec![7u8; (64 << 10) + 1];
    assert_eq!(err(seed_chunk(&big)).code, ErrorCode::TooLarge);
}

#[test]
fn resume_get_result_and_stream_end() {
    let m = parse(json!({"type": "upload_resume", "data": {"task_id": ID}})).unwrap();
    assert_eq!(m.type_name(), "upload_resume");
    let ClientMessage::UploadResume(r) = m else {
        panic!()
    };
    assert_eq!(r.task_id.to_string(), ID);
    assert!(matches!(
        parse(json!({"type": "get_result", "data": {"task_id": ID}})).unwrap(),
        ClientMessage::GetResult(_)
    ));
    assert_eq!(
        err(json!({"type": "get_result", "data": {"task_id": "../x"}})).code,
        ErrorCode::SessionNotFound
    );
    assert_eq!(
        parse(json!({"type": "stream_end"})).unwrap(),
        ClientMessage::StreamEnd(StreamEnd { task_id: None })
    );
    assert!(matches!(
        parse(json!({"type": "stream_end", "data": {"task_id": ID}})).unwrap(),
        ClientMessage::StreamEnd(StreamEnd { task_id: Some(_) })
    ));
}

#[test]
fn seed_audio_segment_parses() {
    let samples = [0.5f32, -0.25, f32::NAN, 1.0, f32::INFINITY, -1e30, f32::MAX];
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let v = json!({"type": "audio_segment", "data": {
        "task_id": ID, "segment_index": 0, "segment_duration": 7.0 / 16000.0,
        "is_final": true, "audio_data": B64.encode(&bytes)
    }});
    let ClientMessage::AudioSegment(a) = parse(v).unwrap() else {
        panic!()
    };
    assert_eq!(a.samples, vec![0.5, -0.25, 0.0, 1.0, 1.0, -1.0, 1.0]);
    assert!(a.is_final);

    let v = json!({"type": "audio_segment", "data": {
        "task_id": ID, "segment_index": 0, "audio_data": B64.encode([1u8, 2, 3])
    }});
    assert_eq!(err(v).code, ErrorCode::UnsupportedAudio);
    let v = json!({"type": "audio_segment", "data": {
        "task_id": ID, "segment_index": -2, "audio_data": ""
    }});
    assert!(err(v).message.contains("segment_index"));
    let v = json!({"type": "audio_segment", "data": {
        "task_id": ID, "segment_index": 1, "segment_duration": -1.0, "audio_data": ""
    }});
    assert!(err(v).message.contains("segment_duration"));
}

#[test]
fn client_chosen_ids_must_be_random_v4_uuids() {
    let guessable = [
        "00000000-0000-0000-0000-000000000000",
        "00000000-0000-1000-8000-000000000001", // v1 (time-based)
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8", // v1
        "00000000-0000-4000-0000-000000000000", // v4 bits, but not the RFC 4122 variant
    ];
    for id in guessable {
        let segment = json!({"type": "audio_segment", "data": {
            "task_id": id, "segment_index": 0, "audio_data": ""}});
        let e = err(segment);
        assert_eq!(e.code, ErrorCode::InvalidMessage, "{id}");
        assert!(e.message.contains("version 4"), "{id}: {}", e.message);
        let start = json!({"type": "stream_start", "data": {"task_id": id}});
        assert_eq!(err(start).code, ErrorCode::InvalidMessage, "{id}");
    }
    let fresh = uuid::Uuid::new_v4().to_string();
    let segment = json!({"type": "audio_segment", "data": {
        "task_id": fresh, "segment_index": 0, "audio_data": ""}});
    assert!(parse(segment).is_ok());
    // Server-chosen ids are only looked up, whatever their version.
    let lookup = json!({"type": "get_result", "data": {"task_id": guessable[0]}});
    assert!(parse(lookup).is_ok());
}

#[test]
fn stream_start_defaults_and_checks() {
    let ClientMessage::StreamStart(s) = parse(json!({"type": "stream_start", "data": {}})).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.format, AudioFormat::PcmS16le);
    assert_eq!((s.sample_rate, s.channels), (16_000, 1));
    assert_eq!(s.task_id, None);

    let ClientMessage::StreamStart(s) = parse(json!({"type": "stream_start", "data": {
        "task_id": ID, "format": "WEBM", "language": "de"
    }}))
    .unwrap() else {
        panic!()
    };
    assert_eq!(s.format, AudioFormat::Webm);
    assert_eq!(s.format.extension_hint(), Some("webm"));
    assert_eq!(s.options.language.as_deref(), Some("de"));
    assert_eq!(s.options.zh_script, None);

    let ClientMessage::StreamStart(s) =
        parse(json!({"type": "stream_start", "data": {"language": "zh-Hant"}})).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.options.language.as_deref(), Some("zh"));
    assert_eq!(s.options.zh_script, Some(ZhScript::Traditional));

    let e = err(json!({"type": "stream_start", "data": {"format": "midi"}}));
    assert_eq!(e.code, ErrorCode::UnsupportedAudio);
    assert!(e.message.contains("midi"));
    let e =
        err(json!({"type": "stream_start", "data": {"format": "pcm_f32le", "sample_rate": 100}}));
    assert_eq!(e.code, ErrorCode::UnsupportedAudio);
    let e = err(json!({"type": "stream_start", "data": {"channels": 0}}));
    assert_eq!(e.code, ErrorCode::UnsupportedAudio);
    let e = err(json!({"type": "stream_start", "data": {"sample_rate": -1}}));
    assert!(e.message.contains("sample_rate"));
}
#[test]
fn deep_nesting_and_odd_inputs_never_panic() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        parse_client(&deep, &limits()).unwrap_err().code,
        ErrorCode::InvalidMessage
    );
    let deep_data = format!(
        "{{\"type\":\"upload_request\",\"data\":{}{}}}",
        "{\"a\":".repeat(5_000),
        "1}".repeat(5_000)
    );
    assert_eq!(
        parse_client(&deep_data, &limits()).unwrap_err().code,
        ErrorCode::InvalidMessage
    );
    let dup = r#"{"type":"get_result","type":"upload_request","data":{}}"#;
    assert_eq!(
        parse_client(dup, &limits()).unwrap_err().code,
        ErrorCode::InvalidMessage
    );
    let unicode = r#"{"type":"\u0000\ud83d\ude00","data":{}}"#;
    assert_eq!(
        parse_client(unicode, &limits()).unwrap_err().code,
        ErrorCode::UnknownType
    );
}

#[test]
fn binary_uploads_may_send_their_hash_after_the_chunks() {
    let mut v = seed_request();
    let d = v["data"].as_object_mut().unwrap();
    d.remove("file_hash");
    d.insert("transport".into(), json!("binary"));
    let ClientMessage::UploadRequest(r) = parse(v.clone()).unwrap() else {
        panic!()
    };
    assert_eq!((r.hashes.md5, r.hashes.sha256), (None, None));
    // Not for the seed's JSON chunks, and not for a single-message upload.
    let mut seed = v.clone();
    seed["data"]["transport"] = json!("json");
    assert!(err(seed).message.contains("file_hash"));
    let mut single = v;
    single["data"]["upload_mode"] = json!("single");
    single["data"]["file_data"] = json!("AAAA");
    single["data"]["file_size"] = json!(3);
    assert!(err(single).message.contains("file_hash"));

    let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let finish =
        json!({"type": "upload_finish", "data": {"task_id": id, "file_sha256": "AB".repeat(32)}});
    let ClientMessage::UploadFinish(f) = parse(finish).unwrap() else {
        panic!()
    };
    assert_eq!(f.task_id.to_string(), id);
    assert_eq!(f.hashes.sha256, Some("ab".repeat(32)));
    assert_eq!(f.hashes.md5, None);
    let no_hash = json!({"type": "upload_finish", "data": {"task_id": id}});
    let e = err(no_hash);
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("file_blake3"), "{}", e.message);
    let bad = json!({"type": "upload_finish", "data": {"task_id": id, "file_sha256": "xyz"}});
    assert!(err(bad).message.contains("file_sha256"));
    let unknown = json!({"type": "upload_finish", "data": {"task_id": "../x", "file_sha256": "ab".repeat(32)}});
    assert_eq!(err(unknown).code, ErrorCode::SessionNotFound);
}

#[test]
fn model_is_optional_on_uploads_and_streams() {
    let ClientMessage::UploadRequest(r) = parse(seed_request()).unwrap() else {
        panic!()
    };
    assert_eq!(r.options.model, None, "the seed's request names no model");
    let mut v = seed_request();
    v["data"]["model"] = json!(" base-q5_1 ");
    let ClientMessage::UploadRequest(r) = parse(v).unwrap() else {
        panic!()
    };
    assert_eq!(r.options.model.as_deref(), Some("base-q5_1"));
    let ClientMessage::StreamStart(s) =
        parse(json!({"type": "stream_start", "data": {"model": "tiny.en"}})).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.options.model.as_deref(), Some("tiny.en"));
    let ClientMessage::StreamStart(s) =
        parse(json!({"type": "stream_start", "data": {"model": ""}})).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.options.model, None, "an empty name means the default");
}

#[test]
fn a_model_that_cannot_be_a_name_is_invalid() {
    for model in [json!(7), json!("x".repeat(101)), json!("a\nb")] {
        let e = err(json!({"type": "stream_start", "data": {"model": model}}));
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("model"), "{}", e.message);
    }
}

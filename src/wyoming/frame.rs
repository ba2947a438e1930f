//! Wyoming framing, pure: bytes in, [`Event`]s out, and events to bytes.
//!
//! An event on the wire is a JSON header line `{"type", "data"?, "data_length"?,
//! "payload_length"?, "version"}` ending in `\n`, then `data_length` bytes of JSON (an object
//! merged over the header's `data`), then `payload_length` bytes of payload (PCM audio). This
//! is what the reference `wyoming` Python package reads and writes (`wyoming/event.py`).
//!
//! [`Decoder`] takes whatever bytes arrived and hands out whole events; it refuses a header
//! line longer than [`Limits::max_line`] and announced lengths over the limits as soon as the
//! header is read, before any of those bytes are waited for, so a client cannot make the
//! server buffer more than one bounded event. A header must start with `{`: bytes left over
//! from a payload longer than announced are refused at their first byte.
//!
//! This module must not touch sockets, tasks or the clock, and must not interpret events
//! (that is [`super::event`]).

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The protocol version written in every header: the reference package's version this
/// implementation follows.
pub const VERSION: &str = "1.10.2";

/// How big an event may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest header line, newline included.
    pub max_line: usize,
    /// Largest `data_length`.
    pub max_data: usize,
    /// Largest `payload_length` (one audio chunk).
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A header is a few hundred bytes; `info` sent inline by a chatty peer a few KiB.
            max_line: 64 * 1024,
            max_data: 256 * 1024,
            // 1 MiB is 32 s of 16 kHz 16-bit mono; Home Assistant sends about 64 ms per chunk.
            max_payload: 1024 * 1024,
        }
    }
}

/// One event: its type, its data (header `data` with the extra data merged over it) and its
/// payload (empty when none).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `type`, e.g. `audio-chunk`.
    pub kind: String,
    /// The event's fields.
    pub data: Map<String, Value>,
    /// The binary payload.
    pub payload: Bytes,
}

impl Event {
    /// An event without payload.
    pub fn new(kind: &str, data: Value) -> Event {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Event {
            kind: kind.to_string(),
            data,
            payload: Bytes::new(),
        }
    }
}

/// Why the bytes are not a Wyoming event. Each is the client's fault; the connection cannot
/// continue because the position of the next event is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No newline within [`Limits::max_line`].
    #[error("the header line is longer than {0} bytes")]
    LineTooLong(usize),
    /// The header is not a JSON object with a string `type` and whole lengths, or the extra
    /// data is not a JSON object.
    #[error("malformed event: {0}")]
    Malformed(&'static str),
    /// `data_length` over the limit.
    #[error("data_length {announced} is over the limit of {max} bytes")]
    DataTooLarge {
        /// What the header announced.
        announced: u64,
        /// The limit.
        max: usize,
    },
    /// `payload_length` over the limit.
    #[error("payload_length {announced} is over the limit of {max} bytes")]
    PayloadTooLarge {
        /// What the header announced.
        announced: u64,
        /// The limit.
        max: usize,
    },
}

/// The header line's fields (`version` and unknown fields are ignored, as the reference does).
#[derive(Deserialize)]
struct RawHeader {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    data_length: Option<u64>,
    #[serde(default)]
    payload_length: Option<u64>,
}

/// A header read, waiting for its data and payload bytes.
#[derive(Debug)]
struct Header {
    kind: String,
    data: Map<String, Value>,
    data_length: usize,
    payload_length: usize,
}

/// Turns received bytes into events; keeps the header of an event whose bytes are still
/// arriving.
#[derive(Debug)]
pub struct Decoder {
    /// The caps on header, data and payload.
    limits: Limits,
    /// The current event's header, once its line is complete.
    header: Option<Header>,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            header: None,
        }
    }

    /// Whether part of an event has been read (so a connection ending now cut it short).
    pub fn is_mid_event(&self, buf: &BytesMut) -> bool {
        self.header.is_some() || !buf.is_empty()
    }

    /// Bytes still needed before the current event is complete (a hint for the reader).
    pub fn wanted(&self, buf: &BytesMut) -> usize {
        match &self.header {
            Some(h) => (h.data_length + h.payload_length).saturating_sub(buf.len()),
            None => 0,
        }
    }

    /// Takes the next whole event from the front of `buf`, `Ok(None)` when more bytes are
    /// needed. After an error the stream is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        let header = match self.header.take() {
            Some(header) => header,
            None => match self.take_line(buf)? {
                Some(line) => self.parse_header(&line)?,
                None => return Ok(None),
            },
        };
        if buf.len() < header.data_length + header.payload_length {
            self.header = Some(header);
            return Ok(None);
        }
        let extra = buf.split_to(header.data_length);
        let payload = buf.split_to(header.payload_length).freeze();
        let mut data = header.data;
        if !extra.is_empty() {
            let merged: Map<String, Value> = serde_json::from_slice(&extra)
                .map_err(|_| FrameError::Malformed("the extra data is not a JSON object"))?;
            data.extend(merged);
        }
        Ok(Some(Event {
            kind: header.kind,
            data,
            payload,
        }))
    }

    /// The header line without its newline, once complete.
    fn take_line(&self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if let Some(&first) = buf
            .iter()
            .find(|b| !b.is_ascii_whitespace() || **b == b'\n')
        {
            if first != b'{' {
                return Err(FrameError::Malformed("a header line must be a JSON object"));
            }
        }
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() >= self.limits.max_line {
                return Err(FrameError::LineTooLong(self.limits.max_line));
            }
            return Ok(None);
        };
        if end >= self.limits.max_line {
            return Err(FrameError::LineTooLong(self.limits.max_line));
        }
        let line = buf.split_to(end);
        buf.advance(1);
        Ok(Some(line))
    }

    fn parse_header(&self, line: &[u8]) -> Result<Header, FrameError> {
        let raw: RawHeader = serde_json::from_slice(line).map_err(|_| {
            FrameError::Malformed("the header is not a JSON object with a string type")
        })?;
        let data_length = raw.data_length.unwrap_or(0);
        if data_length > self.limits.max_data as u64 {
            return Err(FrameError::DataTooLarge {
                announced: data_length,
                max: self.limits.max_data,
            });
        }
        let payload_length = raw.payload_length.unwrap_or(0);
        if payload_length > self.limits.max_payload as u64 {
            return Err(FrameError::PayloadTooLarge {
                announced: payload_length,
                max: self.limits.max_payload,
            });
        }
        Ok(Header {
            kind: raw.kind,
            data: raw.data.unwrap_or_default(),
            // Both are at most the limits, which are `usize`.
            data_length: data_length as usize,
            payload_length: payload_length as usize,
        })
    }
}

/// The bytes of an event as the reference package writes them: the data after the header
/// (with `data_length`), never inside it.
pub fn encode(event: &Event) -> Vec<u8> {
    let data = if event.data.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&event.data).unwrap_or_default()
    };
    let mut header = Map::new();
    header.insert("type".into(), Value::from(event.kind.as_str()));
    header.insert("version".into(), Value::from(VERSION));
    if !data.is_empty() {
        header.insert("data_length".into(), Value::from(data.len()));
    }
    if !event.payload.is_empty() {
        header.insert("payload_length".into(), Value::from(event.payload.len()));
    }
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&data);
    out.extend_from_slice(&event.payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Limits {
        Limits {
            max_line: 128,
            max_data: 64,
            max_payload: 16,
        }
    }

    /// Feeds `bytes` one at a time, as a slow network would, and collects the events.
    fn drip(bytes: &[u8], limits: Limits) -> Result<Vec<Event>, FrameError> {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for &b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(e) = decoder.decode(&mut buf)? {
                events.push(e);
            }
        }
        Ok(events)
    }

    #[test]
    fn reads_what_the_reference_writes_split_anywhere() {
        // As wyoming's async_write_event writes an audio chunk: data after the header.
        let mut wire = b"{\"type\": \"audio-chunk\", \"version\": \"1.10.2\", \"data_length\": 44, \"payload_length\": 4}\n".to_vec();
        wire.extend_from_slice(br#"{"rate": 16000, "width": 2, "channels": 1}  "#);
        wire.extend_from_slice(&[1, 2, 3, 4]);
        wire.extend_from_slice(b"{\"type\":\"audio-stop\"}\n");
        let events = drip(&wire, Limits::default()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].kind, "audio-chunk");
        assert_eq!(events[0].data["rate"], 16000);
        assert_eq!(&events[0].payload[..], &[1, 2, 3, 4]);
        assert_eq!(events[1].kind, "audio-stop");
        assert!(events[1].data.is_empty() && events[1].payload.is_empty());
    }

    #[test]
    fn extra_data_is_merged_over_the_header_data() {
        let extra = br#"{"language": "de"}"#;
        let mut wire = format!(
            "{{\"type\":\"transcribe\",\"data\":{{\"language\":\"en\",\"name\":\"m\"}},\"data_length\":{}}}\n",
            extra.len()
        )
        .into_bytes();
        wire.extend_from_slice(extra);
        let events = drip(&wire, Limits::default()).unwrap();
        assert_eq!(events[0].data["language"], "de");
        assert_eq!(events[0].data["name"], "m");
    }

    #[test]
    fn what_it_writes_it_reads_back() {
        let mut event = Event::new(
            "transcript",
            json!({"text": "hallo, wörld", "language": "de"}),
        );
        event.payload = Bytes::from_static(b"\n{raw}\n");
        let wire = encode(&event);
        let header: Value =
            serde_json::from_slice(&wire[..wire.iter().position(|&b| b == b'\n').unwrap()])
                .unwrap();
        assert_eq!(header["version"], VERSION);
        assert!(header.get("data").is_none(), "data goes after the header");
        assert_eq!(drip(&wire, Limits::default()).unwrap(), vec![event]);
        let bare = encode(&Event::new("describe", json!({})));
        assert_eq!(bare, b"{\"type\":\"describe\",\"version\":\"1.10.2\"}\n");
    }

    #[test]
    fn announced_lengths_over_the_limits_are_refused_from_the_header_alone() {
        let payload = b"{\"type\":\"audio-chunk\",\"payload_length\":17}\n";
        assert_eq!(
            drip(payload, small()).unwrap_err(),
            FrameError::PayloadTooLarge {
                announced: 17,
                max: 16
            }
        );
        let data = b"{\"type\":\"x\",\"data_length\":100000000000}\n";
        assert!(matches!(
            drip(data, small()),
            Err(FrameError::DataTooLarge { .. })
        ));
    }

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let mut line = b"{\"type\":\"".to_vec();
        line.resize(200, b'a');
        assert_eq!(
            drip(&line, small()).unwrap_err(),
            FrameError::LineTooLong(128)
        );
    }

    #[test]
    fn malformed_headers_and_data_are_errors() {
        for bad in [
            &b"hello\n"[..],
            b"\n",
            b"{\"type\": 5}\n",
            b"{\"data\": {}}\n",
            b"{\"type\":\"x\",\"payload_length\":-1}\n",
            b"{\"type\":\"x\",\"payload_length\":1.5}\n",
            b"{\"type\":\"x\",\"data\":[1]}\n",
            b"{\"type\":\"x\",\"data_length\":3}\n[1]",
            b"{not json}\n",
        ] {
            assert!(
                matches!(drip(bad, small()), Err(FrameError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bytes_beyond_the_announced_payload_are_refused_at_once() {
        // 4 bytes announced, 6 sent: the 2 extra are not the start of a header.
        let mut wire = b"{\"type\":\"audio-chunk\",\"payload_length\":4}\n".to_vec();
        wire.extend_from_slice(&[0, 0, 0, 0, 7, 7]);
        let mut decoder = Decoder::new(small());
        let mut buf = BytesMut::from(&wire[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_some());
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_cut_event_is_seen_as_unfinished() {
        let mut decoder = Decoder::new(small());
        let mut buf = BytesMut::from(&b"{\"type\":\"audio-chunk\",\"payload_length\":4}\n\0\0"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert!(decoder.is_mid_event(&buf));
        assert_eq!(decoder.wanted(&buf), 2);
        let mut idle = Decoder::new(small());
        assert!(!idle.is_mid_event(&BytesMut::new()));
        assert!(idle.decode(&mut BytesMut::new()).unwrap().is_none());
    }
}

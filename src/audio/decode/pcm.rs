//! Raw interleaved PCM (no container) for live streams: bytes in, mono `f32` out.
//!
//! Byte pushes may split a frame anywhere; the partial frame is kept for the next push. Float
//! samples are sanitised ([`crate::audio::sanitize_sample`]) before channels are mixed.
//! It must NOT resample or buffer more than one partial frame.

use super::DecodeError;

/// Most channels a raw stream may declare; more is a client bug, not audio.
const MAX_CHANNELS: u16 = 64;

/// Sample encoding of a raw PCM stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcmFormat {
    /// Signed 16-bit little-endian integers.
    S16Le,
    /// 32-bit little-endian IEEE floats.
    F32Le,
}

impl PcmFormat {
    fn bytes_per_sample(self) -> usize {
        match self {
            PcmFormat::S16Le => 2,
            PcmFormat::F32Le => 4,
        }
    }

    fn sample(self, bytes: &[u8]) -> f32 {
        match self {
            PcmFormat::S16Le => f32::from(i16::from_le_bytes([bytes[0], bytes[1]])) / 32768.0,
            PcmFormat::F32Le => crate::audio::sanitize_sample(f32::from_le_bytes([
                bytes[0], bytes[1], bytes[2], bytes[3],
            ])),
        }
    }
}

/// Stateful raw PCM decoder that mixes channels down to mono.
#[derive(Debug, Clone)]
pub struct PcmDecoder {
    /// Encoding of each sample.
    format: PcmFormat,
    /// Interleaved channels per frame; averaged to mono.
    channels: usize,
    /// Bytes of an incomplete frame left over from the previous push (less than one frame).
    partial: Vec<u8>,
}

impl PcmDecoder {
    /// A decoder for `channels` interleaved channels (1 to 64).
    pub fn new(format: PcmFormat, channels: u16) -> Result<Self, DecodeError> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(DecodeError::InvalidPcm(format!(
                "channels must be between 1 and {MAX_CHANNELS}, got {channels}"
            )));
        }
        Ok(PcmDecoder {
            format,
            channels: usize::from(channels),
            partial: Vec::new(),
        })
    }

    fn frame_bytes(&self) -> usize {
        self.format.bytes_per_sample() * self.channels
    }

    /// Decodes the complete frames in `partial + bytes`; keeps the incomplete rest.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<f32> {
        let frame_bytes = self.frame_bytes();
        let mut out = Vec::with_capacity((self.partial.len() + bytes.len()) / frame_bytes);
        if !self.partial.is_empty() {
            let need = (frame_bytes - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..need]);
            bytes = &bytes[need..];
            if self.partial.len() < frame_bytes {
                return out;
            }
            out.push(self.mix_frame(&self.partial));
            self.partial.clear();
        }
        let mut frames = bytes.chunks_exact(frame_bytes);
        out.extend(frames.by_ref().map(|frame| self.mix_frame(frame)));
        self.partial.extend_from_slice(frames.remainder());
        out
    }

    /// Bytes of an incomplete frame still waiting for the rest.
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }

    fn mix_frame(&self, frame: &[u8]) -> f32 {
        let size = self.format.bytes_per_sample();
        if self.channels == 1 {
            return self.format.sample(frame);
        }
        let sum: f32 = frame
            .chunks_exact(size)
            .map(|s| self.format.sample(s))
            .sum();
        sum / self.channels as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_channels() {
        assert!(PcmDecoder::new(PcmFormat::S16Le, 0).is_err());
        assert!(PcmDecoder::new(PcmFormat::S16Le, 1000).is_err());
    }

    #[test]
    fn s16_stereo_is_averaged() {
        let mut d = PcmDecoder::new(PcmFormat::S16Le, 2).unwrap();
        let bytes: Vec<u8> = [16384i16, 0, -32768, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(d.push(&bytes), vec![0.25, -1.0]);
    }

    #[test]
    fn f32_split_frames_are_joined() {
        let mut d = PcmDecoder::new(PcmFormat::F32Le, 1).unwrap();
        let bytes: Vec<u8> = [0.5f32, -0.25]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(d.push(&bytes[..3]), Vec::<f32>::new());
        assert_eq!(d.pending_bytes(), 3);
        assert_eq!(d.push(&bytes[3..5]), vec![0.5]);
        assert_eq!(d.push(&bytes[5..]), vec![-0.25]);
        assert_eq!(d.pending_bytes(), 0);
    }

    #[test]
    fn non_finite_floats_become_silence() {
        let mut d = PcmDecoder::new(PcmFormat::F32Le, 1).unwrap();
        assert_eq!(d.push(&f32::NAN.to_le_bytes()), vec![0.0]);
    }

    #[test]
    fn absurd_floats_are_clamped_before_mixing() {
        let mut d = PcmDecoder::new(PcmFormat::F32Le, 2).unwrap();
        let bytes: Vec<u8> = [f32::INFINITY, 0.5, 1e30, -f32::MAX, f32::NAN, -0.5]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(d.push(&bytes), vec![0.75, 0.0, -0.25]);
    }
}

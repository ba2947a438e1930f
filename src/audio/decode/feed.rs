//! A bounded pipe from "bytes arriving over time" (an upload, a socket) to a blocking
//! [`std::io::Read`] that [`super::Decoder::from_reader`] can decode from on another thread.
//!
//! It must NOT buffer without bound: the sender blocks (or `try_send` refuses) once
//! `capacity_blocks` blocks are waiting.

use std::io;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// One message through the pipe.
enum Message {
    /// More bytes of the stream.
    Bytes(Vec<u8>),
    /// The producer gave up: the reader reports an error instead of a clean end.
    Abort,
}

/// The reader side went away (the decoder stopped); further bytes are not needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audio decoder is no longer reading")]
pub struct FeedClosed;

/// Creates a pipe holding at most `capacity_blocks` blocks in flight (at least one).
pub fn byte_feed(capacity_blocks: usize) -> (ByteFeedSender, ByteFeedReader) {
    let (tx, rx) = crossbeam_channel::bounded(capacity_blocks.max(1));
    (
        ByteFeedSender { tx },
        ByteFeedReader {
            rx,
            block: Vec::new(),
            pos: 0,
            ended: false,
        },
    )
}

/// Producer side. Dropping it ends the stream cleanly (end of file for the reader).
#[derive(Debug, Clone)]
pub struct ByteFeedSender {
    /// Bounded channel to the reader; its capacity is the back-pressure.
    tx: Sender<Message>,
}

impl ByteFeedSender {
    /// Sends a block, waiting while the pipe is full.
    pub fn send(&self, block: Vec<u8>) -> Result<(), FeedClosed> {
        if block.is_empty() {
            return Ok(());
        }
        self.tx.send(Message::Bytes(block)).map_err(|_| FeedClosed)
    }

    /// Sends a block without waiting; gives it back (`Ok(Some(block))`) when the pipe is full.
    pub fn try_send(&self, block: Vec<u8>) -> Result<Option<Vec<u8>>, FeedClosed> {
        if block.is_empty() {
            return Ok(None);
        }
        match self.tx.try_send(Message::Bytes(block)) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(Message::Bytes(block))) => Ok(Some(block)),
            Err(TrySendError::Full(Message::Abort)) => Ok(None),
            Err(TrySendError::Disconnected(_)) => Err(FeedClosed),
        }
    }

    /// Ends the stream with an error (e.g. the upload was interrupted), so the decoder does not
    /// mistake a cut-off stream for a complete one.
    pub fn abort(self) {
        let _ = self.tx.send(Message::Abort);
    }
}

/// Consumer side: a blocking reader over the blocks sent so far.
#[derive(Debug)]
pub struct ByteFeedReader {
    /// Bounded channel from the sender.
    rx: Receiver<Message>,
    /// The block being read.
    block: Vec<u8>,
    /// Read position inside `block`.
    pos: usize,
    /// Set when the sender is gone, so reads keep returning end of file.
    ended: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Bytes(b) => write!(f, "Bytes({})", b.len()),
            Message::Abort => write!(f, "Abort"),
        }
    }
}

impl io::Read for ByteFeedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.block.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Message::Bytes(block)) => {
                    self.block = block;
                    self.pos = 0;
                }
                Ok(Message::Abort) => {
                    self.ended = true;
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the upload was interrupted",
                    ));
                }
                Err(_) => self.ended = true,
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_blocks_in_order_then_eof() {
        let (tx, mut rx) = byte_feed(2);
        let producer = std::thread::spawn(move || {
            for i in 0..10u8 {
                tx.send(vec![i; 3]).unwrap();
            }
        });
        let mut all = Vec::new();
        rx.read_to_end(&mut all).unwrap();
        producer.join().unwrap();
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn try_send_gives_block_back_when_full() {
        let (tx, _rx) = byte_feed(1);
        assert_eq!(tx.try_send(vec![1]), Ok(None));
        assert_eq!(tx.try_send(vec![2]), Ok(Some(vec![2])));
    }

    #[test]
    fn abort_is_an_error_not_eof() {
        let (tx, mut rx) = byte_feed(4);
        tx.send(vec![1, 2]).unwrap();
        tx.abort();
        let mut all = Vec::new();
        let err = rx.read_to_end(&mut all).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(all, vec![1, 2]);
    }

    #[test]
    fn send_fails_once_reader_is_gone() {
        let (tx, rx) = byte_feed(4);
        drop(rx);
        assert_eq!(tx.send(vec![1]), Err(FeedClosed));
    }
}

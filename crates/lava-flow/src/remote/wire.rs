//! The control messages between a sender and a receiver rank: fixed little-endian layouts, each
//! starting with a magic, a version and a kind, checked field by field on receipt.

use crate::{Error, Result};

/// The largest chunk: MPI counts are C `int`s, and a chunk is one message of bytes.
pub const MAX_CHUNK: u64 = 1 << 30;
/// The most user metadata a frame carries.
pub const MAX_METADATA: usize = 1024;
/// The largest control message (a frame header with full metadata).
pub(super) const MAX_CONTROL: usize = FRAME_FIXED + MAX_METADATA;
/// A frame travels inside its header's message when header and bytes together are at most this
/// many bytes: one message per frame instead of two, and still one that Open MPI's
/// shared-memory transport sends eagerly (its `btl_vader_eager_limit` is 4 KiB; a larger message
/// takes the rendezvous path, slower for small frames than two eager ones).
pub const INLINE_MAX: u64 = 4096;

/// Whether a frame of `len` bytes after a header of `header_len` bytes travels inline.
pub(super) fn travels_inline(header_len: usize, len: u64) -> bool {
    (header_len as u64).saturating_add(len) <= INLINE_MAX
}

const MAGIC: [u8; 4] = *b"LFMR";
const VERSION: u8 = 1;
const FRAME_FIXED: usize = 40;

/// What a frame carried, besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// 0 for the first frame of the channel, then one more per frame.
    pub sequence: u64,
    /// The frame's length in bytes.
    pub len: u64,
    /// When the sender sent it: nanoseconds since the Unix epoch, on the sender's clock.
    pub sent_at_ns: u64,
    /// The sender's metadata, up to [`MAX_METADATA`] bytes.
    pub metadata: Vec<u8>,
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// Receiver to sender, once: how many slots (credits), the largest frame, the chunk size.
    Hello { slots: u32, max_frame: u64, chunk: u64 },
    /// Receiver to sender: `count` slots were freed.
    Credit { count: u32 },
    /// Receiver to sender: the receiver is gone; no more credits will come.
    Bye,
    /// Sender to receiver: a frame's header; its chunks follow on the same tag.
    Frame(FrameInfo),
    /// Sender to receiver: no frame follows `frames` frames.
    End { frames: u64 },
}

const HELLO: u8 = 1;
const CREDIT: u8 = 2;
const BYE: u8 = 3;
const FRAME: u8 = 16;
const END: u8 = 17;

impl Control {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let kind = match self {
            Control::Hello { .. } => HELLO,
            Control::Credit { .. } => CREDIT,
            Control::Bye => BYE,
            Control::Frame(_) => FRAME,
            Control::End { .. } => END,
        };
        out.push(kind);
        out.extend_from_slice(&[0, 0]);
        match self {
            Control::Hello { slots, max_frame, chunk } => {
                out.extend_from_slice(&slots.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&max_frame.to_le_bytes());
                out.extend_from_slice(&chunk.to_le_bytes());
            }
            Control::Credit { count } => {
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
            }
            Control::Bye => {}
            Control::Frame(info) => {
                out.extend_from_slice(&info.sequence.to_le_bytes());
                out.extend_from_slice(&info.len.to_le_bytes());
                out.extend_from_slice(&info.sent_at_ns.to_le_bytes());
                out.extend_from_slice(&(info.metadata.len() as u16).to_le_bytes());
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(&info.metadata);
            }
            Control::End { frames } => out.extend_from_slice(&frames.to_le_bytes()),
        }
        out
    }

    /// Encodes a frame's header into `out` (cleared first), as `Control::Frame(..).encode()` does,
    /// without allocating where `out` has room.
    pub(super) fn encode_frame_into(out: &mut Vec<u8>, sequence: u64, len: u64, sent_at_ns: u64, metadata: &[u8]) {
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, FRAME, 0, 0]);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&sent_at_ns.to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(metadata);
    }

    /// Decodes a message that may carry a frame's bytes after its header: returns the message and
    /// where those bytes start (`bytes.len()` where none follow).
    pub(super) fn decode_prefix(bytes: &[u8]) -> Result<(Control, usize)> {
        if bytes.len() >= FRAME_FIXED && bytes[..4] == MAGIC && bytes[5] == FRAME {
            let meta_len = u16::from_le_bytes([bytes[32], bytes[33]]) as usize;
            let end = FRAME_FIXED + meta_len.min(MAX_METADATA + 1);
            if end <= bytes.len() {
                return Control::decode(&bytes[..end]).map(|c| (c, end));
            }
        }
        Control::decode(bytes).map(|c| (c, bytes.len()))
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Control> {
        let bad = |reason: String| Error::Protocol {
            reason: format!("malformed lava-flow MPI control message ({} bytes): {reason}", bytes.len()),
            advice: "both ranks must run the same lava-flow version, and nothing else may send on the \
                     channel's tags"
                .into(),
        };
        if bytes.len() < 8 || bytes[..4] != MAGIC {
            return Err(bad("it does not start with the magic \"LFMR\"".into()));
        }
        if bytes[4] != VERSION {
            return Err(bad(format!("version {} (this lava-flow speaks {VERSION})", bytes[4])));
        }
        let body = &bytes[8..];
        let want = |len: usize| {
            if body.len() == len {
                Ok(())
            } else {
                Err(bad(format!("kind {} needs {} bytes after the 8-byte head, it has {}", bytes[5], len, body.len())))
            }
        };
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        match bytes[5] {
            HELLO => {
                want(24)?;
                let (slots, max_frame, chunk) = (u32_at(0), u64_at(8), u64_at(16));
                if slots == 0 || max_frame == 0 || chunk == 0 || chunk > MAX_CHUNK {
                    return Err(bad(format!(
                        "greeting with {slots} slots, frames up to {max_frame} bytes, chunks of {chunk} \
                         (each must be non-zero, chunks at most {MAX_CHUNK})"
                    )));
                }
                Ok(Control::Hello { slots, max_frame, chunk })
            }
            CREDIT => {
                want(8)?;
                Ok(Control::Credit { count: u32_at(0) })
            }
            BYE => {
                want(0)?;
                Ok(Control::Bye)
            }
            FRAME => {
                if body.len() < FRAME_FIXED - 8 {
                    return Err(bad("a frame header shorter than its fixed part".into()));
                }
                let meta_len = u16::from_le_bytes([body[24], body[25]]) as usize;
                if meta_len > MAX_METADATA {
                    return Err(bad(format!("{meta_len} bytes of metadata (at most {MAX_METADATA})")));
                }
                want(FRAME_FIXED - 8 + meta_len)?;
                Ok(Control::Frame(FrameInfo {
                    sequence: u64_at(0),
                    len: u64_at(8),
                    sent_at_ns: u64_at(16),
                    metadata: body[32..].to_vec(),
                }))
            }
            END => {
                want(8)?;
                Ok(Control::End { frames: u64_at(0) })
            }
            kind => Err(bad(format!("unknown kind {kind}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Control::Hello { slots: 4, max_frame: 1 << 20, chunk: 1 << 16 },
            Control::Credit { count: 3 },
            Control::Bye,
            Control::Frame(FrameInfo { sequence: 9, len: 100, sent_at_ns: 5, metadata: b"meta".to_vec() }),
            Control::Frame(FrameInfo { sequence: 0, len: 0, sent_at_ns: 0, metadata: vec![7; MAX_METADATA] }),
            Control::End { frames: 12 },
        ];
        let mut into = Vec::new();
        Control::encode_frame_into(&mut into, 9, 100, 5, b"meta");
        assert_eq!(
            into,
            Control::Frame(FrameInfo { sequence: 9, len: 100, sent_at_ns: 5, metadata: b"meta".to_vec() }).encode()
        );
        for m in messages {
            let bytes = m.encode();
            assert!(bytes.len() <= MAX_CONTROL);
            assert_eq!(Control::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        let frame = Control::Frame(FrameInfo { sequence: 1, len: 2, sent_at_ns: 3, metadata: vec![1, 2] }).encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "magic"),
            (b"XXXX\x01\x02\0\0".to_vec(), "magic"),
            (b"LFMR\x09\x02\0\0\0\0\0\0\0\0\0\0".to_vec(), "version 9"),
            (b"LFMR\x01\x63\0\0".to_vec(), "unknown kind 99"),
            (b"LFMR\x01\x02\0\0\0\0".to_vec(), "needs 8 bytes"),
            (frame[..frame.len() - 1].to_vec(), "needs"),
            (Control::Hello { slots: 0, max_frame: 1, chunk: 1 }.encode(), "non-zero"),
            (Control::Hello { slots: 1, max_frame: 1, chunk: MAX_CHUNK + 1 }.encode(), "at most"),
        ];
        for (bytes, says) in cases {
            let err = Control::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(says), "{bytes:?}: {err}");
        }
        // A frame with its bytes inline: the header, then where the bytes start.
        let mut inline = frame.clone();
        inline.extend_from_slice(&[9, 9]);
        let (decoded, start) = Control::decode_prefix(&inline).unwrap();
        assert_eq!((Control::decode(&frame).unwrap(), start), (decoded, frame.len()));
        assert_eq!(Control::decode_prefix(&frame).unwrap().1, frame.len());
        assert!(Control::decode_prefix(&inline[..inline.len() - 5]).is_err());
        let mut long = frame.clone();
        long[32..34].copy_from_slice(&(MAX_METADATA as u16 + 1).to_le_bytes());
        assert!(Control::decode(&long).unwrap_err().to_string().contains("metadata"));
    }
}

//! The channel's messages: one `SOCK_SEQPACKET` datagram each, a 16-byte header and a fixed
//! little-endian payload, written down byte by byte in `docs/PROTOCOL.md` ("Channels").
//!
//! [`decode`] is a pure function over the bytes: it checks the magic, the version, the type, the
//! payload length for that type, every reserved field and every bound (slot index, metadata
//! sizes) before anything is used, and never panics.

use std::fmt;

/// The first four bytes of every channel message.
pub const MAGIC: [u8; 4] = *b"LVFC";
/// The channel protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 16;
/// Most dimensions a frame's shape may have.
pub const MAX_DIMS: usize = 8;
/// Most bytes of user data a frame may carry.
pub const MAX_USER_DATA: usize = 256;
/// Bytes of a `FRAME` payload before its dimensions and user data.
pub const FRAME_FIXED_LEN: usize = 64;
/// Largest channel message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + FRAME_FIXED_LEN + 16 * MAX_DIMS + MAX_USER_DATA;
/// Most slots a channel may have (each one's fd travels in the handshake's `OBJECTS` reply).
pub const MAX_SLOTS: u32 = 32;
/// Longest error text.
pub const MAX_ERROR_TEXT: usize = 1024;

/// Message types (header bytes 6..8).
pub mod kind {
    /// Producer to a new consumer: the channel's shape; an `OBJECTS` message follows.
    pub const HELLO: u16 = 1;
    /// Producer to consumer: a frame is ready.
    pub const FRAME: u16 = 2;
    /// Consumer to producer: done with a frame.
    pub const RELEASE: u16 = 3;
    /// Producer to consumer: no more frames.
    pub const END: u16 = 4;
    /// Either side: refused or broken; the connection closes after it.
    pub const ERROR: u16 = 5;
}

/// Where a channel's frames live (the `HELLO` memory byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MemoryCode {
    /// Sealed memfds mapped by every process.
    Host = 0,
    /// Exportable Vulkan buffers, imported by each consumer.
    Vulkan = 1,
}

/// How frames are signalled (the `HELLO` sync byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SyncCode {
    /// The `FRAME` message itself (its arrival wakes the consumer); releases are `RELEASE` messages.
    Messages = 0,
    /// As `Messages`, and the `channel.filled` timeline semaphore reaches the frame's timeline
    /// value once its bytes are written; consumers wait for it before reading.
    Timeline = 1,
}

/// The element type of a frame, DLPack's `DLDataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DType {
    /// DLPack type code: 0 int, 1 uint, 2 float, 4 bfloat, 5 complex, 6 bool; 255: opaque bytes.
    pub code: u8,
    /// Bits per lane (8, 16, 32, 64, ...).
    pub bits: u8,
    /// Lanes per element (1 for scalars).
    pub lanes: u16,
}

impl DType {
    /// Plain bytes: the default.
    pub const BYTES: DType = DType { code: 255, bits: 8, lanes: 1 };
    /// 32-bit floats.
    pub const F32: DType = DType { code: 2, bits: 32, lanes: 1 };
    /// 8-bit unsigned integers.
    pub const U8: DType = DType { code: 1, bits: 8, lanes: 1 };
    /// 64-bit unsigned integers.
    pub const U64: DType = DType { code: 1, bits: 64, lanes: 1 };
}

impl Default for DType {
    fn default() -> Self {
        DType::BYTES
    }
}

/// What travels with a frame beside its slot, sequence number and timeline value.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// Bytes of the frame that hold data, from its start; at most the channel's frame size.
    /// 0 means the whole frame.
    pub len: u64,
    /// Element type.
    pub dtype: DType,
    /// Shape in elements, at most [`MAX_DIMS`] dimensions (empty: a flat run of `len` bytes).
    pub shape: Vec<u64>,
    /// Strides in elements, one per dimension, or empty for a compact row-major layout (DLPack's
    /// `strides == NULL`).
    pub strides: Vec<i64>,
    /// The producer's timestamp for the frame (capture time, for example), in any unit it
    /// chooses; lava-flow passes it on.
    pub timestamp: u64,
    /// Up to [`MAX_USER_DATA`] bytes passed on unchanged.
    pub user: Vec<u8>,
}

impl Metadata {
    /// Metadata for `len` bytes of plain data.
    pub fn bytes(len: u64) -> Metadata {
        Metadata { len, ..Metadata::default() }
    }

    /// Checks the bounds the wire format sets and that `len` fits a frame of `frame_size` bytes.
    pub fn check(&self, frame_size: u64) -> Result<(), String> {
        if self.len > frame_size {
            return Err(format!("the metadata says {} bytes, and frames hold {frame_size}", self.len));
        }
        if self.shape.len() > MAX_DIMS {
            return Err(format!("a shape of {} dimensions exceeds {MAX_DIMS}", self.shape.len()));
        }
        if !self.strides.is_empty() && self.strides.len() != self.shape.len() {
            return Err(format!("{} strides for {} dimensions", self.strides.len(), self.shape.len()));
        }
        if self.user.len() > MAX_USER_DATA {
            return Err(format!("{} bytes of user data exceed {MAX_USER_DATA}", self.user.len()));
        }
        if self.dtype.bits == 0 || self.dtype.lanes == 0 {
            return Err(format!("dtype {:?} has zero bits or lanes", self.dtype));
        }
        Ok(())
    }
}

/// The channel's shape, sent to each consumer when it connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Slots in the pool.
    pub slots: u32,
    /// This consumer's index (0..64), naming its claim words.
    pub consumer: u32,
    /// Bytes per frame.
    pub frame_size: u64,
    /// Where frames live.
    pub memory: MemoryCode,
    /// How frames are signalled.
    pub sync: SyncCode,
    /// The sequence number the next frame will carry.
    pub next_sequence: u64,
}

/// A frame announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMessage {
    /// Which slot holds it.
    pub slot: u32,
    /// Its sequence number: increases by one per frame sent by the producer.
    pub sequence: u64,
    /// The `channel.filled` value that says its bytes are written (`sequence + 1`).
    pub timeline: u64,
    /// When the producer sent it, `CLOCK_MONOTONIC` nanoseconds (for hand-off latency).
    pub sent_ns: u64,
    /// What the producer says about it.
    pub metadata: Metadata,
}

/// One decoded channel message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMessage {
    /// The channel's shape.
    Hello(Hello),
    /// A frame is ready.
    Frame(FrameMessage),
    /// A consumer is done with a frame.
    Release {
        /// The slot.
        slot: u32,
        /// The frame's sequence number.
        sequence: u64,
    },
    /// The producer ended the channel after `frames` frames.
    End {
        /// Frames sent in all.
        frames: u64,
    },
    /// A refusal or failure, with its reason.
    Error {
        /// Why.
        text: String,
    },
}

/// A message that failed to decode: what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed channel message: {}", self.0)
    }
}

fn put_header(out: &mut Vec<u8>, kind: u16, payload_len: usize) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
}

/// Encodes a message. Metadata beyond the wire's bounds is refused (check it with
/// [`Metadata::check`] first).
pub fn encode(message: &ChannelMessage) -> Result<Vec<u8>, Malformed> {
    let mut p = Vec::with_capacity(128);
    let kind = match message {
        ChannelMessage::Hello(h) => {
            p.extend_from_slice(&h.slots.to_le_bytes());
            p.extend_from_slice(&h.consumer.to_le_bytes());
            p.extend_from_slice(&h.frame_size.to_le_bytes());
            p.push(h.memory as u8);
            p.push(h.sync as u8);
            p.extend_from_slice(&[0u8; 6]);
            p.extend_from_slice(&h.next_sequence.to_le_bytes());
            kind::HELLO
        }
        ChannelMessage::Frame(f) => {
            let m = &f.metadata;
            m.check(u64::MAX).map_err(Malformed)?;
            p.extend_from_slice(&f.slot.to_le_bytes());
            p.push(m.shape.len() as u8);
            p.push(u8::from(!m.strides.is_empty()));
            p.extend_from_slice(&(m.user.len() as u16).to_le_bytes());
            p.extend_from_slice(&f.sequence.to_le_bytes());
            p.extend_from_slice(&f.timeline.to_le_bytes());
            p.extend_from_slice(&f.sent_ns.to_le_bytes());
            p.extend_from_slice(&m.len.to_le_bytes());
            p.extend_from_slice(&m.timestamp.to_le_bytes());
            p.push(m.dtype.code);
            p.push(m.dtype.bits);
            p.extend_from_slice(&m.dtype.lanes.to_le_bytes());
            p.extend_from_slice(&[0u8; 12]);
            debug_assert_eq!(p.len(), FRAME_FIXED_LEN);
            for d in &m.shape {
                p.extend_from_slice(&d.to_le_bytes());
            }
            for s in &m.strides {
                p.extend_from_slice(&s.to_le_bytes());
            }
            p.extend_from_slice(&m.user);
            kind::FRAME
        }
        ChannelMessage::Release { slot, sequence } => {
            p.extend_from_slice(&slot.to_le_bytes());
            p.extend_from_slice(&[0u8; 4]);
            p.extend_from_slice(&sequence.to_le_bytes());
            kind::RELEASE
        }
        ChannelMessage::End { frames } => {
            p.extend_from_slice(&frames.to_le_bytes());
            kind::END
        }
        ChannelMessage::Error { text } => {
            let mut cut = text.len().min(MAX_ERROR_TEXT);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            p.extend_from_slice(&text.as_bytes()[..cut]);
            kind::ERROR
        }
    };
    let mut out = Vec::with_capacity(HEADER_LEN + p.len());
    put_header(&mut out, kind, p.len());
    out.extend_from_slice(&p);
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn zero(b: &[u8], what: &str) -> Result<(), Malformed> {
    if b.iter().any(|&x| x != 0) {
        return Err(Malformed(format!("reserved bytes of {what} are not zero")));
    }
    Ok(())
}

fn exact(p: &[u8], len: usize, what: &str) -> Result<(), Malformed> {
    if p.len() != len {
        return Err(Malformed(format!("a {what} payload is {} bytes, not {len}", p.len())));
    }
    Ok(())
}

/// Decodes one datagram. `slots` bounds the slot index of `FRAME` and `RELEASE` (`u32::MAX`
/// before the `HELLO` is known).
pub fn decode(bytes: &[u8], slots: u32) -> Result<ChannelMessage, Malformed> {
    if bytes.len() < HEADER_LEN {
        return Err(Malformed(format!("{} bytes are shorter than the {HEADER_LEN}-byte header", bytes.len())));
    }
    if bytes[0..4] != MAGIC {
        return Err(Malformed(format!("magic {:02x?} is not LVFC", &bytes[0..4])));
    }
    let version = u16_at(bytes, 4);
    if version != VERSION {
        return Err(Malformed(format!("version {version}, and this side speaks {VERSION}")));
    }
    let kind = u16_at(bytes, 6);
    let payload_len = u32_at(bytes, 8) as usize;
    zero(&bytes[12..16], "the header")?;
    let p = &bytes[HEADER_LEN..];
    if p.len() != payload_len {
        return Err(Malformed(format!("the header says {payload_len} payload bytes and {} came", p.len())));
    }
    let check_slot = |slot: u32| {
        if slot >= slots {
            Err(Malformed(format!("slot {slot} is not below the channel's {slots} slots")))
        } else {
            Ok(slot)
        }
    };
    match kind {
        kind::HELLO => {
            exact(p, 32, "HELLO")?;
            zero(&p[18..24], "HELLO")?;
            let slots = u32_at(p, 0);
            let consumer = u32_at(p, 4);
            let frame_size = u64_at(p, 8);
            let memory = match p[16] {
                0 => MemoryCode::Host,
                1 => MemoryCode::Vulkan,
                m => return Err(Malformed(format!("memory kind {m} is not 0 (host) or 1 (vulkan)"))),
            };
            let sync = match p[17] {
                0 => SyncCode::Messages,
                1 => SyncCode::Timeline,
                s => return Err(Malformed(format!("sync kind {s} is not 0 (messages) or 1 (timeline)"))),
            };
            if slots == 0 || slots > MAX_SLOTS {
                return Err(Malformed(format!("{slots} slots is not in 1..={MAX_SLOTS}")));
            }
            if frame_size == 0 {
                return Err(Malformed("frames of 0 bytes".into()));
            }
            if consumer >= 64 {
                return Err(Malformed(format!("consumer index {consumer} is not below 64")));
            }
            Ok(ChannelMessage::Hello(Hello { slots, consumer, frame_size, memory, sync, next_sequence: u64_at(p, 24) }))
        }
        kind::FRAME => {
            if p.len() < FRAME_FIXED_LEN {
                return Err(Malformed(format!(
                    "a FRAME payload of {} bytes is shorter than {FRAME_FIXED_LEN}",
                    p.len()
                )));
            }
            let slot = check_slot(u32_at(p, 0))?;
            let dims = p[4] as usize;
            let has_strides = p[5];
            let user_len = u16_at(p, 6) as usize;
            if dims > MAX_DIMS {
                return Err(Malformed(format!("{dims} dimensions exceed {MAX_DIMS}")));
            }
            if has_strides > 1 {
                return Err(Malformed(format!("the strides flag is {has_strides}, not 0 or 1")));
            }
            if user_len > MAX_USER_DATA {
                return Err(Malformed(format!("{user_len} bytes of user data exceed {MAX_USER_DATA}")));
            }
            zero(&p[52..64], "FRAME")?;
            let stride_count = if has_strides == 1 { dims } else { 0 };
            let want = FRAME_FIXED_LEN + 8 * dims + 8 * stride_count + user_len;
            exact(p, want, "FRAME")?;
            let dtype = DType { code: p[48], bits: p[49], lanes: u16_at(p, 50) };
            let mut at = FRAME_FIXED_LEN;
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                shape.push(u64_at(p, at));
                at += 8;
            }
            let mut strides = Vec::with_capacity(stride_count);
            for _ in 0..stride_count {
                strides.push(u64_at(p, at) as i64);
                at += 8;
            }
            let metadata = Metadata {
                len: u64_at(p, 32),
                dtype,
                shape,
                strides,
                timestamp: u64_at(p, 40),
                user: p[at..at + user_len].to_vec(),
            };
            if dtype.bits == 0 || dtype.lanes == 0 {
                return Err(Malformed(format!("dtype {dtype:?} has zero bits or lanes")));
            }
            let sequence = u64_at(p, 8);
            let timeline = u64_at(p, 16);
            if timeline != sequence.wrapping_add(1) || timeline == 0 {
                return Err(Malformed(format!("timeline value {timeline} for frame {sequence} is not sequence + 1")));
            }
            Ok(ChannelMessage::Frame(FrameMessage { slot, sequence, timeline, sent_ns: u64_at(p, 24), metadata }))
        }
        kind::RELEASE => {
            exact(p, 16, "RELEASE")?;
            zero(&p[4..8], "RELEASE")?;
            Ok(ChannelMessage::Release { slot: check_slot(u32_at(p, 0))?, sequence: u64_at(p, 8) })
        }
        kind::END => {
            exact(p, 8, "END")?;
            Ok(ChannelMessage::End { frames: u64_at(p, 0) })
        }
        kind::ERROR => {
            if p.len() > MAX_ERROR_TEXT {
                return Err(Malformed(format!("an ERROR text of {} bytes exceeds {MAX_ERROR_TEXT}", p.len())));
            }
            let text = std::str::from_utf8(p).map_err(|_| Malformed("the ERROR text is not UTF-8".into()))?;
            Ok(ChannelMessage::Error { text: text.to_owned() })
        }
        other => Err(Malformed(format!("message type {other} is not a channel message (1..=5)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> ChannelMessage {
        ChannelMessage::Frame(FrameMessage {
            slot: 3,
            sequence: 41,
            timeline: 42,
            sent_ns: 7,
            metadata: Metadata {
                len: 4096,
                dtype: DType::F32,
                shape: vec![32, 32],
                strides: vec![32, 1],
                timestamp: 99,
                user: b"camera-0".to_vec(),
            },
        })
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            ChannelMessage::Hello(Hello {
                slots: 4,
                consumer: 2,
                frame_size: 1 << 20,
                memory: MemoryCode::Vulkan,
                sync: SyncCode::Timeline,
                next_sequence: 17,
            }),
            frame(),
            ChannelMessage::Release { slot: 1, sequence: 5 },
            ChannelMessage::End { frames: 100 },
            ChannelMessage::Error { text: "too many consumers".into() },
        ];
        for m in messages {
            let bytes = encode(&m).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            assert_eq!(decode(&bytes, 4).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_named() {
        let good = encode(&frame()).unwrap();
        let bad = |mutate: &dyn Fn(&mut Vec<u8>), slots: u32, want: &str| {
            let mut b = good.clone();
            mutate(&mut b);
            let e = decode(&b, slots).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        bad(&|b| b[0] = b'X', 4, "magic");
        bad(&|b| b[4] = 9, 4, "version");
        bad(&|b| b[6] = 77, 4, "message type 77");
        bad(&|b| b.truncate(20), 4, "payload bytes");
        bad(&|_| {}, 3, "slot 3 is not below");
        bad(&|b| b[HEADER_LEN + 4] = 9, 4, "9 dimensions");
        bad(&|b| b[HEADER_LEN + 60] = 1, 4, "reserved");
        bad(&|b| b[HEADER_LEN + 16] ^= 1, 4, "timeline value");
        bad(&|b| b[HEADER_LEN + 6] = 255, 4, "FRAME payload is");
        bad(&|b| b[14] = 1, 4, "header");
        assert!(decode(&[], 4).is_err());
        assert!(decode(&good[..HEADER_LEN], 4).is_err());
        let mut user = Metadata::bytes(1);
        user.user = vec![0; MAX_USER_DATA + 1];
        assert!(user.check(8).unwrap_err().contains("user data"));
        assert!(Metadata::bytes(9).check(8).unwrap_err().contains("frames hold 8"));
    }
}

//! The wire format: one message is one `SOCK_SEQPACKET` datagram holding a 16-byte header and a
//! payload; the fds travel beside it in one `SCM_RIGHTS` control message. Every integer is little
//! endian. `docs/PROTOCOL.md` describes the same bytes for implementers in other languages.
//!
//! [`encode`] and [`decode`] are pure functions: decoding looks only at the bytes and at how many fds
//! arrived, validates every field (unknown enum values, reserved bits, lengths, bounds, fd count
//! against the header) and never panics. Objects refer to fds by position: object `i` of an
//! `OBJECTS` or `PUBLISH` message owns fd `i`.

use raw_gpu_handle::{
    AllocationId, BufferDescription, DeviceIdentity, Extent3d, FenceDescription, FenceHandleKind, MemoryDescription,
    MemoryHandleKind, MemoryProperties, PlaneLayout, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
    TextureDescription, TextureDimension, TextureFormat, TextureTiling, TextureUsage, Uuid,
};
use std::fmt;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"LVFL";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 16;
/// Largest message (header plus payload) either side sends or accepts.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Largest payload.
pub const MAX_PAYLOAD_LEN: usize = MAX_MESSAGE_LEN - HEADER_LEN;
/// Most fds one message may carry (and so most objects in one message).
pub const MAX_FDS: usize = super::fd_passing::MAX_FDS_PER_MESSAGE;
/// Longest object name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest error text, in bytes.
pub const MAX_ERROR_TEXT_LEN: usize = 1024;
/// Most planes a DRM-modifier texture may describe.
pub const MAX_PLANES: usize = 4;
/// Vulkan's `VK_MAX_MEMORY_TYPES`: memory type indices are below it.
pub const MAX_MEMORY_TYPES: u32 = 32;

/// The memory property bits the protocol defines (`VkMemoryPropertyFlags` device-local 1,
/// host-visible 2, host-coherent 4, host-cached 8); a description with any other bit is malformed.
/// Defined by the Vulkan layer, which builds every description.
pub const MEMORY_PROPERTY_BITS: u32 = crate::vulkan::MEMORY_PROPERTY_BITS;
/// The memory properties of every host-memfd description: host-visible and host-coherent.
pub const HOST_MEMFD_PROPERTIES: MemoryProperties = crate::vulkan::HOST_MEMFD_PROPERTIES;

/// Bytes of an encoded memory description.
pub const MEMORY_BLOCK_LEN: usize = 88;
/// Bytes of an encoded device identity.
pub const DEVICE_BLOCK_LEN: usize = 48;

/// The message types (header bytes 6..8).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// Client asks for the objects with a name (or all of them).
    Get = 1,
    /// Objects with their fds (the reply to `GET`).
    Objects = 2,
    /// Client hands objects with their fds to the server.
    Publish = 3,
    /// Success without data (the reply to `PUBLISH`).
    Ok = 4,
    /// A request was refused; the payload says why.
    Error = 5,
    /// Client asks for one object and waits until it is published or a timeout passes.
    Wait = 6,
}

impl MessageType {
    /// The type with this wire value.
    pub fn from_u16(v: u16) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Get,
            2 => MessageType::Objects,
            3 => MessageType::Publish,
            4 => MessageType::Ok,
            5 => MessageType::Error,
            6 => MessageType::Wait,
            _ => return None,
        })
    }
}

/// Why a request failed: the code of an `ERROR` reply, and of a [`WireError`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// The bytes are not a valid message (bad magic, reserved field set, unknown enum value,
    /// inconsistent lengths or description, an fd that is not what its description says).
    Malformed = 1,
    /// The header's version is not one this side speaks.
    UnsupportedVersion = 2,
    /// The message or its fd count exceeds the limits.
    TooLarge = 3,
    /// The number of fds received differs from the header's fd count or the object count.
    FdCountMismatch = 4,
    /// No object has the requested name.
    NotFound = 5,
    /// The peer's credentials are not allowed.
    Refused = 6,
    /// A message this side does not accept: an unknown message type, a client sending `OBJECTS`,
    /// publishing to a server that takes no objects, a name already published.
    Unexpected = 7,
    /// The server is at a limit (connections, stored objects); try later.
    Busy = 8,
    /// The server failed for its own reasons (out of fds, ...).
    Internal = 9,
}

impl ErrorCode {
    /// The code with this wire value.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => UnsupportedVersion,
            3 => TooLarge,
            4 => FdCountMismatch,
            5 => NotFound,
            6 => Refused,
            7 => Unexpected,
            8 => Busy,
            9 => Internal,
            _ => return None,
        })
    }

    /// A short stable name.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            UnsupportedVersion => "unsupported-version",
            TooLarge => "too-large",
            FdCountMismatch => "fd-count-mismatch",
            NotFound => "not-found",
            Refused => "refused",
            Unexpected => "unexpected",
            Busy => "busy",
            Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message that could not be encoded or decoded.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WireError {
    /// The class of failure; sent back as the `ERROR` reply's code.
    pub code: ErrorCode,
    /// What exactly was wrong, for the `ERROR` reply's text and logs.
    pub reason: String,
}

impl WireError {
    fn new(code: ErrorCode, reason: impl Into<String>) -> WireError {
        WireError { code, reason: reason.into() }
    }
    fn malformed(reason: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::Malformed, reason)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> crate::Error {
        crate::Error::Protocol {
            reason: e.to_string(),
            advice: "both sides must speak lava-flow protocol version 1 as written in docs/PROTOCOL.md".into(),
        }
    }
}

/// What one shared object is, without its fd.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ObjectDescription {
    /// A whole allocation.
    Memory(MemoryDescription),
    /// A buffer inside an allocation.
    Buffer {
        /// The allocation.
        memory: MemoryDescription,
        /// Where the buffer lies in it.
        buffer: BufferDescription,
    },
    /// A texture inside an allocation.
    Texture {
        /// The allocation.
        memory: MemoryDescription,
        /// The texture's shape and layout.
        texture: TextureDescription,
    },
    /// A semaphore.
    Semaphore(SemaphoreDescription),
    /// A fence.
    Fence(FenceDescription),
}

impl ObjectDescription {
    /// The wire value of the object kind.
    pub fn kind_code(&self) -> u8 {
        match self {
            ObjectDescription::Memory(_) => 1,
            ObjectDescription::Buffer { .. } => 2,
            ObjectDescription::Texture { .. } => 3,
            ObjectDescription::Semaphore(_) => 4,
            ObjectDescription::Fence(_) => 5,
        }
    }

    /// "memory", "buffer", "texture", "semaphore" or "fence".
    pub fn kind_name(&self) -> &'static str {
        match self {
            ObjectDescription::Memory(_) => "memory",
            ObjectDescription::Buffer { .. } => "buffer",
            ObjectDescription::Texture { .. } => "texture",
            ObjectDescription::Semaphore(_) => "semaphore",
            ObjectDescription::Fence(_) => "fence",
        }
    }
}

/// A description with the name it is shared under.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NamedDescription {
    /// 1 to 64 bytes of printable ASCII without spaces (`0x21..=0x7e`), unique within a message.
    pub name: String,
    /// What the object is.
    pub description: ObjectDescription,
}

/// One decoded message. Objects refer to fds by position (object `i` owns fd `i`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Ask for the object with this name; the empty name asks for every object.
    Get {
        /// The name, or "" for all.
        name: String,
    },
    /// Objects, one fd each, in order.
    Objects(Vec<NamedDescription>),
    /// Objects handed to the server, one fd each, in order.
    Publish(Vec<NamedDescription>),
    /// Success.
    Ok,
    /// Failure.
    Error {
        /// Why.
        code: ErrorCode,
        /// Details, UTF-8, at most [`MAX_ERROR_TEXT_LEN`] bytes.
        text: String,
    },
    /// Ask for the object with this name, waiting up to `timeout_ms` milliseconds for it to be
    /// published; answered with `OBJECTS` (the one object) or, once the time is up, `ERROR`
    /// `not-found`.
    Wait {
        /// The name (not empty).
        name: String,
        /// Longest wait in milliseconds; 0 answers at once, as `GET` does.
        timeout_ms: u32,
    },
}

impl Message {
    /// The header's message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Get { .. } => MessageType::Get,
            Message::Objects(_) => MessageType::Objects,
            Message::Publish(_) => MessageType::Publish,
            Message::Ok => MessageType::Ok,
            Message::Error { .. } => MessageType::Error,
            Message::Wait { .. } => MessageType::Wait,
        }
    }

    /// How many fds travel with the message.
    pub fn fd_count(&self) -> usize {
        match self {
            Message::Objects(o) | Message::Publish(o) => o.len(),
            _ => 0,
        }
    }

    /// An `ERROR` message whose text is cut to the limit at a character boundary.
    pub fn error(code: ErrorCode, text: impl Into<String>) -> Message {
        let mut text = text.into();
        if text.len() > MAX_ERROR_TEXT_LEN {
            let mut cut = MAX_ERROR_TEXT_LEN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Message::Error { code, text }
    }
}

/// The fixed 16-byte header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Protocol version.
    pub version: u16,
    /// Raw message type (validated by [`decode`]).
    pub message_type: u16,
    /// Bytes after the header.
    pub payload_len: u32,
    /// fds in the `SCM_RIGHTS` control message.
    pub fd_count: u16,
}

/// Checks that `name` is a valid object name (the empty name only where `allow_empty`).
pub fn check_name(name: &str, allow_empty: bool) -> Result<(), WireError> {
    if name.is_empty() {
        return if allow_empty { Ok(()) } else { Err(WireError::malformed("object name is empty")) };
    }
    if name.len() > MAX_NAME_LEN {
        return Err(WireError::malformed(format!("name of {} bytes exceeds {MAX_NAME_LEN}", name.len())));
    }
    if let Some(b) = name.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(WireError::malformed(format!("name contains byte {b:#04x}; names are printable ASCII")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
}

fn memory_handle_code(kind: MemoryHandleKind) -> Result<u8, WireError> {
    match kind {
        MemoryHandleKind::OpaqueFd => Ok(1),
        MemoryHandleKind::DmaBuf => Ok(2),
        MemoryHandleKind::HostMemfd => Ok(3),
        #[allow(unreachable_patterns)]
        other => Err(WireError::malformed(format!("memory handle kind {other} cannot travel over a Unix socket"))),
    }
}

fn format_code(format: TextureFormat) -> Result<u8, WireError> {
    TextureFormat::ALL
        .iter()
        .position(|f| *f == format)
        .map(|i| i as u8 + 1)
        .ok_or_else(|| WireError::malformed(format!("texture format {format} has no wire code")))
}

fn dimension_code(d: TextureDimension) -> u8 {
    match d {
        TextureDimension::D1 => 1,
        TextureDimension::D1Array => 2,
        TextureDimension::D2 => 3,
        TextureDimension::D2Array => 4,
        TextureDimension::D3 => 5,
    }
}

fn write_device(w: &mut Writer, d: &DeviceIdentity) {
    w.u8(u8::from(d.luid.is_some()));
    w.zeros(7);
    w.bytes(&d.device_uuid.0);
    w.bytes(&d.driver_uuid.0);
    w.bytes(&d.luid.unwrap_or([0; 8]));
}

fn write_memory(w: &mut Writer, m: &MemoryDescription) -> Result<(), WireError> {
    w.u8(memory_handle_code(m.handle_kind)?);
    w.u8(u8::from(m.dedicated) | (u8::from(m.allocation_id.is_some()) << 1));
    w.u16(0);
    w.u32(m.memory_type_index);
    w.u32(m.memory_properties.0);
    w.u32(0);
    w.u64(m.allocation_size);
    w.u128(m.allocation_id.map(|a| a.0).unwrap_or(0));
    write_device(w, &m.device);
    Ok(())
}

fn write_texture(w: &mut Writer, t: &TextureDescription) -> Result<(), WireError> {
    w.u8(format_code(t.format)?);
    w.u8(dimension_code(t.dimension));
    w.u8(match t.tiling {
        TextureTiling::Linear { .. } => 1,
        TextureTiling::Optimal => 2,
        TextureTiling::DrmModifier { .. } => 3,
    });
    let u = t.usage;
    w.u8(u8::from(u.sampled)
        | (u8::from(u.storage) << 1)
        | (u8::from(u.color_attachment) << 2)
        | (u8::from(u.transfer) << 3));
    w.u32(t.extent.width);
    w.u32(t.extent.height);
    w.u32(t.extent.depth);
    w.u32(t.array_layers);
    w.u32(0);
    w.u64(t.offset);
    w.u64(t.size);
    match &t.tiling {
        TextureTiling::Linear { row_pitch, array_pitch, depth_pitch } => {
            w.u64(*row_pitch);
            w.u64(*array_pitch);
            w.u64(*depth_pitch);
        }
        TextureTiling::Optimal => {}
        TextureTiling::DrmModifier { modifier, planes } => {
            w.u64(*modifier);
            w.u32(planes.len() as u32);
            w.u32(0);
            for p in planes {
                w.u64(p.offset);
                w.u64(p.size);
                w.u64(p.row_pitch);
            }
        }
    }
    Ok(())
}

fn write_body(w: &mut Writer, d: &ObjectDescription) -> Result<(), WireError> {
    match d {
        ObjectDescription::Memory(m) => write_memory(w, m),
        ObjectDescription::Buffer { memory, buffer } => {
            write_memory(w, memory)?;
            w.u64(buffer.offset);
            w.u64(buffer.size);
            w.u64(buffer.alignment);
            Ok(())
        }
        ObjectDescription::Texture { memory, texture } => {
            write_memory(w, memory)?;
            write_texture(w, texture)
        }
        ObjectDescription::Semaphore(s) => {
            w.u8(match s.kind {
                SemaphoreKind::Binary => 1,
                SemaphoreKind::Timeline => 2,
            });
            w.u8(match s.handle_kind {
                SemaphoreHandleKind::OpaqueFd => 1,
                SemaphoreHandleKind::SyncFd => 2,
                #[allow(unreachable_patterns)]
                other => return Err(WireError::malformed(format!("semaphore handle kind {other} has no wire code"))),
            });
            w.zeros(6);
            write_device(w, &s.device);
            Ok(())
        }
        ObjectDescription::Fence(f) => {
            w.u8(match f.handle_kind {
                FenceHandleKind::OpaqueFd => 1,
                FenceHandleKind::SyncFd => 2,
                #[allow(unreachable_patterns)]
                other => return Err(WireError::malformed(format!("fence handle kind {other} has no wire code"))),
            });
            w.zeros(7);
            write_device(w, &f.device);
            Ok(())
        }
    }
}

fn write_objects(w: &mut Writer, objects: &[NamedDescription]) -> Result<(), WireError> {
    if objects.len() > MAX_FDS {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{} objects exceed the limit of {MAX_FDS} per message", objects.len()),
        ));
    }
    check_consistent([], objects)?;
    w.u16(objects.len() as u16);
    w.u16(0);
    for (i, o) in objects.iter().enumerate() {
        check_name(&o.name, false)?;
        if objects[..i].iter().any(|p| p.name == o.name) {
            return Err(WireError::malformed(format!("object name {:?} appears twice", o.name)));
        }
        validate_description(&o.description)?;
        let mut body = Writer(Vec::with_capacity(256));
        write_body(&mut body, &o.description)?;
        w.u8(o.description.kind_code());
        w.u8(o.name.len() as u8);
        w.u16(body.0.len() as u16);
        w.bytes(o.name.as_bytes());
        w.bytes(&body.0);
    }
    Ok(())
}

/// Encodes `message` into the bytes of one datagram (header and payload). The fds to send with it
/// are the objects' fds in order ([`Message::fd_count`] of them).
pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut w = Writer(Vec::with_capacity(256));
    w.bytes(&MAGIC);
    w.u16(VERSION);
    w.u16(message.message_type() as u16);
    w.u32(0); // payload length, patched below
    w.u16(message.fd_count() as u16);
    w.u16(0);
    match message {
        Message::Get { name } => {
            check_name(name, true)?;
            w.u16(name.len() as u16);
            w.bytes(name.as_bytes());
        }
        Message::Objects(objects) | Message::Publish(objects) => write_objects(&mut w, objects)?,
        Message::Ok => {}
        Message::Wait { name, timeout_ms } => {
            check_name(name, false)?;
            w.u32(*timeout_ms);
            w.u16(name.len() as u16);
            w.u16(0);
            w.bytes(name.as_bytes());
        }
        Message::Error { code, text } => {
            if text.len() > MAX_ERROR_TEXT_LEN {
                return Err(WireError::new(
                    ErrorCode::TooLarge,
                    format!("error text of {} bytes exceeds {MAX_ERROR_TEXT_LEN}", text.len()),
                ));
            }
            w.u32(*code as u32);
            w.u16(text.len() as u16);
            w.u16(0);
            w.bytes(text.as_bytes());
        }
    }
    let payload_len = w.0.len() - HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("payload of {payload_len} bytes exceeds {MAX_PAYLOAD_LEN}"),
        ));
    }
    w.0[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    Ok(w.0)
}

// ---------------------------------------------------------------------------------------------
// Decoding

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| {
            WireError::malformed(format!(
                "{} ends after {} bytes, {} more needed at offset {}",
                self.what,
                self.bytes.len(),
                n,
                self.pos
            ))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, WireError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn zeros(&mut self, n: usize, field: &str) -> Result<(), WireError> {
        let at = self.pos;
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(WireError::malformed(format!("reserved {field} at offset {at} of {} is not zero", self.what)));
        }
        Ok(())
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.pos != self.bytes.len() {
            return Err(WireError::malformed(format!(
                "{} has {} trailing bytes",
                self.what,
                self.bytes.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// A header whose message type this side does not know: `unexpected` (7), so that a client can
/// tell a message a server predates from a malformed one (docs/PROTOCOL.md, "Versions").
fn unknown_type(message_type: u16) -> WireError {
    WireError::new(
        ErrorCode::Unexpected,
        format!("unknown message type {message_type}: this side speaks types 1 to 6 of protocol version 1"),
    )
}

/// Reads and checks the fixed header: magic, version, reserved field, type, and the limits on
/// payload length and fd count. Does not compare the payload length with the datagram's.
pub fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::malformed(format!(
            "message of {} bytes is shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let mut r = Reader::new(&bytes[..HEADER_LEN], "header");
    if r.array::<4>()? != MAGIC {
        return Err(WireError::malformed(format!(
            "magic {:02x?} is not \"LVFL\": not a lava-flow message",
            &bytes[..4]
        )));
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version} is not supported; this side speaks version {VERSION}"),
        ));
    }
    let message_type = r.u16()?;
    let payload_len = r.u32()?;
    let fd_count = r.u16()?;
    r.zeros(2, "header field")?;
    if payload_len as usize > MAX_PAYLOAD_LEN {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("payload length {payload_len} exceeds the limit of {MAX_PAYLOAD_LEN}"),
        ));
    }
    if fd_count as usize > MAX_FDS {
        return Err(WireError::new(ErrorCode::TooLarge, format!("fd count {fd_count} exceeds the limit of {MAX_FDS}")));
    }
    if MessageType::from_u16(message_type).is_none() {
        return Err(unknown_type(message_type));
    }
    Ok(Header { version, message_type, payload_len, fd_count })
}

fn read_device(r: &mut Reader<'_>) -> Result<DeviceIdentity, WireError> {
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(WireError::malformed(format!("device identity flags {flags:#04x} has unknown bits")));
    }
    r.zeros(7, "device identity field")?;
    let device_uuid = Uuid(r.array()?);
    let driver_uuid = Uuid(r.array()?);
    let luid_bytes: [u8; 8] = r.array()?;
    let luid = if flags & 1 != 0 {
        Some(luid_bytes)
    } else if luid_bytes != [0; 8] {
        return Err(WireError::malformed("LUID bytes are set but the LUID-present flag is not"));
    } else {
        None
    };
    Ok(DeviceIdentity { device_uuid, driver_uuid, luid })
}

fn read_memory(r: &mut Reader<'_>) -> Result<MemoryDescription, WireError> {
    let handle_kind = match r.u8()? {
        1 => MemoryHandleKind::OpaqueFd,
        2 => MemoryHandleKind::DmaBuf,
        3 => MemoryHandleKind::HostMemfd,
        v => return Err(WireError::malformed(format!("unknown memory handle kind {v}"))),
    };
    let flags = r.u8()?;
    if flags & !0b11 != 0 {
        return Err(WireError::malformed(format!("memory flags {flags:#04x} has unknown bits")));
    }
    r.zeros(2, "memory field")?;
    let memory_type_index = r.u32()?;
    let memory_properties = MemoryProperties(r.u32()?);
    r.zeros(4, "memory field")?;
    let allocation_size = r.u64()?;
    let id = r.u128()?;
    let allocation_id = if flags & 0b10 != 0 {
        Some(AllocationId(id))
    } else if id != 0 {
        return Err(WireError::malformed("allocation id is set but the id-present flag is not"));
    } else {
        None
    };
    let device = read_device(r)?;
    Ok(MemoryDescription {
        handle_kind,
        allocation_size,
        memory_type_index,
        memory_properties,
        dedicated: flags & 1 != 0,
        device,
        allocation_id,
    })
}

fn read_texture(r: &mut Reader<'_>) -> Result<TextureDescription, WireError> {
    let format_code = r.u8()?;
    let format = (format_code as usize)
        .checked_sub(1)
        .and_then(|i| TextureFormat::ALL.get(i).copied())
        .ok_or_else(|| WireError::malformed(format!("unknown texture format {format_code}")))?;
    let dimension = match r.u8()? {
        1 => TextureDimension::D1,
        2 => TextureDimension::D1Array,
        3 => TextureDimension::D2,
        4 => TextureDimension::D2Array,
        5 => TextureDimension::D3,
        v => return Err(WireError::malformed(format!("unknown texture dimension {v}"))),
    };
    let tiling_code = r.u8()?;
    let usage_bits = r.u8()?;
    if usage_bits & !0b1111 != 0 {
        return Err(WireError::malformed(format!("texture usage {usage_bits:#04x} has unknown bits")));
    }
    let usage = TextureUsage {
        sampled: usage_bits & 1 != 0,
        storage: usage_bits & 2 != 0,
        color_attachment: usage_bits & 4 != 0,
        transfer: usage_bits & 8 != 0,
    };
    let extent = Extent3d { width: r.u32()?, height: r.u32()?, depth: r.u32()? };
    let array_layers = r.u32()?;
    r.zeros(4, "texture field")?;
    let offset = r.u64()?;
    let size = r.u64()?;
    let tiling = match tiling_code {
        1 => TextureTiling::Linear { row_pitch: r.u64()?, array_pitch: r.u64()?, depth_pitch: r.u64()? },
        2 => TextureTiling::Optimal,
        3 => {
            let modifier = r.u64()?;
            let count = r.u32()?;
            r.zeros(4, "texture field")?;
            if count == 0 || count as usize > MAX_PLANES {
                return Err(WireError::malformed(format!("plane count {count} is not in 1..={MAX_PLANES}")));
            }
            let mut planes = Vec::with_capacity(count as usize);
            for _ in 0..count {
                planes.push(PlaneLayout { offset: r.u64()?, size: r.u64()?, row_pitch: r.u64()? });
            }
            TextureTiling::DrmModifier { modifier, planes }
        }
        v => return Err(WireError::malformed(format!("unknown texture tiling {v}"))),
    };
    Ok(TextureDescription { format, dimension, extent, array_layers, tiling, usage, offset, size })
}

fn read_body(kind: u8, r: &mut Reader<'_>) -> Result<ObjectDescription, WireError> {
    Ok(match kind {
        1 => ObjectDescription::Memory(read_memory(r)?),
        2 => {
            let memory = read_memory(r)?;
            let buffer = BufferDescription { offset: r.u64()?, size: r.u64()?, alignment: r.u64()? };
            ObjectDescription::Buffer { memory, buffer }
        }
        3 => {
            let memory = read_memory(r)?;
            ObjectDescription::Texture { memory, texture: read_texture(r)? }
        }
        4 => {
            let kind = match r.u8()? {
                1 => SemaphoreKind::Binary,
                2 => SemaphoreKind::Timeline,
                v => return Err(WireError::malformed(format!("unknown semaphore kind {v}"))),
            };
            let handle_kind = match r.u8()? {
                1 => SemaphoreHandleKind::OpaqueFd,
                2 => SemaphoreHandleKind::SyncFd,
                v => return Err(WireError::malformed(format!("unknown semaphore handle kind {v}"))),
            };
            r.zeros(6, "semaphore field")?;
            ObjectDescription::Semaphore(SemaphoreDescription { kind, handle_kind, device: read_device(r)? })
        }
        5 => {
            let handle_kind = match r.u8()? {
                1 => FenceHandleKind::OpaqueFd,
                2 => FenceHandleKind::SyncFd,
                v => return Err(WireError::malformed(format!("unknown fence handle kind {v}"))),
            };
            r.zeros(7, "fence field")?;
            ObjectDescription::Fence(FenceDescription { handle_kind, device: read_device(r)? })
        }
        v => return Err(WireError::malformed(format!("unknown object kind {v}"))),
    })
}

fn check_memory(m: &MemoryDescription) -> Result<(), WireError> {
    if m.allocation_size == 0 {
        return Err(WireError::malformed("allocation size is zero"));
    }
    if m.memory_type_index >= MAX_MEMORY_TYPES {
        return Err(WireError::malformed(format!(
            "memory type index {} is not below {MAX_MEMORY_TYPES}",
            m.memory_type_index
        )));
    }
    let unknown = m.memory_properties.0 & !MEMORY_PROPERTY_BITS;
    if unknown != 0 {
        return Err(WireError::malformed(format!(
            "memory property bits {unknown:#x} are not defined by the protocol (only 1 device-local, 2 host-visible, \
             4 host-coherent, 8 host-cached)"
        )));
    }
    if m.handle_kind == MemoryHandleKind::HostMemfd {
        // Host memory belongs to no device: any process maps it, and an importing GPU API picks its
        // own memory type for it.
        if m.device != DeviceIdentity::default() {
            return Err(WireError::malformed(format!(
                "host-memfd memory names device {}: host memory carries an all-zero device identity",
                m.device
            )));
        }
        if m.memory_type_index != 0 || m.memory_properties != HOST_MEMFD_PROPERTIES {
            return Err(WireError::malformed(format!(
                "host-memfd memory has memory type {} and properties {}: host memory carries memory type 0 and \
                 properties 6 (host-visible, host-coherent)",
                m.memory_type_index, m.memory_properties
            )));
        }
    }
    Ok(())
}

/// Where a linear texture's last texel ends, from its start: (layers - 1) x array pitch +
/// (depth - 1) x depth pitch + (height - 1) x row pitch + width x texel size. Pitches of a dimension
/// the texture does not have (one layer, depth 1) do not count.
fn linear_extent(t: &TextureDescription, row_pitch: u64, array_pitch: u64, depth_pitch: u64) -> u128 {
    let e = t.extent;
    let less_one = |n: u32| u128::from(n.saturating_sub(1));
    less_one(t.array_layers) * u128::from(array_pitch)
        + less_one(e.depth) * u128::from(depth_pitch)
        + less_one(e.height) * u128::from(row_pitch)
        + u128::from(e.width) * u128::from(t.format.texel_size())
}

fn check_range(what: &str, offset: u64, size: u64, allocation_size: u64) -> Result<(), WireError> {
    match offset.checked_add(size) {
        Some(end) if size > 0 && end <= allocation_size => Ok(()),
        _ => Err(WireError::malformed(format!(
            "{what} at offset {offset} of size {size} does not fit in an allocation of {allocation_size} bytes"
        ))),
    }
}

/// Checks a description's internal consistency: non-zero sizes, ranges inside the allocation,
/// a valid texture shape, no timeline semaphore as a sync fd. [`decode`] runs it on every object
/// and [`encode`] refuses what it rejects.
pub fn validate_description(d: &ObjectDescription) -> Result<(), WireError> {
    match d {
        ObjectDescription::Memory(m) => check_memory(m),
        ObjectDescription::Buffer { memory, buffer } => {
            check_memory(memory)?;
            check_range("buffer", buffer.offset, buffer.size, memory.allocation_size)?;
            if buffer.alignment != 0 && !buffer.alignment.is_power_of_two() {
                return Err(WireError::malformed(format!(
                    "buffer alignment {} is not a power of two",
                    buffer.alignment
                )));
            }
            if buffer.alignment != 0 && buffer.offset % buffer.alignment != 0 {
                return Err(WireError::malformed(format!(
                    "buffer offset {} does not honour its alignment {}",
                    buffer.offset, buffer.alignment
                )));
            }
            Ok(())
        }
        ObjectDescription::Texture { memory, texture } => {
            check_memory(memory)?;
            texture.validate().map_err(|e| WireError::malformed(format!("texture: {e}")))?;
            check_range("texture", texture.offset, texture.size, memory.allocation_size)?;
            if let TextureTiling::Linear { row_pitch, array_pitch, depth_pitch } = texture.tiling {
                let end = linear_extent(texture, row_pitch, array_pitch, depth_pitch);
                if end > u128::from(texture.size) {
                    return Err(WireError::malformed(format!(
                        "a linear texture of {}x{}x{} with {} layers and pitches {row_pitch} (row), {array_pitch} \
                         (array), {depth_pitch} (depth) ends {end} bytes in, past its size of {}",
                        texture.extent.width,
                        texture.extent.height,
                        texture.extent.depth,
                        texture.array_layers,
                        texture.size
                    )));
                }
            }
            if let TextureTiling::DrmModifier { planes, .. } = &texture.tiling {
                if planes.is_empty() || planes.len() > MAX_PLANES {
                    return Err(WireError::malformed(format!(
                        "plane count {} is not in 1..={MAX_PLANES}",
                        planes.len()
                    )));
                }
                for (i, p) in planes.iter().enumerate() {
                    check_range(&format!("plane {i}"), p.offset, p.size, texture.size)?;
                }
            }
            Ok(())
        }
        ObjectDescription::Semaphore(s) => {
            if s.kind == SemaphoreKind::Timeline && s.handle_kind == SemaphoreHandleKind::SyncFd {
                return Err(WireError::malformed("a timeline semaphore cannot travel as a sync fd (binary only)"));
            }
            Ok(())
        }
        ObjectDescription::Fence(_) => Ok(()),
    }
}

/// The memory an object lives in, where it has one.
pub fn memory_of(d: &ObjectDescription) -> Option<&MemoryDescription> {
    match d {
        ObjectDescription::Memory(m) => Some(m),
        ObjectDescription::Buffer { memory, .. } | ObjectDescription::Texture { memory, .. } => Some(memory),
        ObjectDescription::Semaphore(_) | ObjectDescription::Fence(_) => None,
    }
}

/// Checks that objects naming one allocation id describe that allocation identically: equal ids
/// mean one allocation, which has one size, memory type, handle kind and exporter. `held` are
/// descriptions already accepted (a server's stored objects), `new` the ones to add; an
/// inconsistency is `malformed`, naming both objects.
pub fn check_consistent<'a>(
    held: impl IntoIterator<Item = &'a NamedDescription>,
    new: &'a [NamedDescription],
) -> Result<(), WireError> {
    let mut seen: Vec<(&'a NamedDescription, &'a MemoryDescription)> = Vec::new();
    for o in held {
        if let Some(m) = memory_of(&o.description).filter(|m| m.allocation_id.is_some()) {
            seen.push((o, m));
        }
    }
    for o in new {
        let Some(m) = memory_of(&o.description).filter(|m| m.allocation_id.is_some()) else { continue };
        if let Some((first, fm)) = seen.iter().find(|(_, fm)| fm.allocation_id == m.allocation_id) {
            if *fm != m {
                return Err(WireError::malformed(format!(
                    "objects {:?} and {:?} name allocation {} with different descriptions ({} and {} bytes, \
                     memory types {} and {}, {} and {}): one allocation id is one allocation, described once",
                    first.name,
                    o.name,
                    m.allocation_id.map(|a| a.to_string()).unwrap_or_default(),
                    fm.allocation_size,
                    m.allocation_size,
                    fm.memory_type_index,
                    m.memory_type_index,
                    fm.handle_kind,
                    m.handle_kind
                )));
            }
            continue;
        }
        seen.push((o, m));
    }
    Ok(())
}

fn read_objects(r: &mut Reader<'_>, fd_count: usize) -> Result<Vec<NamedDescription>, WireError> {
    let count = r.u16()? as usize;
    r.zeros(2, "object list field")?;
    if count > MAX_FDS {
        return Err(WireError::new(ErrorCode::TooLarge, format!("{count} objects exceed the limit of {MAX_FDS}")));
    }
    if count != fd_count {
        return Err(WireError::new(
            ErrorCode::FdCountMismatch,
            format!("{count} objects need {count} fds but the header announces {fd_count}"),
        ));
    }
    let mut objects: Vec<NamedDescription> = Vec::with_capacity(count);
    for i in 0..count {
        let kind = r.u8()?;
        let name_len = r.u8()? as usize;
        let body_len = r.u16()? as usize;
        let name_bytes = r.take(name_len)?;
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| WireError::malformed(format!("name of object {i} is not UTF-8")))?
            .to_owned();
        check_name(&name, false).map_err(|e| WireError::malformed(format!("object {i}: {}", e.reason)))?;
        if objects.iter().any(|o| o.name == name) {
            return Err(WireError::malformed(format!("object name {name:?} appears twice")));
        }
        let mut body = Reader::new(r.take(body_len)?, "object body");
        let description = read_body(kind, &mut body)
            .map_err(|e| WireError { code: e.code, reason: format!("object {i} ({name:?}): {}", e.reason) })?;
        body.finish()
            .map_err(|e| WireError { code: e.code, reason: format!("object {i} ({name:?}): {}", e.reason) })?;
        validate_description(&description)
            .map_err(|e| WireError { code: e.code, reason: format!("object {i} ({name:?}): {}", e.reason) })?;
        objects.push(NamedDescription { name, description });
    }
    check_consistent([], &objects)?;
    Ok(objects)
}

/// Decodes one datagram. `fds_received` is how many fds came with it; it must equal the header's
/// fd count, and messages with objects must carry exactly one fd per object. Never panics.
pub fn decode(bytes: &[u8], fds_received: usize) -> Result<Message, WireError> {
    let header = decode_header(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != header.payload_len as usize {
        return Err(WireError::malformed(format!(
            "header announces a payload of {} bytes but {} arrived (truncated or padded message)",
            header.payload_len,
            payload.len()
        )));
    }
    if fds_received != header.fd_count as usize {
        return Err(WireError::new(
            ErrorCode::FdCountMismatch,
            format!("header announces {} fds but {fds_received} arrived", header.fd_count),
        ));
    }
    let ty = MessageType::from_u16(header.message_type).ok_or_else(|| unknown_type(header.message_type))?;
    if !matches!(ty, MessageType::Objects | MessageType::Publish) && header.fd_count != 0 {
        return Err(WireError::new(
            ErrorCode::FdCountMismatch,
            format!("a {ty:?} message carries no fds but the header announces {}", header.fd_count),
        ));
    }
    let mut r = Reader::new(payload, "payload");
    let message = match ty {
        MessageType::Get => {
            let len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| WireError::malformed("requested name is not UTF-8"))?
                .to_owned();
            check_name(&name, true)?;
            Message::Get { name }
        }
        MessageType::Objects => Message::Objects(read_objects(&mut r, header.fd_count as usize)?),
        MessageType::Publish => Message::Publish(read_objects(&mut r, header.fd_count as usize)?),
        MessageType::Ok => Message::Ok,
        MessageType::Wait => {
            let timeout_ms = r.u32()?;
            let len = r.u16()? as usize;
            r.zeros(2, "wait field")?;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| WireError::malformed("requested name is not UTF-8"))?
                .to_owned();
            check_name(&name, false).map_err(|e| WireError::malformed(format!("WAIT: {}", e.reason)))?;
            Message::Wait { name, timeout_ms }
        }
        MessageType::Error => {
            let code_value = r.u32()?;
            let code = ErrorCode::from_u32(code_value)
                .ok_or_else(|| WireError::malformed(format!("unknown error code {code_value}")))?;
            let len = r.u16()? as usize;
            r.zeros(2, "error field")?;
            if len > MAX_ERROR_TEXT_LEN {
                return Err(WireError::new(
                    ErrorCode::TooLarge,
                    format!("error text of {len} bytes exceeds {MAX_ERROR_TEXT_LEN}"),
                ));
            }
            let text = std::str::from_utf8(r.take(len)?)
                .map_err(|_| WireError::malformed("error text is not UTF-8"))?
                .to_owned();
            Message::Error { code, text }
        }
    };
    r.finish()?;
    Ok(message)
}

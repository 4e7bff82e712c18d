//! What each fuzz target asserts, as plain functions over bytes: libFuzzer calls them from
//! `fuzz_targets/` (nightly, `cargo fuzz run`), and the stable test
//! `crates/lava-flow/tests/reliability_fuzz.rs` calls the same functions on the corpus in
//! `fuzz/seeds/` and on seeded mutations of it, so CI exercises them without a nightly toolchain.
//!
//! Every function must never panic except on a broken property (which is the bug to find).
//! Only `lava_flow` (and `serde_json`, which it depends on) is used, so the file compiles in both.

use lava_flow::ipc::wire::{decode, encode, validate_description, Message, NamedDescription, ObjectDescription};
use lava_flow::raw_gpu_handle::{
    BufferDescription, DeviceIdentity, Extent3d, FenceDescription, MemoryDescription, MemoryHandleKind,
    MemoryProperties, PlaneLayout, SemaphoreDescription, TextureDescription, TextureDimension, TextureFormat,
    TextureTiling, TextureUsage, Uuid,
};

/// A target's check.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, each with its check (`fuzz/seeds/<name>/` holds its corpus).
pub const TARGETS: [(&str, Check); 4] = [
    ("decode_message", decode_message),
    ("description_json", description_json),
    ("texture_validate", texture_validate),
    ("uuid_parse", uuid_parse),
];

/// The wire decoder against arbitrary bytes: whatever it accepts must encode back to exactly the
/// bytes it decoded (there is one encoding of each message). The first input byte chooses how many
/// fds "arrived" with the message (0 to 79), so the fd-count checks are exercised too.
pub fn decode_message(data: &[u8]) {
    let Some((&fds, bytes)) = data.split_first() else { return };
    let fds = usize::from(fds % 80);
    if let Ok(message) = decode(bytes, fds) {
        assert_eq!(message.fd_count(), fds, "a decoded message carries the fds that arrived");
        let again = encode(&message).expect("a decoded message encodes");
        assert_eq!(again, bytes, "decode and encode are inverse");
    }
}

/// Parses `data` as `T` with serde_json; what parses must write and read back unchanged.
fn json_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_string(&value).expect("a parsed description serializes");
    let again: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(again, value, "JSON round trip of {text}");
    Some(value)
}

/// Publishes `description` in a wire message if the wire accepts it: then it must encode and
/// decode back to itself.
fn wire_round_trip(description: ObjectDescription) {
    if validate_description(&description).is_err() {
        return;
    }
    let message = Message::Publish(vec![NamedDescription { name: "fuzz".into(), description }]);
    let bytes = encode(&message).unwrap_or_else(|e| panic!("a valid description encodes: {e:?} {message:?}"));
    let back = decode(&bytes, 1).unwrap_or_else(|e| panic!("an encoded description decodes: {e:?} {message:?}"));
    assert_eq!(back, message, "wire round trip");
}

/// The JSON form of every description (how `lava-flow` passes them between processes and prints
/// them): any input is refused or parses to a value that round-trips through JSON, and a parsed
/// memory description the wire accepts round-trips through the wire format too.
pub fn description_json(data: &[u8]) {
    if let Some(m) = json_round_trip::<MemoryDescription>(data) {
        wire_round_trip(ObjectDescription::Memory(m));
    }
    json_round_trip::<BufferDescription>(data);
    if let Some(t) = json_round_trip::<TextureDescription>(data) {
        let _ = t.validate();
    }
    if let Some(s) = json_round_trip::<SemaphoreDescription>(data) {
        wire_round_trip(ObjectDescription::Semaphore(s));
    }
    if let Some(f) = json_round_trip::<FenceDescription>(data) {
        wire_round_trip(ObjectDescription::Fence(f));
    }
    json_round_trip::<DeviceIdentity>(data);
    json_round_trip::<Uuid>(data);
}

/// Reads fixed-width fields from the input, zeros once it runs out.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map(|(f, r)| (*f, r)).unwrap_or((0, &[]));
        self.0 = rest;
        first
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Layout of a texture in the bytes `texture_validate` reads; the seeds are written in it.
pub fn texture_from_bytes(data: &[u8]) -> (TextureDescription, u64) {
    let mut f = Fields(data);
    let format = TextureFormat::ALL[usize::from(f.u8()) % TextureFormat::ALL.len()];
    let dimension = match f.u8() % 5 {
        0 => TextureDimension::D1,
        1 => TextureDimension::D1Array,
        2 => TextureDimension::D2,
        3 => TextureDimension::D2Array,
        _ => TextureDimension::D3,
    };
    let extent = Extent3d { width: f.u32(), height: f.u32(), depth: f.u32() };
    let array_layers = f.u32();
    let tiling = match f.u8() % 3 {
        0 => TextureTiling::Linear { row_pitch: f.u64(), array_pitch: f.u64(), depth_pitch: f.u64() },
        1 => TextureTiling::Optimal,
        _ => {
            let modifier = f.u64();
            let planes = (0..f.u8() % 6).map(|_| PlaneLayout { offset: f.u64(), size: f.u64(), row_pitch: f.u64() });
            TextureTiling::DrmModifier { modifier, planes: planes.collect() }
        }
    };
    let bits = f.u8();
    let usage = TextureUsage {
        sampled: bits & 1 != 0,
        storage: bits & 2 != 0,
        color_attachment: bits & 4 != 0,
        transfer: bits & 8 != 0,
    };
    let texture =
        TextureDescription { format, dimension, extent, array_layers, tiling, usage, offset: f.u64(), size: f.u64() };
    (texture, f.u64())
}

/// The inverse of [`texture_from_bytes`], for writing seeds.
pub fn texture_to_bytes(t: &TextureDescription, allocation_size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let format = TextureFormat::ALL.iter().position(|f| *f == t.format).unwrap_or(0) as u8;
    let dimension = match t.dimension {
        TextureDimension::D1 => 0u8,
        TextureDimension::D1Array => 1,
        TextureDimension::D2 => 2,
        TextureDimension::D2Array => 3,
        TextureDimension::D3 => 4,
    };
    out.extend([format, dimension]);
    for v in [t.extent.width, t.extent.height, t.extent.depth, t.array_layers] {
        out.extend(v.to_le_bytes());
    }
    match &t.tiling {
        TextureTiling::Linear { row_pitch, array_pitch, depth_pitch } => {
            out.push(0);
            for v in [row_pitch, array_pitch, depth_pitch] {
                out.extend(v.to_le_bytes());
            }
        }
        TextureTiling::Optimal => out.push(1),
        TextureTiling::DrmModifier { modifier, planes } => {
            out.push(2);
            out.extend(modifier.to_le_bytes());
            out.push(planes.len() as u8);
            for p in planes {
                for v in [p.offset, p.size, p.row_pitch] {
                    out.extend(v.to_le_bytes());
                }
            }
        }
    }
    let u = t.usage;
    out.push(
        u8::from(u.sampled) | u8::from(u.storage) << 1 | u8::from(u.color_attachment) << 2 | u8::from(u.transfer) << 3,
    );
    for v in [t.offset, t.size, allocation_size] {
        out.extend(v.to_le_bytes());
    }
    out
}

/// `TextureDescription::validate` on every shape the bytes can describe: it never panics, what it
/// accepts has no zero dimension, and the wire format carries what it and the wire's own range
/// checks accept without change.
pub fn texture_validate(data: &[u8]) {
    let (texture, allocation_size) = texture_from_bytes(data);
    if texture.validate().is_ok() {
        let e = texture.extent;
        assert!(e.width > 0 && e.height > 0 && e.depth > 0 && texture.array_layers > 0 && texture.size > 0);
        if let TextureTiling::Linear { row_pitch, .. } = texture.tiling {
            assert!(row_pitch >= u64::from(e.width) * u64::from(texture.format.texel_size()));
        }
    }
    let memory = MemoryDescription {
        handle_kind: MemoryHandleKind::OpaqueFd,
        allocation_size,
        memory_type_index: 0,
        memory_properties: MemoryProperties::DEVICE_LOCAL,
        dedicated: false,
        device: DeviceIdentity::default(),
        allocation_id: None,
    };
    wire_round_trip(ObjectDescription::Texture { memory, texture });
}

/// `Uuid::parse` (device selection on the command line, descriptions): it never panics, and what
/// it accepts is 32 hex digits with dashes, which `Display` shows back in lower case.
pub fn uuid_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(uuid) = Uuid::parse(text) {
        let shown = uuid.to_string();
        assert_eq!(Uuid::parse(&shown), Some(uuid), "{shown} parses back");
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        assert!(digits.chars().all(|c| c.is_ascii_hexdigit()), "{text:?} was accepted but holds non-hex characters");
        assert_eq!(digits.to_ascii_lowercase(), shown.replace('-', ""), "{text:?} parsed as {shown}");
    }
}

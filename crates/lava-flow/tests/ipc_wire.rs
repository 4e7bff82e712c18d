//! The wire format as pure functions: round trips of every description, and decoding that rejects
//! (never panics on) anything else.

use lava_flow::ipc::wire::{
    decode, decode_header, encode, ErrorCode, Message, NamedDescription, ObjectDescription, HEADER_LEN,
    HOST_MEMFD_PROPERTIES, MAX_FDS, MAX_MESSAGE_LEN, MEMORY_BLOCK_LEN,
};
use lava_flow::raw_gpu_handle::{
    AllocationId, BufferDescription, DeviceIdentity, Extent3d, FenceDescription, FenceHandleKind, MemoryDescription,
    MemoryHandleKind, MemoryProperties, PlaneLayout, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
    TextureDescription, TextureDimension, TextureFormat, TextureTiling, TextureUsage, Uuid,
};
use proptest::prelude::*;

fn device() -> impl Strategy<Value = DeviceIdentity> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<Option<[u8; 8]>>()).prop_map(|(d, r, luid)| DeviceIdentity {
        device_uuid: Uuid(d),
        driver_uuid: Uuid(r),
        luid,
    })
}

fn memory(min_size: u64) -> impl Strategy<Value = MemoryDescription> {
    (
        prop_oneof![
            Just(MemoryHandleKind::OpaqueFd),
            Just(MemoryHandleKind::DmaBuf),
            Just(MemoryHandleKind::HostMemfd)
        ],
        min_size.max(1)..=u64::MAX / 2,
        0u32..32,
        any::<u32>(),
        any::<bool>(),
        device(),
        any::<Option<u128>>(),
    )
        .prop_map(|(handle_kind, allocation_size, memory_type_index, props, dedicated, device, id)| {
            let host = handle_kind == MemoryHandleKind::HostMemfd;
            MemoryDescription {
                handle_kind,
                allocation_size,
                // Host memory names no device and no memory type (docs/PROTOCOL.md).
                memory_type_index: if host { 0 } else { memory_type_index },
                memory_properties: if host { HOST_MEMFD_PROPERTIES } else { MemoryProperties(props & 0xF) },
                dedicated,
                device: if host { DeviceIdentity::default() } else { device },
                allocation_id: id.map(AllocationId),
            }
        })
}

fn buffer() -> impl Strategy<Value = ObjectDescription> {
    (memory(1), 0u32..20, any::<u64>(), any::<u64>()).prop_map(|(memory, align_log, off, size)| {
        let alignment = 1u64 << align_log;
        let size = 1 + size % memory.allocation_size;
        let room = memory.allocation_size - size;
        let offset = (off % (room + 1)) / alignment * alignment;
        ObjectDescription::Buffer { memory, buffer: BufferDescription { offset, size, alignment } }
    })
}

fn texture() -> impl Strategy<Value = ObjectDescription> {
    let shape = prop_oneof![
        (1u32..4096).prop_map(|w| (TextureDimension::D1, Extent3d { width: w, height: 1, depth: 1 }, 1)),
        (1u32..4096, 1u32..64).prop_map(|(w, l)| (
            TextureDimension::D1Array,
            Extent3d { width: w, height: 1, depth: 1 },
            l
        )),
        (1u32..4096, 1u32..4096).prop_map(|(w, h)| (
            TextureDimension::D2,
            Extent3d { width: w, height: h, depth: 1 },
            1
        )),
        (1u32..4096, 1u32..4096, 1u32..64).prop_map(|(w, h, l)| (
            TextureDimension::D2Array,
            Extent3d { width: w, height: h, depth: 1 },
            l
        )),
        (1u32..256, 1u32..256, 1u32..256).prop_map(|(w, h, d)| (
            TextureDimension::D3,
            Extent3d { width: w, height: h, depth: d },
            1
        )),
    ];
    (
        memory(1 << 40),
        shape,
        proptest::sample::select(TextureFormat::ALL.to_vec()),
        0u8..3,
        any::<[bool; 4]>(),
        1u64..1 << 30,
        0u64..1 << 30,
        any::<u64>(),
        proptest::collection::vec((0u64..1 << 20, 1u64..1 << 20, any::<u64>()), 1..=4),
    )
        .prop_map(|(memory, (dimension, extent, layers), format, tiling, u, size, offset, modifier, planes)| {
            let row = u64::from(extent.width) * u64::from(format.texel_size());
            // At least the base level's texels, as every real texture holds (validate checks it).
            let packed = row * u64::from(extent.height) * u64::from(extent.depth) * u64::from(layers);
            let mut size = size.max(packed);
            let tiling = match tiling {
                0 => {
                    // Pitches that keep rows, layers and slices apart, and a size that holds them all.
                    let row_pitch = row + offset % 64;
                    let slice = row_pitch * u64::from(extent.height);
                    let (array_pitch, depth_pitch) = (slice + modifier % 99, slice + 7);
                    let end = u64::from(layers - 1) * array_pitch
                        + u64::from(extent.depth - 1) * depth_pitch
                        + u64::from(extent.height - 1) * row_pitch
                        + row;
                    size = size.max(end);
                    TextureTiling::Linear { row_pitch, array_pitch, depth_pitch }
                }
                1 => TextureTiling::Optimal,
                _ => TextureTiling::DrmModifier {
                    modifier,
                    planes: planes
                        .iter()
                        .map(|&(o, s, p)| PlaneLayout {
                            offset: o % size,
                            size: 1 + s % (size - o % size),
                            row_pitch: p,
                        })
                        .collect(),
                },
            };
            ObjectDescription::Texture {
                memory,
                texture: TextureDescription {
                    format,
                    dimension,
                    extent,
                    array_layers: layers,
                    tiling,
                    usage: TextureUsage { sampled: u[0], storage: u[1], color_attachment: u[2], transfer: u[3] },
                    offset,
                    size,
                },
            }
        })
}

fn object() -> impl Strategy<Value = ObjectDescription> {
    prop_oneof![
        memory(1).prop_map(ObjectDescription::Memory),
        buffer(),
        texture(),
        (any::<bool>(), device()).prop_map(|(timeline, device)| ObjectDescription::Semaphore(SemaphoreDescription {
            kind: if timeline { SemaphoreKind::Timeline } else { SemaphoreKind::Binary },
            handle_kind: if timeline { SemaphoreHandleKind::OpaqueFd } else { SemaphoreHandleKind::SyncFd },
            device,
        })),
        (any::<bool>(), device()).prop_map(|(sync, device)| ObjectDescription::Fence(FenceDescription {
            handle_kind: if sync { FenceHandleKind::SyncFd } else { FenceHandleKind::OpaqueFd },
            device,
        })),
    ]
}

fn objects() -> impl Strategy<Value = Vec<NamedDescription>> {
    proptest::collection::vec(("[!-~]{1,60}", object()), 0..12).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (name, mut description))| {
                // Allocation ids unique within the message: one id is one allocation, described once.
                if let ObjectDescription::Memory(m)
                | ObjectDescription::Buffer { memory: m, .. }
                | ObjectDescription::Texture { memory: m, .. } = &mut description
                {
                    m.allocation_id = m.allocation_id.map(|a| AllocationId(a.0 ^ i as u128));
                }
                NamedDescription { name: format!("{i}{name}").chars().take(64).collect(), description }
            })
            .collect()
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        "[!-~]{0,64}".prop_map(|name| Message::Get { name }),
        objects().prop_map(Message::Objects),
        objects().prop_map(Message::Publish),
        Just(Message::Ok),
        ("[!-~]{1,64}", any::<u32>()).prop_map(|(name, timeout_ms)| Message::Wait { name, timeout_ms }),
        (1u32..=9, "\\PC{0,200}").prop_map(|(c, text)| Message::error(ErrorCode::from_u32(c).unwrap(), text)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = encode(&m).expect("valid messages encode");
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        let header = decode_header(&bytes).unwrap();
        prop_assert_eq!(header.fd_count as usize, m.fd_count());
        prop_assert_eq!(header.payload_len as usize, bytes.len() - HEADER_LEN);
        prop_assert_eq!(decode(&bytes, m.fd_count()).expect("own encoding decodes"), m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), fds in 0usize..80) {
        let _ = decode(&bytes, fds);
    }

    #[test]
    fn mutated_messages_never_panic_and_reencode_identically(
        m in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode(&m).unwrap();
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(decoded) = decode(&bytes, m.fd_count()) {
            // Whatever decodes is a valid message that encodes to exactly the bytes decoded.
            prop_assert_eq!(encode(&decoded).unwrap(), bytes);
        }
    }

    #[test]
    fn fd_count_must_match(m in message(), extra in 1usize..5) {
        let bytes = encode(&m).unwrap();
        let e = decode(&bytes, m.fd_count() + extra).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::FdCountMismatch);
        if m.fd_count() > 0 {
            let e = decode(&bytes, m.fd_count() - 1).unwrap_err();
            prop_assert_eq!(e.code, ErrorCode::FdCountMismatch);
        }
    }
}

fn sample_memory() -> MemoryDescription {
    MemoryDescription {
        handle_kind: MemoryHandleKind::OpaqueFd,
        allocation_size: 1 << 20,
        memory_type_index: 2,
        memory_properties: MemoryProperties::DEVICE_LOCAL,
        dedicated: true,
        device: DeviceIdentity { device_uuid: Uuid([0x11; 16]), driver_uuid: Uuid([0x22; 16]), luid: None },
        allocation_id: Some(AllocationId(0x0102_0304)),
    }
}

fn one_memory() -> Vec<u8> {
    encode(&Message::Objects(vec![NamedDescription {
        name: "m".into(),
        description: ObjectDescription::Memory(sample_memory()),
    }]))
    .unwrap()
}

/// Offset of the memory block in `one_memory()`: header, count+reserved, kind/name_len/body_len, name.
const BODY: usize = HEADER_LEN + 4 + 4 + 1;

#[test]
fn layout_matches_the_protocol_document() {
    let b = one_memory();
    assert_eq!(&b[0..4], b"LVFL");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1, "version");
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 2, "OBJECTS");
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize, b.len() - HEADER_LEN);
    assert_eq!(u16::from_le_bytes([b[12], b[13]]), 1, "fd count");
    assert_eq!(&b[14..16], &[0, 0]);
    assert_eq!(&b[16..20], &[1, 0, 0, 0], "object count 1, reserved");
    assert_eq!(&b[20..24], &[1, 1, MEMORY_BLOCK_LEN as u8, 0], "kind memory, name length 1, body length 88");
    assert_eq!(b[24], b'm');
    let m = &b[BODY..];
    assert_eq!(m.len(), MEMORY_BLOCK_LEN);
    assert_eq!(m[0], 1, "opaque-fd");
    assert_eq!(m[1], 0b11, "dedicated and allocation id present");
    assert_eq!(u32::from_le_bytes(m[4..8].try_into().unwrap()), 2, "memory type index");
    assert_eq!(u32::from_le_bytes(m[8..12].try_into().unwrap()), 1, "DEVICE_LOCAL");
    assert_eq!(u64::from_le_bytes(m[16..24].try_into().unwrap()), 1 << 20, "allocation size");
    assert_eq!(u128::from_le_bytes(m[24..40].try_into().unwrap()), 0x0102_0304, "allocation id");
    assert_eq!(m[40], 0, "no LUID");
    assert_eq!(&m[48..64], &[0x11; 16], "device UUID");
    assert_eq!(&m[64..80], &[0x22; 16], "driver UUID");
    assert_eq!(&m[80..88], &[0; 8], "LUID");
}

#[test]
fn each_bad_field_is_rejected_with_its_code() {
    let good = one_memory();
    assert!(decode(&good, 1).is_ok());
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation, ErrorCode)> = vec![
        ("magic", Box::new(|b| b[0] = b'X'), ErrorCode::Malformed),
        ("version", Box::new(|b| b[4] = 2), ErrorCode::UnsupportedVersion),
        ("message type", Box::new(|b| b[6] = 99), ErrorCode::Unexpected),
        ("header reserved", Box::new(|b| b[15] = 1), ErrorCode::Malformed),
        ("payload length too long", Box::new(|b| b[8] += 1), ErrorCode::Malformed),
        (
            "payload length over the limit",
            Box::new(|b| b[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes())),
            ErrorCode::TooLarge,
        ),
        ("fd count over the limit", Box::new(|b| b[12] = MAX_FDS as u8 + 1), ErrorCode::TooLarge),
        ("object kind", Box::new(|b| b[20] = 9), ErrorCode::Malformed),
        ("name byte", Box::new(|b| b[24] = b' '), ErrorCode::Malformed),
        ("body length", Box::new(|b| b[22] = 87), ErrorCode::Malformed),
        ("handle kind", Box::new(|b| b[BODY] = 7), ErrorCode::Malformed),
        ("memory flags", Box::new(|b| b[BODY + 1] |= 0x80), ErrorCode::Malformed),
        ("memory reserved", Box::new(|b| b[BODY + 2] = 1), ErrorCode::Malformed),
        ("memory type index", Box::new(|b| b[BODY + 4] = 32), ErrorCode::Malformed),
        ("memory property bit 0x10", Box::new(|b| b[BODY + 8] |= 0x10), ErrorCode::Malformed),
        ("memory property bit 0x100", Box::new(|b| b[BODY + 9] = 1), ErrorCode::Malformed),
        ("zero allocation size", Box::new(|b| b[BODY + 16..BODY + 24].fill(0)), ErrorCode::Malformed),
        ("allocation id without flag", Box::new(|b| b[BODY + 1] = 1), ErrorCode::Malformed),
        ("device flags", Box::new(|b| b[BODY + 40] = 2), ErrorCode::Malformed),
        ("LUID without flag", Box::new(|b| b[BODY + 80] = 1), ErrorCode::Malformed),
        (
            "trailing byte",
            Box::new(|b| {
                b.push(0);
                let n = u32::from_le_bytes(b[8..12].try_into().unwrap()) + 1;
                b[8..12].copy_from_slice(&n.to_le_bytes());
            }),
            ErrorCode::Malformed,
        ),
        ("object count differs from fd count", Box::new(|b| b[16] = 2), ErrorCode::FdCountMismatch),
    ];
    for (what, mutate, code) in cases {
        let mut b = good.clone();
        mutate(&mut b);
        let fds = if code == ErrorCode::FdCountMismatch { 1 } else { usize::from(b[12]) };
        let e = decode(&b, fds).expect_err(what);
        assert_eq!(e.code, code, "{what}: {e}");
    }
    for len in 0..good.len() {
        assert!(decode(&good[..len], 1).is_err(), "a message cut to {len} bytes decodes");
    }
    assert_eq!(decode(&good, 0).unwrap_err().code, ErrorCode::FdCountMismatch);
    assert_eq!(decode(&good, 2).unwrap_err().code, ErrorCode::FdCountMismatch);
}

#[test]
fn inconsistent_descriptions_are_rejected_both_ways() {
    let m = sample_memory();
    let bad = [
        ObjectDescription::Buffer { memory: m, buffer: BufferDescription { offset: 1 << 20, size: 1, alignment: 1 } },
        ObjectDescription::Buffer { memory: m, buffer: BufferDescription { offset: 0, size: 0, alignment: 1 } },
        ObjectDescription::Buffer { memory: m, buffer: BufferDescription { offset: 3, size: 1, alignment: 4 } },
        ObjectDescription::Buffer { memory: m, buffer: BufferDescription { offset: u64::MAX, size: 2, alignment: 1 } },
        ObjectDescription::Semaphore(SemaphoreDescription {
            kind: SemaphoreKind::Timeline,
            handle_kind: SemaphoreHandleKind::SyncFd,
            device: DeviceIdentity::default(),
        }),
        ObjectDescription::Texture {
            memory: m,
            texture: TextureDescription {
                format: TextureFormat::Rgba8Unorm,
                dimension: TextureDimension::D2,
                extent: Extent3d { width: 16, height: 16, depth: 2 },
                array_layers: 1,
                tiling: TextureTiling::Optimal,
                usage: TextureUsage::default(),
                offset: 0,
                size: 1024,
            },
        },
    ];
    for d in bad {
        let msg = Message::Objects(vec![NamedDescription { name: "x".into(), description: d.clone() }]);
        assert!(encode(&msg).is_err(), "{d:?} encodes");
    }
    let too_many = Message::Objects(
        (0..=MAX_FDS)
            .map(|i| NamedDescription { name: format!("o{i}"), description: ObjectDescription::Memory(m) })
            .collect(),
    );
    assert_eq!(encode(&too_many).unwrap_err().code, ErrorCode::TooLarge);
    let twice = Message::Publish(vec![
        NamedDescription { name: "a".into(), description: ObjectDescription::Memory(m) },
        NamedDescription { name: "a".into(), description: ObjectDescription::Memory(m) },
    ]);
    assert!(encode(&twice).is_err());
}

/// Host memory names no device and no memory type: a description that does is refused by the
/// encoder and the decoder (lava-flow's `--location shared-host` once sent the Vulkan device's).
#[test]
fn host_memory_carries_no_device_and_no_memory_type() {
    let host = MemoryDescription {
        handle_kind: MemoryHandleKind::HostMemfd,
        allocation_size: 1 << 16,
        memory_type_index: 0,
        memory_properties: HOST_MEMFD_PROPERTIES,
        dedicated: false,
        device: DeviceIdentity::default(),
        allocation_id: Some(AllocationId(7)),
    };
    let message = |m: MemoryDescription| {
        Message::Objects(vec![NamedDescription { name: "h".into(), description: ObjectDescription::Memory(m) }])
    };
    let good = encode(&message(host)).unwrap();
    assert_eq!(decode(&good, 1).unwrap(), message(host));
    let named_device = MemoryDescription { device: sample_memory().device, ..host };
    let typed = MemoryDescription { memory_type_index: 3, ..host };
    let device_local = MemoryDescription { memory_properties: MemoryProperties::DEVICE_LOCAL, ..host };
    for (what, bad) in
        [("a device identity", named_device), ("a memory type", typed), ("other properties", device_local)]
    {
        let e = encode(&message(bad)).expect_err(what);
        assert_eq!(e.code, ErrorCode::Malformed, "{what}: {e}");
        // The same bytes, patched into a good message, are refused on receipt.
        let mut bytes = good.clone();
        let m = &mut bytes[BODY..BODY + MEMORY_BLOCK_LEN];
        m[4..8].copy_from_slice(&bad.memory_type_index.to_le_bytes());
        m[8..12].copy_from_slice(&bad.memory_properties.0.to_le_bytes());
        m[48..64].copy_from_slice(&bad.device.device_uuid.0);
        m[64..80].copy_from_slice(&bad.device.driver_uuid.0);
        let e = decode(&bytes, 1).expect_err(what);
        assert_eq!(e.code, ErrorCode::Malformed, "{what}: {e}");
        assert!(e.reason.contains("host"), "{what}: {e}");
    }
}

/// Two records of one allocation id must describe one allocation: different sizes (or types, or
/// handle kinds) are an inconsistent description, refused when encoding and when decoding.
#[test]
fn one_allocation_id_with_two_descriptions_is_malformed() {
    let m = MemoryDescription { dedicated: false, ..sample_memory() };
    let other_id = AllocationId(0x0a0b_0c0d_0e0f);
    let buffer = |memory, offset| ObjectDescription::Buffer {
        memory,
        buffer: BufferDescription { offset, size: 4096, alignment: 256 },
    };
    let two = |second: MemoryDescription| {
        Message::Publish(vec![
            NamedDescription { name: "a".into(), description: buffer(m, 0) },
            NamedDescription { name: "b".into(), description: buffer(second, 4096) },
        ])
    };
    // The same allocation twice, described alike: fine.
    assert!(decode(&encode(&two(m)).unwrap(), 2).is_ok());
    for (what, second) in [
        ("a different size", MemoryDescription { allocation_size: 2 << 20, ..m }),
        ("a different memory type", MemoryDescription { memory_type_index: 5, ..m }),
        ("a different handle kind", MemoryDescription { handle_kind: MemoryHandleKind::DmaBuf, ..m }),
    ] {
        let e = encode(&two(second)).expect_err(what);
        assert_eq!(e.code, ErrorCode::Malformed, "{what}: {e}");
        // Encoded under another id, then given the first object's id: the decoder refuses it.
        let mut bytes = encode(&two(MemoryDescription { allocation_id: Some(other_id), ..second })).unwrap();
        let at = bytes.windows(16).rposition(|w| w == other_id.0.to_le_bytes()).unwrap();
        bytes[at..at + 16].copy_from_slice(&m.allocation_id.unwrap().0.to_le_bytes());
        let e = decode(&bytes, 2).expect_err(what);
        assert_eq!(e.code, ErrorCode::Malformed, "{what}: {e}");
        assert!(e.reason.contains("\"a\"") && e.reason.contains("\"b\""), "names both objects: {e}");
    }
}

/// A linear texture's rows (and layers, and slices) must fit in its size.
#[test]
fn a_linear_texture_larger_than_its_size_is_malformed() {
    let texture = |dimension, extent: Extent3d, layers, tiling, size| ObjectDescription::Texture {
        memory: MemoryDescription { allocation_size: 1 << 30, dedicated: false, ..sample_memory() },
        texture: TextureDescription {
            format: TextureFormat::Rgba8Unorm,
            dimension,
            extent,
            array_layers: layers,
            tiling,
            usage: TextureUsage::default(),
            offset: 0,
            size,
        },
    };
    let linear = |row_pitch, array_pitch, depth_pitch| TextureTiling::Linear { row_pitch, array_pitch, depth_pitch };
    let d2 = Extent3d { width: 64, height: 32, depth: 1 };
    // 31 rows of 512 bytes, then one row of 64 texels (256 bytes).
    let fits = 512 * 31 + 256;
    let cases = [
        ("2D", texture(TextureDimension::D2, d2, 1, linear(512, 0, 0), fits), true),
        ("2D one byte short", texture(TextureDimension::D2, d2, 1, linear(512, 0, 0), fits - 1), false),
        ("2D array", texture(TextureDimension::D2Array, d2, 3, linear(512, 16384, 0), 2 * 16384 + fits), true),
        ("2D array short", texture(TextureDimension::D2Array, d2, 3, linear(512, 16384, 0), 16384 + fits), false),
        (
            "3D",
            texture(TextureDimension::D3, Extent3d { depth: 4, ..d2 }, 1, linear(512, 0, 16384), 3 * 16384 + fits),
            true,
        ),
        (
            "3D short",
            texture(TextureDimension::D3, Extent3d { depth: 4, ..d2 }, 1, linear(512, 0, 16384), 2 * 16384 + fits),
            false,
        ),
        ("huge pitch", texture(TextureDimension::D2, d2, 1, linear(u64::MAX / 2, 0, 0), fits), false),
    ];
    for (what, description, ok) in cases {
        let message = Message::Objects(vec![NamedDescription { name: "t".into(), description }]);
        match encode(&message) {
            Ok(bytes) => {
                assert!(ok, "{what} encodes");
                assert_eq!(decode(&bytes, 1).unwrap(), message, "{what}");
            }
            Err(e) => {
                assert!(!ok, "{what}: {e}");
                assert_eq!(e.code, ErrorCode::Malformed, "{what}: {e}");
            }
        }
    }
}

/// `WAIT` as docs/PROTOCOL.md writes it: timeout (u32 ms), name length (u16), reserved (u16), name.
#[test]
fn wait_layout_matches_the_protocol_document() {
    let bytes = encode(&Message::Wait { name: "frames".into(), timeout_ms: 2500 }).unwrap();
    assert_eq!(
        bytes,
        [&b"LVFL"[..], &[1, 0, 6, 0, 14, 0, 0, 0, 0, 0, 0, 0], &2500u32.to_le_bytes(), &[6, 0, 0, 0], b"frames"]
            .concat()
    );
    assert_eq!(decode(&bytes, 0).unwrap(), Message::Wait { name: "frames".into(), timeout_ms: 2500 });
    let mut reserved = bytes.clone();
    reserved[22] = 1;
    assert_eq!(decode(&reserved, 0).unwrap_err().code, ErrorCode::Malformed);
    assert_eq!(decode(&bytes, 1).unwrap_err().code, ErrorCode::FdCountMismatch, "a WAIT carries no fds");
    assert!(encode(&Message::Wait { name: String::new(), timeout_ms: 0 }).is_err(), "WAIT needs a name");
    let empty = [&bytes[..8], &8u32.to_le_bytes(), &bytes[12..20], &[0, 0, 0, 0]].concat();
    assert_eq!(decode(&empty, 0).unwrap_err().code, ErrorCode::Malformed, "an empty name");
}

/// One valid message of every type, as fuzz seeds: the first byte is the fd count.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let memory = sample_memory();
    let messages = [
        ("get", Message::Get { name: "frames".into() }),
        ("get-all", Message::Get { name: String::new() }),
        ("ok", Message::Ok),
        ("wait", Message::Wait { name: "frames".into(), timeout_ms: 1000 }),
        ("error", Message::error(ErrorCode::NotFound, "no object is named \"x\"")),
        (
            "objects",
            Message::Objects(vec![
                NamedDescription { name: "m".into(), description: ObjectDescription::Memory(memory) },
                NamedDescription {
                    name: "b".into(),
                    description: ObjectDescription::Buffer {
                        memory,
                        buffer: BufferDescription { offset: 256, size: 1024, alignment: 256 },
                    },
                },
                NamedDescription {
                    name: "s".into(),
                    description: ObjectDescription::Semaphore(SemaphoreDescription {
                        kind: SemaphoreKind::Timeline,
                        handle_kind: SemaphoreHandleKind::OpaqueFd,
                        device: memory.device,
                    }),
                },
            ]),
        ),
        (
            "publish-texture",
            Message::Publish(vec![NamedDescription {
                name: "t".into(),
                description: ObjectDescription::Texture {
                    memory,
                    texture: TextureDescription {
                        format: TextureFormat::Rgba8Unorm,
                        dimension: TextureDimension::D2,
                        extent: Extent3d { width: 64, height: 64, depth: 1 },
                        array_layers: 1,
                        tiling: TextureTiling::DrmModifier {
                            modifier: 0,
                            planes: vec![PlaneLayout { offset: 0, size: 16384, row_pitch: 256 }],
                        },
                        usage: TextureUsage { sampled: true, ..Default::default() },
                        offset: 0,
                        size: 16384,
                    },
                },
            }]),
        ),
    ];
    messages
        .into_iter()
        .map(|(name, m)| {
            let mut bytes = vec![m.fd_count() as u8];
            bytes.extend(encode(&m).unwrap());
            (name.to_owned(), bytes)
        })
        .collect()
}

#[test]
fn fuzz_seeds_are_the_encoders_output() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/decode_message");
    for (name, bytes) in seeds() {
        let path = dir.join(&name);
        if std::env::var_os("LAVA_FLOW_WRITE_SEEDS").is_some() {
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(stored, bytes, "{name}: rerun with LAVA_FLOW_WRITE_SEEDS=1 after changing the format");
        let (fds, message) = stored.split_first().unwrap();
        assert!(decode(message, usize::from(*fds)).is_ok(), "{name}");
    }
}

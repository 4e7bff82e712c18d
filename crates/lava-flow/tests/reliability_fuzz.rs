//! The fuzz targets' checks (`fuzz/src/checks.rs`) on stable Rust: every corpus file in
//! `fuzz/seeds/<target>/`, then seeded random mutations of them (bit flips, byte changes,
//! insertions, deletions, splices, interesting integers), so CI exercises the decoders and
//! description parsers without nightly or cargo-fuzz. `cargo xtask test` runs libFuzzer itself
//! where `cargo +nightly fuzz` is installed, and this replay otherwise (it always runs here).
//!
//! `LAVA_FLOW_WRITE_SEEDS=1` rewrites the seeds of the description targets from the descriptions
//! below (the wire seeds come from `tests/ipc_wire.rs`).

#[path = "../../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use lava_flow::raw_gpu_handle::{
    AllocationId, BufferDescription, DeviceIdentity, Extent3d, FenceDescription, FenceHandleKind, MemoryDescription,
    MemoryHandleKind, MemoryProperties, PlaneLayout, SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
    TextureDescription, TextureDimension, TextureFormat, TextureTiling, TextureUsage, Uuid,
};

/// Mutations per target after the corpus.
const MUTATIONS: usize = 4000;

/// `fuzz/seeds/<target>` of the source tree the test was built from, or of the working directory
/// (the GPU machine runs the packed tests from a copy of the project's root).
fn seeds_dir(target: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    let here = Path::new("fuzz/seeds").join(target);
    if !built.exists() && here.exists() {
        here
    } else {
        built
    }
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(seeds_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/seeds/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// xorshift64*: the same mutations on every run, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 10] = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x1_0000, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            2 => out.insert(at, rng.next() as u8),
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(out.len() - 1)..end);
            }
            4 => {
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                for (k, b) in value[..width].iter().enumerate() {
                    match out.get_mut(at + k) {
                        Some(slot) => *slot = *b,
                        None => out.push(*b),
                    }
                }
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from) + 1;
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/seeds/{target} is empty");
    for (name, bytes) in &files {
        let outcome = std::panic::catch_unwind(|| check(bytes));
        assert!(outcome.is_ok(), "{target}: corpus file {name} breaks the check");
    }
    let mut rng = Rng(0x5eed_0000 ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 8);
    for i in 0..MUTATIONS {
        let (_, base) = &files[rng.below(files.len())];
        let (_, other) = &files[rng.below(files.len())];
        let input = mutate(&mut rng, base, other);
        if std::panic::catch_unwind(|| check(&input)).is_err() {
            panic!("{target}: mutation {i} breaks the check; input (hex): {}", hex(&input));
        }
    }
    println!("fuzz replay: {target}: {} corpus files and {MUTATIONS} seeded mutations passed", files.len());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn corpus_and_seeded_mutations_pass_every_fuzz_check() {
    if std::env::var_os("LAVA_FLOW_WRITE_SEEDS").is_some() {
        write_seeds();
    }
    println!("fuzz mode: stable replay of fuzz/seeds plus {MUTATIONS} seeded mutations per target (no libFuzzer)");
    for (target, check) in checks::TARGETS {
        replay(target, check);
    }
}

#[test]
fn the_checks_catch_what_they_claim_to() {
    // A property that holds on good input, and a broken one, so the replay above is not vacuous.
    let good = std::fs::read(seeds_dir("uuid_parse").join("canonical.txt")).unwrap();
    checks::uuid_parse(&good);
    assert!(lava_flow::raw_gpu_handle::Uuid::parse(std::str::from_utf8(&good).unwrap().trim()).is_some());
    // A texture the seeds describe comes back from the bytes unchanged.
    for (t, size) in textures() {
        assert_eq!(checks::texture_from_bytes(&checks::texture_to_bytes(&t, size)), (t, size));
    }
    // Every wire seed decodes (the replay above would pass vacuously on seeds that do not).
    for (name, bytes) in corpus("decode_message") {
        let (fds, rest) = bytes.split_first().unwrap();
        assert!(lava_flow::ipc::wire::decode(rest, usize::from(*fds)).is_ok(), "seed {name} does not decode");
    }
    // Every JSON seed parses as some description.
    for (name, bytes) in corpus("description_json") {
        let parses = serde_json::from_slice::<MemoryDescription>(&bytes).is_ok()
            || serde_json::from_slice::<BufferDescription>(&bytes).is_ok()
            || serde_json::from_slice::<TextureDescription>(&bytes).is_ok()
            || serde_json::from_slice::<SemaphoreDescription>(&bytes).is_ok()
            || serde_json::from_slice::<FenceDescription>(&bytes).is_ok()
            || serde_json::from_slice::<DeviceIdentity>(&bytes).is_ok();
        assert!(parses, "seed {name} parses as no description");
    }
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        device_uuid: Uuid::parse("6d657361-3232-2e33-2e36-000000000000").unwrap(),
        driver_uuid: Uuid::parse("c7b9e2f1-0a4d-4f7e-9c3b-5d2a8e1f6b40").unwrap(),
        luid: None,
    }
}

fn memory(size: u64, dedicated: bool) -> MemoryDescription {
    MemoryDescription {
        handle_kind: MemoryHandleKind::OpaqueFd,
        allocation_size: size,
        memory_type_index: 0,
        memory_properties: MemoryProperties::DEVICE_LOCAL | MemoryProperties::HOST_VISIBLE,
        dedicated,
        device: identity(),
        allocation_id: Some(AllocationId(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
    }
}

fn textures() -> Vec<(TextureDescription, u64)> {
    let usage = TextureUsage { sampled: true, storage: true, color_attachment: false, transfer: true };
    let d2 = |format, w, h, tiling, size| TextureDescription {
        format,
        dimension: TextureDimension::D2,
        extent: Extent3d { width: w, height: h, depth: 1 },
        array_layers: 1,
        tiling,
        usage,
        offset: 0,
        size,
    };
    vec![
        (d2(TextureFormat::Rgba8Unorm, 256, 256, TextureTiling::Optimal, 262_144), 262_144),
        (
            d2(
                TextureFormat::R32Float,
                100,
                30,
                TextureTiling::Linear { row_pitch: 512, array_pitch: 0, depth_pitch: 0 },
                15_360,
            ),
            65_536,
        ),
        (
            d2(
                TextureFormat::Rgba8Unorm,
                64,
                64,
                TextureTiling::DrmModifier {
                    modifier: 0,
                    planes: vec![PlaneLayout { offset: 0, size: 16_384, row_pitch: 256 }],
                },
                16_384,
            ),
            16_384,
        ),
        (
            TextureDescription {
                format: TextureFormat::R32Float,
                dimension: TextureDimension::D2Array,
                extent: Extent3d { width: 128, height: 128, depth: 1 },
                array_layers: 4,
                tiling: TextureTiling::Optimal,
                usage,
                offset: 4096,
                size: 262_144,
            },
            266_240,
        ),
        (
            TextureDescription {
                format: TextureFormat::Rgba16Float,
                dimension: TextureDimension::D3,
                extent: Extent3d { width: 64, height: 64, depth: 8 },
                array_layers: 1,
                tiling: TextureTiling::Optimal,
                usage,
                offset: 0,
                size: 262_144,
            },
            262_144,
        ),
    ]
}

fn write_seeds() {
    let write = |target: &str, name: &str, bytes: Vec<u8>| {
        let dir = seeds_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    write("description_json", "memory.json", json(&memory(1 << 20, false)));
    write("description_json", "memory-dedicated.json", json(&memory(64 << 20, true)));
    let mut host = memory(102_400, false);
    host.handle_kind = MemoryHandleKind::HostMemfd;
    host.device = DeviceIdentity::default();
    host.allocation_id = None;
    write("description_json", "memory-host.json", json(&host));
    write("description_json", "buffer.json", json(&BufferDescription { offset: 4096, size: 65_536, alignment: 256 }));
    for (i, (t, _)) in textures().iter().enumerate() {
        write("description_json", &format!("texture-{i}.json"), json(t));
    }
    let semaphore = SemaphoreDescription {
        kind: SemaphoreKind::Timeline,
        handle_kind: SemaphoreHandleKind::OpaqueFd,
        device: identity(),
    };
    write("description_json", "semaphore.json", json(&semaphore));
    let fence = FenceDescription { handle_kind: FenceHandleKind::SyncFd, device: identity() };
    write("description_json", "fence.json", json(&fence));
    write("description_json", "identity.json", json(&identity()));
    for (i, (t, size)) in textures().iter().enumerate() {
        write("texture_validate", &format!("texture-{i}.bin"), checks::texture_to_bytes(t, *size));
    }
    write("uuid_parse", "canonical.txt", identity().device_uuid.to_string().into_bytes());
    write("uuid_parse", "no-dashes.txt", identity().driver_uuid.to_string().replace('-', "").into_bytes());
    write("uuid_parse", "upper.txt", identity().driver_uuid.to_string().to_uppercase().into_bytes());
    write("uuid_parse", "nil.txt", Uuid::NIL.to_string().into_bytes());
}

/// Pretty JSON of a description, for the seeds.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap()
}

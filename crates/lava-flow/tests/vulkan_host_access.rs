//! Host access to buffers: a safe `&[u8]`/`&mut [u8]` only over memory that nobody else can
//! reach, copies for shared memory, and the `unsafe` map under its contract. What must not
//! compile is in the `compile_fail` examples of the rustdoc of `Buffer` and `SharedHostMemory`.

mod common;

use std::sync::Arc;

use common::{pattern, two_devices, vulkan};
use lava_flow::vulkan::MemoryKind;
use lava_flow::{Buffer, BufferOptions, Error};

fn refused_as_shared(buffer: &mut Buffer, what: &str) {
    assert!(buffer.is_shared(), "{what}: counted as shared");
    match buffer.map() {
        Ok(_) => panic!("{what}: a safe slice over memory another device or process may write"),
        Err(e) => {
            assert!(matches!(e, Error::InvalidArgument { .. }), "{what}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("map_unchecked") && text.contains("read"),
                "{what}: the error says what to do: {text}"
            );
        }
    }
}

#[test]
fn only_memory_nobody_else_reaches_maps_as_a_safe_slice() {
    let Some((a, b)) = two_devices() else { return };
    let private = BufferOptions::new(4096).memory(MemoryKind::HostVisible).export(None);
    let mut buffer = Buffer::new(&a, &private).unwrap();
    assert!(!buffer.is_shared(), "a private buffer with its own allocation");
    buffer.map().unwrap().as_mut_slice()[..4].copy_from_slice(b"lava");

    // A second holder of its memory (another Buffer could be bound to it): no safe slice.
    let extra = Arc::clone(buffer.memory());
    refused_as_shared(&mut buffer, "a buffer whose memory has another holder");
    let weak = Arc::downgrade(&extra);
    drop(extra);
    refused_as_shared(&mut buffer, "a buffer whose memory has a weak reference");
    drop(weak);
    assert_eq!(&buffer.map().unwrap().as_slice()[..4], b"lava", "private again once the others let go");

    // Exportable memory may have been exported, so another device or process may write it.
    let mut exportable = Buffer::new(&a, &BufferOptions::new(4096).memory(MemoryKind::HostVisible)).unwrap();
    refused_as_shared(&mut exportable, "an exportable buffer");

    // An import: its exporter writes the same bytes.
    let mut imported = Buffer::import(&b, exportable.export_fd().unwrap()).unwrap();
    refused_as_shared(&mut imported, "an imported buffer");

    // Shared host memory: any process may map the memfd.
    match Buffer::new(&a, &BufferOptions::new(4096).memory(MemoryKind::SharedHost)) {
        Ok(mut host) => refused_as_shared(&mut host, "shared host memory"),
        Err(e) if e.is_unavailable() => println!("no shared host memory here ({e}); the other cases ran"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn copies_cross_between_an_export_and_its_import() {
    let Some((a, b)) = two_devices() else { return };
    let mut exporter = Buffer::new(&a, &BufferOptions::new(65536)).unwrap();
    let mut importer = Buffer::import(&b, exporter.export_fd().unwrap()).unwrap();
    let data = pattern(65536, 41);
    exporter.write(0, &data).unwrap();
    assert_eq!(importer.read(0, 65536).unwrap(), data);

    // Odd offsets and lengths, into an unaligned destination.
    let reply = pattern(4099, 42);
    importer.write(13, &reply).unwrap();
    let mut out = vec![0u8; 4099 + 5];
    exporter.read_into(13, &mut out[5..]).unwrap();
    assert_eq!(&out[5..], &reply[..]);
    assert_eq!(exporter.read(0, 13).unwrap(), &data[..13], "bytes before the write are untouched");
    assert_eq!(exporter.read(13 + 4099, 7).unwrap(), &data[13 + 4099..13 + 4099 + 7], "and after it");

    // Ranges outside the buffer are refused before anything is touched.
    for e in [
        exporter.read(65530, 7).unwrap_err(),
        exporter.read_into(u64::MAX, &mut [0u8; 2]).unwrap_err(),
        exporter.write(65536, &[1]).unwrap_err(),
    ] {
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("65536"), "{e}");
    }
    assert!(exporter.read(65536, 0).unwrap().is_empty(), "an empty read at the end is fine");
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
}

#[test]
fn map_unchecked_sees_what_the_other_side_wrote_once_it_is_done() {
    let Some((a, b)) = two_devices() else { return };
    let mut exporter = Buffer::new(&a, &BufferOptions::new(8192).memory(MemoryKind::HostVisible)).unwrap();
    let importer = Buffer::import(&b, exporter.export_fd().unwrap()).unwrap();
    if !importer.memory().is_host_visible() {
        return lava_flow_diag::testing::skip("vulkan", "the imported memory type is not host-visible on this driver");
    }
    importer.fill(0x0102_0304).unwrap();
    {
        // SAFETY: map_unchecked's contract holds: the importer's fill has completed (`fill` waits), and
        // nothing else writes the allocation while the guard lives: the importer is idle and no other
        // process has the memory.
        let mut view = unsafe { exporter.map_unchecked() }.unwrap();
        assert!(view.as_slice().chunks(4).all(|c| c == 0x0102_0304u32.to_ne_bytes()), "the fill is seen");
        view.as_mut_slice()[..8].copy_from_slice(b"lavaflow");
    }
    assert_eq!(importer.read(0, 8).unwrap(), b"lavaflow", "the guard's writes reach the other device");
    a.check_deferred().unwrap();
}

#[test]
fn threads_read_one_buffer_at_once() {
    let Some(ctx) = vulkan() else { return };
    let mut buffer = Buffer::new(&ctx, &BufferOptions::new(1 << 20)).unwrap();
    let data = pattern(1 << 20, 5);
    buffer.write(0, &data).unwrap();
    // Reading needs only `&Buffer`: eight threads copy out at once.
    let buffer = &buffer;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let data = &data;
            s.spawn(move || {
                for round in 0..8u64 {
                    let offset = (t * 8 + round) * 4096 + t;
                    assert_eq!(buffer.read(offset, 4096).unwrap(), &data[offset as usize..][..4096]);
                }
            });
        }
    });
}

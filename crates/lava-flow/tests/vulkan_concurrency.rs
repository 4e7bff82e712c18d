//! The allocator and importers used from 8 threads at once, every thread checking its own data.

mod common;

use std::sync::Arc;

use common::{pattern, two_devices};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, MemoryAllocator};

#[test]
fn eight_threads_allocate_export_import_and_check() {
    let Some((a, b)) = two_devices() else { return };
    let allocator = Arc::new(MemoryAllocator::with_context(a));
    let baseline = lava_flow_diag::testing::open_fd_count();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let allocator = Arc::clone(&allocator);
            let b = b.clone();
            std::thread::spawn(move || {
                for round in 0..12u32 {
                    let size = 4096 * (1 + (t + round) as usize % 7);
                    let seed = t * 1000 + round;
                    let mut buffer = allocator.allocate_buffer(0, &BufferOptions::new(size as u64)).unwrap();
                    buffer.write(0, &pattern(size, seed)).unwrap();
                    let imported = Buffer::import(&b, buffer.export_fd().unwrap()).unwrap();
                    assert_eq!(imported.read(0, size as u64).unwrap(), pattern(size, seed), "thread {t} round {round}");
                    if round % 4 == 0 {
                        let options = ImageOptions::d2(lava_flow::raw_gpu_handle::TextureFormat::R32Uint, 16 + t, 8);
                        let image = allocator.allocate_image(0, &options).unwrap();
                        let data = pattern(image.packed_size() as usize, seed);
                        image.upload(&data).unwrap();
                        let imported = Image::import(&b, image.export_fd().unwrap()).unwrap();
                        assert_eq!(imported.download().unwrap(), data, "thread {t} image round {round}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker thread failed");
    }
    assert_eq!(lava_flow_diag::testing::open_fd_count(), baseline, "no fd left behind by the workers");
}

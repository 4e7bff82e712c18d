//! Eight threads (or processes) at once on one allocator, one importer or one server, every one
//! checking its own data both ways, and the process's fds back where they were afterwards.
//!
//! - the allocator: pooled and dedicated buffers, shared host memory and images, imported on a
//!   second device;
//! - each importer (GL here on llvmpipe; CUDA and OpenCL on the GPU machine) shared by 8 threads;
//! - the ipc server: 8 client processes at once against one live server, each fetching and
//!   importing what it serves and publishing its own memory back.
#![cfg(all(feature = "cuda", feature = "gl", feature = "opencl"))]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{pattern, two_devices};
use lava_flow::gl::GlContext;
use lava_flow::ipc::{shm, Client, NamedObject, Server, ServerConfig, SharedObject};
use lava_flow::raw_gpu_handle::ExportedMemory;
use lava_flow::raw_gpu_handle::TextureFormat;
use lava_flow::vulkan::{MemoryKind, MemoryLocation};
use lava_flow::{Buffer, BufferOptions, Image, ImageOptions, MemoryAllocator, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

const THREADS: u32 = 8;

/// Runs `work(thread)` on 8 threads that start together; a failing thread fails the test with its
/// message.
fn on_eight_threads(work: impl Fn(u32) + Send + Sync + 'static) {
    let work = Arc::new(work);
    let start = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (work, start) = (Arc::clone(&work), Arc::clone(&start));
            std::thread::Builder::new()
                .name(format!("worker-{t}"))
                .spawn(move || {
                    start.wait();
                    work(t)
                })
                .unwrap()
        })
        .collect();
    let failed: Vec<String> = handles
        .into_iter()
        .enumerate()
        .filter_map(|(t, h)| h.join().err().map(|e| format!("thread {t}: {}", panic_text(&e))))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

#[test]
fn allocator_pooled_dedicated_host_and_images_from_eight_threads() {
    let Some((a, b)) = two_devices() else { return };
    let allocator = Arc::new(MemoryAllocator::with_context(a.clone()));
    let shared_host = a.extensions().external_memory_host;
    // Warm up (first imports open driver files), then the baseline.
    let warm = allocator.allocate(4096, MemoryLocation::GpuVulkan { device_id: 0 }).unwrap();
    drop(Buffer::import(&b, warm.export_fd().unwrap()).unwrap());
    drop(warm);
    let baseline = open_fd_count();
    let (alloc, importer) = (Arc::clone(&allocator), b.clone());
    on_eight_threads(move |t| {
        for round in 0..10u32 {
            let seed = t * 1000 + round;
            // Small buffers come from pool blocks, large ones get their own allocation.
            let size = if round % 3 == 2 { (2 << 20) + 4096 * t as u64 } else { 4096 * (1 + (t + round) as u64 % 7) };
            let kind = match round % 4 {
                1 => MemoryKind::HostVisible,
                3 if shared_host => MemoryKind::SharedHost,
                _ => MemoryKind::DeviceLocal,
            };
            let mut buffer = alloc.allocate_buffer(0, &BufferOptions::new(size).memory(kind)).unwrap();
            let data = pattern(size as usize, seed);
            buffer.write(0, &data).unwrap();
            let mut imported = Buffer::import(&importer, buffer.export_fd().unwrap()).unwrap();
            assert_eq!(imported.read(0, size).unwrap(), data, "thread {t} round {round}: {kind:?} {size} bytes");
            let back = pattern(size as usize, seed + 7);
            imported.write(0, &back).unwrap();
            assert_eq!(buffer.read(0, size).unwrap(), back, "thread {t} round {round}: written back");
            if round % 5 == 0 {
                let options = ImageOptions::d2(TextureFormat::Rgba8Unorm, 32 + t, 16);
                let image = alloc.allocate_image(0, &options).unwrap();
                let texels = pattern(image.packed_size() as usize, seed);
                image.upload(&texels).unwrap();
                let imported = Image::import(&importer, image.export_fd().unwrap()).unwrap();
                assert_eq!(imported.download().unwrap(), texels, "thread {t} image round {round}");
            }
        }
    });
    allocator.pool().trim();
    drop(allocator);
    a.check_deferred().unwrap();
    b.check_deferred().unwrap();
    assert_eq!(open_fd_count(), baseline, "fds of the 8 workers were all closed");
}

#[test]
fn one_allocation_imported_by_eight_threads_at_once() {
    // Every export of one allocation is a duplicate of one fd, so the exports share one open file
    // description (and its file offset). Software drivers read a header from the start of the
    // memfd on import; imports at once of such duplicates must not disturb each other.
    let Some((a, b)) = two_devices() else { return };
    let size = 1u64 << 20;
    let mut buffer = Buffer::new(&a, &BufferOptions::new(size)).unwrap();
    buffer.write(0, &pattern(size as usize, 3)).unwrap();
    let buffer = Arc::new(buffer);
    drop(Buffer::import(&b, buffer.export_fd().unwrap()).unwrap());
    let baseline = open_fd_count();
    let (exporter, importer) = (Arc::clone(&buffer), b.clone());
    on_eight_threads(move |t| {
        for round in 0..30 {
            let imported = Buffer::import(&importer, exporter.export_fd().unwrap())
                .unwrap_or_else(|e| panic!("thread {t} round {round}: {e}"));
            assert_eq!(imported.read(0, 4096).unwrap(), &pattern(size as usize, 3)[..4096], "thread {t} round {round}");
        }
    });
    b.check_deferred().unwrap();
    assert_eq!(open_fd_count(), baseline, "every import's fd was closed");
}

/// One exporter buffer per call, with the slack llvmpipe's GL needs.
fn gl_exportable(ctx: &VulkanContext, size: u64) -> Buffer {
    Buffer::new(ctx, &BufferOptions::new(size).for_gl()).unwrap()
}

#[test]
fn one_gl_context_imports_from_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(gl) = testing::or_skip("gl", GlContext::for_identity(&vk.identity())) else { return };
    if !gl.info().memory_object_fd {
        return testing::skip("gl", format!("{} lacks GL_EXT_memory_object_fd", gl.info().renderer));
    }
    let warm = gl_exportable(&vk, 4096);
    drop(gl.import_buffer(warm.export_fd().unwrap()).unwrap());
    let baseline = open_fd_count();
    let (vk2, gl2) = (vk.clone(), gl.clone());
    on_eight_threads(move |t| {
        for round in 0..6u32 {
            let size = 16384 * (1 + (t + round) as u64 % 4);
            let mut buffer = gl_exportable(&vk2, size);
            let data = pattern(size as usize, t * 100 + round);
            buffer.write(0, &data).unwrap();
            let imported = gl2.import_buffer(buffer.export_fd().unwrap()).unwrap();
            assert_eq!(imported.read(0, size as usize).unwrap(), data, "thread {t} round {round}: GL read");
            let back = pattern(size as usize, t * 100 + round + 50);
            imported.write(0, &back).unwrap();
            gl2.finish().unwrap();
            assert_eq!(buffer.read(0, size).unwrap(), back, "thread {t} round {round}: Vulkan sees GL's write");
        }
    });
    gl.check_deferred().unwrap();
    assert_eq!(open_fd_count(), baseline, "fds of the GL imports were all closed");
}

#[test]
fn one_cuda_device_imports_from_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(cuda) = testing::or_skip("cuda", lava_flow::cuda::CudaDevice::for_identity(&vk.identity())) else {
        return;
    };
    let warm = Buffer::new(&vk, &BufferOptions::new(1 << 16)).unwrap();
    drop(cuda.import_buffer(warm.export_fd().unwrap()).unwrap());
    let baseline = open_fd_count();
    let (free_before, _) = cuda.mem_get_info().unwrap();
    let (vk2, cuda2) = (vk.clone(), cuda.clone());
    on_eight_threads(move |t| {
        for round in 0..10u32 {
            let size = (1u64 << 20) * (1 + (t + round) as u64 % 4);
            let mut buffer = Buffer::new(&vk2, &BufferOptions::new(size)).unwrap();
            let data = pattern(size as usize, t * 100 + round);
            buffer.write(0, &data).unwrap();
            let imported = cuda2.import_buffer(buffer.export_fd().unwrap()).unwrap();
            assert_eq!(imported.copy_to_host().unwrap(), data, "thread {t} round {round}: CUDA read");
            let back = pattern(size as usize, t * 100 + round + 50);
            imported.copy_from_host(&back).unwrap();
            cuda2.synchronize().unwrap();
            assert_eq!(buffer.read(0, size).unwrap(), back, "thread {t} round {round}: Vulkan sees CUDA's write");
        }
    });
    cuda.check_deferred().unwrap();
    assert_eq!(open_fd_count(), baseline, "fds of the CUDA imports were all closed");
    let (free_after, _) = cuda.mem_get_info().unwrap();
    assert!(free_after + (8 << 20) >= free_before, "CUDA free memory fell from {free_before} to {free_after}");
}

#[test]
fn one_opencl_context_imports_from_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(cl) = testing::or_skip("opencl", lava_flow::opencl::ClContext::for_identity(&vk.identity())) else {
        return;
    };
    if !cl.info().external_memory_opaque_fd {
        return testing::skip("opencl", format!("{} cannot import opaque fds", cl.info().name));
    }
    let warm = Buffer::new(&vk, &BufferOptions::new(1 << 16)).unwrap();
    drop(cl.import_buffer(warm.export_fd().unwrap()).unwrap());
    let baseline = open_fd_count();
    let (vk2, cl2) = (vk.clone(), cl.clone());
    on_eight_threads(move |t| {
        for round in 0..10u32 {
            let size = (1u64 << 20) * (1 + (t + round) as u64 % 4);
            let mut buffer = Buffer::new(&vk2, &BufferOptions::new(size)).unwrap();
            let data = pattern(size as usize, t * 100 + round);
            buffer.write(0, &data).unwrap();
            let imported = cl2.import_buffer(buffer.export_fd().unwrap()).unwrap();
            assert_eq!(imported.read(0, size as usize).unwrap(), data, "thread {t} round {round}: OpenCL read");
            let back = pattern(size as usize, t * 100 + round + 50);
            imported.write(0, &back).unwrap();
            cl2.finish().unwrap();
            assert_eq!(buffer.read(0, size).unwrap(), back, "thread {t} round {round}: Vulkan sees OpenCL's write");
        }
    });
    cl.check_deferred().unwrap();
    assert_eq!(open_fd_count(), baseline, "fds of the OpenCL imports were all closed");
}

const ROLE: &str = "LAVA_FLOW_CONCURRENCY_CHILD";
const SOCKET: &str = "LAVA_FLOW_CONCURRENCY_SOCKET";
const HOST_SIZE: usize = 1 << 20;
const GPU_SIZE: u64 = 1 << 20;
const CLIENT_ROUNDS: u32 = 5;

/// One client process: fetches host memory and a Vulkan buffer, imports the buffer into its own
/// Vulkan device, checks both, and publishes memory of its own, several times over.
fn client_process(index: u32) {
    let socket = std::env::var_os(SOCKET).unwrap();
    let ctx = common::vulkan().expect("the server's process opened Vulkan");
    for round in 0..CLIENT_ROUNDS {
        let client = Client::connect(&socket).unwrap();
        let objects = client.get_all().unwrap();
        let mut saw = 0;
        for o in objects {
            match (o.name.as_str(), o.object) {
                ("host", SharedObject::Memory(m)) => {
                    let mapped = shm::map_exported(m).unwrap();
                    assert_eq!(mapped.read(0, HOST_SIZE).unwrap(), pattern(HOST_SIZE, 1), "client {index}: host");
                    saw += 1;
                }
                ("gpu", SharedObject::Buffer(b)) => {
                    let imported = Buffer::import(&ctx, b).unwrap();
                    assert_eq!(imported.read(0, GPU_SIZE).unwrap(), pattern(GPU_SIZE as usize, 2), "client {index}");
                    saw += 1;
                }
                _ => {} // what other clients published
            }
        }
        assert_eq!(saw, 2, "client {index} round {round} got both served objects");
        let mut own = shm::create(4096).unwrap();
        own.write(0, &pattern(4096, 100 + index * 10 + round)).unwrap();
        client.publish(&[NamedObject::new(format!("client-{index}-{round}"), shm::export(&own).unwrap())]).unwrap();
    }
    println!("client {index}: {CLIENT_ROUNDS} rounds checked");
}

#[test]
fn eight_client_processes_against_one_server() {
    if let Ok(index) = std::env::var(ROLE) {
        return client_process(index.parse().unwrap());
    }
    let Some(ctx) = common::vulkan() else { return };
    let dir = std::env::temp_dir().join(format!("lava-flow-concurrency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    let server = Server::bind(&path, ServerConfig { max_clients: 16, ..Default::default() }).unwrap();
    let mut host = shm::create(HOST_SIZE).unwrap();
    host.write(0, &pattern(HOST_SIZE, 1)).unwrap();
    server.publish(NamedObject::new("host", shm::export(&host).unwrap())).unwrap();
    let mut gpu = Buffer::new(&ctx, &BufferOptions::new(GPU_SIZE)).unwrap();
    gpu.write(0, &pattern(GPU_SIZE as usize, 2)).unwrap();
    server.publish(NamedObject::new("gpu", gpu.export_fd().unwrap())).unwrap();
    let baseline = open_fd_count();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..THREADS)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "eight_client_processes_against_one_server", "--nocapture", "--test-threads=1"])
                .env(ROLE, i.to_string())
                .env(SOCKET, &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("rounds checked") {
            failed.push(format!(
                "client {i}: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(server.wait_idle(Duration::from_secs(10)), "every client's connection closed");
    let stats = server.stats();
    let requests = u64::from(THREADS * CLIENT_ROUNDS);
    assert_eq!(stats.connections_accepted, requests, "{stats:?}");
    assert_eq!(stats.requests_served, 2 * requests, "a GET and a PUBLISH per round: {stats:?}");
    assert_eq!(stats.messages_rejected, 0, "{stats:?}");
    // What the clients published, each with its own pattern, one fd each.
    assert_eq!(open_fd_count(), baseline + requests as usize, "the published objects hold one fd each");
    for i in 0..THREADS {
        for round in 0..CLIENT_ROUNDS {
            let object = server.remove(&format!("client-{i}-{round}")).expect("published");
            let memory = ExportedMemory::try_from(object.object).expect("memory");
            let mapped = shm::map_exported(memory).unwrap();
            assert_eq!(
                mapped.read(0, mapped.len()).unwrap(),
                pattern(4096, 100 + i * 10 + round),
                "client {i} round {round}"
            );
        }
    }
    assert_eq!(open_fd_count(), baseline, "nothing is left once the published objects are removed");
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

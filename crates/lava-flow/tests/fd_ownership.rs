//! Eight threads importing at once on every API present, valid imports mixed with imports that
//! fail (a wrong size, another device's UUID, an fd the driver refuses), for many rounds. After
//! every round each thread checks that the fds it owns are still open and still the open file
//! descriptions it made (`kcmp(KCMP_FILE)` against a witness): its own pipe and memfd, and a
//! fresh sibling of the shared export (another open of the same memfd, or another export of the
//! same allocation: the same device and inode as every fd the other threads import). Each valid
//! import takes a fresh export of the one allocation or semaphore (on NVIDIA's driver 580, Vulkan
//! and GL imports of clones of one opaque-fd export, which share its open file description, failed
//! after the first few); the failing imports use clones of one export. Valid imports must
//! succeed (and read the exporter's bytes) and failing ones fail; at the end the
//! process holds exactly the fds it held before, plus the driver copies lava-flow reports it left
//! open (`fd::failed_import_fds().left_open`, zero where the exports are memfds).
//!
//! Before the fix, a failed import's duplicate was closed when `fstat` said "same device and
//! inode": once a driver that closes the fd on failure (Mesa's lavapipe does) had closed it, the
//! number could already be another thread's sibling or import of the same memfd, and lava-flow
//! closed that fd under it. `vulkan_memory_imports_on_eight_threads` catches that on lavapipe.
#![cfg(all(feature = "cuda", feature = "gl", feature = "opencl"))]

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Barrier;

use lava_flow::fd::failed_import_fds;
use lava_flow::gl::{GlContext, GL_BUFFER_SLACK};
use lava_flow::raw_gpu_handle::{
    ExportedBuffer, ExportedFence, ExportedSemaphore, FenceHandleKind, SemaphoreHandleKind, SemaphoreKind, Uuid,
};
use lava_flow::vulkan::sync::{Fence, Semaphore};
use lava_flow::vulkan::DedicatedPolicy;
use lava_flow::{Buffer, BufferOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

const THREADS: u32 = 8;
const SIZE: u64 = 1 << 16;

/// What one attempt of a worker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// A valid import: must succeed.
    Valid,
    /// A wrong size (for semaphores and fences: a wrong kind): must fail.
    WrongSize,
    /// Another device's UUID: must fail, before any driver call.
    WrongUuid,
    /// An fd the driver refuses (a memfd that is no export, /dev/null): must fail in the driver.
    DriverRefuses,
}

/// The order the attempts come in; threads start at different places in it.
const ATTEMPTS: [Attempt; 6] =
    [Attempt::Valid, Attempt::WrongSize, Attempt::Valid, Attempt::WrongUuid, Attempt::Valid, Attempt::DriverRefuses];

/// An fd a worker owns, with a witness (a `dup`) to tell whether its number still names it.
struct Sentinel {
    fd: OwnedFd,
    witness: OwnedFd,
    what: &'static str,
}

impl Sentinel {
    fn new(fd: OwnedFd, what: &'static str) -> Sentinel {
        let witness = fd.try_clone().expect("dup a sentinel");
        Sentinel { fd, witness, what }
    }

    fn check(&self) -> Result<(), String> {
        let n = self.fd.as_raw_fd();
        // SAFETY: F_GETFD only reads the fd table entry; a closed number gives EBADF.
        if unsafe { libc::fcntl(n, libc::F_GETFD) } == -1 {
            return Err(format!("its {} (fd {n}) was closed under it", self.what));
        }
        match lava_flow::fd::same_open_file_description(self.fd.as_fd(), self.witness.as_fd()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("its {} (fd {n}) was closed and the number reused by another file", self.what)),
            // kcmp refused (seccomp): the inode is the weaker check that remains.
            Err(_) => {
                let (a, b) = (rustix::fs::fstat(&self.fd).unwrap(), rustix::fs::fstat(&self.witness).unwrap());
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                    Ok(())
                } else {
                    Err(format!("its {} (fd {n}) now names another file", self.what))
                }
            }
        }
    }
}

/// Another open of the file behind `fd` where it is a memory file (its own open file
/// description, same inode), else `fresh()` (another export of the same object).
fn sibling(fd: &OwnedFd, fresh: impl FnOnce() -> OwnedFd) -> OwnedFd {
    let memfd = matches!(lava_flow::fd::inspect(fd.as_fd()), lava_flow::fd::FdKind::Memfd { .. });
    if memfd {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("reopen a memfd")
    } else {
        fresh()
    }
}

fn is_memfd(fd: &OwnedFd) -> bool {
    matches!(lava_flow::fd::inspect(fd.as_fd()), lava_flow::fd::FdKind::Memfd { .. })
}

/// A memfd of zeros, big enough to pass the size checks: no driver's export.
fn garbage_memfd() -> OwnedFd {
    let fd = rustix::fs::memfd_create("not-an-export", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4 << 20).unwrap();
    fd
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn foreign(mut uuid: Uuid) -> Uuid {
    uuid.0[0] ^= 0xff;
    uuid
}

/// A copy left open per failed import must not run a long test into the fd limit.
fn kcmp_works() -> bool {
    let a = rustix::fs::memfd_create("kcmp-probe", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let b = a.try_clone().unwrap();
    lava_flow::fd::same_open_file_description(a.as_fd(), b.as_fd()).is_ok()
}

fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
}

/// Runs `attempt(thread, round, what)` on 8 threads at once for `rounds` rounds, each thread
/// holding its sentinels and making a fresh sibling of the shared export (`sibling`) every round,
/// and checks the fd accounting afterwards. `private_copies` says the exports are memfds, whose
/// copies lava-flow can always prove its own (nothing may be left open then); `reach_driver` that
/// some of the failing imports must fail in the driver rather than in lava-flow's checks;
/// `settle` runs after the workers end and before the fds are counted (OpenCL releases an
/// imported buffer, and closes the fd it took, once its queue is finished).
#[allow(clippy::too_many_arguments)]
fn on_eight_threads(
    name: &str,
    rounds: u32,
    private_copies: bool,
    reach_driver: bool,
    settle: &dyn Fn(),
    sibling: impl Fn() -> OwnedFd + Sync,
    attempt: impl Fn(u32, u32, Attempt) -> Result<(), String> + Sync,
) {
    let baseline = open_fd_count();
    let baseline_fds = fd_table();
    let counts = failed_import_fds();
    let start = Barrier::new(THREADS as usize);
    let started = std::time::Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, sibling, attempt) = (&start, &sibling, &attempt);
                s.spawn(move || -> Result<(), String> {
                    let (reader, writer) = rustix::pipe::pipe().unwrap();
                    let own = rustix::fs::memfd_create("sentinel", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
                    let mine = [
                        Sentinel::new(reader, "pipe's read end"),
                        Sentinel::new(writer, "pipe's write end"),
                        Sentinel::new(own, "memfd"),
                    ];
                    start.wait();
                    for round in 0..rounds {
                        let sib = Sentinel::new(sibling(), "sibling of the shared export");
                        let what = ATTEMPTS[(t + round) as usize % ATTEMPTS.len()];
                        attempt(t, round, what).map_err(|e| format!("thread {t} round {round} ({what:?}): {e}"))?;
                        for sentinel in mine.iter().chain([&sib]) {
                            sentinel.check().map_err(|e| format!("thread {t} round {round} ({what:?}): {e}"))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(p) => Some(
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                ),
            })
            .collect()
    });
    settle();
    let delta = failed_import_fds().since(&counts);
    println!(
        "{name}: {rounds} rounds on {THREADS} threads in {:?}; failed driver imports: {delta:?}",
        started.elapsed()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    if reach_driver {
        assert!(delta.total() > 0, "{name}: no failing import reached the driver, so the test proved nothing");
    }
    if private_copies && kcmp_works() {
        assert_eq!(delta.left_open, 0, "{name}: copies of memfds left open, though lava-flow can prove those its own");
    }
    let expected = baseline + delta.left_open as usize;
    // A driver may release what it took a moment after the call that releases it returns: the
    // count has a second to settle (a leak never does).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while open_fd_count() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        open_fd_count(),
        expected,
        "{name}: the workers' fds are all closed, except the {} copies reported left open; fds not \
         there before: {}",
        delta.left_open,
        new_fds(&baseline_fds)
    );
}

/// The process's fd table: number and what it names (`/proc/self/fd` links).
fn fd_table() -> std::collections::BTreeMap<i32, String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Default::default() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let n: i32 = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        Some((n, target.display().to_string()))
    })
    .collect()
}

/// The fds open now that were not (or named another file) in `before`, counted by what they
/// name: the diagnostic for a count that does not add up.
fn new_fds(before: &std::collections::BTreeMap<i32, String>) -> String {
    let mut by_target = std::collections::BTreeMap::<String, usize>::new();
    for (n, target) in fd_table() {
        if before.get(&n) != Some(&target) {
            *by_target.entry(target).or_default() += 1;
        }
    }
    let list: Vec<String> = by_target.into_iter().map(|(t, n)| format!("{n} x {t}")).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Imports `exported` and expects a failure.
fn must_fail<T>(what: &str, result: lava_flow::Result<T>) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{what} was accepted")),
        Err(_) => Ok(()),
    }
}

/// A fresh export for a valid import. On NVIDIA (driver 580) Vulkan and GL imports of clones of
/// one opaque-fd export, which share one open file description, failed after the first few
/// (VK_ERROR_OUT_OF_DEVICE_MEMORY, VK_ERROR_INITIALIZATION_FAILED, GL_OUT_OF_MEMORY), so only a
/// fresh export is a valid import on every driver.
fn fresh<T>(export: lava_flow::Result<T>) -> Result<T, String> {
    export.map_err(|e| format!("a fresh export failed: {e}"))
}

fn must_work<T>(what: &str, result: lava_flow::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what} failed: {e}"))
}

/// A description whose size the driver refuses but lava-flow's checks cannot: for a memfd export
/// (lavapipe) the memfd's whole length, which is a little more than the allocation (Mesa rounds
/// and adds a header) and which lavapipe refuses, closing the fd; for a device's export (NVIDIA)
/// twice the allocation. The allocation id is dropped, as for an export from another process,
/// so the exporter's record cannot refuse it first.
fn wrong_size(template: &ExportedBuffer) -> ExportedBuffer {
    let mut bad = template.try_clone().unwrap();
    let d = &mut bad.memory.description;
    d.allocation_id = None;
    d.allocation_size = match lava_flow::fd::inspect(template.memory.handle.as_fd()) {
        lava_flow::fd::FdKind::Memfd { size } if size > d.allocation_size => size,
        _ => d.allocation_size * 2,
    };
    bad
}

fn with_uuid(template: &ExportedBuffer) -> ExportedBuffer {
    let mut bad = template.try_clone().unwrap();
    bad.memory.description.device.device_uuid = foreign(bad.memory.description.device.device_uuid);
    bad
}

fn with_fd(template: &ExportedBuffer, fd: OwnedFd) -> ExportedBuffer {
    let mut bad = template.try_clone().unwrap();
    bad.memory.handle = fd;
    bad
}

#[test]
fn vulkan_memory_imports_on_eight_threads() {
    let Some((a, b)) = common::two_devices() else { return };
    let mut exporter = Buffer::new(&a, &BufferOptions::new(SIZE).dedicated(DedicatedPolicy::Never)).unwrap();
    let data = common::pattern(64, 7);
    exporter.write(0, &data).unwrap();
    let template = exporter.export_fd().unwrap();
    drop(Buffer::import(&b, template.try_clone().unwrap()).unwrap());
    let private = is_memfd(&template.memory.handle);
    // The wrong size must reach the driver and be refused there (on lavapipe, which closes the fd).
    let counts = failed_import_fds();
    let e = Buffer::import(&b, wrong_size(&template)).expect_err("a wrong size");
    let reached = failed_import_fds().since(&counts);
    println!("wrong size: {e}\n  reached the driver: {reached:?}");
    on_eight_threads(
        "Vulkan memory",
        3000,
        private,
        true,
        &|| (),
        || sibling(&template.memory.handle, || exporter.export_fd().unwrap().memory.handle),
        |_t, round, what| match what {
            Attempt::Valid => {
                let imported = must_work("a valid import", Buffer::import(&b, fresh(exporter.export_fd())?))?;
                if round % 16 == 0 {
                    let got = imported.read(0, 64).map_err(|e| e.to_string())?;
                    if got != data {
                        return Err("the import reads other bytes than the exporter wrote".into());
                    }
                }
                Ok(())
            }
            Attempt::WrongSize => must_fail("a wrong size", Buffer::import(&b, wrong_size(&template))),
            Attempt::WrongUuid => must_fail("another device's UUID", Buffer::import(&b, with_uuid(&template))),
            Attempt::DriverRefuses => {
                must_fail("a memfd that is no export", Buffer::import(&b, with_fd(&template, garbage_memfd())))
            }
        },
    );
}

#[test]
fn gl_memory_imports_on_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(gl) = testing::or_skip("gl", GlContext::for_identity(&vk.identity())) else { return };
    if !gl.info().memory_object_fd {
        return testing::skip("gl", format!("{} lacks GL_EXT_memory_object_fd", gl.info().renderer));
    }
    let options = BufferOptions::new(SIZE).allocation_padding(GL_BUFFER_SLACK).dedicated(DedicatedPolicy::Never);
    let mut exporter = Buffer::new(&vk, &options).unwrap();
    let data = common::pattern(64, 9);
    exporter.write(0, &data).unwrap();
    let template = exporter.export_fd().unwrap();
    drop(gl.import_buffer(template.try_clone().unwrap()).unwrap());
    let private = is_memfd(&template.memory.handle);
    // GL's own wrong size: twice the allocation made in this process, refused by lava-flow.
    let twice = || {
        let mut bad = template.try_clone().unwrap();
        bad.memory.description.allocation_size *= 2;
        bad
    };
    on_eight_threads(
        "GL memory",
        1000,
        private,
        // Mesa's GL takes any fd without an error (and closes it): only NVIDIA's refuses.
        !gl.info().renderer.contains("llvmpipe"),
        &|| (),
        || sibling(&template.memory.handle, || exporter.export_fd().unwrap().memory.handle),
        |_t, round, what| match what {
            Attempt::Valid => {
                let imported = must_work("a valid import", gl.import_buffer(fresh(exporter.export_fd())?))?;
                if round % 16 == 0 && imported.read(0, 64).map_err(|e| e.to_string())? != data {
                    return Err("the import reads other bytes than the exporter wrote".into());
                }
                Ok(())
            }
            Attempt::WrongSize => must_fail("a wrong size", gl.import_buffer(twice())),
            Attempt::WrongUuid => must_fail("another device's UUID", gl.import_buffer(with_uuid(&template))),
            // Mesa takes any fd without an error and fails when storage is placed; NVIDIA refuses
            // the import. Either way the buffer import fails.
            Attempt::DriverRefuses => {
                must_fail("a memfd that is no export", gl.import_buffer(with_fd(&template, garbage_memfd())))
            }
        },
    );
    gl.check_deferred().unwrap();
}

#[test]
fn cuda_memory_imports_on_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(cuda) = testing::or_skip("cuda", lava_flow::cuda::CudaDevice::for_identity(&vk.identity())) else {
        return;
    };
    let exporter = Buffer::new(&vk, &BufferOptions::new(SIZE).dedicated(DedicatedPolicy::Never)).unwrap();
    let template = exporter.export_fd().unwrap();
    drop(cuda.import_memory(template.memory.try_clone().unwrap()).unwrap());
    let private = is_memfd(&template.memory.handle);
    on_eight_threads(
        "CUDA memory",
        1000,
        private,
        true,
        &|| (),
        || sibling(&template.memory.handle, || exporter.export_fd().unwrap().memory.handle),
        |_t, _round, what| {
            let memory = match what {
                Attempt::Valid => {
                    let memory = fresh(exporter.export_fd())?.memory;
                    return must_work("a valid import", cuda.import_memory(memory)).map(drop);
                }
                // Twice the allocation made in this process: refused by lava-flow (NVIDIA's CUDA
                // would accept it and map memory that is not there).
                Attempt::WrongSize => {
                    let mut m = template.memory.try_clone().unwrap();
                    m.description.allocation_size *= 2;
                    m
                }
                Attempt::WrongUuid => with_uuid(&template).memory,
                Attempt::DriverRefuses => with_fd(&template, garbage_memfd()).memory,
            };
            must_fail(&format!("{what:?}"), cuda.import_memory(memory))
        },
    );
    cuda.check_deferred().unwrap();
}

#[test]
fn opencl_memory_imports_on_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let Some(cl) = testing::or_skip("opencl", lava_flow::opencl::ClContext::for_identity(&vk.identity())) else {
        return;
    };
    if !cl.info().external_memory_opaque_fd {
        return testing::skip("opencl", format!("{} cannot import opaque fds", cl.info().name));
    }
    let exporter = Buffer::new(&vk, &BufferOptions::new(SIZE).dedicated(DedicatedPolicy::Never)).unwrap();
    let template = exporter.export_fd().unwrap();
    drop(cl.import_buffer(template.try_clone().unwrap()).unwrap());
    let private = is_memfd(&template.memory.handle);
    on_eight_threads(
        "OpenCL memory",
        1000,
        private,
        true,
        &|| cl.finish().unwrap(),
        || sibling(&template.memory.handle, || exporter.export_fd().unwrap().memory.handle),
        |_t, _round, what| {
            let exported = match what {
                Attempt::Valid => {
                    return must_work("a valid import", cl.import_buffer(fresh(exporter.export_fd())?)).map(drop)
                }
                Attempt::WrongSize => {
                    let mut b = template.try_clone().unwrap();
                    b.memory.description.allocation_size *= 2;
                    b
                }
                Attempt::WrongUuid => with_uuid(&template),
                Attempt::DriverRefuses => with_fd(&template, garbage_memfd()),
            };
            must_fail(&format!("{what:?}"), cl.import_buffer(exported))
        },
    );
    cl.check_deferred().unwrap();
}

/// A semaphore of `kind` exported as an opaque fd by `ctx`, or None after skipping.
fn exportable(ctx: &VulkanContext, kind: SemaphoreKind) -> Option<(Semaphore, ExportedSemaphore)> {
    let semaphore = testing::or_skip("semaphores", Semaphore::exportable(ctx, kind, SemaphoreHandleKind::OpaqueFd))?;
    let exported = semaphore.export().unwrap();
    Some((semaphore, exported))
}

fn semaphore_with(template: &ExportedSemaphore, fd: Option<OwnedFd>, uuid: bool) -> ExportedSemaphore {
    let mut s = template.try_clone().unwrap();
    if let Some(fd) = fd {
        s.handle = fd;
    }
    if uuid {
        s.description.device.device_uuid = foreign(s.description.device.device_uuid);
    }
    s
}

/// The semaphore attempts every semaphore importer takes: a fresh export (`fresh_export`); a
/// clone of the export described as another kind (`WrongSize`, refused by lava-flow's checks or the importer's);
/// another UUID; /dev/null, which reaches the driver.
fn semaphore_attempt<T>(
    template: &ExportedSemaphore,
    what: Attempt,
    other_kind: SemaphoreKind,
    fresh_export: impl Fn() -> lava_flow::Result<ExportedSemaphore>,
    import: impl Fn(ExportedSemaphore) -> lava_flow::Result<T>,
) -> Result<(), String> {
    match what {
        Attempt::Valid => must_work("a valid import", import(fresh(fresh_export())?)).map(drop),
        Attempt::WrongSize => {
            let mut s = template.try_clone().unwrap();
            s.description.handle_kind = SemaphoreHandleKind::SyncFd;
            s.description.kind = other_kind;
            must_fail("a sync-fd description of an opaque fd", import(s))
        }
        Attempt::WrongUuid => must_fail("another device's UUID", import(semaphore_with(template, None, true))),
        Attempt::DriverRefuses => must_fail("/dev/null", import(semaphore_with(template, Some(dev_null()), false))),
    }
}

#[test]
fn vulkan_semaphore_and_fence_imports_on_eight_threads() {
    let Some((a, b)) = common::two_devices() else { return };
    let Some((timeline, template)) = exportable(&a, SemaphoreKind::Timeline) else { return };
    raise_fd_limit();
    drop(Semaphore::import(&b, template.try_clone().unwrap()).unwrap());
    let fresh_fd = || timeline.export().unwrap().handle;
    on_eight_threads(
        "Vulkan semaphore",
        200,
        false,
        true,
        &|| (),
        || sibling(&template.handle, fresh_fd),
        |_t, _round, what| {
            semaphore_attempt(
                &template,
                what,
                SemaphoreKind::Timeline,
                || timeline.export(),
                |s| Semaphore::import(&b, s),
            )
        },
    );

    let Some(fence) = testing::or_skip("semaphores", Fence::exportable(&a, FenceHandleKind::OpaqueFd)) else {
        return;
    };
    let template = fence.export().unwrap();
    let clone = |fd: Option<OwnedFd>, uuid: bool, kind: FenceHandleKind| {
        let mut description = template.description;
        description.handle_kind = kind;
        if uuid {
            description.device.device_uuid = foreign(description.device.device_uuid);
        }
        ExportedFence::new(fd.unwrap_or_else(|| template.handle.try_clone().unwrap()), description)
    };
    drop(Fence::import(&b, clone(None, false, FenceHandleKind::OpaqueFd)).unwrap());
    on_eight_threads(
        "Vulkan fence",
        200,
        false,
        true,
        &|| (),
        || sibling(&template.handle, || fence.export().unwrap().handle),
        |_t, _round, what| match what {
            Attempt::Valid => must_work("a valid import", Fence::import(&b, fresh(fence.export())?)).map(drop),
            Attempt::WrongSize => must_fail(
                "a sync-fd description of an opaque fd",
                Fence::import(&b, clone(None, false, FenceHandleKind::SyncFd)),
            ),
            Attempt::WrongUuid => {
                must_fail("another device's UUID", Fence::import(&b, clone(None, true, FenceHandleKind::OpaqueFd)))
            }
            Attempt::DriverRefuses => {
                must_fail("/dev/null", Fence::import(&b, clone(Some(dev_null()), false, FenceHandleKind::OpaqueFd)))
            }
        },
    );
}

#[test]
fn cuda_opencl_and_gl_semaphore_imports_on_eight_threads() {
    let Some(vk) = common::vulkan() else { return };
    let cuda = testing::or_skip("cuda", lava_flow::cuda::CudaDevice::for_identity(&vk.identity()));
    let cl = testing::or_skip("opencl", lava_flow::opencl::ClContext::for_identity(&vk.identity()))
        .filter(|cl| cl.info().external_semaphore_opaque_fd);
    let gl = testing::or_skip("gl", GlContext::for_identity(&vk.identity())).filter(|gl| gl.info().semaphore_fd);
    if cuda.is_none() && cl.is_none() && gl.is_none() {
        return testing::skip("semaphores", "no CUDA, and no OpenCL or GL that imports semaphores");
    }
    let Some((timeline, timeline_export)) = exportable(&vk, SemaphoreKind::Timeline) else { return };
    let Some((binary, binary_export)) = exportable(&vk, SemaphoreKind::Binary) else { return };
    raise_fd_limit();
    if let Some(cuda) = &cuda {
        drop(cuda.import_semaphore(timeline_export.try_clone().unwrap()).unwrap());
        on_eight_threads(
            "CUDA semaphore",
            200,
            false,
            true,
            &|| (),
            || sibling(&timeline_export.handle, || timeline.export().unwrap().handle),
            |_t, _round, what| {
                semaphore_attempt(
                    &timeline_export,
                    what,
                    SemaphoreKind::Timeline,
                    || timeline.export(),
                    |s| cuda.import_semaphore(s),
                )
            },
        );
        cuda.check_deferred().unwrap();
    }
    // OpenCL and GL import binary semaphores.
    if let Some(cl) = &cl {
        drop(cl.import_semaphore(binary_export.try_clone().unwrap()).unwrap());
        on_eight_threads(
            "OpenCL semaphore",
            200,
            false,
            true,
            &|| cl.finish().unwrap(),
            || sibling(&binary_export.handle, || binary.export().unwrap().handle),
            |_t, _round, what| {
                semaphore_attempt(
                    &binary_export,
                    what,
                    SemaphoreKind::Binary,
                    || binary.export(),
                    |s| cl.import_semaphore(s),
                )
            },
        );
        cl.check_deferred().unwrap();
    }
    if let Some(gl) = &gl {
        drop(gl.import_semaphore(binary_export.try_clone().unwrap()).unwrap());
        on_eight_threads(
            "GL semaphore",
            200,
            false,
            true,
            &|| (),
            || sibling(&binary_export.handle, || binary.export().unwrap().handle),
            |_t, _round, what| {
                semaphore_attempt(
                    &binary_export,
                    what,
                    SemaphoreKind::Binary,
                    || binary.export(),
                    |s| gl.import_semaphore(s),
                )
            },
        );
        gl.check_deferred().unwrap();
    }
}

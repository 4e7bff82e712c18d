//! What each driver does with the fd of an import that fails, measured, and lava-flow's account
//! of the same failure checked against it.
//!
//! For every API present (Vulkan memory, semaphores and fences; CUDA memory and semaphores;
//! OpenCL memory; GL memory objects) each failure is provoked twice:
//!
//! - through the raw driver call, on this one thread, with a witness (a `dup` of the fd handed
//!   over): right after the call, `fcntl(F_GETFD)` on the number says whether it is still open,
//!   and `kcmp(KCMP_FILE)` against the witness whether it still names the same open file
//!   description. No other thread opens or closes fds here, so "open and the same" means the
//!   driver left it, "not open" means the driver closed it;
//! - through lava-flow's import, whose verdict (`fd::failed_import_fds`) must agree with the raw
//!   call: the driver closed it / lava-flow closed its private copy / lava-flow left a shared copy
//!   open. The fd count must move by exactly what that verdict says.
//!
//! It prints the table (API, driver, failure, what the driver did, what lava-flow did); the rows
//! docs/OWNERSHIP.md states as facts for a driver are asserted, so a driver that changes fails
//! here loudly. See the table with
//! `cargo nextest run -p lava-flow --all-features --test fd_failed_import --no-capture`.
//! Everything runs in one test function: one thread, so no other test can reuse a number.

mod common;

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use ash::vk;
use lava_flow::fd::{failed_import_fds, AfterFailure};
use lava_flow::raw_gpu_handle::{
    ExportedFence, ExportedMemory, ExportedSemaphore, FenceDescription, FenceHandleKind, MemoryHandleKind,
    SemaphoreDescription, SemaphoreHandleKind, SemaphoreKind,
};
use lava_flow::vulkan::sync::{Fence, Semaphore};
use lava_flow::vulkan::{memory_properties, DedicatedPolicy, DeviceMemory};
use lava_flow::{Buffer, BufferOptions, VulkanContext};
use lava_flow_diag::testing::{self, open_fd_count};

const SIZE: u64 = 1 << 16;

/// What the driver did with the fd, seen right after the raw call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raw {
    /// The call failed and the number still named the fd handed over: the driver left it.
    Kept,
    /// The call failed and the number was closed: the driver closed it.
    Closed,
    /// The call failed and the number named another file (something in the driver opened one).
    Reused,
    /// The call succeeded: the driver owns the fd.
    Succeeded,
}

/// What lava-flow's import did with the same failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lava {
    /// Refused before any driver call (its own checks).
    Refused,
    /// The import succeeded.
    Succeeded,
    /// The driver refused it; lava-flow's verdict on the copy it had handed over.
    Failed(AfterFailure),
    /// lava-flow cannot be asked for this (it never makes such a call).
    #[cfg_attr(not(feature = "gl"), allow(dead_code))]
    NotExpressible,
}

struct Row {
    api: &'static str,
    driver: String,
    failure: &'static str,
    raw: Raw,
    lava: Lava,
    /// The fd handed over was a memory file, which lava-flow reopens (a private description).
    memfd: bool,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    problems: Vec<String>,
}

impl Table {
    fn add(&mut self, row: Row) {
        if let Err(e) = agree(&row) {
            self.problems.push(format!("{} / {} / {}: {e}", row.api, row.driver, row.failure));
        }
        if let Some(expected) = documented(row.api, &row.driver, row.failure) {
            if row.raw != expected {
                self.problems.push(format!(
                    "{} / {} / {}: docs/OWNERSHIP.md says the driver {expected:?} the fd, it {:?} it here: \
                     update the table there (and check the policy in fd.rs still holds)",
                    row.api, row.driver, row.failure, row.raw
                ));
            }
        }
        self.rows.push(row);
    }
}

/// lava-flow's verdict must follow from what the driver did: a closed number is never closed
/// again, a number still naming the copy is closed only when the copy was private (a memfd
/// reopened), else left open.
fn agree(row: &Row) -> Result<(), String> {
    let kcmp = kcmp_works();
    match (row.raw, row.lava) {
        (_, Lava::Refused | Lava::NotExpressible) => Ok(()),
        (Raw::Succeeded, Lava::Succeeded) => Ok(()),
        (Raw::Closed, Lava::Failed(AfterFailure::ClosedByDriver | AfterFailure::NumberReused)) => Ok(()),
        (Raw::Kept, Lava::Failed(AfterFailure::ClosedHere)) if row.memfd => Ok(()),
        (Raw::Kept, Lava::Failed(AfterFailure::LeftOpen)) if !row.memfd || !kcmp => Ok(()),
        (raw, lava) => Err(format!("the driver {raw:?} the fd in the raw call, but lava-flow reports {lava:?}")),
    }
}

/// The rows docs/OWNERSHIP.md states as measured facts (Mesa: lavapipe and llvmpipe, read in its
/// source and measured here); other drivers' rows are printed, not asserted.
fn documented(api: &str, driver: &str, failure: &str) -> Option<Raw> {
    let lavapipe = driver.contains("llvmpipe");
    match (api, failure) {
        // lvp_AllocateMemory closes the fd when pipe_screen::import_memory_fd fails or the size
        // read from the memfd is smaller than allocationSize (a size within the memfd's page
        // rounding is accepted).
        (
            "Vulkan memory",
            "twice the allocation size" | "a memfd that is no export" | "/dev/null (a character device)",
        ) if lavapipe => Some(Raw::Closed),
        // Mesa's glImportMemoryFdEXT checks the handle type before it touches the fd (an error,
        // the fd left to the caller); past that check it closes the fd whatever the driver made
        // of it, and reports no error (a bad fd shows when storage is placed).
        ("GL memory", "a handle type GL does not know") if lavapipe => Some(Raw::Kept),
        ("GL memory", "a memfd that is no export" | "/dev/null (a character device)") if lavapipe => {
            Some(Raw::Succeeded)
        }
        _ => None,
    }
}

fn kcmp_works() -> bool {
    let a = rustix::fs::memfd_create("kcmp-probe", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let b = a.try_clone().unwrap();
    lava_flow::fd::same_open_file_description(a.as_fd(), b.as_fd()).is_ok()
}

/// Hands `fd` to `call` (a raw driver import; true when it succeeded) and finds out what the
/// driver did with it. Where the driver left it, it is closed here (this thread is the only one
/// that opens or closes fds in this process, so the number is still the fd handed over).
fn raw_import(fd: OwnedFd, call: impl FnOnce(RawFd) -> bool) -> Raw {
    let witness = fd.try_clone().expect("dup");
    let raw = fd.into_raw_fd();
    if call(raw) {
        return Raw::Succeeded;
    }
    // SAFETY: F_GETFD only reads the fd table entry; a closed number gives EBADF.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
        return Raw::Closed;
    }
    // SAFETY: the number is open (just checked), and no other thread opens or closes fds here.
    let number = unsafe { BorrowedFd::borrow_raw(raw) };
    let same = match lava_flow::fd::same_open_file_description(number, witness.as_fd()) {
        Ok(same) => same,
        // kcmp refused (seccomp): on this one thread the inode is as good a witness.
        Err(_) => {
            let (a, b) = (rustix::fs::fstat(number).unwrap(), rustix::fs::fstat(&witness).unwrap());
            (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        }
    };
    if same {
        // SAFETY: the driver refused the import and left the fd: it is ours again, closed once.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        Raw::Kept
    } else {
        Raw::Reused
    }
}

/// Runs lava-flow's import (which owns one open fd, counted now) and reads its verdict, checking
/// that the fd count moved by exactly what the verdict says.
fn lava_import<T>(import: impl FnOnce() -> lava_flow::Result<T>) -> Lava {
    let counts = failed_import_fds();
    let before = open_fd_count();
    let result = import();
    let delta = failed_import_fds().since(&counts);
    match result {
        Ok(imported) => {
            drop(imported);
            println!("    lava-flow: the import succeeded");
            Lava::Succeeded
        }
        Err(e) => {
            let verdict = match (delta.total(), delta) {
                (0, _) => Lava::Refused,
                (1, d) if d.closed_here == 1 => Lava::Failed(AfterFailure::ClosedHere),
                (1, d) if d.closed_by_driver == 1 => Lava::Failed(AfterFailure::ClosedByDriver),
                (1, d) if d.number_reused == 1 => Lava::Failed(AfterFailure::NumberReused),
                (1, _) => Lava::Failed(AfterFailure::LeftOpen),
                (n, d) => panic!("one import recorded {n} failed driver calls: {d:?} ({e})"),
            };
            let leaked = delta.left_open as usize;
            assert_eq!(
                open_fd_count(),
                before - 1 + leaked,
                "the failed import closes the caller's fd once and leaves {leaked} copy open: {e}"
            );
            println!("    lava-flow: {e}");
            verdict
        }
    }
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// A memfd of `size` zero bytes: the right kind of fd for software drivers, but no export.
fn garbage_memfd(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("not-an-export", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size + (1 << 20)).unwrap();
    fd
}

fn is_memfd(fd: &OwnedFd) -> bool {
    matches!(lava_flow::fd::inspect(fd.as_fd()), lava_flow::fd::FdKind::Memfd { .. })
}

/// A set-up step (an allocation, a warm-up import): its failure is reported with the other
/// problems, after the table, instead of ending the test before the table is printed.
fn set_up<T>(table: &mut Table, what: &str, result: lava_flow::Result<T>) -> Option<T> {
    result
        .map_err(|e| {
            println!("set-up failed: {what}: {e}");
            table.problems.push(format!("set-up: {what} failed: {e}"));
        })
        .ok()
}

fn vk_driver(ctx: &VulkanContext) -> String {
    format!("{} ({})", ctx.info().name, ctx.info().driver_name)
}

#[test]
fn what_drivers_do_with_the_fd_of_a_failed_import() {
    let mut table = Table::default();
    let vulkan = vulkan_memory(&mut table);
    if let Some((a, b, buffer)) = &vulkan {
        vulkan_sync(&mut table, a, b, buffer);
        #[cfg(feature = "cuda")]
        cuda(&mut table, a, buffer);
        #[cfg(feature = "opencl")]
        opencl(&mut table, buffer);
        #[cfg(feature = "gl")]
        gl(&mut table, a, buffer);
    }
    println!("\n| API | driver | failure | the driver (raw call) | lava-flow |");
    println!("|---|---|---|---|---|");
    for r in &table.rows {
        let raw = match r.raw {
            Raw::Kept => "left the fd open",
            Raw::Closed => "closed the fd",
            Raw::Reused => "closed the fd (number reused)",
            Raw::Succeeded => "accepted it",
        };
        let lava = match r.lava {
            Lava::Refused => "refused before the driver".to_string(),
            Lava::Succeeded => "accepted it".to_string(),
            Lava::NotExpressible => "-".to_string(),
            Lava::Failed(a) => format!("{a:?}"),
        };
        println!("| {} | {} | {} | {raw} | {lava} |", r.api, r.driver, r.failure);
    }
    println!("\nkcmp available: {}; failed imports this run: {:?}", kcmp_works(), failed_import_fds());
    assert!(table.problems.is_empty(), "\n{}", table.problems.join("\n"));
}

/// Vulkan memory on a second device of the same GPU. Returns both devices and the exporting
/// buffer for the other rows: every row exports that one allocation (made without a dedicated
/// allocation, which is exportable on every driver measured), so no row depends on another
/// allocation succeeding after the failures provoked here.
fn vulkan_memory(table: &mut Table) -> Option<(VulkanContext, VulkanContext, Buffer)> {
    let (a, b) = common::two_devices()?;
    let driver = vk_driver(&b);
    let options = BufferOptions::new(SIZE).dedicated(DedicatedPolicy::Never);
    let buffer = set_up(table, "an exportable buffer", Buffer::new(&a, &options))?;
    let export = || buffer.export_fd().unwrap().memory;
    // The first import may open driver files: do one before counting anything.
    drop(set_up(table, "a valid Vulkan memory import", DeviceMemory::import(&b, export(), None))?);
    let d = export().description;
    let allocate = |raw: RawFd, size: u64, type_index: u32, handle_type: vk::ExternalMemoryHandleTypeFlags| {
        let mut import = vk::ImportMemoryFdInfoKHR::default().handle_type(handle_type).fd(raw);
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(type_index)
            .push_next(&mut import);
        // SAFETY: this test provokes failing imports on purpose (the Vulkan specification calls
        // most of them invalid usage; every driver measured returns an error). `info` and its
        // chain outlive the call; memory it returns is freed at once.
        match unsafe { b.device().allocate_memory(&info, None) } {
            Ok(memory) => {
                // SAFETY: `memory` was allocated just above on this device and nothing was bound to or
                // mapped from it, so no object uses it; freed once, here.
                unsafe { b.device().free_memory(memory, None) };
                true
            }
            Err(_) => false,
        }
    };
    let opaque = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
    let with = |handle: OwnedFd, description| ExportedMemory::new(handle, description);
    let mut row = |failure: &'static str, raw_fd: OwnedFd, raw: &dyn Fn(RawFd) -> bool, lava_fd: OwnedFd, lava| {
        let memfd = is_memfd(&raw_fd);
        println!("Vulkan memory: {failure}");
        let raw = raw_import(raw_fd, raw);
        let lava = lava_import(|| DeviceMemory::import(&b, with(lava_fd, lava), None));
        table.add(Row { api: "Vulkan memory", driver: driver.clone(), failure, raw, lava, memfd });
    };

    let mut bigger = d;
    bigger.allocation_size += 1;
    bigger.allocation_id = None; // as from another process: no exporter here to compare with
    row(
        "allocation size one byte larger",
        export().handle,
        &|fd| allocate(fd, d.allocation_size + 1, d.memory_type_index, opaque),
        export().handle,
        bigger,
    );
    let mut twice = d;
    twice.allocation_size *= 2;
    twice.allocation_id = None;
    row(
        "twice the allocation size",
        export().handle,
        &|fd| allocate(fd, d.allocation_size * 2, d.memory_type_index, opaque),
        export().handle,
        twice,
    );
    row(
        "a memfd that is no export",
        garbage_memfd(d.allocation_size),
        &|fd| allocate(fd, d.allocation_size, d.memory_type_index, opaque),
        garbage_memfd(d.allocation_size),
        d,
    );
    row(
        "/dev/null (a character device)",
        dev_null(),
        &|fd| allocate(fd, d.allocation_size, d.memory_type_index, opaque),
        dev_null(),
        d,
    );
    if b.extensions().external_memory_dma_buf {
        let mut dma = d;
        dma.handle_kind = MemoryHandleKind::DmaBuf;
        row(
            "an opaque fd imported as a DMA-BUF",
            export().handle,
            &|fd| allocate(fd, d.allocation_size, d.memory_type_index, vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT),
            export().handle,
            dma,
        );
    }
    // Last: NVIDIA accepts this import (it reports no error), and nothing after it should depend
    // on what that did.
    let props = b.memory_properties();
    let other_type = (0..props.memory_type_count).find(|&i| {
        i != d.memory_type_index
            && props.memory_types[i as usize].property_flags
                != props.memory_types[d.memory_type_index as usize].property_flags
    });
    if let Some(t) = other_type {
        let mut other = d;
        other.memory_type_index = t;
        other.allocation_id = None; // as from another process: lava-flow refuses it in this one
        other.memory_properties = memory_properties(props.memory_types[t as usize].property_flags);
        row(
            "another memory type",
            export().handle,
            &|fd| allocate(fd, d.allocation_size, t, opaque),
            export().handle,
            other,
        );
    } else {
        println!("Vulkan memory: another memory type: {driver} has one kind of memory type only");
    }
    Some((a, b, buffer))
}

/// Vulkan semaphores and fences exported by `a`, imported into `b`.
fn vulkan_sync(table: &mut Table, a: &VulkanContext, b: &VulkanContext, memory: &Buffer) {
    let driver = vk_driver(b);
    let Some(binary) =
        testing::or_skip("semaphores", Semaphore::exportable(a, SemaphoreKind::Binary, SemaphoreHandleKind::OpaqueFd))
    else {
        return;
    };
    let timeline = Semaphore::exportable(a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd).ok();
    // Warm up the importer.
    let Some(()) =
        set_up(table, "a valid Vulkan semaphore import", binary.export().and_then(|e| Semaphore::import(b, e)))
            .map(drop)
    else {
        return;
    };
    let loader = ash::khr::external_semaphore_fd::Device::new(b.instance(), b.device());
    let import_semaphore = |raw: RawFd, kind: SemaphoreKind| {
        let mut type_info = vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE);
        let mut info = vk::SemaphoreCreateInfo::default();
        if kind == SemaphoreKind::Timeline {
            info = info.push_next(&mut type_info);
        }
        // SAFETY: `info` and its type chain are locals that outlive the call; `b` keeps the device
        // alive.
        let semaphore = unsafe { b.device().create_semaphore(&info, None) }.unwrap();
        let import = vk::ImportSemaphoreFdInfoKHR::default()
            .semaphore(semaphore)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::OPAQUE_FD)
            .fd(raw);
        // SAFETY: a fresh semaphore; this test provokes failing imports on purpose (see
        // vulkan_memory). `import` outlives the call.
        let ok = unsafe { loader.import_semaphore_fd(&import) }.is_ok();
        // SAFETY: the semaphore was created above on this device and never submitted or shared,
        // so no queue uses it; destroyed once, here.
        unsafe { b.device().destroy_semaphore(semaphore, None) };
        ok
    };
    let described = |handle: OwnedFd, kind| {
        ExportedSemaphore::new(
            handle,
            SemaphoreDescription { kind, handle_kind: SemaphoreHandleKind::OpaqueFd, device: a.identity() },
        )
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, kind: SemaphoreKind, lava_fd: OwnedFd| {
        println!("Vulkan semaphore: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, |fd| import_semaphore(fd, kind));
        let lava = lava_import(|| Semaphore::import(b, described(lava_fd, kind)));
        table.add(Row { api: "Vulkan semaphore", driver: driver.clone(), failure, raw, lava, memfd });
    };
    row("/dev/null as an opaque fd", dev_null(), SemaphoreKind::Binary, dev_null());
    if let Some(t) = &timeline {
        row(
            "a timeline semaphore's fd imported as binary",
            t.export().unwrap().handle,
            SemaphoreKind::Binary,
            t.export().unwrap().handle,
        );
    }
    row(
        "a memory export's fd as a semaphore",
        memory.export_fd().unwrap().memory.handle,
        SemaphoreKind::Binary,
        memory.export_fd().unwrap().memory.handle,
    );

    let Some(fence) = testing::or_skip("semaphores", Fence::exportable(a, FenceHandleKind::OpaqueFd)) else {
        return;
    };
    let Some(()) =
        set_up(table, "a valid Vulkan fence import", fence.export().and_then(|e| Fence::import(b, e))).map(drop)
    else {
        return;
    };
    let fence_loader = ash::khr::external_fence_fd::Device::new(b.instance(), b.device());
    let import_fence = |raw: RawFd| {
        // SAFETY: a default create info, a temporary that outlives the call; `b` keeps the device
        // alive.
        let fence = unsafe { b.device().create_fence(&vk::FenceCreateInfo::default(), None) }.unwrap();
        let import = vk::ImportFenceFdInfoKHR::default()
            .fence(fence)
            .handle_type(vk::ExternalFenceHandleTypeFlags::OPAQUE_FD)
            .fd(raw);
        // SAFETY: a fresh fence; failing imports provoked on purpose (see vulkan_memory).
        let ok = unsafe { fence_loader.import_fence_fd(&import) }.is_ok();
        // SAFETY: the fence was created above on this device and never submitted or shared, so no
        // queue uses it; destroyed once, here.
        unsafe { b.device().destroy_fence(fence, None) };
        ok
    };
    let as_fence = |handle: OwnedFd| {
        ExportedFence::new(handle, FenceDescription { handle_kind: FenceHandleKind::OpaqueFd, device: a.identity() })
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, lava_fd: OwnedFd| {
        println!("Vulkan fence: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, import_fence);
        let lava = lava_import(|| Fence::import(b, as_fence(lava_fd)));
        table.add(Row { api: "Vulkan fence", driver: driver.clone(), failure, raw, lava, memfd });
    };
    row("/dev/null as an opaque fd", dev_null(), dev_null());
    row("a semaphore's opaque fd as a fence", binary.export().unwrap().handle, binary.export().unwrap().handle);
    row(
        "a memory export's fd as a fence",
        memory.export_fd().unwrap().memory.handle,
        memory.export_fd().unwrap().memory.handle,
    );
}

#[cfg(feature = "cuda")]
fn cuda(table: &mut Table, a: &VulkanContext, buffer: &Buffer) {
    use lava_flow::cuda::cudarc::driver::sys;
    use lava_flow::cuda::CudaDevice;

    let Some(cuda) = testing::or_skip("cuda", CudaDevice::for_identity(&a.identity())) else { return };
    let driver = format!("CUDA on {}", cuda.name());
    let export = || buffer.export_fd().unwrap().memory;
    let Some(()) = set_up(table, "a valid CUDA memory import", cuda.import_memory(export())).map(drop) else { return };
    let d = export().description;
    let import_memory = |raw: RawFd, size: u64| {
        cuda.context().bind_to_thread().unwrap();
        let mut desc = sys::CUDA_EXTERNAL_MEMORY_HANDLE_DESC {
            type_: sys::CUexternalMemoryHandleType::CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD,
            // SAFETY: the union holds only integers and pointers, for which zero bytes are valid.
            handle: unsafe { std::mem::zeroed() },
            size,
            flags: 0,
            reserved: [0; 16],
        };
        desc.handle.fd = raw;
        let mut memory: sys::CUexternalMemory = std::ptr::null_mut();
        // SAFETY: the context is current; desc is initialised; failing imports provoked on purpose.
        let r = unsafe { sys::cuImportExternalMemory(&mut memory, &desc) };
        if r == sys::CUresult::CUDA_SUCCESS {
            // SAFETY: `memory` was imported just above and nothing was mapped from it, so no mapping
            // outlives it; destroyed once, here, with the context still current.
            unsafe { sys::cuDestroyExternalMemory(memory) };
        }
        r == sys::CUresult::CUDA_SUCCESS
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, size: u64, lava_fd: OwnedFd, description| {
        println!("CUDA memory: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, |fd| import_memory(fd, size));
        let lava = lava_import(|| cuda.import_memory(ExportedMemory::new(lava_fd, description)));
        table.add(Row { api: "CUDA memory", driver: driver.clone(), failure, raw, lava, memfd });
    };
    let mut twice = d;
    twice.allocation_size *= 2;
    twice.allocation_id = None;
    row("twice the allocation size", export().handle, d.allocation_size * 2, export().handle, twice);
    row(
        "a memfd that is no export",
        garbage_memfd(d.allocation_size),
        d.allocation_size,
        garbage_memfd(d.allocation_size),
        d,
    );
    row("/dev/null (a character device)", dev_null(), d.allocation_size, dev_null(), d);

    // Semaphores.
    let Some(timeline) = testing::or_skip(
        "semaphores",
        Semaphore::exportable(a, SemaphoreKind::Timeline, SemaphoreHandleKind::OpaqueFd),
    ) else {
        return;
    };
    let Some(()) =
        set_up(table, "a valid CUDA semaphore import", timeline.export().and_then(|e| cuda.import_semaphore(e)))
            .map(drop)
    else {
        return;
    };
    let import_semaphore = |raw: RawFd| {
        cuda.context().bind_to_thread().unwrap();
        let mut desc = sys::CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC {
            type_: sys::CUexternalSemaphoreHandleType::CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD,
            // SAFETY: the union holds only integers and pointers, for which zero bytes are valid.
            handle: unsafe { std::mem::zeroed() },
            flags: 0,
            reserved: [0; 16],
        };
        desc.handle.fd = raw;
        let mut semaphore: sys::CUexternalSemaphore = std::ptr::null_mut();
        // SAFETY: the context is current; desc is initialised; failing imports provoked on purpose.
        let r = unsafe { sys::cuImportExternalSemaphore(&mut semaphore, &desc) };
        if r == sys::CUresult::CUDA_SUCCESS {
            // SAFETY: `semaphore` was imported just above and no stream waits on or signals it;
            // destroyed once, here, with the context still current.
            unsafe { sys::cuDestroyExternalSemaphore(semaphore) };
        }
        r == sys::CUresult::CUDA_SUCCESS
    };
    let binary = |handle: OwnedFd| {
        ExportedSemaphore::new(
            handle,
            SemaphoreDescription {
                kind: SemaphoreKind::Binary,
                handle_kind: SemaphoreHandleKind::OpaqueFd,
                device: a.identity(),
            },
        )
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, lava_fd: OwnedFd| {
        println!("CUDA semaphore: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, import_semaphore);
        let lava = lava_import(|| cuda.import_semaphore(binary(lava_fd)));
        table.add(Row { api: "CUDA semaphore", driver: driver.clone(), failure, raw, lava, memfd });
    };
    row("/dev/null as an opaque fd", dev_null(), dev_null());
    row(
        "a timeline semaphore's fd imported as binary",
        timeline.export().unwrap().handle,
        timeline.export().unwrap().handle,
    );
}

#[cfg(feature = "opencl")]
fn opencl(table: &mut Table, buffer: &Buffer) {
    use cl3::ext as cl;
    use lava_flow::opencl::ClContext;

    let Some(ctx) = testing::or_skip("opencl", ClContext::for_identity(&buffer.context().identity())) else { return };
    if !ctx.info().external_memory_opaque_fd {
        return testing::skip("opencl", format!("{} cannot import opaque fds", ctx.info().name));
    }
    let driver = format!("OpenCL on {}", ctx.info().name);
    let Some(()) =
        set_up(table, "a valid OpenCL buffer import", ctx.import_buffer(buffer.export_fd().unwrap())).map(drop)
    else {
        return;
    };
    let d = buffer.export_fd().unwrap().memory.description;
    let create = |raw: RawFd, size: u64| {
        let props: [cl::cl_mem_properties; 6] = [
            cl::CL_EXTERNAL_MEMORY_HANDLE_OPAQUE_FD_KHR as cl::cl_mem_properties,
            raw as cl::cl_mem_properties,
            cl::CL_MEM_DEVICE_HANDLE_LIST_KHR,
            ctx.device() as cl::cl_mem_properties,
            cl::CL_MEM_DEVICE_HANDLE_LIST_END_KHR,
            0,
        ];
        // SAFETY: the property list is 0-terminated; no host pointer; failing imports provoked on
        // purpose.
        let made = unsafe {
            cl3::memory::create_buffer_with_properties(
                ctx.context(),
                props.as_ptr(),
                cl::CL_MEM_READ_WRITE,
                size as usize,
                std::ptr::null_mut(),
            )
        };
        match made {
            Ok(mem) => {
                // SAFETY: `mem` was created just above and no command or other object uses it; this
                // releases the one reference clCreateBuffer returned.
                let _ = unsafe { cl3::memory::release_mem_object(mem) };
                true
            }
            Err(_) => false,
        }
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, size: u64, lava_fd: OwnedFd, description| {
        println!("OpenCL memory: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, |fd| create(fd, size));
        let mut exported = buffer.export_fd().unwrap();
        exported.memory = ExportedMemory::new(lava_fd, description);
        let lava = lava_import(|| ctx.import_buffer(exported));
        table.add(Row { api: "OpenCL memory", driver: driver.clone(), failure, raw, lava, memfd });
    };
    let mut twice = d;
    twice.allocation_size *= 2;
    twice.allocation_id = None;
    row(
        "twice the allocation size",
        buffer.export_fd().unwrap().memory.handle,
        d.allocation_size * 2,
        buffer.export_fd().unwrap().memory.handle,
        twice,
    );
    row(
        "a memfd that is no export",
        garbage_memfd(d.allocation_size),
        d.allocation_size,
        garbage_memfd(d.allocation_size),
        d,
    );
    row("/dev/null (a character device)", dev_null(), d.allocation_size, dev_null(), d);
}

#[cfg(feature = "gl")]
fn gl(table: &mut Table, a: &VulkanContext, buffer: &Buffer) {
    use lava_flow::gl::{functions as f, GlContext};

    let Some(gl) = testing::or_skip("gl", GlContext::for_identity(&a.identity())) else { return };
    if !gl.info().memory_object_fd {
        return testing::skip("gl", format!("{} lacks GL_EXT_memory_object_fd", gl.info().renderer));
    }
    let driver = format!("GL on {}", gl.info().renderer);
    let export = || buffer.export_fd().unwrap().memory;
    let Some(()) = set_up(table, "a valid GL memory import", gl.import_memory(export())).map(drop) else { return };
    let d = export().description;
    let import = |raw: RawFd, size: u64, handle_type: u32| {
        let current = gl.make_current().unwrap();
        let mut name = 0;
        let _ = current.check("-", "-"); // start with no pending error
                                         // SAFETY: the context is current; one name out.
        unsafe { (current.create_memory_objects_ext)(1, &mut name) };
        // SAFETY: the context is current; failing imports provoked on purpose (GL reports them as
        // errors, or not at all).
        unsafe { (current.import_memory_fd_ext)(name, size, handle_type, raw) };
        let no_error = current.check("glImportMemoryFdEXT", "-").is_ok();
        // SAFETY: `current` keeps the context current; glIsMemoryObjectEXT takes any name and no
        // pointer.
        let exists = unsafe { (current.is_memory_object_ext)(name) } != 0;
        // SAFETY: `current` keeps the context current; `name` is the memory object this closure
        // created, deleted once, here; the pointer is to a local that outlives the call.
        unsafe { (current.delete_memory_objects_ext)(1, &name) };
        let _ = current.check("-", "-");
        no_error && exists
    };
    let mut row = |failure: &'static str, raw_fd: OwnedFd, raw: &dyn Fn(RawFd) -> bool, lava: Option<(OwnedFd, _)>| {
        println!("GL memory: {failure}");
        let memfd = is_memfd(&raw_fd);
        let raw = raw_import(raw_fd, raw);
        let lava = match lava {
            Some((handle, description)) => lava_import(|| gl.import_memory(ExportedMemory::new(handle, description))),
            None => Lava::NotExpressible,
        };
        table.add(Row { api: "GL memory", driver: driver.clone(), failure, raw, lava, memfd });
    };
    let mut twice = d;
    twice.allocation_size *= 2;
    twice.allocation_id = None;
    row(
        "twice the allocation size",
        export().handle,
        &|fd| import(fd, d.allocation_size * 2, f::HANDLE_TYPE_OPAQUE_FD_EXT),
        Some((export().handle, twice)),
    );
    row(
        "a memfd that is no export",
        garbage_memfd(d.allocation_size),
        &|fd| import(fd, d.allocation_size, f::HANDLE_TYPE_OPAQUE_FD_EXT),
        Some((garbage_memfd(d.allocation_size), d)),
    );
    row(
        "/dev/null (a character device)",
        dev_null(),
        &|fd| import(fd, d.allocation_size, f::HANDLE_TYPE_OPAQUE_FD_EXT),
        Some((dev_null(), d)),
    );
    // GL_HANDLE_TYPE_OPAQUE_WIN32_EXT: a valid enum of the extension family, not an fd type.
    row("a handle type GL does not know", export().handle, &|fd| import(fd, d.allocation_size, 0x9587), None);
    gl.check_deferred().unwrap();
}

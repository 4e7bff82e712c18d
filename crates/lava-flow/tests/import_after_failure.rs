//! Which failed imports leave a Vulkan device unusable, and whether lava-flow's handling of the
//! failure (the driver gets a copy of the fd; a `kcmp` witness decides whether lava-flow closes
//! it afterwards, fd.rs `import_consuming`) or the driver alone is responsible.
//!
//! Each case runs in a fresh child process (this test binary again, the case named in
//! `LAVA_FLOW_TEST_CHILD`), so no case spoils another. A child opens two devices on one GPU
//! (`common::two_devices`), makes an exportable 64 KiB buffer on the first with lava-flow's
//! defaults, provokes one failing import on the second, then tries on the second device: a valid
//! import of a fresh export, a plain `Buffer::new` of 64 KiB and a `vkCreateFence`; last, a valid
//! import on a new, third device of the same process. Every failure is provoked twice:
//!
//! - `raw`: `vkAllocateMemory` with `VkImportMemoryFdInfoKHR` on a `dup` of the fd (dedicated to
//!   a matching buffer where the export is dedicated). Right after the call, on the child's one
//!   test thread, `fcntl(F_GETFD)` says whether the driver closed the number; where it did not
//!   and `kcmp` says the number still names the fd handed over, the test closes it;
//! - `lava-flow`: `Buffer::import` of the same fd and description, whose account of the fd
//!   (`fd::failed_import_fds`) is printed.
//!
//! The table is the result (run with `--no-capture`). Asserted, as it must hold on every
//! driver: every child ran and printed its row, the control rows are OK throughout, and every
//! provoked import either failed or is reported as accepted.

mod common;

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::process::Command;

use ash::vk;
use lava_flow::fd::failed_import_fds;
use lava_flow::raw_gpu_handle::{ExportedMemory, MemoryDescription};
use lava_flow::vulkan::memory_properties;
use lava_flow::{Buffer, BufferOptions, DriverCode, VulkanContext};

const SIZE: u64 = 64 << 10;
const TEST: &str = "a_failed_import_and_the_calls_after_it";
const ROW: &str = "@@row|";
const ROUTES: [&str; 2] = ["raw", "lava-flow"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Control,
    Twice,
    OneByteMore,
    Memfd,
    DevNull,
    OtherType,
    CloneOfImported,
}

const CASES: [(&str, Case); 7] = [
    ("control (no failure)", Case::Control),
    ("wrong size (2x)", Case::Twice),
    ("wrong size (+1 byte)", Case::OneByteMore),
    ("memfd that is no export", Case::Memfd),
    ("/dev/null", Case::DevNull),
    ("another memory type", Case::OtherType),
    ("clone of an export imported once", Case::CloneOfImported),
];

const HEADER: [&str; 8] = [
    "case",
    "route",
    "failing import",
    "the fd after it",
    "fresh import, same device",
    "Buffer::new 64 KiB",
    "vkCreateFence",
    "import on a new device",
];

#[test]
fn a_failed_import_and_the_calls_after_it() {
    if let Some(role) = common::child_role() {
        return child(&role);
    }
    let Some((a, b)) = common::two_devices() else { return };
    let driver = format!("{} ({})", a.info().name, a.info().driver_name);
    drop((a, b));
    let exe = std::env::current_exe().expect("test binary path");
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut problems = Vec::new();
    for (index, (name, case)) in CASES.iter().enumerate() {
        for route in ROUTES {
            let out = Command::new(&exe)
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .env("LAVA_FLOW_TEST_CHILD", format!("{index}:{route}"))
                .output()
                .expect("spawn the child test process");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let row = stdout
                .lines()
                .find_map(|l| l.strip_prefix(ROW))
                .map(|r| r.split('|').map(String::from).collect::<Vec<_>>());
            let row = match row {
                Some(row) if out.status.success() && row.len() == HEADER.len() => row,
                _ => {
                    problems.push(format!(
                        "{name} / {route}: the child exited with {:?} without a full row\n--- stdout\n{stdout}\n\
                         --- stderr\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                    let mut row = vec![name.to_string(), route.to_string(), format!("child died: {:?}", out.status)];
                    row.resize(HEADER.len(), "-".into());
                    row
                }
            };
            if *case == Case::Control {
                if row[2] != "none" || row[4..].iter().any(|c| c != "OK") {
                    problems.push(format!("{name} / {route}: the control row is not OK throughout: {row:?}"));
                }
            } else if !(row[2].starts_with("VK_ERROR")
                || row[2].starts_with("refused")
                || row[2].starts_with("accepted")
                || row[2].starts_with("n/a")
                || row[2].starts_with("child died"))
            {
                problems
                    .push(format!("{name} / {route}: the provoked import neither failed nor was accepted: {row:?}"));
            }
            rows.push(row);
        }
    }
    println!("\nImporting device: {driver}");
    println!("| {} |", HEADER.join(" | "));
    println!("|{}", "---|".repeat(HEADER.len()));
    for row in &rows {
        println!("| {} |", row.join(" | "));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// One case in this (child) process: prints its row.
fn child(role: &str) {
    let (index, route) = role.split_once(':').expect("LAVA_FLOW_TEST_CHILD is CASE:ROUTE");
    let (name, case) = CASES[index.parse::<usize>().expect("a case index")];
    let raw = route == "raw";
    let (a, b) = common::two_devices().expect("the parent opened two devices on this GPU");
    let exporter = Buffer::new(&a, &BufferOptions::new(SIZE)).expect("an exportable 64 KiB buffer");

    let (result, fd) = provoke(case, raw, &b, &exporter);

    let fresh = outcome(exporter.export_fd().and_then(|e| Buffer::import(&b, e)).map(drop));
    let plain = outcome(Buffer::new(&b, &BufferOptions::new(SIZE)).map(drop));
    // SAFETY: a default create info, a local that outlives the call; `b` keeps the device alive.
    let fence = match unsafe { b.device().create_fence(&vk::FenceCreateInfo::default(), None) } {
        Ok(fence) => {
            // SAFETY: the fence was created just above and never submitted; destroyed once, here.
            unsafe { b.device().destroy_fence(fence, None) };
            "OK".to_string()
        }
        Err(e) => format!("VK_{e:?}"),
    };
    let new_device = outcome(
        VulkanContext::with_uuid(a.identity().device_uuid)
            .and_then(|c| exporter.export_fd().and_then(|e| Buffer::import(&c, e)).map(drop)),
    );
    let row = [name.to_string(), route.to_string(), result, fd, fresh, plain, fence, new_device];
    // On a line of its own: the test harness prints "test NAME ... " without a newline first.
    println!("\n{ROW}{}", row.map(|c| c.replace('|', "/")).join("|"));
}

/// "OK", or the driver's code, or lava-flow's refusal in short.
fn outcome(result: lava_flow::Result<()>) -> String {
    match result {
        Ok(()) => "OK".into(),
        Err(e) => short(&e),
    }
}

fn short(e: &lava_flow::Error) -> String {
    match e.driver_code() {
        Some(DriverCode::Vulkan(r)) => format!("VK_{r:?}"),
        Some(code) => format!("{code:?}"),
        None => {
            let text = e.to_string();
            let first: String = text.lines().next().unwrap_or("").chars().take(70).collect();
            format!("refused by lava-flow: {first}")
        }
    }
}

/// Provokes the case's failing import on `b` through the route; returns what the import did and
/// what became of the fd.
fn provoke(case: Case, raw: bool, b: &VulkanContext, exporter: &Buffer) -> (String, String) {
    let export = || exporter.export_fd().expect("an export").memory;
    let d = export().description;
    let (fd, description, _first) = match case {
        Case::Control => return ("none".into(), "-".into()),
        Case::Twice | Case::OneByteMore => {
            let mut wrong = d;
            wrong.allocation_size = if case == Case::Twice { d.allocation_size * 2 } else { d.allocation_size + 1 };
            wrong.allocation_id = None; // as from another process: no exporter here to compare with
            (export().handle, wrong, None)
        }
        Case::Memfd => {
            let fd = rustix::fs::memfd_create("not-an-export", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            rustix::fs::ftruncate(&fd, d.allocation_size + (1 << 20)).unwrap();
            (fd, d, None)
        }
        Case::DevNull => (std::fs::File::open("/dev/null").unwrap().into(), d, None),
        Case::OtherType => {
            let props = b.memory_properties();
            let flags = |i: u32| props.memory_types[i as usize].property_flags;
            let Some(t) = (0..props.memory_type_count)
                .find(|&i| i != d.memory_type_index && flags(i) != flags(d.memory_type_index))
            else {
                return ("n/a: one kind of memory type only".into(), "-".into());
            };
            let mut other = d;
            other.memory_type_index = t;
            other.memory_properties = memory_properties(flags(t));
            other.allocation_id = None;
            (export().handle, other, None)
        }
        Case::CloneOfImported => {
            let exported = exporter.export_fd().expect("an export");
            let clone = exported.memory.handle.try_clone().expect("dup");
            let first = match Buffer::import(b, exported) {
                Ok(first) => first,
                Err(e) => return (format!("n/a: the first import failed: {}", short(&e)), "-".into()),
            };
            let mut again = d;
            again.allocation_id = None; // reach the driver, not an importer's cache
            (clone, again, Some(first))
        }
    };
    if raw {
        raw_import(b, exporter, fd, &description)
    } else {
        lava_import(b, exporter, fd, description)
    }
}

/// `vkAllocateMemory` on a `dup` of `fd`; the number is looked at right after the call (this is
/// the only thread of the child that opens or closes fds) and closed here only if the driver left
/// it and it still names `fd`'s open file description.
fn raw_import(b: &VulkanContext, exporter: &Buffer, fd: OwnedFd, d: &MemoryDescription) -> (String, String) {
    let device = b.device();
    let number = fd.try_clone().expect("dup").into_raw_fd();
    let opaque = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
    let dedicated_to = d.dedicated.then(|| {
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(opaque);
        let info = vk::BufferCreateInfo::default()
            .size(exporter.size())
            .usage(exporter.usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: `info` and its chain are locals that outlive the call; the buffer is destroyed below.
        unsafe { device.create_buffer(&info, None) }.expect("a buffer to dedicate the import to")
    });
    let mut import = vk::ImportMemoryFdInfoKHR::default().handle_type(opaque).fd(number);
    let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(dedicated_to.unwrap_or_default());
    let mut info =
        vk::MemoryAllocateInfo::default().allocation_size(d.allocation_size).memory_type_index(d.memory_type_index);
    info = info.push_next(&mut import);
    if dedicated_to.is_some() {
        info = info.push_next(&mut dedicated);
    }
    // SAFETY: this test provokes failing imports on purpose (the Vulkan specification calls most of
    // them invalid usage; the point is what the driver does after them). `info` and its chain
    // outlive the call; memory it returns is freed at once.
    let allocated = unsafe { device.allocate_memory(&info, None) };
    let (result, after) = match allocated {
        Ok(memory) => {
            // SAFETY: allocated just above, never bound or mapped; freed once, here.
            unsafe { device.free_memory(memory, None) };
            ("accepted".to_string(), "the driver owns it".to_string())
        }
        Err(e) => {
            // SAFETY: F_GETFD only reads the fd table entry; a closed number gives EBADF.
            let after = if unsafe { libc::fcntl(number, libc::F_GETFD) } == -1 {
                "closed by the driver".to_string()
            } else {
                // SAFETY: the number is open (just checked) and no other thread of this process
                // opens or closes fds while this runs.
                let borrowed = unsafe { BorrowedFd::borrow_raw(number) };
                match lava_flow::fd::same_open_file_description(borrowed, fd.as_fd()) {
                    Ok(true) => {
                        // SAFETY: the driver refused the import and left the copy: ours again,
                        // closed once, here.
                        drop(unsafe { OwnedFd::from_raw_fd(number) });
                        "left open (closed by the test)".to_string()
                    }
                    Ok(false) => "closed by the driver (number reused)".to_string(),
                    Err(e) => format!("left open, kcmp refused ({e}): not closed"),
                }
            };
            (format!("VK_{e:?}"), after)
        }
    };
    if let Some(buffer) = dedicated_to {
        // SAFETY: created above, never bound (or bound only to memory already freed) nor used.
        unsafe { device.destroy_buffer(buffer, None) };
    }
    (result, after)
}

/// `Buffer::import` of `fd` with `description`; lava-flow's account of the fd.
fn lava_import(b: &VulkanContext, exporter: &Buffer, fd: OwnedFd, description: MemoryDescription) -> (String, String) {
    let mut exported = exporter.export_fd().expect("an export");
    exported.memory = ExportedMemory::new(fd, description);
    let before = failed_import_fds();
    let result = Buffer::import(b, exported);
    let d = failed_import_fds().since(&before);
    match result {
        Ok(imported) => {
            drop(imported);
            ("accepted".into(), "the driver owns it".into())
        }
        Err(e) => {
            let after = if d.total() == 0 {
                "lava-flow refused before the driver"
            } else if d.closed_by_driver > 0 {
                "closed by the driver"
            } else if d.number_reused > 0 {
                "closed by the driver (number reused)"
            } else if d.closed_here > 0 {
                "left open; lava-flow closed its private copy"
            } else {
                "left open; lava-flow left the shared copy"
            };
            (short(&e), after.into())
        }
    }
}

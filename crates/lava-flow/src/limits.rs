//! How much memory a request may take, checked before anything is allocated.
//!
//! Host memory (memfds, shared mappings, staging copies) is checked against what the machine can
//! still give this process: `MemAvailable` in `/proc/meminfo`, and the memory cgroup's limit less
//! its usage where one is set (cgroup v2 `memory.max` - `memory.current`, v1
//! `memory.limit_in_bytes` - `memory.usage_in_bytes`). A memfd is not a file of `/dev/shm`: its
//! pages are anonymous shared memory (`Shmem` in `/proc/meminfo`), charged to RAM and the cgroup
//! as they are touched, so the free space of `/dev/shm` says nothing about it.
//!
//! Device memory is checked by the Vulkan layer against the heap sizes, the device's
//! `maxMemoryAllocationSize` and `maxBufferSize`, and the heap budget (VK_EXT_memory_budget)
//! where the driver reports one; memory of a CPU or integrated device, or of a heap that is not
//! device-local, is host memory too and is also checked here.
//!
//! Nothing here reserves memory: a check passes a request the machine can hold now, and another
//! process may still take the memory first. Its purpose is to refuse, with a clear error, the
//! request that could never fit (a `--size 100G` on a 23 GiB machine) before it fills memory
//! until the kernel's OOM killer ends something.

use crate::{Error, Result};

/// What this process may still allocate on the host, and which limit says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure comes from ("MemAvailable in /proc/meminfo", "the memory cgroup ...").
    pub source: String,
}

/// `MemAvailable` from the text of `/proc/meminfo`, in bytes.
fn parse_meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// A cgroup memory figure; "max" (v2) or a huge number (v1's "no limit") is `None`.
fn parse_cgroup_bytes(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    // cgroup v1 says "no limit" with a page-rounded i64::MAX.
    (n < 1 << 60).then_some(n)
}

/// The memory cgroup's headroom (limit less usage), where this process is in one with a limit.
fn cgroup_headroom() -> Option<HostMemoryLimit> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |path: String| std::fs::read_to_string(path).ok();
    // cgroup v2: "0::/path".
    if let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
        if let (Some(max), Some(current)) = (read(format!("{dir}/memory.max")), read(format!("{dir}/memory.current"))) {
            if let (Some(max), Some(current)) = (parse_cgroup_bytes(&max), parse_cgroup_bytes(&current)) {
                return Some(HostMemoryLimit {
                    bytes: max.saturating_sub(current),
                    source: format!("the memory cgroup's memory.max less memory.current ({dir})"),
                });
            }
        }
    }
    // cgroup v1: "N:memory:/path" (or "N:...,memory,...:/path").
    let path = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then_some(path)
    })?;
    for dir in [format!("/sys/fs/cgroup/memory{}", path.trim_end_matches('/')), "/sys/fs/cgroup/memory".into()] {
        let limit = read(format!("{dir}/memory.limit_in_bytes")).and_then(|t| parse_cgroup_bytes(&t));
        let usage = read(format!("{dir}/memory.usage_in_bytes")).and_then(|t| parse_cgroup_bytes(&t));
        if let (Some(limit), Some(usage)) = (limit, usage) {
            return Some(HostMemoryLimit {
                bytes: limit.saturating_sub(usage),
                source: format!("the memory cgroup's limit less its usage ({dir})"),
            });
        }
    }
    None
}

/// What this process may still allocate on the host: the smaller of `MemAvailable` and the
/// memory cgroup's headroom. `None` where neither can be read (not Linux, no `/proc`).
pub fn host_memory_available() -> Option<HostMemoryLimit> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_available(&t))
        .map(|bytes| HostMemoryLimit { bytes, source: "MemAvailable in /proc/meminfo".into() });
    match (meminfo, cgroup_headroom()) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    }
}

/// Bytes in words: "1.5 GiB" (binary units), exact bytes below 1 KiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Refuses `bytes` of host memory for `what` when they exceed `limit`.
pub(crate) fn check_against(what: &str, bytes: u64, limit: &HostMemoryLimit, advice: &str) -> Result<()> {
    if bytes <= limit.bytes {
        return Ok(());
    }
    Err(Error::OutOfMemory {
        code: None,
        what: format!(
            "{what} needs {bytes} bytes ({}) of host memory, and this machine can give this process {} bytes ({}) \
             now ({})",
            human_bytes(bytes),
            limit.bytes,
            human_bytes(limit.bytes),
            limit.source
        ),
        advice: advice.to_owned(),
    })
}

/// Requests below this many bytes are not checked: reading `/proc` costs more than such an
/// allocation, and one that small cannot take a machine down by itself.
pub const CHECK_FLOOR: u64 = 16 << 20;

/// Checks, before allocating, that `bytes` of host memory for `what` fit in what the machine can
/// still give this process ([`host_memory_available`]); passes where that cannot be read, and
/// below [`CHECK_FLOOR`]. `advice` says what to do instead ("ask for a smaller size").
pub fn check_host_memory(what: &str, bytes: u64, advice: &str) -> Result<()> {
    if bytes < CHECK_FLOOR {
        return Ok(());
    }
    match host_memory_available() {
        Some(limit) => check_against(what, bytes, &limit, advice),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_figures_parse() {
        let text = "MemTotal:       24683664 kB\nMemFree:  100 kB\nMemAvailable:   24252836 kB\n";
        assert_eq!(parse_meminfo_available(text), Some(24_252_836 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_cgroup_bytes("max\n"), None);
        assert_eq!(parse_cgroup_bytes("9223372036854771712\n"), None, "v1's no-limit value");
        assert_eq!(parse_cgroup_bytes("1073741824\n"), Some(1 << 30));
    }

    #[test]
    fn a_request_over_the_limit_names_both_and_the_source() {
        let limit = HostMemoryLimit { bytes: 1 << 30, source: "MemAvailable in /proc/meminfo".into() };
        check_against("a ring", 1 << 30, &limit, "ask for less").unwrap();
        let e = check_against("a ring of 4 slots", (1 << 30) + 1, &limit, "use smaller slots").unwrap_err();
        let text = e.to_string();
        for part in ["a ring of 4 slots", "1073741825 bytes", "1073741824 bytes (1.0 GiB)", "MemAvailable", "smaller"] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        assert!(matches!(e, Error::OutOfMemory { .. }));
    }

    #[test]
    fn this_machine_reports_its_available_memory() {
        let limit = host_memory_available().expect("Linux has /proc/meminfo");
        assert!(limit.bytes > 0, "{limit:?}");
        let e = check_host_memory("an absurd request", u64::MAX, "ask for less").unwrap_err();
        assert!(e.to_string().contains("an absurd request"), "{e}");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 B");
    }
}

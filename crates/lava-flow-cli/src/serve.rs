//! `lava-flow serve`: allocate, fill a known pattern, and share it with every client of a Unix
//! socket (the protocol of docs/PROTOCOL.md), through `lava_flow_diag::pattern::serve_pattern`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lava_flow::ipc::{ObjectDescription, ServerConfig, ServerStats};
use lava_flow::MemoryLocation;
use lava_flow_diag::pattern::{serve_pattern, ServeMemory, ServeOptions};

use crate::stop::StopSignal;
use crate::table::{self, Table};
use crate::CmdResult;

/// Where `serve` allocates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Device-local Vulkan memory, shared as an opaque fd.
    Gpu,
    /// Host-visible Vulkan memory, shared as an opaque fd.
    HostVisible,
    /// A memfd any process can mmap, imported into Vulkan as host memory.
    SharedHost,
    /// A sealed memfd and no GPU at all.
    Host,
}

/// Which API allocates the served memory.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Vulkan allocates at --location.
    Vulkan,
    /// CUDA allocates device memory with its virtual memory API (`cuMemCreate`) on the CUDA device
    /// --device, exported as an opaque fd (--location is ignored).
    Cuda,
}

#[derive(clap::Args)]
pub struct Args {
    /// The Unix socket to listen on (created mode 0600 unless --allow-uid is given).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Bytes to allocate (suffixes K, M, G: powers of 1024; "1.5M" works). A size the device or
    /// the machine cannot hold is refused before anything is allocated.
    #[arg(long, default_value = "1M", value_parser = parse_nonzero_size)]
    pub size: u64,
    /// Where the memory lives.
    #[arg(long, value_enum, default_value = "gpu")]
    pub location: Location,
    /// Which API allocates: Vulkan (at --location) or CUDA (device memory from `cuMemCreate`,
    /// exported as an opaque fd; --device is then the CUDA ordinal).
    #[arg(long, value_enum, default_value = "vulkan")]
    pub allocator: Allocator,
    /// Also share a 2D RGBA8 optimal-tiled image of this size (Vulkan locations only).
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = parse_extent)]
    pub image: Option<(u32, u32)>,
    /// Vulkan device index, or CUDA device ordinal with --allocator cuda (see `lava-flow info`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Serve this many clients, then exit (default: until SIGINT or SIGTERM).
    #[arg(long, value_name = "N")]
    pub clients: Option<u64>,
    /// Also accept clients running as this user id (default: only the server's own user).
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Permission bits of the socket file, in octal (default 600; 666 when --allow-uid is given,
    /// since other users need write permission on the socket to connect).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
}

/// Parses a byte count with an optional K/M/G suffix (powers of 1024; "KiB" and "k" work too)
/// and an optional decimal fraction ("1.5M") that must come to a whole number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let not_a_size = || format!("`{text}` is not a size (e.g. 4096, 64K, 1.5M, 2G)");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(not_a_size());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown size unit in `{text}` (use K, M or G, powers of 1024)")),
    };
    let too_large = || format!("`{text}` is too large");
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
    let mut bytes = whole.checked_mul(1 << shift).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // fraction / 10^digits of a unit, in exact integer arithmetic.
        let digits = u32::try_from(fraction.len()).ok().filter(|d| *d <= 18).ok_or_else(not_a_size)?;
        let numerator = u128::from(fraction.parse::<u64>().map_err(|_| not_a_size())?) << shift;
        let denominator = 10u128.pow(digits);
        if numerator % denominator != 0 {
            return Err(format!("`{text}` is not a whole number of bytes"));
        }
        let part = u64::try_from(numerator / denominator).map_err(|_| too_large())?;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// A size of at least one byte.
fn parse_nonzero_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err(format!("`{text}` is zero bytes: serve at least one byte")),
        n => Ok(n),
    }
}

fn parse_extent(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(|| format!("`{text}` is not WIDTHxHEIGHT (e.g. 256x256)"))?;
    let dim = |s: &str| s.trim().parse::<u32>().ok().filter(|v| *v > 0);
    match (dim(w), dim(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!("`{text}` is not WIDTHxHEIGHT with both at least 1")),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal mode (e.g. 600, 660)"))
}

/// One line saying what an object is.
pub fn describe(d: &ObjectDescription) -> String {
    match d {
        ObjectDescription::Memory(m) => format!("{} memory, {}", m.handle_kind, table::bytes(m.allocation_size)),
        ObjectDescription::Buffer { memory, buffer } => format!(
            "{} buffer, {} at offset {} of a {} allocation",
            memory.handle_kind,
            table::bytes(buffer.size),
            buffer.offset,
            table::bytes(memory.allocation_size)
        ),
        ObjectDescription::Texture { memory, texture } => format!(
            "{} texture, {} {}x{}x{} {:?}",
            memory.handle_kind,
            texture.format.name(),
            texture.extent.width,
            texture.extent.height,
            texture.extent.depth,
            texture.tiling
        ),
        ObjectDescription::Semaphore(s) => format!("{:?} semaphore, {}", s.kind, s.handle_kind),
        ObjectDescription::Fence(f) => format!("fence, {}", f.handle_kind),
    }
}

fn vulkan_memory(location: Location, device: usize) -> ServeMemory {
    match location {
        Location::Gpu => ServeMemory::Vulkan(MemoryLocation::GpuVulkan { device_id: device }),
        Location::HostVisible => ServeMemory::Vulkan(MemoryLocation::HostVisibleVulkan { device_id: device }),
        Location::SharedHost => ServeMemory::Vulkan(MemoryLocation::SharedHost { device_id: device }),
        Location::Host => ServeMemory::Host,
    }
}

#[cfg(feature = "cuda")]
fn cuda_memory(ordinal: usize) -> Result<ServeMemory, lava_flow::Error> {
    Ok(ServeMemory::Cuda { ordinal })
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory(_ordinal: usize) -> Result<ServeMemory, lava_flow::Error> {
    Err(lava_flow::Error::unsupported(
        "serving CUDA-allocated memory",
        "this lava-flow was built without the `cuda` feature",
        "the CUDA allocator is behind the `cuda` feature",
        "build lava-flow-cli with its default features",
    ))
}

pub fn run(args: &Args) -> CmdResult {
    // SIGINT and SIGTERM end serving cleanly: the last line says so and the socket is removed.
    let stop = StopSignal::install()?;
    let memory = match args.allocator {
        Allocator::Cuda => cuda_memory(args.device)?,
        Allocator::Vulkan => vulkan_memory(args.location, args.device),
    };
    let default_mode = if args.allow_uid.is_empty() { 0o600 } else { 0o666 };
    let config = ServerConfig {
        allow_uids: args.allow_uid.clone(),
        socket_mode: args.socket_mode.unwrap_or(default_mode),
        ..ServerConfig::default()
    };
    let options = ServeOptions { socket: args.socket.clone(), size: args.size, memory, image: args.image, config };
    let server = serve_pattern(&options)?;
    let report = server.report();
    let mut out = format!("serving on {}\n", args.socket.display());
    if let Some(device) = &report.device {
        out.push_str(&format!("device: {device}\n"));
    }
    let mut objects = Table::new(&["object", "what"]);
    for o in &report.objects {
        objects.row([o.name.clone(), describe(&o.description)]);
    }
    out.push_str(&format!("\n{}", objects.render(2)));
    if let Some(why) = &report.semaphore_note {
        out.push_str(&format!("no timeline semaphore shared: {why}\n"));
    }
    let mut steps = Table::new(&["step", ">took"]);
    for s in &report.steps {
        steps.row([s.what.clone(), table::duration(s.took)]);
    }
    out.push_str(&format!("\n{}\n", steps.render(2)));
    out.push_str(
        match args.clients {
            Some(n) => format!("waiting for {n} client(s)\n"),
            None => "serving until SIGINT (Ctrl-C) or SIGTERM\n".to_string(),
        }
        .as_str(),
    );
    crate::emit(&out)?;

    // Say what happens as it happens; stop after `--clients` connections are served and closed.
    // A signal is seen within a tenth of a second.
    let mut seen = ServerStats::default();
    loop {
        let (stats, _) = server.server().wait_for(Duration::from_millis(100), |s| *s != seen);
        if stats != seen {
            let news = client_news(&seen, &stats);
            if !news.is_empty() {
                crate::emit(&news)?;
            }
            seen = stats;
        }
        if args.clients.is_some_and(|n| seen.connections_closed + seen.connections_refused >= n) {
            break;
        }
        if stop.stopped() {
            let served = seen.connections_closed;
            // Dropping the server disconnects any client, frees the memory and removes the socket.
            drop(server);
            crate::emit(&format!(
                "stopped by {}: {served} client(s) served; {} removed\n",
                stop.reason(),
                args.socket.display()
            ))?;
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lines for what changed between two snapshots of the server's counters.
fn client_news(before: &ServerStats, now: &ServerStats) -> String {
    let mut out = String::new();
    if now.connections_accepted > before.connections_accepted {
        out.push_str(&format!("client connected ({} so far)\n", now.connections_accepted));
    }
    if now.objects_sent > before.objects_sent {
        out.push_str(&format!("sent {} object(s)\n", now.objects_sent - before.objects_sent));
    }
    if now.connections_closed > before.connections_closed {
        out.push_str(&format!("client done ({} served)\n", now.connections_closed));
    }
    if now.connections_refused > before.connections_refused {
        out.push_str(&format!("refused a client of another user ({} so far)\n", now.connections_refused));
    }
    if now.messages_rejected > before.messages_rejected {
        out.push_str(&format!("rejected a malformed message ({} so far)\n", now.messages_rejected));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_fractions_of_whole_bytes() {
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".25G"), Ok(1 << 28));
        assert_eq!(parse_size("2.0"), Ok(2));
        assert_eq!(parse_size("1.5"), Err("`1.5` is not a whole number of bytes".into()));
        let e = parse_size("0.1K").unwrap_err();
        assert!(e.contains("whole number of bytes"), "{e}");
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size(".").is_err());
        assert!(parse_size("1.5T").unwrap_err().contains("unknown size unit"));
        assert!(parse_nonzero_size("0").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn extents_and_modes_parse() {
        assert_eq!(parse_extent("256x128"), Ok((256, 128)));
        assert!(parse_extent("0x4").is_err());
        assert!(parse_extent("256").is_err());
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
    }
}

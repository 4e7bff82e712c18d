//! `lava-flow serve`: allocate, fill a known pattern, and share it with every client of a Unix
//! socket (the protocol of docs/PROTOCOL.md).

use std::path::PathBuf;

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
}

/// What `serve` shares.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Buffer,
    Image,
}

#[derive(clap::Args)]
pub struct Args {
    /// The Unix socket to listen on (created mode 0600).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Bytes to allocate (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub size: u64,
    /// Where the memory lives.
    #[arg(long, value_enum, default_value = "gpu")]
    pub location: Location,
    /// Share a buffer or a 2D RGBA8 image.
    #[arg(long, value_enum, default_value = "buffer")]
    pub object: Object,
    /// Vulkan device index (see `lava-flow info`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Serve this many clients, then exit (default: until interrupted).
    #[arg(long, value_name = "N")]
    pub clients: Option<u32>,
    /// Also accept clients running as this user id (default: only the server's own user).
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
}

/// Parses a byte count with an optional K/M/G suffix (powers of 1024; "KiB" and "k" work too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size (e.g. 4096, 64K, 1M, 2G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown size unit in `{text}` (use K, M or G)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

pub fn run(args: &Args) -> CmdResult {
    Err(format!(
        "cannot serve on {}: lava-flow's cross-process protocol (lava_flow::ipc) is not part of this build yet",
        args.socket.display()
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
}

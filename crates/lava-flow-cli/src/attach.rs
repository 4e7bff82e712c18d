//! `lava-flow attach`: connect to a `lava-flow serve`, import what it shares into one API, verify
//! the pattern, and print what arrived and how long each step took (`lava_flow_diag::pattern::attach`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lava_flow::DeviceSelector;
use lava_flow_diag::pattern::{attach, AttachApi, AttachOptions};

use crate::table::{self, Table};
use crate::CmdResult;

/// The API that imports.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Vulkan,
    Cuda,
    Opencl,
    Gl,
    /// No GPU API: map shared host memory directly.
    Host,
}

#[derive(clap::Args)]
pub struct Args {
    /// The server's Unix socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Which API imports the memory.
    #[arg(long, value_enum)]
    pub api: Api,
    /// Vulkan device index to import into with `--api vulkan` (default: the best device).
    #[arg(long)]
    pub device: Option<usize>,
    /// Longest wait for the server's reply, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> CmdResult {
    let api = match args.api {
        Api::Vulkan => AttachApi::Vulkan,
        Api::Cuda => AttachApi::Cuda,
        Api::Opencl => AttachApi::OpenCl,
        Api::Gl => AttachApi::Gl,
        Api::Host => AttachApi::Host,
    };
    let options = AttachOptions {
        device: args.device.map_or(DeviceSelector::Default, DeviceSelector::Index),
        timeout: Duration::from_secs(args.timeout),
        ..AttachOptions::new(&args.socket, api)
    };
    let report = attach(&options)?;
    if args.json {
        crate::emit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("attached to {} with {}\n", args.socket.display(), report.api);
    if let Some(device) = &report.device {
        out.push_str(&format!("device: {device}\n"));
    }
    let mut objects = Table::new(&["object", "kind", ">checked", "what"]);
    for o in &report.objects {
        let what = match &o.note {
            Some(note) => format!("{} ({note})", o.summary),
            None => o.summary.clone(),
        };
        let checked = if o.kind == "semaphore" { "-".to_string() } else { table::bytes(o.bytes_checked) };
        objects.row([o.name.clone(), o.kind.to_string(), checked, what]);
    }
    out.push_str(&format!("\n{}", objects.render(2)));
    let mut steps = Table::new(&["step", ">took"]);
    for s in &report.steps {
        steps.row([s.what.clone(), table::duration(s.took)]);
    }
    out.push_str(&format!("\n{}\npattern verified in every object\n", steps.render(2)));
    for o in report.objects.iter().filter(|o| o.value.is_some()) {
        out.push_str(&format!("{} reached {} before the pattern was read\n", o.name, o.value.unwrap_or_default()));
    }
    crate::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

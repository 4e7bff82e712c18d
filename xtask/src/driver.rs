//! Finding a Vulkan driver (and Mesa's EGL for the GL tests, and Open MPI for the `mpi` feature),
//! installing Mesa's software drivers and Open MPI with apt-get where they are missing, and
//! pointing the loader at lavapipe on machines with no GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the Vulkan loader looks for driver manifests (ICD json files) on Linux.
const ICD_DIRS: [&str; 3] = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];
/// Where libglvnd looks for EGL vendor manifests.
const EGL_VENDOR_DIRS: [&str; 2] = ["/usr/share/glvnd/egl_vendor.d", "/etc/glvnd/egl_vendor.d"];
/// Mesa's software drivers: lavapipe (Vulkan), llvmpipe (GL through EGL), and the loaders.
const MESA_SOFTWARE: [&str; 5] = ["mesa-vulkan-drivers", "libvulkan1", "libegl1", "libegl-mesa0", "libgl1-mesa-dri"];

/// `XTASK_SYSROOT` prefixes every path the checks look at, so the set-up path can be tried on a
/// machine that has the drivers (`XTASK_SYSROOT=/tmp/empty cargo xtask demo`).
fn sys(path: impl AsRef<Path>) -> PathBuf {
    match std::env::var_os("XTASK_SYSROOT") {
        Some(root) => Path::new(&root).join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref())),
        None => path.as_ref().to_path_buf(),
    }
}

/// One thing a driver set-up needs, and the Debian/Ubuntu package that provides it.
struct Need {
    what: &'static str,
    why: &'static str,
    package: &'static str,
}

/// Checks for a Vulkan driver and Mesa's EGL; installs what is missing (as root) or prints the
/// command to run and stops.
pub fn ensure_drivers() -> Result<(), String> {
    let needs = missing();
    if needs.is_empty() {
        report_found();
        return Ok(());
    }
    let vulkan_missing = needs.iter().any(|n| n.package == "mesa-vulkan-drivers" || n.package == "libvulkan1");
    // No Vulkan at all: install the whole software stack, as the README promises.
    let mut packages: Vec<&str> = if vulkan_missing { MESA_SOFTWARE.to_vec() } else { Vec::new() };
    for n in &needs {
        if !packages.contains(&n.package) {
            packages.push(n.package);
        }
    }
    println!("xtask: driver set-up needed:");
    for n in &needs {
        println!("  - missing {}: {} (package {})", n.what, n.why, n.package);
    }
    println!("xtask: Mesa's software drivers let lava-flow run on the CPU; needed: {}", packages.join(" "));
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err(format!(
            "apt-get is not available on this machine; install with your package manager: {} \
             (a Vulkan loader, Mesa's lavapipe Vulkan driver, and Mesa's EGL with llvmpipe)",
            packages.join(" ")
        ));
    }
    let install = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if !is_root() {
        return Err(format!(
            "installing drivers needs root. Run:\n\n    sudo apt-get update && sudo {install}\n\nthen run this command again"
        ));
    }
    println!("xtask: installing them with apt-get (running as root)");
    let mut update = Command::new("apt-get");
    update.arg("update");
    run_apt(update)?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "--no-install-recommends"]).args(&packages).env("DEBIAN_FRONTEND", "noninteractive");
    run_apt(cmd)?;
    let still = missing();
    if !still.is_empty() {
        let list: Vec<String> = still.iter().map(|n| format!("{} ({})", n.what, n.package)).collect();
        return Err(format!("after installing, still missing: {}", list.join(", ")));
    }
    report_found();
    Ok(())
}

fn run_apt(mut cmd: Command) -> Result<(), String> {
    println!("xtask: {}", crate::run::describe(&cmd));
    let status = cmd.status().map_err(|e| format!("could not run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", crate::run::describe(&cmd)))
    }
}

fn missing() -> Vec<Need> {
    let mut needs = Vec::new();
    if icd_manifests().is_empty() {
        needs.push(Need {
            what: "a Vulkan driver manifest in /usr/share/vulkan/icd.d",
            why: "lava-flow allocates and exports memory through Vulkan",
            package: "mesa-vulkan-drivers",
        });
    }
    if find_library("libvulkan.so.1").is_none() {
        needs.push(Need {
            what: "libvulkan.so.1",
            why: "the Vulkan loader, opened by lava-flow at run time",
            package: "libvulkan1",
        });
    }
    if find_library("libEGL.so.1").is_none() {
        needs.push(Need {
            what: "libEGL.so.1",
            why: "the GL importer's headless contexts are made through EGL",
            package: "libegl1",
        });
    }
    let vendors = manifests(&EGL_VENDOR_DIRS);
    if vendors.is_empty() {
        needs.push(Need {
            what: "an EGL vendor manifest in /usr/share/glvnd/egl_vendor.d",
            why: "libEGL needs a vendor library; Mesa's provides the surfaceless platform",
            package: "libegl-mesa0",
        });
    }
    let mesa_egl = vendors.is_empty() || vendors.iter().any(|v| v.to_string_lossy().contains("mesa"));
    if mesa_egl && find_in_lib_dirs("dri/swrast_dri.so").is_none() {
        needs.push(Need {
            what: "dri/swrast_dri.so",
            why: "Mesa's EGL runs GL on the CPU with llvmpipe from this DRI driver",
            package: "libgl1-mesa-dri",
        });
    }
    needs.extend(missing_mpi());
    needs
}

/// What the `mpi` feature (on in the suite's `--all-features` builds) needs: rsmpi finds MPI
/// through `mpicc -show` and runs bindgen, which loads libclang; the tests start `mpirun`.
fn missing_mpi() -> Vec<Need> {
    let mut needs = Vec::new();
    let on_path = |tool: &str| ["/usr/bin", "/usr/local/bin", "/bin"].iter().any(|d| sys(d).join(tool).exists());
    if !on_path("mpicc") {
        needs.push(Need {
            what: "mpicc and mpi.h",
            why: "the `mpi` feature builds rsmpi against the system's MPI",
            package: "libopenmpi-dev",
        });
    }
    if !on_path("mpirun") {
        needs.push(Need { what: "mpirun", why: "the MPI tests run two ranks under mpirun", package: "openmpi-bin" });
    }
    let libclang = std::fs::read_dir(sys("/usr/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("llvm-") && e.path().join("lib/libclang.so").exists());
    if !libclang && find_library("libclang.so").is_none() {
        needs.push(Need {
            what: "libclang.so",
            why: "rsmpi's build runs bindgen over mpi.h, which loads libclang",
            package: "libclang-dev",
        });
    }
    needs
}

fn report_found() {
    let icds: Vec<String> = icd_manifests().iter().map(|p| p.display().to_string()).collect();
    println!("xtask: Vulkan driver manifests: {}", icds.join(", "));
}

/// Vulkan driver manifests: those named by `VK_DRIVER_FILES`/`VK_ICD_FILENAMES` when set, else
/// the json files in the standard directories.
fn icd_manifests() -> Vec<PathBuf> {
    for var in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        if let Some(v) = std::env::var_os(var) {
            let listed: Vec<PathBuf> = std::env::split_paths(&v).filter(|p| sys(p).exists()).collect();
            if !listed.is_empty() {
                return listed;
            }
        }
    }
    manifests(&ICD_DIRS)
}

fn manifests(dirs: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(sys(dir)) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    found.push(p);
                }
            }
        }
    }
    found.sort();
    found
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// The library directories the dynamic loader searches on Debian/Ubuntu and most other Linuxes.
fn lib_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("LD_LIBRARY_PATH").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    for d in [
        format!("/usr/lib/{multiarch}"),
        format!("/lib/{multiarch}"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
        "/usr/local/lib".into(),
    ] {
        dirs.push(d.into());
    }
    dirs
}

fn find_in_lib_dirs(name: &str) -> Option<PathBuf> {
    lib_dirs().into_iter().map(|d| sys(d.join(name))).find(|p| p.exists())
}

/// Finds a shared library as the dynamic loader would: its cache, then the usual directories.
fn find_library(name: &str) -> Option<PathBuf> {
    let ldconfigs = if std::env::var_os("XTASK_SYSROOT").is_some() {
        &[][..]
    } else {
        &["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"][..]
    };
    for ldconfig in ldconfigs {
        if let Ok(out) = Command::new(ldconfig).arg("-p").output() {
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                for line in text.lines() {
                    if line.trim_start().starts_with(&format!("{name} ")) {
                        if let Some(path) = line.split("=>").nth(1) {
                            return Some(PathBuf::from(path.trim()));
                        }
                    }
                }
                break;
            }
        }
    }
    find_in_lib_dirs(name)
}

/// Whether the machine has a GPU device node (DRM render node or NVIDIA's device).
fn has_gpu_device() -> bool {
    let dri = std::fs::read_dir("/dev/dri")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("renderD")))
        .unwrap_or(false);
    dri || Path::new("/dev/nvidia0").exists()
}

/// The environment for commands that open Vulkan: on a machine without a GPU, `VK_DRIVER_FILES`
/// names lavapipe's manifest so the loader does not probe hardware drivers that cannot work here
/// (mesa-vulkan-drivers ships manifests for Intel and AMD GPUs too). Empty when a manifest is
/// already chosen or a GPU is present.
pub fn software_vulkan_env() -> Vec<(String, String)> {
    if std::env::var_os("VK_DRIVER_FILES").is_some() || std::env::var_os("VK_ICD_FILENAMES").is_some() {
        return Vec::new();
    }
    if has_gpu_device() {
        return Vec::new();
    }
    let lavapipe = manifests(&ICD_DIRS)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lvp_")));
    match lavapipe {
        Some(p) => {
            let p = p.display().to_string();
            println!(
                "xtask: no GPU device node (/dev/dri/renderD*, /dev/nvidia0): using lavapipe, VK_DRIVER_FILES={p}"
            );
            vec![("VK_DRIVER_FILES".into(), p)]
        }
        None => Vec::new(),
    }
}

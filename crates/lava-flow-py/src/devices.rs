//! Devices opened once per process and kept: Vulkan contexts (for host mappings of host-visible
//! memory) and CUDA devices (for imports), so that each `map_host()` or `import_cuda()` costs the
//! import, not a context's creation, and CUDA imports share lava-flow's block cache. They live
//! until the process exits, as PyTorch's and CuPy's contexts do.

use std::sync::Mutex;

use lava_flow::raw_gpu_handle::{DeviceIdentity, Uuid};
use lava_flow::{ContextOptions, DeviceSelector, Result, VulkanContext};

use crate::host::lock;

static VULKAN: Mutex<Vec<(Uuid, VulkanContext)>> = Mutex::new(Vec::new());

/// The Vulkan context of the device with this UUID.
pub fn vulkan(uuid: Uuid) -> Result<VulkanContext> {
    let mut contexts = lock(&VULKAN);
    if let Some((_, ctx)) = contexts.iter().find(|(u, _)| *u == uuid) {
        return Ok(ctx.clone());
    }
    let ctx = VulkanContext::with_options(&ContextOptions { selector: DeviceSelector::Uuid(uuid), driver: None })?;
    contexts.push((uuid, ctx.clone()));
    Ok(ctx)
}

mod cuda_devices {
    use super::*;
    use lava_flow::cuda::CudaDevice;

    /// Keyed by the exporter's device UUID (`Some`) or by ordinal (`None`, the UUID's place).
    static CUDA: Mutex<Vec<(Option<Uuid>, usize, CudaDevice)>> = Mutex::new(Vec::new());

    /// The CUDA device an exporter's identity names.
    /// Host memory names no device (its UUID is all zeros): it goes to device 0.
    pub fn for_identity(identity: &DeviceIdentity) -> Result<CudaDevice> {
        if identity.device_uuid == Uuid([0; 16]) {
            return ordinal(0);
        }
        let mut devices = lock(&CUDA);
        if let Some((_, _, d)) = devices.iter().find(|(u, _, _)| *u == Some(identity.device_uuid)) {
            return Ok(d.clone());
        }
        let device = CudaDevice::for_identity(identity)?;
        devices.push((Some(identity.device_uuid), device.ordinal(), device.clone()));
        Ok(device)
    }

    /// CUDA device `ordinal`.
    pub fn ordinal(ordinal: usize) -> Result<CudaDevice> {
        let mut devices = lock(&CUDA);
        if let Some((_, _, d)) = devices.iter().find(|(_, o, _)| *o == ordinal) {
            return Ok(d.clone());
        }
        let device = CudaDevice::open(ordinal)?;
        devices.push((None, ordinal, device.clone()));
        Ok(device)
    }
}

pub use cuda_devices::{for_identity as cuda_for_identity, ordinal as cuda_ordinal};

//! Adopting a Vulkan device made with ash: lava-flow allocates an exportable buffer on the
//! caller's device, exports it, and a device lava-flow opened itself imports it and reads the
//! bytes. When lava-flow's context drops, its drop callback hands the device and instance back,
//! and the caller destroys them (docs/ADOPTING.md).
//!
//! Run: `cargo run -p lava-flow --example adopt_ash`

use std::ffi::CStr;

use lava_flow::ash::{self, vk};
use lava_flow::vulkan::RawVulkan;
use lava_flow::{Buffer, BufferOptions, VulkanContext};

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The caller's own setup, with ash: an instance, a device with external memory fds, a queue.
    // SAFETY: libvulkan.so.1 is the Vulkan loader, made to be opened at any time.
    let entry = unsafe { ash::Entry::load()? };
    let api_version = vk::API_VERSION_1_2;
    let app = vk::ApplicationInfo::default().api_version(api_version);
    // SAFETY: the create info points at `app`, alive across the call.
    let instance = unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None)? };
    // SAFETY: the instance was just created.
    let physical = unsafe { instance.enumerate_physical_devices()? }[0];
    // SAFETY: `physical` was enumerated from the instance.
    let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
    let family = families.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE)).unwrap_or(0) as u32;
    let extensions: [&'static CStr; 1] = [ash::khr::external_memory_fd::NAME];
    let names: Vec<_> = extensions.iter().map(|n| n.as_ptr()).collect();
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
    let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&names);
    // SAFETY: the create info and what it points at are locals alive across the call.
    let device = unsafe { instance.create_device(physical, &info, None)? };

    // Hand the device to lava-flow, with a callback that destroys it once lava-flow is done.
    let raw = RawVulkan::new(entry, instance.clone(), physical, device.clone(), family, api_version)
        .enabled_extensions(&extensions);
    let destroy = Box::new(move || {
        // SAFETY: lava-flow calls this once, after destroying everything it made on the device; nothing
        // else uses the device or instance afterwards.
        unsafe {
            device.destroy_device(None);
            instance.destroy_instance(None);
        }
    });
    // SAFETY: the handles are valid and related as RawVulkan says; the extension list and API version
    // are exactly the ones used above; the callback is the only code that destroys them; this program
    // uses the queue only through lava-flow.
    let adopted = unsafe { VulkanContext::from_raw(raw, Some(destroy))? };
    println!("adopted {} ({})", adopted.info().name, adopted.identity().device_uuid);

    // From here on the adopted device works as one lava-flow opened.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut buffer = Buffer::new(&adopted, &BufferOptions::new(data.len() as u64))?;
    buffer.write(0, &data)?;
    let other = VulkanContext::with_uuid(adopted.identity().device_uuid)?;
    let imported = Buffer::import(&other, buffer.export_fd()?)?;
    let read = imported.read(0, data.len() as u64)?;
    if read != data {
        return Err("the importing device read other bytes than the adopted device wrote".into());
    }
    println!("a second device read the {} bytes the adopted device wrote", read.len());
    Ok(())
}

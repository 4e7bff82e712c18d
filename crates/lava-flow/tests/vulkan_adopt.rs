//! Adopting a device the caller made with raw ash (`VulkanContext::from_raw`), and describing
//! memory, buffers and images the caller allocated itself (`DeviceMemory`/`Buffer`/`Image::from_raw`):
//! data both ways with lava-flow-owned devices and another process, refusals that list what is
//! missing, and a caller's device left usable after lava-flow's context drops.

mod common;

#[path = "../examples/adopt_ash.rs"]
mod adopt_ash_example;

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{child_role, inheritable, pattern, run_child, take_inherited, vulkan};
use lava_flow::ash::{self, vk};
use lava_flow::raw_gpu_handle::{
    BufferDescription, BufferHandle, Extent3d, MemoryDescription, MemoryHandle, MemoryHandleKind, TextureDescription,
    TextureDimension, TextureFormat, TextureTiling, TextureUsage,
};
use lava_flow::vulkan::{DeviceMemory, Fence, RawVulkan, Semaphore};
use lava_flow::{Buffer, BufferOptions, Error, Image, ImageOptions, MemoryAllocator, VulkanContext};
use lava_flow_diag::testing;

/// A device made the way an application makes one, with ash alone.
struct RawDevice {
    entry: ash::Entry,
    instance: ash::Instance,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    family: u32,
    api_version: u32,
    extensions: Vec<&'static CStr>,
    timeline: bool,
}

const WANTED: [&CStr; 4] = [
    ash::khr::external_memory_fd::NAME,
    ash::ext::external_memory_host::NAME,
    ash::khr::external_semaphore_fd::NAME,
    ash::khr::external_fence_fd::NAME,
];

impl RawDevice {
    /// Opens the device lava-flow's default context would open (same UUID), enabling the wanted
    /// extensions it offers minus `without`; None (skipped) where there is no Vulkan.
    fn create(without: &[&CStr]) -> Option<RawDevice> {
        let reference = vulkan()?;
        // SAFETY: libvulkan.so.1 is the Vulkan loader (vulkan() just opened it too).
        let entry = unsafe { ash::Entry::load() }.expect("the loader lava-flow opened");
        let api_version = vk::API_VERSION_1_2;
        let app = vk::ApplicationInfo::default().api_version(api_version);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the create info points at `app`, alive across the call.
        let instance = unsafe { entry.create_instance(&info, None) }.expect("vkCreateInstance");
        // SAFETY: the instance was just created.
        let physicals = unsafe { instance.enumerate_physical_devices() }.expect("vkEnumeratePhysicalDevices");
        let physical = physicals[reference.info().index];
        // SAFETY: `physical` was enumerated from the instance.
        let offered = unsafe { instance.enumerate_device_extension_properties(physical) }.expect("extensions");
        let extensions: Vec<&'static CStr> = WANTED
            .into_iter()
            .filter(|w| !without.contains(w))
            .filter(|w| offered.iter().any(|e| e.extension_name_as_c_str().ok() == Some(*w)))
            .collect();
        let mut timeline_features = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
        let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline_features);
        // SAFETY: a 1.2 instance, and the chained struct is a local alive across the call.
        unsafe { instance.get_physical_device_features2(physical, &mut features2) };
        let timeline = timeline_features.timeline_semaphore == vk::TRUE;
        // SAFETY: `physical` was enumerated from the instance.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let family = families.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE)).unwrap() as u32;
        let names: Vec<_> = extensions.iter().map(|n| n.as_ptr()).collect();
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
        let mut enable_timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default().timeline_semaphore(timeline);
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&names)
            .push_next(&mut enable_timeline);
        // SAFETY: the create info and its chain are locals alive across the call; every extension is offered.
        let device = unsafe { instance.create_device(physical, &info, None) }.expect("vkCreateDevice");
        Some(RawDevice { entry, instance, physical, device, family, api_version, extensions, timeline })
    }

    fn raw(&self) -> RawVulkan {
        RawVulkan::new(
            self.entry.clone(),
            self.instance.clone(),
            self.physical,
            self.device.clone(),
            self.family,
            self.api_version,
        )
        .enabled_extensions(&self.extensions)
        .timeline_semaphore(self.timeline)
    }

    /// Adopts the device without a drop callback: the test destroys it itself.
    fn adopt(&self) -> VulkanContext {
        // SAFETY: the handles were created together above; raw() states exactly the version, extensions
        // and feature they were created with; `self` destroys them only in destroy(), after every context
        // is gone; the test uses the queue only through lava-flow.
        unsafe { VulkanContext::from_raw(self.raw(), None) }.expect("adopting the raw device")
    }

    /// The caller's own use of its device: a buffer with memory bound, then destroyed.
    fn use_directly(&self) {
        let d = &self.device;
        let info = vk::BufferCreateInfo::default().size(4096).usage(vk::BufferUsageFlags::TRANSFER_DST);
        // SAFETY: the device is alive and the create info is a local.
        let buffer = unsafe { d.create_buffer(&info, None) }.expect("vkCreateBuffer after lava-flow dropped");
        // SAFETY: the buffer was just created on this device.
        let reqs = unsafe { d.get_buffer_memory_requirements(buffer) };
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(reqs.size)
            .memory_type_index(reqs.memory_type_bits.trailing_zeros());
        // SAFETY: size and type come from the buffer's requirements.
        let memory = unsafe { d.allocate_memory(&alloc, None) }.expect("vkAllocateMemory");
        // SAFETY: fresh buffer and memory of a type it accepts, offset 0.
        unsafe { d.bind_buffer_memory(buffer, memory, 0) }.expect("vkBindBufferMemory");
        // SAFETY: nothing used them; buffer first, then its memory.
        unsafe {
            d.destroy_buffer(buffer, None);
            d.free_memory(memory, None);
        }
    }

    fn destroy(self) {
        // SAFETY: every context adopting the device is gone (the tests drop them first), and with them
        // every object lava-flow made on it; children first.
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

fn owned_twin(adopted: &VulkanContext) -> VulkanContext {
    let owned = VulkanContext::with_uuid(adopted.identity().device_uuid).expect("a lava-flow device on the same GPU");
    assert!(owned.owns_device() && !adopted.owns_device());
    owned
}

#[test]
fn adopted_device_shares_buffers_and_images_both_ways() {
    let Some(raw) = RawDevice::create(&[]) else { return };
    let adopted = raw.adopt();
    let owned = owned_twin(&adopted);
    assert_eq!(adopted.identity(), owned.identity());
    assert!(adopted.extensions().external_memory_fd);

    // Adopted exports, owned imports, and back.
    let size = 256 * 1024;
    let mut from_adopted = Buffer::new(&adopted, &BufferOptions::new(size as u64)).unwrap();
    from_adopted.write(0, &pattern(size, 1)).unwrap();
    let in_owned = Buffer::import(&owned, from_adopted.export_fd().unwrap()).unwrap();
    assert_eq!(in_owned.read(0, size as u64).unwrap(), pattern(size, 1), "owned reads the adopted device's bytes");
    in_owned.fill(0x0102_0304).unwrap();
    assert!(from_adopted.read(0, size as u64).unwrap().chunks(4).all(|c| c == 0x0102_0304u32.to_ne_bytes()));

    let mut from_owned = Buffer::new(&owned, &BufferOptions::new(size as u64)).unwrap();
    from_owned.write(0, &pattern(size, 2)).unwrap();
    let in_adopted = Buffer::import(&adopted, from_owned.export_fd().unwrap()).unwrap();
    assert_eq!(in_adopted.read(0, size as u64).unwrap(), pattern(size, 2), "imports land in the caller's device");

    // Images, both ways.
    let options = ImageOptions::d2(TextureFormat::Rgba8Unorm, 64, 32);
    let image = Image::new(&adopted, &options).unwrap();
    let texels = pattern(image.packed_size() as usize, 3);
    image.upload(&texels).unwrap();
    let image_in_owned = Image::import(&owned, image.export_fd().unwrap()).unwrap();
    assert_eq!(image_in_owned.download().unwrap(), texels);
    let back = pattern(image.packed_size() as usize, 4);
    image_in_owned.upload(&back).unwrap();
    assert_eq!(image.download().unwrap(), back, "the adopted image sees the owned device's upload");
    let owned_image = Image::new(&owned, &options).unwrap();
    owned_image.upload(&texels).unwrap();
    assert_eq!(Image::import(&adopted, owned_image.export_fd().unwrap()).unwrap().download().unwrap(), texels);

    // Pools, semaphores and fences work there too.
    let allocator = MemoryAllocator::with_context(adopted.clone());
    let pooled = allocator.allocate_buffer(adopted.info().index, &BufferOptions::new(4096)).unwrap();
    pooled.fill(7).unwrap();
    assert!(Buffer::import(&owned, pooled.export_fd().unwrap()).unwrap().read(0, 4).unwrap() == 7u32.to_ne_bytes());
    if adopted.extensions().timeline_semaphore {
        let semaphore = Semaphore::new(&adopted).unwrap();
        semaphore.signal(5).unwrap();
        semaphore.wait(5, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(semaphore.value().unwrap(), 5);
    }
    drop(Fence::new(&adopted).unwrap());

    drop((from_adopted, in_owned, from_owned, in_adopted, image, image_in_owned, owned_image, pooled, allocator));
    drop(adopted);
    raw.use_directly();
    raw.destroy();
}

#[test]
fn dropping_the_adopted_context_leaves_the_device_usable() {
    let Some(raw) = RawDevice::create(&[]) else { return };
    let contexts_before = lava_flow::vulkan::live_objects().vulkan_contexts;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let callback = Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    // SAFETY: as in RawDevice::adopt; the callback destroys nothing.
    let adopted = unsafe { VulkanContext::from_raw(raw.raw(), Some(callback)) }.unwrap();
    let clone = adopted.clone();
    let buffer = Buffer::new(&adopted, &BufferOptions::new(65536)).unwrap();
    buffer.fill(1).unwrap();
    drop(adopted);
    drop(clone);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a buffer still holds the context");
    drop(buffer);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the drop callback runs once, when the last holder goes");
    assert_eq!(lava_flow::vulkan::live_objects().vulkan_contexts, contexts_before);
    // The device is still the caller's: it makes and destroys its own objects, then itself.
    raw.use_directly();
    // SAFETY: the queue's lock is no longer held by anyone (lava-flow is gone); device is alive.
    unsafe { raw.device.device_wait_idle() }.unwrap();
    raw.destroy();
}

#[test]
fn a_device_without_external_memory_fd_is_refused_with_the_list() {
    let Some(raw) = RawDevice::create(&[ash::khr::external_memory_fd::NAME]) else { return };
    let fds = testing::open_fd_count();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let callback = Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    // SAFETY: as in RawDevice::adopt (the refusal happens before anything is used).
    let err = unsafe { VulkanContext::from_raw(raw.raw(), Some(callback)) }.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unsupported { .. }), "{text}");
    assert!(text.contains("VK_KHR_external_memory_fd"), "names the missing extension: {text}");
    assert!(text.contains("Extensions"), "names the spec rule: {text}");
    // Claiming an older API version too: both are listed at once.
    let mut old = raw.raw();
    old.api_version = vk::API_VERSION_1_0;
    // SAFETY: as above; claiming a lower version than the instance's only removes commands.
    let err = unsafe { VulkanContext::from_raw(old, None) }.unwrap_err().to_string();
    assert!(err.contains("Vulkan 1.1") && err.contains("VK_KHR_external_memory_fd"), "lists both: {err}");
    // A queue the device does not have. The list also claims VK_KHR_external_memory_fd, which this
    // device was created without: the queue check refuses first, before any of its commands is called.
    // The index lies beyond the family's queueCount on every driver (NVIDIA's family 0 has 16
    // queues, so an index such as 7 exists there although this device was created with one: that
    // case is the caller's contract, since Vulkan has no query for the queues a device was created
    // with, and an earlier version of this test made the H200 crash on it).
    let mut bad_queue = raw.raw().queue_index(1000);
    bad_queue.enabled_extensions.push(ash::khr::external_memory_fd::NAME);
    // SAFETY: refused (queue index) before lava-flow calls anything on the device.
    let err = unsafe { VulkanContext::from_raw(bad_queue, None) }.unwrap_err().to_string();
    assert!(err.contains("queue 1000"), "{err}");
    // A shared queue lock that does not hold the device's queue.
    let mut fd_enabled = raw.raw().queue_lock(Arc::new(Mutex::new(vk::Queue::null())));
    fd_enabled.enabled_extensions.push(ash::khr::external_memory_fd::NAME);
    // SAFETY: refused (the lock check) before lava-flow makes anything on the device.
    let err = unsafe { VulkanContext::from_raw(fd_enabled, None) }.unwrap_err().to_string();
    assert!(err.contains("lock"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a refused adoption never calls the drop callback");
    assert_eq!(testing::open_fd_count(), fds, "refusals leave fd counts unchanged");
    raw.use_directly();
    raw.destroy();
}

/// A buffer the caller creates and binds to memory it allocates with VkExportMemoryAllocateInfo,
/// host-visible, with `data` written through its own mapping (unmapped again).
fn caller_buffer(raw: &RawDevice, ctx: &VulkanContext, data: &[u8]) -> (vk::Buffer, vk::DeviceMemory, u64, u32) {
    let d = &raw.device;
    let handle = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
    let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
    let info = vk::BufferCreateInfo::default()
        .size(data.len() as u64)
        .usage(
            vk::BufferUsageFlags::TRANSFER_SRC
                | vk::BufferUsageFlags::TRANSFER_DST
                | vk::BufferUsageFlags::STORAGE_BUFFER,
        )
        .push_next(&mut external);
    // SAFETY: the device is alive; the create info and its chain are locals.
    let buffer = unsafe { d.create_buffer(&info, None) }.unwrap();
    // SAFETY: the buffer was just created on this device.
    let reqs = unsafe { d.get_buffer_memory_requirements(buffer) };
    let type_index = ctx
        .find_memory_type(
            reqs.memory_type_bits,
            vk::MemoryPropertyFlags::HOST_VISIBLE,
            vk::MemoryPropertyFlags::HOST_COHERENT,
        )
        .unwrap();
    let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
    let alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(reqs.size)
        .memory_type_index(type_index)
        .push_next(&mut export);
    // SAFETY: size and type from the buffer's requirements; export info for opaque fds, which the device offers.
    let memory = unsafe { d.allocate_memory(&alloc, None) }.unwrap();
    // SAFETY: fresh buffer and memory of an accepted type, offset 0.
    unsafe { d.bind_buffer_memory(buffer, memory, 0) }.unwrap();
    // SAFETY: host-visible memory, not mapped; the whole range lies within the allocation.
    let p = unsafe { d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }.unwrap();
    // SAFETY: the mapping holds reqs.size >= data.len() bytes; nothing else accesses it now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), data.len()) };
    let range = vk::MappedMemoryRange::default().memory(memory).size(vk::WHOLE_SIZE);
    // SAFETY: the range is the mapping made above, then unmapped before lava-flow sees the memory.
    unsafe {
        d.flush_mapped_memory_ranges(&[range]).unwrap();
        d.unmap_memory(memory);
    }
    (buffer, memory, reqs.size, type_index)
}

#[test]
fn caller_allocated_memory_is_exported_through_from_raw() {
    let Some(raw) = RawDevice::create(&[]) else { return };
    let adopted = raw.adopt();
    let owned = owned_twin(&adopted);
    let size = 64 * 1024;
    let (vk_buffer, vk_memory, alloc_size, type_index) = caller_buffer(&raw, &adopted, &pattern(size, 5));
    let fds = testing::open_fd_count();
    // Bad descriptions are refused with typed errors, and no fd is opened.
    let bad = [
        (0, type_index, MemoryHandleKind::OpaqueFd),
        (alloc_size, 99, MemoryHandleKind::OpaqueFd),
        (alloc_size, type_index, MemoryHandleKind::HostMemfd),
    ];
    for (s, t, k) in bad {
        // SAFETY: refused before the handle is used.
        let err = unsafe { DeviceMemory::from_raw(&adopted, vk_memory, s, t, k, None, false) }.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    // SAFETY: the memory was allocated on the adopted device just so (size, type, export info, not
    // dedicated); the test frees it itself after every lava-flow object over it is gone, and does not
    // map it meanwhile.
    let memory = Arc::new(
        unsafe {
            DeviceMemory::from_raw(&adopted, vk_memory, alloc_size, type_index, MemoryHandleKind::OpaqueFd, None, false)
        }
        .unwrap(),
    );
    let usage =
        vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST | vk::BufferUsageFlags::STORAGE_BUFFER;
    // SAFETY: refused (misaligned offset) before the handle is used.
    let err = unsafe { Buffer::from_raw(memory.clone(), vk_buffer, 3, size as u64, usage, false) }.unwrap_err();
    assert!(err.to_string().contains("aligned"), "{err}");
    assert_eq!(testing::open_fd_count(), fds, "refusals open no fd");
    // SAFETY: the buffer was created with that size and usage and opaque-fd external memory, bound to the
    // memory at offset 0; the test destroys it itself after this Buffer drops.
    let buffer = unsafe { Buffer::from_raw(memory.clone(), vk_buffer, 0, size as u64, usage, false) }.unwrap();
    assert_eq!(buffer.read(0, size as u64).unwrap(), pattern(size, 5), "lava-flow reads the caller's bytes");
    let exported = buffer.export_fd().unwrap();
    assert_eq!(exported.memory.description.allocation_size, alloc_size);
    assert_eq!(exported.memory.description.memory_type_index, type_index);
    let elsewhere = Buffer::import(&owned, exported).unwrap();
    assert_eq!(elsewhere.read(0, size as u64).unwrap(), pattern(size, 5), "another device reads the caller's bytes");
    elsewhere.fill(0xCAFE_F00D).unwrap();
    assert!(buffer.read(0, size as u64).unwrap().chunks(4).all(|c| c == 0xCAFE_F00Du32.to_ne_bytes()));
    drop((buffer, memory, elsewhere));
    // The caller still owns both handles: it destroys them itself.
    // SAFETY: lava-flow's wrappers are gone (it destroyed and freed nothing, owned = false) and its copies
    // finished before each call returned.
    unsafe {
        raw.device.destroy_buffer(vk_buffer, None);
        raw.device.free_memory(vk_memory, None);
    }
    drop(adopted);
    raw.use_directly();
    raw.destroy();
}

#[test]
fn caller_allocated_image_is_exported_through_from_raw() {
    let Some(raw) = RawDevice::create(&[]) else { return };
    let adopted = raw.adopt();
    let owned = owned_twin(&adopted);
    let d = &raw.device;
    let handle = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
    let (width, height) = (32u32, 16u32);
    let mut external = vk::ExternalMemoryImageCreateInfo::default().handle_types(handle);
    let info = vk::ImageCreateInfo::default()
        .image_type(vk::ImageType::TYPE_2D)
        .format(vk::Format::R8G8B8A8_UNORM)
        .extent(vk::Extent3D { width, height, depth: 1 })
        .mip_levels(1)
        .array_layers(1)
        .samples(vk::SampleCountFlags::TYPE_1)
        .tiling(vk::ImageTiling::OPTIMAL)
        .usage(vk::ImageUsageFlags::TRANSFER_SRC | vk::ImageUsageFlags::TRANSFER_DST)
        .sharing_mode(vk::SharingMode::EXCLUSIVE)
        .initial_layout(vk::ImageLayout::UNDEFINED)
        .push_next(&mut external);
    // SAFETY: the device is alive; the create info and its chain are locals; the format is one every
    // driver offers for transfers.
    let vk_image = unsafe { d.create_image(&info, None) }.unwrap();
    // SAFETY: the image was just created on this device.
    let reqs = unsafe { d.get_image_memory_requirements(vk_image) };
    let type_index = adopted
        .find_memory_type(
            reqs.memory_type_bits,
            vk::MemoryPropertyFlags::empty(),
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
        )
        .unwrap();
    let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
    let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().image(vk_image);
    let alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(reqs.size)
        .memory_type_index(type_index)
        .push_next(&mut export)
        .push_next(&mut dedicated);
    // SAFETY: size and type from the image's requirements; export and dedicated info name this image.
    let vk_memory = unsafe { d.allocate_memory(&alloc, None) }.unwrap();
    // SAFETY: fresh image, memory dedicated to it, offset 0.
    unsafe { d.bind_image_memory(vk_image, vk_memory, 0) }.unwrap();
    // Lava-flow takes ownership of both this time (owned = true): the test never destroys them.
    // SAFETY: allocated on the adopted device as described, dedicated to vk_image; nothing else frees it.
    let memory = Arc::new(
        unsafe {
            DeviceMemory::from_raw(
                &adopted,
                vk_memory,
                reqs.size,
                type_index,
                MemoryHandleKind::OpaqueFd,
                Some(lava_flow::vulkan::DedicatedTo::Image(vk_image)),
                true,
            )
        }
        .unwrap(),
    );
    let description = TextureDescription {
        format: TextureFormat::Rgba8Unorm,
        dimension: TextureDimension::D2,
        extent: Extent3d { width, height, depth: 1 },
        array_layers: 1,
        tiling: TextureTiling::Optimal,
        usage: TextureUsage::default(),
        offset: 0,
        size: reqs.size,
    };
    // SAFETY: created as the description says and bound to the memory at 0, fresh (UNDEFINED); lava-flow
    // destroys it (owned = true) and nothing else does.
    let image = unsafe { Image::from_raw(memory, vk_image, description, vk::ImageLayout::UNDEFINED, true) }.unwrap();
    let texels = pattern(image.packed_size() as usize, 6);
    image.upload(&texels).unwrap();
    let elsewhere = Image::import(&owned, image.export_fd().unwrap()).unwrap();
    assert_eq!(elsewhere.download().unwrap(), texels, "another device reads the caller's image");
    drop((image, elsewhere, adopted));
    raw.use_directly();
    raw.destroy();
}

const CHILD_SIZE: usize = 128 * 1024;

#[test]
fn another_process_imports_from_the_adopted_device() {
    if child_role().as_deref() == Some("adopt-importer") {
        let ctx = vulkan().expect("the parent found Vulkan, so must the child");
        let header: serde_json::Value = serde_json::from_str(&std::env::var("LAVA_FLOW_TEST_HEADER").unwrap()).unwrap();
        let fd = take_inherited("LAVA_FLOW_TEST_FD");
        let description: MemoryDescription = serde_json::from_value(header["memory"].clone()).unwrap();
        let buffer: BufferDescription = serde_json::from_value(header["buffer"].clone()).unwrap();
        let imported = Buffer::import(&ctx, BufferHandle::new(MemoryHandle::new(fd, description), buffer)).unwrap();
        assert_eq!(imported.read(0, CHILD_SIZE as u64).unwrap(), pattern(CHILD_SIZE, 8));
        imported.fill(0x1234_5678).unwrap();
        return;
    }
    let Some(raw) = RawDevice::create(&[]) else { return };
    let adopted = raw.adopt();
    let mut buffer = Buffer::new(&adopted, &BufferOptions::new(CHILD_SIZE as u64)).unwrap();
    buffer.write(0, &pattern(CHILD_SIZE, 8)).unwrap();
    let exported = buffer.export_fd().unwrap();
    let header = serde_json::json!({ "memory": exported.memory.description, "buffer": exported.buffer });
    let (inherited, n) = inheritable(&exported.memory.handle);
    run_child(
        "another_process_imports_from_the_adopted_device",
        "adopt-importer",
        &[("LAVA_FLOW_TEST_FD", n.to_string()), ("LAVA_FLOW_TEST_HEADER", header.to_string())],
    );
    drop((inherited, exported));
    assert!(buffer.read(0, CHILD_SIZE as u64).unwrap().chunks(4).all(|c| c == 0x1234_5678u32.to_ne_bytes()));
    drop((buffer, adopted));
    raw.destroy();
}

#[test]
fn the_adopt_ash_example_runs() {
    if vulkan().is_none() {
        return;
    }
    adopt_ash_example::main().expect("examples/adopt_ash.rs");
}

#[test]
fn a_shared_queue_lock_serializes_both_sides() {
    let Some(raw) = RawDevice::create(&[]) else { return };
    // SAFETY: the device was created with queue 0 of this family.
    let queue = unsafe { raw.device.get_device_queue(raw.family, 0) };
    let lock = Arc::new(Mutex::new(queue));
    // SAFETY: as in RawDevice::adopt; the test takes `lock` around its own use of the queue.
    let adopted = unsafe { VulkanContext::from_raw(raw.raw().queue_lock(lock.clone()), None) }.unwrap();
    let buffer = Buffer::new(&adopted, &BufferOptions::new(4096)).unwrap();
    let worker = {
        let lock = lock.clone();
        let device = raw.device.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                let q = lock.lock().unwrap();
                // SAFETY: the shared lock is held: lava-flow's submits wait for it.
                unsafe { device.queue_wait_idle(*q) }.unwrap();
            }
        })
    };
    for i in 0..20 {
        buffer.fill(i).unwrap();
        assert_eq!(buffer.read(0, 4).unwrap(), i.to_ne_bytes());
    }
    worker.join().unwrap();
    drop((buffer, adopted));
    raw.destroy();
}

//! The Vulkan instance and device one lava-flow context works on.

use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use ash::vk;
use raw_gpu_handle::{DeviceIdentity, Uuid};

use crate::{Error, Result};

/// Which physical device a context opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSelector {
    /// The first discrete GPU, else integrated, else virtual, else CPU (lavapipe).
    #[default]
    Default,
    /// The device at this index in `vkEnumeratePhysicalDevices` order (`lava-flow info` shows it).
    Index(usize),
    /// The device with this `deviceUUID`.
    Uuid(Uuid),
    /// The first device of type CPU: a software driver such as Mesa's lavapipe, which runs
    /// anywhere. Errors with [`Error::DeviceNotFound`] where the loader lists none.
    Software,
}

/// How to open a [`VulkanContext`]: which device, among the devices of which driver.
///
/// Driver choice is explicit here because lava-flow never changes the process environment: the
/// Vulkan loader's own knob, `VK_DRIVER_FILES`, is read from the environment when the loader
/// starts, and changing the environment while other threads run is undefined behaviour in C.
/// A program that wants to restrict the loader to one driver manifest sets `VK_DRIVER_FILES` in
/// its shell, or at the very top of its `main` before any thread starts; a library chooses among
/// the devices the loader lists, with these options.
///
/// ```no_run
/// use lava_flow::vulkan::{ContextOptions, DeviceSelector, VulkanContext};
///
/// // The software device (lavapipe), wherever the loader lists it beside GPUs.
/// let cpu = VulkanContext::with_options(&ContextOptions::new().selector(DeviceSelector::Software))?;
/// // The default choice among the devices of NVIDIA's driver only.
/// let nvidia = VulkanContext::with_options(&ContextOptions::new().driver("NVIDIA"))?;
/// # Ok::<(), lava_flow::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextOptions {
    /// Which device among those left by `driver`.
    pub selector: DeviceSelector,
    /// Only devices whose driver has this name (`VkPhysicalDeviceDriverProperties::driverName`,
    /// compared without regard to case; the `driver` column of `lava-flow info`): `llvmpipe` for
    /// Mesa's lavapipe, `NVIDIA` for NVIDIA's driver. `None`: every device.
    pub driver: Option<String>,
}

impl ContextOptions {
    /// The default device of any driver.
    pub fn new() -> Self {
        ContextOptions::default()
    }

    /// Sets the device selector.
    pub fn selector(mut self, selector: DeviceSelector) -> Self {
        self.selector = selector;
        self
    }

    /// Restricts the choice to devices of the driver named `name`.
    pub fn driver(mut self, name: impl Into<String>) -> Self {
        self.driver = Some(name.into());
        self
    }
}

/// What `lava-flow info` and device selection know about one physical device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhysicalDeviceInfo {
    /// Index in enumeration order.
    pub index: usize,
    /// `deviceName`.
    pub name: String,
    /// `VkPhysicalDeviceType`, in words.
    pub device_type: String,
    /// Driver name (`VkPhysicalDeviceDriverProperties::driverName`) where reported.
    pub driver_name: String,
    /// Vulkan API version as "major.minor.patch".
    pub api_version: String,
    /// Device and driver UUIDs.
    #[serde(serialize_with = "serialize_identity")]
    pub identity: DeviceIdentity,
    /// Device extensions that matter to sharing, present or not.
    pub extensions: EnabledExtensions,
}

/// Where memory another API allocated on a GPU is imported into Vulkan on the same GPU
/// ([`VulkanContext::foreign_memory_target`]): the Vulkan device's identity (its driver UUID is
/// what importers compare) and a device-local memory type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignMemoryTarget {
    /// Index of the Vulkan device in `lava-flow info`'s order.
    pub index: usize,
    /// `deviceName`.
    pub name: String,
    /// Device and driver UUIDs.
    pub identity: DeviceIdentity,
    /// The memory type an import uses.
    pub memory_type_index: u32,
    /// That type's property flags, as descriptions carry them.
    pub memory_properties: raw_gpu_handle::MemoryProperties,
}

fn serialize_identity<S: serde::Serializer>(id: &DeviceIdentity, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("DeviceIdentity", 2)?;
    st.serialize_field("device_uuid", &id.device_uuid.to_string())?;
    st.serialize_field("driver_uuid", &id.driver_uuid.to_string())?;
    st.end()
}

/// The sharing-related device extensions and features a context has enabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EnabledExtensions {
    /// VK_KHR_external_memory_fd.
    pub external_memory_fd: bool,
    /// VK_EXT_external_memory_host.
    pub external_memory_host: bool,
    /// VK_EXT_external_memory_dma_buf.
    pub external_memory_dma_buf: bool,
    /// VK_EXT_image_drm_format_modifier.
    pub image_drm_format_modifier: bool,
    /// VK_KHR_external_semaphore_fd.
    pub external_semaphore_fd: bool,
    /// VK_KHR_external_fence_fd.
    pub external_fence_fd: bool,
    /// The timelineSemaphore feature (core in Vulkan 1.2).
    pub timeline_semaphore: bool,
    /// VK_EXT_memory_budget: the process's use of each heap, which soak runs compare before and after.
    pub memory_budget: bool,
}

const WANTED_EXTENSIONS: [&CStr; 7] = [
    ash::khr::external_memory_fd::NAME,
    ash::ext::external_memory_host::NAME,
    ash::ext::external_memory_dma_buf::NAME,
    ash::ext::image_drm_format_modifier::NAME,
    ash::khr::external_semaphore_fd::NAME,
    ash::khr::external_fence_fd::NAME,
    ash::ext::memory_budget::NAME,
];

/// A Vulkan instance, one physical device, a logical device with one queue, and the extension
/// loaders lava-flow needs. Cheap to clone (reference counted); every object made from it keeps
/// it alive, so the device is destroyed only after the last buffer, image or import is gone.
#[derive(Clone)]
pub struct VulkanContext {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) _entry: ash::Entry,
    pub(crate) instance: ash::Instance,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) device: ash::Device,
    pub(crate) queue_family: u32,
    /// The queue and its lock; an adopted device may share the lock with its creator
    /// ([`RawVulkan::queue_lock`]).
    pub(crate) queue: Arc<Mutex<vk::Queue>>,
    pub(crate) info: PhysicalDeviceInfo,
    pub(crate) memory_properties: vk::PhysicalDeviceMemoryProperties,
    pub(crate) limits: vk::PhysicalDeviceLimits,
    pub(crate) host_import_alignment: Option<u64>,
    pub(crate) external_memory_fd: Option<ash::khr::external_memory_fd::Device>,
    pub(crate) external_memory_host: Option<ash::ext::external_memory_host::Device>,
    pub(crate) external_semaphore_fd: Option<ash::khr::external_semaphore_fd::Device>,
    pub(crate) external_fence_fd: Option<ash::khr::external_fence_fd::Device>,
    pub(crate) command_pool: Mutex<vk::CommandPool>,
    pub(crate) deferred_errors: Mutex<Vec<crate::error::DeferredError>>,
    /// Whether lava-flow destroys the device and instance, or hands them back ([`VulkanContext::from_raw`]).
    ownership: Mutex<Ownership>,
    /// Counted in `live_objects()` while the device is open.
    _live: super::live::Live,
}

impl std::fmt::Debug for VulkanContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanContext")
            .field("device", &self.inner.info.name)
            .field("identity", &self.inner.info.identity)
            .finish()
    }
}

fn load_entry() -> Result<ash::Entry> {
    // SAFETY: ash::Entry::load's contract is that the library it opens is a conforming Vulkan loader:
    // libvulkan.so.1 is that by its soname, and the loader is made to be dlopen'ed at any time.
    unsafe { ash::Entry::load() }.map_err(|e| Error::LibraryUnavailable {
        library: "libvulkan.so.1",
        reason: e.to_string(),
        advice: "install the Vulkan loader and a driver (Debian/Ubuntu: `apt-get install libvulkan1 mesa-vulkan-drivers`, or your GPU vendor's driver)".into(),
    })
}

fn create_instance(entry: &ash::Entry) -> Result<ash::Instance> {
    // SAFETY: a global command with no handles or pointers in; `entry` holds the loader library open.
    let loader_version = unsafe { entry.try_enumerate_instance_version() }
        .map_err(|r| Error::vk("vkEnumerateInstanceVersion", r, "querying the Vulkan loader"))?
        .unwrap_or(vk::API_VERSION_1_0);
    if loader_version < vk::API_VERSION_1_1 {
        return Err(Error::unsupported(
            "a Vulkan 1.1 instance",
            format!("the loader only offers {}", version_string(loader_version)),
            "external memory is core in Vulkan 1.1",
            "install a newer Vulkan loader (libvulkan1)",
        ));
    }
    let api_version = loader_version.min(vk::API_VERSION_1_3);
    let app_info = vk::ApplicationInfo::default()
        .application_name(c"lava-flow")
        .engine_name(c"lava-flow")
        .api_version(api_version);
    let create_info = vk::InstanceCreateInfo::default().application_info(&app_info);
    // SAFETY: create_info points only at app_info and static C strings, all alive across the call.
    unsafe { entry.create_instance(&create_info, None) }.map_err(|r| {
        let mut e = Error::vk("vkCreateInstance", r, "creating a Vulkan instance");
        if r == vk::Result::ERROR_INCOMPATIBLE_DRIVER {
            e = Error::DeviceNotFound {
                api: "Vulkan",
                wanted: "(any)".into(),
                found: "the loader found no driver (VK_ERROR_INCOMPATIBLE_DRIVER)".into(),
                advice: "install a Vulkan driver: `apt-get install mesa-vulkan-drivers` for the software one, or your GPU vendor's".into(),
            };
        }
        e
    })
}

pub(crate) fn version_string(v: u32) -> String {
    format!("{}.{}.{}", vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v))
}

fn device_type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete GPU",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated GPU",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual GPU",
        vk::PhysicalDeviceType::CPU => "CPU",
        _ => "other",
    }
}

fn cstr_field(bytes: &[std::ffi::c_char]) -> String {
    // SAFETY-free: the fields are NUL-terminated arrays from the driver; stop at the first NUL.
    let bytes: Vec<u8> = bytes.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads name, UUIDs and sharing extensions of one physical device.
fn describe(instance: &ash::Instance, physical: vk::PhysicalDevice, index: usize) -> Result<PhysicalDeviceInfo> {
    let mut id_props = vk::PhysicalDeviceIDProperties::default();
    let mut driver_props = vk::PhysicalDeviceDriverProperties::default();
    // SAFETY: `physical` was enumerated from `instance`, which the caller keeps alive across this function.
    let basic = unsafe { instance.get_physical_device_properties(physical) };
    let has_driver_props = basic.api_version >= vk::API_VERSION_1_2;
    {
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id_props);
        if has_driver_props {
            props2 = props2.push_next(&mut driver_props);
        }
        // SAFETY: the pNext chain points at locals that outlive the call; the instance is Vulkan 1.1 (ID
        // properties are core there) and driver properties are chained only for devices of 1.2 or later.
        unsafe { instance.get_physical_device_properties2(physical, &mut props2) };
    }
    // SAFETY: `physical` was enumerated from `instance`, which is alive for the whole function.
    let exts = unsafe { instance.enumerate_device_extension_properties(physical) }
        .map_err(|r| Error::vk("vkEnumerateDeviceExtensionProperties", r, "listing device extensions"))?;
    let has = |name: &CStr| exts.iter().any(|e| e.extension_name_as_c_str().ok() == Some(name));
    let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
    if basic.api_version >= vk::API_VERSION_1_2 {
        let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut timeline);
        // SAFETY: only on devices of Vulkan 1.2 or later, where the timeline features struct is core; the
        // chained local outlives the call.
        unsafe { instance.get_physical_device_features2(physical, &mut features2) };
    }
    Ok(PhysicalDeviceInfo {
        index,
        name: cstr_field(&basic.device_name),
        device_type: device_type_name(basic.device_type).into(),
        driver_name: if has_driver_props { cstr_field(&driver_props.driver_name) } else { String::new() },
        api_version: version_string(basic.api_version),
        identity: DeviceIdentity {
            device_uuid: Uuid(id_props.device_uuid),
            driver_uuid: Uuid(id_props.driver_uuid),
            luid: (id_props.device_luid_valid == vk::TRUE).then_some(id_props.device_luid),
        },
        extensions: EnabledExtensions {
            external_memory_fd: has(ash::khr::external_memory_fd::NAME),
            external_memory_host: has(ash::ext::external_memory_host::NAME),
            external_memory_dma_buf: has(ash::ext::external_memory_dma_buf::NAME),
            image_drm_format_modifier: has(ash::ext::image_drm_format_modifier::NAME),
            external_semaphore_fd: has(ash::khr::external_semaphore_fd::NAME),
            external_fence_fd: has(ash::khr::external_fence_fd::NAME),
            timeline_semaphore: timeline.timeline_semaphore == vk::TRUE,
            memory_budget: has(ash::ext::memory_budget::NAME),
        },
    })
}

fn type_rank(t: &str) -> u8 {
    match t {
        "discrete GPU" => 0,
        "integrated GPU" => 1,
        "virtual GPU" => 2,
        "CPU" => 3,
        _ => 4,
    }
}

/// Who destroys a context's device and instance.
enum Ownership {
    /// lava-flow created them and destroys them.
    Owned,
    /// The caller created them ([`VulkanContext::from_raw`]); lava-flow calls the callback, if
    /// any, once its own objects on the device are destroyed.
    Adopted(Option<Box<dyn FnOnce() + Send + Sync>>),
}

/// The handles a context is finished from.
struct Handles {
    entry: ash::Entry,
    instance: ash::Instance,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    queue_family: u32,
    queue_index: u32,
    info: PhysicalDeviceInfo,
}

/// A Vulkan device that its caller created, and what the caller enabled on it: what
/// [`VulkanContext::from_raw`] adopts.
///
/// lava-flow cannot ask a `VkDevice` which extensions and features it was created with, so the
/// caller states them here, exactly as it passed them to `vkCreateInstance` and `vkCreateDevice`.
#[non_exhaustive]
pub struct RawVulkan {
    /// The loader the instance was created from (keeps libvulkan loaded).
    pub entry: ash::Entry,
    /// The instance.
    pub instance: ash::Instance,
    /// The physical device the device was created on, enumerated from `instance`.
    pub physical_device: vk::PhysicalDevice,
    /// The logical device.
    pub device: ash::Device,
    /// The family of the queue lava-flow submits its copies to (needs transfer: any graphics,
    /// compute or transfer family).
    pub queue_family_index: u32,
    /// Which queue of that family (the device was created with more than this many).
    pub queue_index: u32,
    /// `VkApplicationInfo::apiVersion` the instance was created with (ash's `vk::API_VERSION_1_*`).
    /// The version lava-flow uses is the lower of it and the device's own.
    pub api_version: u32,
    /// The device extensions passed in `VkDeviceCreateInfo::ppEnabledExtensionNames`.
    pub enabled_extensions: Vec<&'static CStr>,
    /// Whether `VkPhysicalDeviceVulkan12Features::timelineSemaphore` (or
    /// `VkPhysicalDeviceTimelineSemaphoreFeatures`) was enabled at device creation.
    pub timeline_semaphore: bool,
    /// The lock the caller itself takes around every use of the queue (`vkQueueSubmit`,
    /// `vkQueueWaitIdle`, `vkQueuePresentKHR`...), holding that very queue. lava-flow then takes
    /// the same lock, so both may submit from any thread. `None`: lava-flow makes its own lock,
    /// and the caller must not use the queue while any lava-flow call may (see `from_raw`).
    /// Never hold it while calling lava-flow: a `std` mutex is not reentrant.
    pub queue_lock: Option<Arc<Mutex<vk::Queue>>>,
}

impl RawVulkan {
    /// The handles of a caller's device; queue 0 of `queue_family_index`, no extensions, no
    /// timeline semaphores and no shared queue lock until the builder methods say otherwise.
    pub fn new(
        entry: ash::Entry,
        instance: ash::Instance,
        physical_device: vk::PhysicalDevice,
        device: ash::Device,
        queue_family_index: u32,
        api_version: u32,
    ) -> Self {
        RawVulkan {
            entry,
            instance,
            physical_device,
            device,
            queue_family_index,
            queue_index: 0,
            api_version,
            enabled_extensions: Vec::new(),
            timeline_semaphore: false,
            queue_lock: None,
        }
    }

    /// Sets the queue index within the family.
    pub fn queue_index(mut self, index: u32) -> Self {
        self.queue_index = index;
        self
    }

    /// Sets the device extensions the device was created with.
    pub fn enabled_extensions(mut self, names: &[&'static CStr]) -> Self {
        self.enabled_extensions = names.to_vec();
        self
    }

    /// Says whether the timelineSemaphore feature was enabled.
    pub fn timeline_semaphore(mut self, enabled: bool) -> Self {
        self.timeline_semaphore = enabled;
        self
    }

    /// Shares the caller's queue lock with lava-flow (see [`RawVulkan::queue_lock`](Self#structfield.queue_lock)).
    pub fn queue_lock(mut self, lock: Arc<Mutex<vk::Queue>>) -> Self {
        self.queue_lock = Some(lock);
        self
    }
}

impl std::fmt::Debug for RawVulkan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawVulkan")
            .field("physical_device", &self.physical_device)
            .field("device", &self.device.handle())
            .field("queue_family_index", &self.queue_family_index)
            .field("queue_index", &self.queue_index)
            .field("api_version", &version_string(self.api_version))
            .field("enabled_extensions", &self.enabled_extensions)
            .field("timeline_semaphore", &self.timeline_semaphore)
            .field("queue_lock", &self.queue_lock.is_some())
            .finish()
    }
}

/// What an adopted device must have: the missing items, each with the rule that asks for it.
fn adoption_missing(raw: &RawVulkan, info: &PhysicalDeviceInfo, device_api: u32) -> Vec<String> {
    let api = raw.api_version.min(device_api);
    let enabled = |name: &CStr| raw.enabled_extensions.contains(&name);
    let mut missing = Vec::new();
    if api < vk::API_VERSION_1_1 {
        missing.push(format!(
            "Vulkan 1.1 (the instance's apiVersion is {} and the device's {}): external memory, \
             VK_KHR_dedicated_allocation and vkGetPhysicalDeviceProperties2 are core there, and lava-flow \
             calls them as core commands",
            version_string(raw.api_version),
            version_string(device_api)
        ));
    }
    if !enabled(ash::khr::external_memory_fd::NAME) {
        missing.push(
            "VK_KHR_external_memory_fd: vkGetMemoryFdKHR and VkImportMemoryFdInfoKHR, how every export and \
             import of lava-flow's reaches an fd"
                .to_string(),
        );
    }
    if enabled(ash::ext::external_memory_dma_buf::NAME) && !info.extensions.external_memory_dma_buf {
        missing.push("VK_EXT_external_memory_dma_buf is listed as enabled but the device does not offer it".into());
    }
    if raw.timeline_semaphore && !info.extensions.timeline_semaphore {
        missing.push(
            "the timelineSemaphore feature is said to be enabled, but the device does not offer it \
             (VkPhysicalDeviceTimelineSemaphoreFeatures)"
                .into(),
        );
    } else if raw.timeline_semaphore && api < vk::API_VERSION_1_2 {
        missing.push(format!(
            "Vulkan 1.2 for timeline semaphores (the version in use is {}): lava-flow calls vkWaitSemaphores and \
             vkSignalSemaphore as core commands; enable the feature on a 1.2 instance, or say it is off",
            version_string(api)
        ));
    }
    let offered = |name: &CStr| match name {
        n if n == ash::khr::external_memory_fd::NAME => info.extensions.external_memory_fd,
        n if n == ash::ext::external_memory_host::NAME => info.extensions.external_memory_host,
        n if n == ash::ext::external_memory_dma_buf::NAME => info.extensions.external_memory_dma_buf,
        n if n == ash::ext::image_drm_format_modifier::NAME => info.extensions.image_drm_format_modifier,
        n if n == ash::khr::external_semaphore_fd::NAME => info.extensions.external_semaphore_fd,
        n if n == ash::khr::external_fence_fd::NAME => info.extensions.external_fence_fd,
        n if n == ash::ext::memory_budget::NAME => info.extensions.memory_budget,
        _ => true,
    };
    for name in &raw.enabled_extensions {
        if *name != ash::ext::external_memory_dma_buf::NAME && !offered(name) {
            missing.push(format!(
                "{} is listed as enabled but the device does not offer it (vkEnumerateDeviceExtensionProperties does not list it)",
                name.to_string_lossy()
            ));
        }
    }
    missing
}

impl VulkanContext {
    /// Adopts a Vulkan device its caller created (with ash, or the raw handles of wgpu, vulkano or
    /// an engine): lava-flow allocates, exports and imports on it, makes semaphores, fences and
    /// pools there, exactly as on a device it opened itself, and never destroys what it did not
    /// create.
    ///
    /// lava-flow checks what it can before using anything: the physical device is one of
    /// `raw.instance`'s, the queue exists in its family, Vulkan 1.1 or later is in use (external
    /// memory and dedicated allocation are core there), VK_KHR_external_memory_fd is enabled, and
    /// every extension and feature said to be enabled is offered by the device. Everything missing
    /// is listed in one [`Error::Unsupported`]. The optional extensions lava-flow uses where
    /// enabled (VK_KHR_external_semaphore_fd, VK_KHR_external_fence_fd, VK_EXT_external_memory_host,
    /// VK_EXT_external_memory_dma_buf, VK_EXT_memory_budget, and the timelineSemaphore feature) are
    /// used only when `raw` lists them; what needs an absent one fails with `Unsupported` when asked.
    ///
    /// When the context is dropped (its last clone and the last object made from it), lava-flow
    /// waits for its queue, destroys its own command pool, then calls `drop_callback`, if any, which
    /// may destroy the device and instance. On an error, `drop_callback` is dropped uncalled and the
    /// caller keeps everything.
    ///
    /// # Safety
    ///
    /// The caller promises that:
    /// - `raw.instance`, `raw.physical_device` and `raw.device` are valid handles, the physical device
    ///   enumerated from that instance and the device created on it from `raw.entry`, with at least
    ///   `raw.queue_index + 1` queues of family `raw.queue_family_index` in its create info;
    /// - `raw.api_version`, `raw.enabled_extensions` and `raw.timeline_semaphore` are exactly what the
    ///   instance and device were created with (lava-flow calls the commands they enable);
    /// - the device and instance outlive the returned context and every object made from it: they are
    ///   destroyed only after the context drops (which `drop_callback` signals), or by `drop_callback`
    ///   itself;
    /// - the queue is externally synchronized as Vulkan requires: with `raw.queue_lock`, the caller takes
    ///   that lock around each of its own uses of the queue; without it, the caller never uses the queue
    ///   while a lava-flow call (or the context's drop) may be running on another thread;
    /// - the caller does not destroy, free, map or bind lava-flow's objects on the device (their handles are
    ///   reachable through accessors for recording commands), nor call `vkDeviceWaitIdle` concurrently
    ///   with lava-flow calls.
    pub unsafe fn from_raw(
        raw: RawVulkan,
        drop_callback: Option<Box<dyn FnOnce() + Send + Sync>>,
    ) -> Result<VulkanContext> {
        // SAFETY: the contract makes the instance valid; enumerating its devices has no other requirement.
        let physicals = unsafe { raw.instance.enumerate_physical_devices() }
            .map_err(|r| Error::vk("vkEnumeratePhysicalDevices", r, "listing the adopted instance's devices"))?;
        let Some(index) = physicals.iter().position(|p| *p == raw.physical_device) else {
            return Err(Error::invalid(
                format!("adopting a device on physical device {:?}", raw.physical_device),
                format!("the instance enumerates only {physicals:?}"),
                "pass the physical device the device was created on, from the same instance",
            ));
        };
        // SAFETY: the physical device was enumerated from the instance just above.
        let device_api = unsafe { raw.instance.get_physical_device_properties(raw.physical_device) }.api_version;
        if raw.api_version.min(device_api) < vk::API_VERSION_1_1 {
            // describe() calls vkGetPhysicalDeviceProperties2 as a core 1.1 command: refuse before it.
            let offered = PhysicalDeviceInfo {
                index,
                name: String::new(),
                device_type: String::new(),
                driver_name: String::new(),
                api_version: version_string(device_api),
                identity: DeviceIdentity::default(),
                extensions: EnabledExtensions::default(),
            };
            return Err(adoption_error(&raw, &offered, device_api));
        }
        let mut info = describe(&raw.instance, raw.physical_device, index)?;
        let missing = adoption_missing(&raw, &info, device_api);
        if !missing.is_empty() {
            return Err(adoption_error(&raw, &info, device_api));
        }
        // SAFETY: the physical device was enumerated from the instance above.
        let families = unsafe { raw.instance.get_physical_device_queue_family_properties(raw.physical_device) };
        let family = families.get(raw.queue_family_index as usize).ok_or_else(|| {
            Error::invalid(
                format!("adopting queue family {}", raw.queue_family_index),
                format!("{} has {} queue families", info.name, families.len()),
                "pass the family index the device's queue was created in",
            )
        })?;
        if raw.queue_index >= family.queue_count {
            return Err(Error::invalid(
                format!("adopting queue {} of family {}", raw.queue_index, raw.queue_family_index),
                format!("the family has {} queues (VUID-vkGetDeviceQueue-queueIndex-00385)", family.queue_count),
                "pass the index of a queue the device was created with",
            ));
        }
        if !family.queue_flags.intersects(vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE | vk::QueueFlags::TRANSFER)
        {
            return Err(Error::unsupported(
                format!("lava-flow's copies on queue family {}", raw.queue_family_index),
                format!("the family's flags are {:?}", family.queue_flags),
                "VkQueueFamilyProperties::queueFlags (transfer commands need a graphics, compute or transfer queue)",
                "adopt a graphics, compute or transfer queue",
            ));
        }
        let enabled = |name: &CStr| raw.enabled_extensions.contains(&name);
        info.extensions = EnabledExtensions {
            external_memory_fd: true,
            external_memory_host: enabled(ash::ext::external_memory_host::NAME),
            external_memory_dma_buf: enabled(ash::ext::external_memory_dma_buf::NAME),
            image_drm_format_modifier: enabled(ash::ext::image_drm_format_modifier::NAME),
            external_semaphore_fd: enabled(ash::khr::external_semaphore_fd::NAME),
            external_fence_fd: enabled(ash::khr::external_fence_fd::NAME),
            timeline_semaphore: raw.timeline_semaphore,
            memory_budget: enabled(ash::ext::memory_budget::NAME),
        };
        let RawVulkan { entry, instance, physical_device, device, queue_family_index, queue_index, queue_lock, .. } =
            raw;
        let handles = Handles {
            entry,
            instance,
            physical: physical_device,
            device,
            queue_family: queue_family_index,
            queue_index,
            info,
        };
        Self::finish(handles, Ownership::Adopted(drop_callback), queue_lock)
    }

    /// Whether lava-flow created this context's device (false: adopted with [`Self::from_raw`]).
    pub fn owns_device(&self) -> bool {
        matches!(*self.inner.ownership.lock().unwrap_or_else(|p| p.into_inner()), Ownership::Owned)
    }
}

/// The refusal of an adoption, listing everything missing at once.
fn adoption_error(raw: &RawVulkan, info: &PhysicalDeviceInfo, device_api: u32) -> Error {
    let missing = adoption_missing(raw, info, device_api);
    let name = if info.name.is_empty() { "the device".to_string() } else { info.name.clone() };
    Error::unsupported(
        format!("adopting {name} as a lava-flow context"),
        format!("missing: {}", missing.join("; ")),
        "the Vulkan spec's \"Extensions\" chapter: a device extension's commands and structures may be used only \
         when VkDeviceCreateInfo::ppEnabledExtensionNames enabled it, and core 1.1 commands only when \
         VkApplicationInfo::apiVersion and the device are 1.1 or later",
        "create the instance with apiVersion 1.1 or later and the device with VK_KHR_external_memory_fd enabled \
         (docs/ADOPTING.md lists what each lava-flow feature needs)",
    )
}

impl VulkanContext {
    /// Lists the machine's Vulkan devices. Errors when libvulkan or every driver is missing.
    pub fn enumerate() -> Result<Vec<PhysicalDeviceInfo>> {
        let entry = load_entry()?;
        let instance = create_instance(&entry)?;
        let result = (|| {
            // SAFETY: `instance` was created just above and is destroyed only after this closure returns.
            let physicals = unsafe { instance.enumerate_physical_devices() }
                .map_err(|r| Error::vk("vkEnumeratePhysicalDevices", r, "listing Vulkan devices"))?;
            physicals.iter().enumerate().map(|(i, p)| describe(&instance, *p, i)).collect()
        })();
        // SAFETY: `instance` came from create_instance above; describe() created no child objects, and the
        // physical handles it returned are dropped with the closure, so nothing outlives the instance.
        unsafe { instance.destroy_instance(None) };
        result
    }

    /// The Vulkan device whose `deviceUUID` is `device_uuid`, with the memory type that memory
    /// another API of the same GPU allocated (CUDA's `cuMemCreate`) is imported into: the first
    /// type whose flags are exactly `DEVICE_LOCAL`, else the first device-local type that is not
    /// host-visible, else the first device-local one (what NVIDIA's simpleVulkanMMAP sample picks
    /// from a buffer's `memoryTypeBits`). `Ok(None)` when no Vulkan device has that UUID or it
    /// has no device-local type; an error when libvulkan or every driver is missing.
    pub fn foreign_memory_target(device_uuid: Uuid) -> Result<Option<ForeignMemoryTarget>> {
        let entry = load_entry()?;
        let instance = create_instance(&entry)?;
        let result = (|| {
            // SAFETY: `instance` was created just above and is destroyed only after this closure returns.
            let physicals = unsafe { instance.enumerate_physical_devices() }
                .map_err(|r| Error::vk("vkEnumeratePhysicalDevices", r, "listing Vulkan devices"))?;
            for (index, physical) in physicals.iter().enumerate() {
                let info = describe(&instance, *physical, index)?;
                if info.identity.device_uuid != device_uuid {
                    continue;
                }
                // SAFETY: `physical` was enumerated from `instance`, which outlives the call.
                let props = unsafe { instance.get_physical_device_memory_properties(*physical) };
                let count = (props.memory_type_count as usize).min(props.memory_types.len());
                let flags: Vec<raw_gpu_handle::MemoryProperties> =
                    props.memory_types[..count].iter().map(|t| super::memory_properties(t.property_flags)).collect();
                let local = raw_gpu_handle::MemoryProperties::DEVICE_LOCAL;
                let host = raw_gpu_handle::MemoryProperties::HOST_VISIBLE;
                let chosen = flags
                    .iter()
                    .position(|f| *f == local)
                    .or_else(|| flags.iter().position(|f| f.contains(local) && !f.contains(host)))
                    .or_else(|| flags.iter().position(|f| f.contains(local)));
                return Ok(chosen.map(|i| ForeignMemoryTarget {
                    index,
                    name: info.name.clone(),
                    identity: info.identity,
                    memory_type_index: i as u32,
                    memory_properties: flags[i],
                }));
            }
            Ok(None)
        })();
        // SAFETY: `instance` came from create_instance above; nothing was created from it, and the
        // physical handles are dropped with the closure, so nothing outlives the instance.
        unsafe { instance.destroy_instance(None) };
        result
    }

    /// Opens the default device (see [`DeviceSelector::Default`]).
    pub fn new() -> Result<VulkanContext> {
        Self::with_selector(DeviceSelector::Default)
    }

    /// Opens the device at `index` in `lava-flow info`'s order.
    pub fn with_index(index: usize) -> Result<VulkanContext> {
        Self::with_selector(DeviceSelector::Index(index))
    }

    /// Opens the device whose device UUID is `uuid` (for instance the one an export names).
    pub fn with_uuid(uuid: Uuid) -> Result<VulkanContext> {
        Self::with_selector(DeviceSelector::Uuid(uuid))
    }

    /// Opens a device chosen by `selector`, with every sharing extension it supports enabled.
    pub fn with_selector(selector: DeviceSelector) -> Result<VulkanContext> {
        Self::with_options(&ContextOptions::new().selector(selector))
    }

    /// Opens the software device (see [`DeviceSelector::Software`]).
    pub fn software() -> Result<VulkanContext> {
        Self::with_selector(DeviceSelector::Software)
    }

    /// Opens a device chosen by `options` (device and driver), with every sharing extension it
    /// supports enabled.
    pub fn with_options(options: &ContextOptions) -> Result<VulkanContext> {
        let entry = load_entry()?;
        let instance = create_instance(&entry)?;
        // The entry (which keeps libvulkan loaded) must outlive the instance on the error path too.
        match Self::open_device(entry.clone(), instance.clone(), options) {
            Ok(ctx) => Ok(ctx),
            Err(e) => {
                // SAFETY: every error path of open_device returns before vkCreateDevice succeeds, or destroys the
                // device first (the command pool path), so the instance has no children; `entry` keeps the loader
                // loaded until after the call.
                unsafe { instance.destroy_instance(None) };
                drop(entry);
                Err(e)
            }
        }
    }

    fn open_device(entry: ash::Entry, instance: ash::Instance, options: &ContextOptions) -> Result<VulkanContext> {
        let selector = options.selector;
        // SAFETY: `instance` is the one with_options created and keeps alive until this function returns.
        let physicals = unsafe { instance.enumerate_physical_devices() }
            .map_err(|r| Error::vk("vkEnumeratePhysicalDevices", r, "listing Vulkan devices"))?;
        let infos: Vec<PhysicalDeviceInfo> =
            physicals.iter().enumerate().map(|(i, p)| describe(&instance, *p, i)).collect::<Result<_>>()?;
        let found = || {
            if infos.is_empty() {
                "the Vulkan loader lists no devices".to_string()
            } else {
                infos
                    .iter()
                    .map(|i| format!("[{}] {} (driver {}) {}", i.index, i.name, i.driver_name, i.identity.device_uuid))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let driver_matches =
            |i: &&PhysicalDeviceInfo| options.driver.as_ref().is_none_or(|d| i.driver_name.eq_ignore_ascii_case(d));
        let mut candidates = infos.iter().filter(driver_matches);
        let chosen = match selector {
            DeviceSelector::Default => candidates.min_by_key(|i| (type_rank(&i.device_type), i.index)),
            DeviceSelector::Index(n) => candidates.find(|i| i.index == n),
            DeviceSelector::Uuid(u) => candidates.find(|i| i.identity.device_uuid == u),
            DeviceSelector::Software => {
                candidates.find(|i| i.device_type == device_type_name(vk::PhysicalDeviceType::CPU))
            }
        };
        let Some(info) = chosen.cloned() else {
            let mut wanted = match selector {
                DeviceSelector::Default => "(any)".to_string(),
                DeviceSelector::Index(n) => format!("at index {n}"),
                DeviceSelector::Uuid(u) => format!("with device UUID {u}"),
                DeviceSelector::Software => "of type CPU (a software driver such as lavapipe)".to_string(),
            };
            if let Some(d) = &options.driver {
                wanted.push_str(&format!(" of driver {d:?}"));
            }
            return Err(Error::DeviceNotFound {
                api: "Vulkan",
                wanted,
                found: found(),
                advice: "run `lava-flow info` to list devices and their drivers; install a driver if none is listed (`apt-get install mesa-vulkan-drivers` for the software one); where VK_DRIVER_FILES is set, the loader sees only the manifests it names".into(),
            });
        };
        let physical = physicals[info.index];
        // SAFETY: `physical` was enumerated from `instance` above and is an index into that list.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let queue_family = families
            .iter()
            .position(|f| {
                f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.queue_flags.contains(vk::QueueFlags::TRANSFER)
            })
            .or_else(|| families.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE)))
            .ok_or_else(|| {
                Error::unsupported(
                    format!("a compute queue on {}", info.name),
                    "no queue family has VK_QUEUE_COMPUTE_BIT",
                    "vkGetPhysicalDeviceQueueFamilyProperties",
                    "choose another device",
                )
            })? as u32;

        let ext = info.extensions;
        let mut names: Vec<*const std::ffi::c_char> = Vec::new();
        for name in WANTED_EXTENSIONS {
            let on = match name {
                n if n == ash::khr::external_memory_fd::NAME => ext.external_memory_fd,
                n if n == ash::ext::external_memory_host::NAME => ext.external_memory_host,
                n if n == ash::ext::external_memory_dma_buf::NAME => {
                    ext.external_memory_dma_buf && ext.external_memory_fd
                }
                n if n == ash::ext::image_drm_format_modifier::NAME => ext.image_drm_format_modifier,
                n if n == ash::khr::external_semaphore_fd::NAME => ext.external_semaphore_fd,
                n if n == ash::khr::external_fence_fd::NAME => ext.external_fence_fd,
                n if n == ash::ext::memory_budget::NAME => ext.memory_budget,
                _ => false,
            };
            if on {
                names.push(name.as_ptr());
            }
        }
        let priorities = [1.0f32];
        let queue_info =
            [vk::DeviceQueueCreateInfo::default().queue_family_index(queue_family).queue_priorities(&priorities)];
        let mut timeline =
            vk::PhysicalDeviceTimelineSemaphoreFeatures::default().timeline_semaphore(ext.timeline_semaphore);
        let mut create_info =
            vk::DeviceCreateInfo::default().queue_create_infos(&queue_info).enabled_extension_names(&names);
        if ext.timeline_semaphore {
            create_info = create_info.push_next(&mut timeline);
        }
        // SAFETY: the create info and its chain (queue_info, priorities, names, timeline) are locals that
        // outlive the call; the extension names are 'static; `physical` is from `instance`.
        let device = unsafe { instance.create_device(physical, &create_info, None) }
            .map_err(|r| Error::vk("vkCreateDevice", r, format!("opening {}", info.name)))?;
        let handles = Handles { entry, instance, physical, device, queue_family, queue_index: 0, info };
        Self::finish(handles, Ownership::Owned, None)
    }

    /// The part of opening a context shared by owned devices ([`Self::with_options`]) and adopted
    /// ones ([`Self::from_raw`]): lava-flow's command pool, the device's memory properties,
    /// limits and host-import alignment, and the extension loaders of what `info.extensions` says
    /// is enabled. On error, an owned device is destroyed here (the caller destroys the
    /// instance); an adopted one is left untouched.
    fn finish(
        handles: Handles,
        ownership: Ownership,
        queue_lock: Option<Arc<Mutex<vk::Queue>>>,
    ) -> Result<VulkanContext> {
        let Handles { entry, instance, physical, device, queue_family, queue_index, info } = handles;
        let ext = info.extensions;
        // SAFETY: the device has a queue `queue_index` of `queue_family`: with_options created it with
        // queue 0 of that family, and from_raw checked the index against the family's queue count
        // (its caller promises the device was created with that many queues of the family).
        let queue = unsafe { device.get_device_queue(queue_family, queue_index) };
        // Only adopted devices pass a lock, so this error path never holds an owned device.
        if let Some(lock) = &queue_lock {
            let shared = *lock.lock().unwrap_or_else(|p| p.into_inner());
            if shared != queue {
                return Err(Error::invalid(
                    "adopting a device with a shared queue lock",
                    format!(
                        "the lock holds queue {shared:?}, and vkGetDeviceQueue({queue_family}, {queue_index}) is {queue:?}"
                    ),
                    "share the Mutex that guards the very queue named by queue_family_index and queue_index",
                ));
            }
        }
        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER | vk::CommandPoolCreateFlags::TRANSIENT);
        // SAFETY: `device` is alive (just created, or adopted under from_raw's contract); pool_info names
        // a queue family of it.
        let command_pool = match unsafe { device.create_command_pool(&pool_info, None) } {
            Ok(p) => p,
            Err(r) => {
                if let Ownership::Owned = ownership {
                    // SAFETY: an owned device was created by with_options just before: the pool failed, so
                    // it has no children yet, and nothing else holds it.
                    unsafe { device.destroy_device(None) };
                }
                return Err(Error::vk("vkCreateCommandPool", r, "creating lava-flow's command pool"));
            }
        };
        // SAFETY: `physical` belongs to `instance` (enumerated from it), which is alive.
        let memory_properties = unsafe { instance.get_physical_device_memory_properties(physical) };
        // SAFETY: `physical` belongs to `instance` (enumerated from it), which is alive.
        let limits = unsafe { instance.get_physical_device_properties(physical) }.limits;
        let host_import_alignment = ext.external_memory_host.then(|| {
            let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
            // SAFETY: the device offers VK_EXT_external_memory_host (ext says so), so its properties struct is
            // a valid pNext of Properties2; the chained local outlives the call.
            unsafe { instance.get_physical_device_properties2(physical, &mut props2) };
            host.min_imported_host_pointer_alignment
        });
        let inner = ContextInner {
            external_memory_fd: ext
                .external_memory_fd
                .then(|| ash::khr::external_memory_fd::Device::new(&instance, &device)),
            external_memory_host: ext
                .external_memory_host
                .then(|| ash::ext::external_memory_host::Device::new(&instance, &device)),
            external_semaphore_fd: ext
                .external_semaphore_fd
                .then(|| ash::khr::external_semaphore_fd::Device::new(&instance, &device)),
            external_fence_fd: ext
                .external_fence_fd
                .then(|| ash::khr::external_fence_fd::Device::new(&instance, &device)),
            _entry: entry,
            instance,
            physical,
            device,
            queue_family,
            queue: queue_lock.unwrap_or_else(|| Arc::new(Mutex::new(queue))),
            info,
            memory_properties,
            limits,
            host_import_alignment,
            command_pool: Mutex::new(command_pool),
            deferred_errors: Mutex::new(Vec::new()),
            ownership: Mutex::new(ownership),
            _live: super::live::Live::context(),
        };
        Ok(VulkanContext { inner: Arc::new(inner) })
    }

    /// Name, UUIDs and extensions of the opened device.
    pub fn info(&self) -> &PhysicalDeviceInfo {
        &self.inner.info
    }

    /// The device and driver identity every export from this context carries.
    pub fn identity(&self) -> DeviceIdentity {
        self.inner.info.identity
    }

    /// The sharing extensions enabled on this device.
    pub fn extensions(&self) -> EnabledExtensions {
        self.inner.info.extensions
    }

    /// The ash device, for recording your own commands against lava-flow's objects.
    pub fn device(&self) -> &ash::Device {
        &self.inner.device
    }

    /// The ash instance.
    pub fn instance(&self) -> &ash::Instance {
        &self.inner.instance
    }

    /// The physical device handle.
    pub fn physical_device(&self) -> vk::PhysicalDevice {
        self.inner.physical
    }

    /// The queue family of the queue ([`Self::with_queue`]).
    pub fn queue_family_index(&self) -> u32 {
        self.inner.queue_family
    }

    /// Runs `f` with the queue locked (vkQueueSubmit needs external synchronization).
    pub fn with_queue<R>(&self, f: impl FnOnce(vk::Queue) -> R) -> R {
        let queue = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        f(*queue)
    }

    /// The device's memory types and heaps.
    pub fn memory_properties(&self) -> &vk::PhysicalDeviceMemoryProperties {
        &self.inner.memory_properties
    }

    /// Device limits.
    pub fn limits(&self) -> &vk::PhysicalDeviceLimits {
        &self.inner.limits
    }

    /// `minImportedHostPointerAlignment` where VK_EXT_external_memory_host is enabled.
    pub fn host_import_alignment(&self) -> Option<u64> {
        self.inner.host_import_alignment
    }

    /// This process's use of each memory heap in bytes (`heapUsage` of VK_EXT_memory_budget), or
    /// None where the device lacks the extension.
    pub fn heap_usage(&self) -> Option<Vec<u64>> {
        if !self.inner.info.extensions.memory_budget {
            return None;
        }
        let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let count = {
            let mut props2 = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
            // SAFETY: `physical` belongs to the instance self owns; the budget struct is chained only when the
            // device has VK_EXT_memory_budget (checked above) and outlives the call.
            unsafe { self.inner.instance.get_physical_device_memory_properties2(self.inner.physical, &mut props2) };
            props2.memory_properties.memory_heap_count as usize
        };
        Some(budget.heap_usage[..count.min(vk::MAX_MEMORY_HEAPS)].to_vec())
    }

    /// The VK_KHR_external_memory_fd loader, or Unsupported.
    pub fn external_memory_fd(&self) -> Result<&ash::khr::external_memory_fd::Device> {
        self.inner.external_memory_fd.as_ref().ok_or_else(|| {
            Error::unsupported(
                format!("opaque-fd memory on {}", self.inner.info.name),
                "the device lacks VK_KHR_external_memory_fd (or was adopted without it enabled)",
                "VK_KHR_external_memory_fd",
                "use a driver that exports memory as fds (`lava-flow info` lists them)",
            )
        })
    }

    /// The VK_EXT_external_memory_host loader, or Unsupported.
    pub fn external_memory_host(&self) -> Result<&ash::ext::external_memory_host::Device> {
        self.inner.external_memory_host.as_ref().ok_or_else(|| {
            Error::unsupported(
                format!("shareable host memory on {}", self.inner.info.name),
                "the device lacks VK_EXT_external_memory_host (or was adopted without it enabled)",
                "VK_EXT_external_memory_host",
                "use device memory exported as an fd instead",
            )
        })
    }

    /// The VK_KHR_external_semaphore_fd loader, or Unsupported.
    pub fn external_semaphore_fd(&self) -> Result<&ash::khr::external_semaphore_fd::Device> {
        self.inner.external_semaphore_fd.as_ref().ok_or_else(|| {
            Error::unsupported(
                format!("exportable semaphores on {}", self.inner.info.name),
                "the device lacks VK_KHR_external_semaphore_fd (or was adopted without it enabled)",
                "VK_KHR_external_semaphore_fd",
                "synchronize on the host, or use a driver with external semaphores",
            )
        })
    }

    /// The VK_KHR_external_fence_fd loader, or Unsupported.
    pub fn external_fence_fd(&self) -> Result<&ash::khr::external_fence_fd::Device> {
        self.inner.external_fence_fd.as_ref().ok_or_else(|| {
            Error::unsupported(
                format!("exportable fences on {}", self.inner.info.name),
                "the device lacks VK_KHR_external_fence_fd (or was adopted without it enabled)",
                "VK_KHR_external_fence_fd",
                "wait on the host, or use a driver with external fences",
            )
        })
    }

    /// Records commands with `record`, submits them on the context's queue and waits for them.
    /// For setup and tests; hot paths record their own command buffers.
    pub fn run_commands(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<()> {
        self.check_deferred()?;
        let device = &self.inner.device;
        let pool = self.inner.command_pool.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the pool belongs to this device and its mutex is held (`pool`) for the whole call,
        // which is the external synchronization recording needs.
        let cmd =
            unsafe { record_command_buffer(device, *pool, vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT, record) }?;
        let result = (|| {
            // SAFETY: the device is alive (self holds it); the create info is a default local.
            let fence = unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) }
                .map_err(|r| Error::vk("vkCreateFence", r, "creating a fence"))?;
            let cmds = [cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            let submitted = self.with_queue(|q| {
                // SAFETY: with_queue holds the queue mutex (vkQueueSubmit needs the queue externally synchronized);
                // cmd is executable (ended above) and the fence is fresh and unsignalled; `submit` outlives the call.
                unsafe { device.queue_submit(q, &submit, fence) }
            });
            let waited = submitted.map_err(|r| Error::vk("vkQueueSubmit", r, "submitting commands")).and_then(|_| {
                // SAFETY: the fence belongs to this device and is alive until destroyed below.
                unsafe { device.wait_for_fences(&[fence], true, u64::MAX) }
                    .map_err(|r| Error::vk("vkWaitForFences", r, "waiting for commands"))
            });
            // SAFETY: a wait with no timeout returns only once the fence signalled or the device is lost, and a
            // fence that was never submitted is unused: either way no queue operation still refers to it.
            unsafe { device.destroy_fence(fence, None) };
            waited
        })();
        // SAFETY: cmd is not pending (it completed, was never submitted, or the device is lost, see above)
        // and its pool's mutex is still held.
        unsafe { device.free_command_buffers(*pool, &[cmd]) };
        result
    }

    /// Records an error that happened in a `Drop`, to be returned by the next fallible call.
    pub(crate) fn defer_error(&self, error: impl Into<crate::error::DeferredError>) {
        self.inner.deferred_errors.lock().unwrap_or_else(|p| p.into_inner()).push(error.into());
    }

    /// Returns (and clears) errors recorded while dropping objects of this context.
    pub fn check_deferred(&self) -> Result<()> {
        let mut errs = self.inner.deferred_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Deferred(std::mem::take(&mut *errs)))
        }
    }

    /// Finds a memory type allowed by `type_bits` with all of `required` flags, preferring one
    /// with `preferred` too.
    pub fn find_memory_type(
        &self,
        type_bits: u32,
        required: vk::MemoryPropertyFlags,
        preferred: vk::MemoryPropertyFlags,
    ) -> Option<u32> {
        let props = &self.inner.memory_properties;
        let candidates = (0..props.memory_type_count)
            .filter(|i| type_bits & (1 << i) != 0)
            .filter(|i| props.memory_types[*i as usize].property_flags.contains(required));
        let all: Vec<u32> = candidates.collect();
        all.iter()
            .copied()
            .find(|i| props.memory_types[*i as usize].property_flags.contains(required | preferred))
            .or_else(|| all.first().copied())
    }
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        let ownership =
            std::mem::replace(self.ownership.get_mut().unwrap_or_else(|p| p.into_inner()), Ownership::Adopted(None));
        let pool = *self.command_pool.get_mut().unwrap_or_else(|p| p.into_inner());
        match ownership {
            Ownership::Owned => {
                // SAFETY: &mut self on the last Arc: every lava-flow object made from the device holds that Arc,
                // so they are all gone and no other thread can reach the queue or pool. Destroy order is
                // children first. Errors from the idle wait are ignored: destroying after a lost device is
                // still valid.
                unsafe {
                    let _ = self.device.device_wait_idle();
                    self.device.destroy_command_pool(pool, None);
                    self.device.destroy_device(None);
                    self.instance.destroy_instance(None);
                }
            }
            Ownership::Adopted(callback) => {
                // An adopted device may be in use by its creator on other queues, so lava-flow waits for its
                // own queue only (vkDeviceWaitIdle would need every queue externally synchronized), and
                // destroys only what it created: the command pool.
                let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: the queue's lock is held (vkQueueWaitIdle's external sync; from_raw's contract makes the
                // creator take the shared lock or not submit concurrently). After the wait no command buffer of
                // lava-flow's pool is pending (only lava-flow records into it, and every lava-flow object is gone),
                // and the pool is destroyed exclusively (&mut self). The device is alive: from_raw's caller
                // promised it outlives the context, which ends here.
                unsafe {
                    let _ = self.device.queue_wait_idle(*queue);
                    self.device.destroy_command_pool(pool, None);
                }
                drop(queue);
                if let Some(callback) = callback {
                    callback();
                }
            }
        }
    }
}

/// Allocates one primary command buffer from `pool` and records it: `vkBeginCommandBuffer` with
/// `flags`, then `record`, then `vkEndCommandBuffer`. The one recording path of lava-flow
/// ([`VulkanContext::run_commands`], [`RecordedCommands`](crate::vulkan::RecordedCommands)) and of
/// lava-flow-diag's raw baselines. On an error the command buffer is freed again.
///
/// # Safety
/// `pool` is a live command pool of `device`, and no other thread uses `pool` during the call
/// (the external synchronization `vkAllocateCommandBuffers` and recording require).
#[doc(hidden)]
pub unsafe fn record_command_buffer(
    device: &ash::Device,
    pool: vk::CommandPool,
    flags: vk::CommandBufferUsageFlags,
    record: impl FnOnce(&ash::Device, vk::CommandBuffer),
) -> Result<vk::CommandBuffer> {
    let alloc = vk::CommandBufferAllocateInfo::default()
        .command_pool(pool)
        .level(vk::CommandBufferLevel::PRIMARY)
        .command_buffer_count(1);
    // SAFETY: the caller guarantees `pool` is a live pool of `device` that no other thread uses.
    let cmd = unsafe { device.allocate_command_buffers(&alloc) }
        .map_err(|r| Error::vk("vkAllocateCommandBuffers", r, "allocating a command buffer"))?[0];
    let result = (|| {
        let begin = vk::CommandBufferBeginInfo::default().flags(flags);
        // SAFETY: cmd was just allocated (initial state) from the pool only this call uses.
        unsafe { device.begin_command_buffer(cmd, &begin) }
            .map_err(|r| Error::vk("vkBeginCommandBuffer", r, "recording commands"))?;
        record(device, cmd);
        // SAFETY: cmd is in the recording state (begun above) and its pool is still used by this call alone.
        unsafe { device.end_command_buffer(cmd) }.map_err(|r| Error::vk("vkEndCommandBuffer", r, "recording commands"))
    })();
    if let Err(e) = result {
        // SAFETY: cmd was never submitted, so it is not pending; its pool is used by this call alone.
        unsafe { device.free_command_buffers(pool, &[cmd]) };
        return Err(e);
    }
    Ok(cmd)
}

use core::fmt;

use crate::{DeviceIdentity, MemoryHandleKind};

/// An import refused because the importer is not the device and driver that exported.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IncompatibleDevice {
    /// The handle kind that was to be imported.
    pub handle_kind: MemoryHandleKind,
    /// Who exported.
    pub exporter: DeviceIdentity,
    /// Who tried to import.
    pub importer: DeviceIdentity,
}

impl fmt::Display for IncompatibleDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = match (
            self.exporter.device_uuid == self.importer.device_uuid,
            self.exporter.driver_uuid == self.importer.driver_uuid,
        ) {
            (false, false) => "device and driver UUIDs both differ",
            (false, true) => "device UUIDs differ",
            (true, false) => "driver UUIDs differ",
            (true, true) => "identities are equal",
        };
        write!(
            f,
            "{} memory exported by {} cannot be imported by {}: {} (external memory handle types \
             compatibility: opaque handles are only valid between the same physical device and the same driver); \
             import on the exporting device, or share it as host memory",
            self.handle_kind, self.exporter, self.importer, which
        )
    }
}

impl core::error::Error for IncompatibleDevice {}

/// The compatibility rule: may memory of `handle_kind` exported by `exporter` be imported by
/// `importer`? Opaque handles need equal device AND driver UUIDs (Vulkan spec, "External memory
/// handle types compatibility"); DMA-BUF and host memory need neither.
pub fn check_compatible(
    handle_kind: MemoryHandleKind,
    exporter: &DeviceIdentity,
    importer: &DeviceIdentity,
) -> Result<(), IncompatibleDevice> {
    if !handle_kind.requires_same_driver()
        || (exporter.device_uuid == importer.device_uuid && exporter.driver_uuid == importer.driver_uuid)
    {
        Ok(())
    } else {
        Err(IncompatibleDevice { handle_kind, exporter: *exporter, importer: *importer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Uuid;
    use alloc::string::ToString;

    fn id(d: u8, r: u8) -> DeviceIdentity {
        DeviceIdentity { device_uuid: Uuid([d; 16]), driver_uuid: Uuid([r; 16]), luid: None }
    }

    #[test]
    fn opaque_needs_both_uuids() {
        assert!(check_compatible(MemoryHandleKind::OpaqueFd, &id(1, 2), &id(1, 2)).is_ok());
        let e = check_compatible(MemoryHandleKind::OpaqueFd, &id(1, 2), &id(1, 3)).unwrap_err();
        assert!(e.to_string().contains("driver UUIDs differ"), "{e}");
        let e = check_compatible(MemoryHandleKind::OpaqueFd, &id(1, 2), &id(4, 2)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("device UUIDs differ"), "{text}");
        assert!(text.contains(&Uuid([1; 16]).to_string()) && text.contains(&Uuid([4; 16]).to_string()));
    }

    #[test]
    fn host_memory_and_dmabuf_cross_devices() {
        assert!(check_compatible(MemoryHandleKind::HostMemfd, &id(1, 2), &id(3, 4)).is_ok());
        assert!(check_compatible(MemoryHandleKind::DmaBuf, &id(1, 2), &id(3, 4)).is_ok());
    }

    #[test]
    fn uuid_round_trips_through_text() {
        let u = Uuid([0xab; 16]);
        assert_eq!(Uuid::parse(&u.to_string()), Some(u));
        assert_eq!(Uuid::parse("xyz"), None);
    }
}

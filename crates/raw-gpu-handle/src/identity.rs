use core::fmt;

/// A 16-byte UUID as GPU APIs report it (`VkPhysicalDeviceIDProperties::deviceUUID`,
/// `cuDeviceGetUuid`, `CL_DEVICE_UUID_KHR`, `GL_DEVICE_UUID_EXT`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID, which drivers report when they have none.
    pub const NIL: Uuid = Uuid([0; 16]);

    /// Whether this is the all-zero UUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the canonical 8-4-4-4-12 hex form (dashes optional).
    pub fn parse(text: &str) -> Option<Uuid> {
        // Hex digits only (no allocation, so it works without `std`): a sign such as "+f", which
        // `from_str_radix` would take, is refused like any other non-digit.
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for b in text.bytes().filter(|b| *b != b'-') {
            let digit = (b as char).to_digit(16)?;
            if nibbles == 32 {
                return None;
            }
            out[nibbles / 2] |= (digit as u8) << if nibbles.is_multiple_of(2) { 4 } else { 0 };
            nibbles += 1;
        }
        (nibbles == 32).then_some(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Which physical device, under which driver, made an object.
///
/// Every export carries one and every import checks it first: opaque handles may only be
/// imported by the same device under the same driver (see [`check_compatible`](crate::check_compatible)).
/// Consumed by: Vulkan (`VkPhysicalDeviceIDProperties`), CUDA (`cuDeviceGetUuid` gives the device
/// UUID), OpenCL (`CL_DEVICE_UUID_KHR`, `CL_DRIVER_UUID_KHR`), OpenGL (`GL_DEVICE_UUID_EXT`,
/// `GL_DRIVER_UUID_EXT`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceIdentity {
    /// The physical device's UUID; stable across processes and APIs on one machine.
    pub device_uuid: Uuid,
    /// The driver's UUID; opaque handles are only valid between identical drivers.
    pub driver_uuid: Uuid,
    /// The Windows LUID, where the platform has one (used for Win32 handles and D3D interop).
    pub luid: Option<[u8; 8]>,
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} driver {}", self.device_uuid, self.driver_uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::Uuid;
    use alloc::string::ToString;

    #[test]
    fn parse_takes_hex_digits_only() {
        let text = "6d657361-3232-2e33-2e36-000000000000";
        assert_eq!(Uuid::parse(text).map(|u| u.to_string()), Some(text.to_string()));
        assert_eq!(Uuid::parse(&text.to_uppercase()).map(|u| u.to_string()), Some(text.to_string()));
        // u8::from_str_radix alone would read "+d" as 0x0d.
        assert_eq!(Uuid::parse("+d657361-3232-2e33-2e36-000000000000"), None);
        assert_eq!(Uuid::parse("6d657361-3232-2e33-2e36-00000000000g"), None);
        assert_eq!(Uuid::parse("6d657361"), None);
    }
}

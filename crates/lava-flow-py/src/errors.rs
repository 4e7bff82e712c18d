//! `lava_flow.Error` and its subclasses: one per kind of `lava_flow::Error`, with its message.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(lava_flow, Error, PyException, "Every error lava-flow raises; the message is the Rust library's.");
create_exception!(lava_flow, LibraryUnavailable, Error, "A native library (libvulkan, libcuda) could not be loaded.");
create_exception!(lava_flow, DeviceNotFound, Error, "No device matches what was asked for.");
create_exception!(
    lava_flow,
    DriverError,
    Error,
    "A Vulkan or CUDA call failed; the message names the call and its code."
);
create_exception!(lava_flow, Unsupported, Error, "The driver or device does not support what was asked for.");
create_exception!(
    lava_flow,
    IncompatibleDevice,
    Error,
    "The object was exported by another device or driver than the one importing it."
);
create_exception!(lava_flow, InvalidArgument, Error, "An argument was refused (size, dtype, shape, name, stream).");
create_exception!(lava_flow, InvalidHandle, Error, "A received fd does not match its description.");
create_exception!(lava_flow, OutOfMemory, Error, "An allocation or import ran out of memory.");
create_exception!(lava_flow, Timeout, Error, "A wait ran past its timeout.");
create_exception!(lava_flow, ProtocolError, Error, "The peer broke the lava-flow protocol (docs/PROTOCOL.md).");
create_exception!(lava_flow, PeerRefused, Error, "The server refused the request (an unknown name, a full server).");
create_exception!(lava_flow, IoError, Error, "A system call failed (a socket that closed, a missing path).");
create_exception!(lava_flow, Mismatch, Error, "Data read back differs from what was written.");
create_exception!(
    lava_flow,
    Closed,
    Error,
    "The object was closed with close() (or its `with` block ended), or a channel's other end is gone."
);
create_exception!(lava_flow, Full, Error, "Every frame of a channel is in flight (`Producer.try_acquire`).");

/// The Python exception for a lava-flow error, with the same message.
pub fn to_py(e: lava_flow::Error) -> PyErr {
    use lava_flow::Error as E;
    let msg = e.to_string();
    match e {
        E::LibraryUnavailable { .. } => LibraryUnavailable::new_err(msg),
        E::DeviceNotFound { .. } => DeviceNotFound::new_err(msg),
        E::Vulkan { .. } | E::Api { .. } | E::Deferred(_) => DriverError::new_err(msg),
        E::Unsupported { .. } => Unsupported::new_err(msg),
        E::IncompatibleDevice(_) | E::IncompatibleSyncDevice { .. } => IncompatibleDevice::new_err(msg),
        E::InvalidArgument { .. } => InvalidArgument::new_err(msg),
        E::InvalidHandle { .. } => InvalidHandle::new_err(msg),
        E::OutOfMemory { .. } => OutOfMemory::new_err(msg),
        E::Timeout { .. } => Timeout::new_err(msg),
        E::Protocol { .. } => ProtocolError::new_err(msg),
        E::PeerRefused { .. } => PeerRefused::new_err(msg),
        E::Io { .. } => IoError::new_err(msg),
        E::Mismatch { .. } => Mismatch::new_err(msg),
        E::Closed { .. } => Closed::new_err(msg),
        E::Full { .. } => Full::new_err(msg),
        _ => Error::new_err(msg),
    }
}

/// `result.map_err(to_py)`, shorter.
pub trait IntoPy<T> {
    /// The value, or the Python exception for the error.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for lava_flow::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// An [`InvalidArgument`] in lava-flow's form: what was asked, why it is refused, what to do.
pub fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display, advice: impl std::fmt::Display) -> PyErr {
    InvalidArgument::new_err(format!("invalid {what}: {reason}; {advice}"))
}

/// The error for a call on an object after `close()`.
pub fn closed(what: &str) -> PyErr {
    Closed::new_err(format!("the {what} was closed (close() or the end of its `with` block); get or import it again"))
}

/// Adds the exceptions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("LibraryUnavailable", py.get_type::<LibraryUnavailable>())?;
    m.add("DeviceNotFound", py.get_type::<DeviceNotFound>())?;
    m.add("DriverError", py.get_type::<DriverError>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("IncompatibleDevice", py.get_type::<IncompatibleDevice>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("InvalidHandle", py.get_type::<InvalidHandle>())?;
    m.add("OutOfMemory", py.get_type::<OutOfMemory>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("PeerRefused", py.get_type::<PeerRefused>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("Mismatch", py.get_type::<Mismatch>())?;
    m.add("Closed", py.get_type::<Closed>())?;
    m.add("Full", py.get_type::<Full>())?;
    Ok(())
}

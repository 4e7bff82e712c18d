"""lava-flow for Python: GPU memory and synchronization shared between processes and APIs.

Get objects a lava-flow server publishes and hand them to NumPy, PyTorch or CuPy without a copy::

    import lava_flow, numpy
    client = lava_flow.connect("/tmp/lava-flow.sock")
    frames = client.get("frames")
    host = numpy.from_dlpack(frames.map_host())           # host-visible / shared host memory
    cuda = torch.from_dlpack(frames.import_cuda())         # any memory, on the GPU

docs/PYTHON.md in the repository has the whole guide; the type stubs list every call.
"""

from ._native import (
    KDL_CPU,
    KDL_CUDA,
    Allocation,
    Allocator,
    Client,
    Closed,
    CudaMemory,
    CudaSemaphore,
    DeviceNotFound,
    DriverError,
    Error,
    HostMapping,
    HostMemory,
    IncompatibleDevice,
    InvalidArgument,
    InvalidHandle,
    IoError,
    LibraryUnavailable,
    Mismatch,
    OutOfMemory,
    PeerRefused,
    ProtocolError,
    Server,
    SharedObject,
    Tensor,
    Timeout,
    Unsupported,
    connect,
)

__all__ = [
    "KDL_CPU",
    "KDL_CUDA",
    "Allocation",
    "Allocator",
    "Client",
    "Closed",
    "CudaMemory",
    "CudaSemaphore",
    "DeviceNotFound",
    "DriverError",
    "Error",
    "HostMapping",
    "HostMemory",
    "IncompatibleDevice",
    "InvalidArgument",
    "InvalidHandle",
    "IoError",
    "LibraryUnavailable",
    "Mismatch",
    "OutOfMemory",
    "PeerRefused",
    "ProtocolError",
    "Server",
    "SharedObject",
    "Tensor",
    "Timeout",
    "Unsupported",
    "connect",
]

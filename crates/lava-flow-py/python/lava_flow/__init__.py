"""lava-flow for Python: GPU memory and synchronization shared between processes and APIs.

Get objects a lava-flow server publishes and hand them to NumPy, PyTorch or CuPy without a copy::

    import lava_flow, numpy
    client = lava_flow.connect("/tmp/lava-flow.sock")
    frames = client.get("frames")
    host = numpy.from_dlpack(frames.map_host())           # host-visible / shared host memory
    cuda = torch.from_dlpack(frames.import_cuda())         # any memory, on the GPU

Or receive a stream of frames from a channel's producer (Rust, C or Python)::

    for frame in lava_flow.Channel.consumer("/tmp/frames.sock"):
        with frame:
            image = numpy.from_dlpack(frame)                   # read-only, no copy

docs/PYTHON.md in the repository has the whole guide; the type stubs list every call.
"""

from ._native import (
    KDL_CPU,
    KDL_CUDA,
    Allocation,
    Allocator,
    Channel,
    Client,
    Closed,
    Consumer,
    CudaMemory,
    CudaSemaphore,
    DeviceNotFound,
    DriverError,
    Error,
    Full,
    HostMapping,
    HostMemory,
    IncompatibleDevice,
    InvalidArgument,
    InvalidHandle,
    IoError,
    LibraryUnavailable,
    Metadata,
    Mismatch,
    OutOfMemory,
    PeerRefused,
    Producer,
    ProtocolError,
    ReadFrame,
    Server,
    SharedObject,
    Tensor,
    Timeout,
    Unsupported,
    WriteFrame,
    connect,
)

__all__ = [
    "KDL_CPU",
    "KDL_CUDA",
    "Allocation",
    "Allocator",
    "Channel",
    "Client",
    "Closed",
    "Consumer",
    "CudaMemory",
    "CudaSemaphore",
    "DeviceNotFound",
    "DriverError",
    "Error",
    "Full",
    "HostMapping",
    "HostMemory",
    "IncompatibleDevice",
    "InvalidArgument",
    "InvalidHandle",
    "IoError",
    "LibraryUnavailable",
    "Metadata",
    "Mismatch",
    "OutOfMemory",
    "PeerRefused",
    "Producer",
    "ProtocolError",
    "ReadFrame",
    "Server",
    "SharedObject",
    "Tensor",
    "Timeout",
    "Unsupported",
    "WriteFrame",
    "connect",
]

"""Type stubs of the lava_flow package (the native module lava_flow._native)."""

from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

_T = TypeVar("_T")
_Path = Union[str, "PathLike[str]"]
# A name ("float32", "<f4", "f4"), a NumPy dtype or scalar type, or a torch dtype.
_DType = Any
# None, a raw CUstream (int), a torch.cuda.Stream or a cupy.cuda.Stream.
_Stream = Any

KDL_CPU: int
"""DLPack's kDLCPU (1)."""
KDL_CUDA: int
"""DLPack's kDLCUDA (2)."""

class Error(Exception):
    """Every error lava-flow raises; the message is the Rust library's."""

class LibraryUnavailable(Error):
    """A native library (libvulkan, libcuda) could not be loaded."""

class DeviceNotFound(Error):
    """No device matches what was asked for."""

class DriverError(Error):
    """A Vulkan or CUDA call failed; the message names the call and its code."""

class Unsupported(Error):
    """The driver or device does not support what was asked for."""

class IncompatibleDevice(Error):
    """The object was exported by another device or driver than the one importing it."""

class InvalidArgument(Error):
    """An argument was refused (size, dtype, shape, name, stream)."""

class InvalidHandle(Error):
    """A received fd does not match its description."""

class OutOfMemory(Error):
    """An allocation or import ran out of memory."""

class Timeout(Error):
    """A wait ran past its timeout."""

class ProtocolError(Error):
    """The peer broke the lava-flow protocol."""

class PeerRefused(Error):
    """The server refused the request (an unknown name, a full server)."""

class IoError(Error):
    """A system call failed (a socket that closed, a missing path)."""

class Mismatch(Error):
    """Data read back differs from what was written."""

class Closed(Error):
    """The object was closed with close() (or its `with` block ended), a frame was sent or
    released, or a channel's producer hung up without ending the channel."""

class Full(Error):
    """Every frame of a channel is in flight (`Producer.try_acquire`)."""

class _Closable:
    def close(self) -> None: ...
    def __enter__(self: _T) -> _T: ...
    def __exit__(
        self,
        exc_type: Optional[type],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...

def connect(path: _Path, timeout: Optional[float] = None) -> Client:
    """Connects to the lava-flow server at `path` (waiting up to `timeout` seconds for it)."""

class Client(_Closable):
    """A connection to a lava-flow server."""

    def get(self, name: str) -> SharedObject:
        """The object published under `name`; PeerRefused when there is none."""
    def get_all(self) -> List[SharedObject]:
        """Every published object, in the server's order."""
    def wait_for(self, name: str, timeout: float = 10.0) -> SharedObject:
        """Waits up to `timeout` seconds for `name` to be published, then gets it."""

class Server(_Closable):
    """Publishes objects to other processes at a Unix socket path."""

    def __init__(self, path: _Path) -> None: ...
    def publish(self, name: str, obj: Union[SharedObject, Allocation, HostMemory]) -> None:
        """Publishes `obj` under `name` (the server keeps its own duplicate of the fd)."""
    def remove(self, name: str) -> bool:
        """Withdraws `name`; whether it was published."""
    def names(self) -> List[str]:
        """The names published, in order."""
    def stats(self) -> Dict[str, Any]:
        """Requests served so far and the full statistics as text."""
    @property
    def path(self) -> Path: ...

class SharedObject(_Closable):
    """An object received from a server or exported here; owns one fd."""

    @property
    def name(self) -> Optional[str]: ...
    @property
    def kind(self) -> str:
        """"memory", "buffer", "texture", "semaphore" or "fence"."""
    @property
    def size(self) -> int:
        """Bytes of the buffer's or texture's range, or of the whole memory (0 for sync objects)."""
    @property
    def offset(self) -> int:
        """Byte offset of the buffer or texture in its allocation."""
    @property
    def allocation_size(self) -> Optional[int]: ...
    @property
    def handle_kind(self) -> str:
        """"opaque-fd", "dma-buf", "host-memfd", or a semaphore's or fence's handle kind."""
    @property
    def memory_properties(self) -> Optional[int]:
        """Vulkan memory property bits: DEVICE_LOCAL 1, HOST_VISIBLE 2, HOST_COHERENT 4, HOST_CACHED 8."""
    @property
    def host_visible(self) -> bool:
        """Whether map_host() can reach the bytes."""
    @property
    def device_uuid(self) -> str: ...
    @property
    def driver_uuid(self) -> str: ...
    @property
    def format(self) -> Optional[str]: ...
    @property
    def extent(self) -> Optional[Tuple[int, int, int]]: ...
    @property
    def row_pitch(self) -> Optional[int]: ...
    @property
    def semaphore_kind(self) -> Optional[str]: ...
    @property
    def description(self) -> Dict[str, Any]:
        """The whole description as a dict."""
    @property
    def closed(self) -> bool: ...
    def fileno(self) -> int:
        """The fd this object owns (do not close it)."""
    def map_host(self) -> HostMapping:
        """Maps shared host or host-visible memory into this process."""
    def import_cuda(self, device: Any = None) -> Union[CudaMemory, CudaSemaphore]:
        """Imports into CUDA: memory, buffers and linear textures as CudaMemory, semaphores as CudaSemaphore."""

class Tensor:
    """A typed view of shared bytes; a DLPack producer that keeps them mapped."""

    def __dlpack__(
        self,
        *,
        stream: _Stream = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    @property
    def __array_interface__(self) -> Dict[str, Any]:
        """Host views only."""
    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        """CUDA views only."""
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def strides(self) -> Tuple[int, ...]:
        """In elements, as DLPack and torch count them."""
    @property
    def ptr(self) -> int: ...
    @property
    def device(self) -> Tuple[int, int]: ...

class HostMapping(_Closable):
    """Shared memory mapped into this process (kDLCPU)."""

    def __dlpack__(
        self,
        *,
        stream: _Stream = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...
    def view(
        self, dtype: _DType, shape: Union[int, Sequence[int]], strides: Optional[Sequence[int]] = None, offset: int = 0
    ) -> Tensor:
        """A typed view; strides in elements, offset in bytes; refused when it does not fit."""
    def memoryview(self) -> memoryview:
        """A writable memoryview (format "B") that keeps the mapping alive."""
    @property
    def ptr(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class HostMemory(_Closable):
    """Shared host memory (a sealed memfd) any process can map; no GPU needed."""

    def __init__(self, size: int) -> None: ...
    def map_host(self) -> HostMapping: ...
    def export(self) -> SharedObject: ...
    @property
    def size(self) -> int: ...

class Allocator:
    """Allocates exportable Vulkan memory on device `device` (its index in `lava-flow info`), or
    with None on the default device (the first discrete GPU, else integrated, else lavapipe)."""

    def __init__(self, device: Optional[int] = None) -> None: ...
    @property
    def device_name(self) -> str: ...
    def allocate(self, size: int, location: str = "shared-host") -> Allocation:
        """`location`: "gpu", "host-visible" or "shared-host"."""
    @property
    def device(self) -> int: ...

class Allocation(_Closable):
    """A Vulkan buffer from Allocator.allocate."""

    def export(self) -> SharedObject: ...
    def map_host(self) -> HostMapping: ...
    def read(self, offset: int, size: int) -> bytes:
        """A copy of the bytes as Vulkan sees them (staged where device-local)."""
    @property
    def size(self) -> int: ...
    @property
    def location(self) -> str: ...

class CudaMemory(_Closable):
    """Memory imported into CUDA (kDLCUDA); torch/cupy.from_dlpack read it without a copy."""

    def __dlpack__(
        self,
        *,
        stream: _Stream = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]: ...
    def view(
        self, dtype: _DType, shape: Union[int, Sequence[int]], strides: Optional[Sequence[int]] = None, offset: int = 0
    ) -> Tensor: ...
    def set_ready(self, semaphore: CudaSemaphore, value: int) -> None:
        """Later __dlpack__(stream=s) calls make `s` wait for `semaphore` to reach `value`."""
    def to_bytes(self) -> bytes:
        """A copy of the bytes on the host (for checks)."""
    @property
    def ptr(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class CudaSemaphore(_Closable):
    """A semaphore imported into CUDA."""

    def wait(self, value: int, stream: _Stream = None) -> None:
        """Makes `stream` wait for `value`; with stream=None, blocks this thread until then."""
    def signal(self, value: int, stream: _Stream = None) -> None:
        """Sets `value` after the work queued on `stream`; with stream=None, from the host."""
    @property
    def kind(self) -> str: ...
    @property
    def device(self) -> int: ...

class Channel:
    """Opens channel ends (docs/CHANNELS.md): frames of shared memory from one producer process
    to any number of consumer processes, zero-copy, in order."""

    @staticmethod
    def producer(
        path: _Path,
        frame_size: int,
        slots: int = 4,
        memory: str = "vulkan",
        policy: str = "block",
        timeout: float = 10.0,
        max_consumers: int = 8,
    ) -> Producer:
        """Creates the pool (`slots` frames of `frame_size` bytes; `memory` "vulkan": exportable
        host-visible Vulkan buffers, "host": memfds, no GPU) and listens at `path`. `policy`:
        "block" (acquire waits for a slot) or "drop-oldest". `timeout`: seconds for blocking calls."""
    @staticmethod
    def consumer(path: _Path, timeout: float = 10.0, views: Optional[str] = None) -> Consumer:
        """Connects to the producer at `path` (retrying up to `timeout` seconds) and maps its
        frames; `views="cuda"` also imports each (Vulkan) frame into CUDA once, for kDLCUDA exports."""

class Producer(_Closable):
    """A channel's producing end. It accepts consumers inside its calls; closing it ends the
    channel once no frame or view of it is alive."""

    def acquire(self, timeout: Optional[float] = None) -> WriteFrame:
        """A free frame, waiting (GIL released) while all are in flight; Timeout after `timeout`
        seconds (the channel's timeout when None)."""
    def try_acquire(self) -> WriteFrame:
        """A free frame now, or Full."""
    def wait_for_consumers(self, n: int = 1, timeout: float = 10.0) -> None:
        """Waits until `n` consumers are connected (Timeout after `timeout` seconds)."""
    def finish(self, timeout: float = 10.0) -> bool:
        """Waits up to `timeout` for consumers to release every frame, then closes the producer
        (consumers see the end of the stream). Whether every frame was released."""
    @property
    def consumers(self) -> int:
        """Consumers connected now."""
    @property
    def path(self) -> str: ...
    @property
    def frame_size(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class WriteFrame:
    """A frame the producer owns between acquire and send."""

    def write(self, offset: int, data: Any) -> None:
        """Copies a bytes-like object into the frame at byte `offset`."""
    def array(
        self,
        dtype: _DType,
        shape: Union[int, Sequence[int]],
        strides: Optional[Sequence[int]] = None,
        offset: int = 0,
    ) -> Tensor:
        """A writable view of the frame (host frames) for numpy.from_dlpack / numpy.asarray.
        send() raises BufferError while it or anything made from it is alive."""
    def send(
        self,
        len: Optional[int] = None,
        dtype: Optional[_DType] = None,
        shape: Optional[Union[int, Sequence[int]]] = None,
        strides: Optional[Sequence[int]] = None,
        timestamp: int = 0,
        user: Optional[bytes] = None,
    ) -> None:
        """Sends the frame to every consumer with its metadata (dtype and shape default to the
        last array() at offset 0; `user` at most 256 bytes). The frame is then unusable."""
    def release(self) -> None:
        """Returns the slot unsent (once no view of the frame is alive)."""
    @property
    def sequence(self) -> int: ...
    @property
    def slot(self) -> int: ...
    @property
    def capacity(self) -> int:
        """Bytes in the frame."""
    def __enter__(self) -> WriteFrame: ...
    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        """Releases the frame unsent if the block did not send it."""

class Consumer(_Closable):
    """A channel's consuming end; iterating it yields frames until the producer ends the channel."""

    def recv(self, timeout: Optional[float] = None) -> Optional[ReadFrame]:
        """The next frame (GIL released while waiting; Timeout after `timeout` seconds, the
        consumer's timeout when None); None once the producer ended the channel; Closed where
        it hung up without ending it."""
    def __iter__(self) -> Consumer: ...
    def __next__(self) -> ReadFrame: ...
    @property
    def frame_size(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def memory(self) -> str:
        """"vulkan" or "host"."""
    @property
    def closed(self) -> bool: ...

class Metadata:
    """What the producer said about a frame."""

    len: int
    """Bytes of data (the whole frame when the producer said 0)."""
    dtype: str
    """The element type's name, "bytes" for plain bytes, or "code:bits:lanes"."""
    dl_dtype: Tuple[int, int, int]
    """DLPack's (code, bits, lanes)."""
    shape: List[int]
    strides: Optional[List[int]]
    """In elements; None for row-major."""
    timestamp: int
    user: bytes

class ReadFrame:
    """A received frame, held (its slot not reused) until it is released AND every capsule,
    array and view made from it is gone. Exports are READ-ONLY."""

    @property
    def sequence(self) -> int: ...
    @property
    def metadata(self) -> Metadata: ...
    @property
    def released(self) -> bool: ...
    def __len__(self) -> int: ...
    def read(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        """A copy of the frame's data."""
    def view(
        self,
        dtype: Optional[_DType] = None,
        shape: Optional[Union[int, Sequence[int]]] = None,
        strides: Optional[Sequence[int]] = None,
        offset: int = 0,
    ) -> Tensor:
        """A read-only typed view that holds the frame (the metadata's layout with no arguments),
        for numpy.asarray or DLPack."""
    def __dlpack__(
        self,
        *,
        stream: _Stream = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any:
        """Read-only DLPack capsule in the metadata's dtype and shape (1-D uint8 without one):
        kDLCPU for host and host-visible Vulkan frames, kDLCUDA with views="cuda"."""
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def release(self) -> None:
        """Drops this object's hold on the frame."""
    def __enter__(self) -> ReadFrame: ...
    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None: ...

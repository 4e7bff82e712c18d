"""CUDA: lava-flow imports read by PyTorch and CuPy with no copy (pointer identity and data),
a torch kernel writing imported memory that Vulkan then reads, stream waits on the producer's
ready semaphore. Runs on a GPU machine (torch and/or CuPy installed); skips elsewhere, and fails
under LAVA_FLOW_REQUIRE=cuda.

    LAVA_FLOW_REQUIRE=vulkan,cuda,python python -m pytest -q -rs crates/lava-flow-py/tests/test_cuda.py
"""

import gc

import numpy
import pytest

import lava_flow
from conftest import open_fds, pattern_words, unavailable

SIZE = 1 << 20


def torch_cuda():
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not installed ({e})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch, None


def cupy_cuda():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # ImportError, or CuPy's CUDARuntimeError without a driver
        return None, f"CuPy cannot reach CUDA ({e})"
    return cupy, None


@pytest.fixture
def served(serve):
    """`lava-flow serve --location gpu` (device-local Vulkan memory with the pattern and a
    timeline semaphore at 1), imported into CUDA."""
    client = serve("--location", "gpu", "--size", str(SIZE))
    pattern = client.get("pattern")
    try:
        memory = pattern.import_cuda()
    except (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound) as e:
        unavailable("cuda", str(e))
    return client, pattern, memory


def test_torch_reads_the_import_without_a_copy(served):
    torch, why = torch_cuda()
    if torch is None:
        unavailable("cuda", why)
    client, pattern, memory = served
    assert memory.__dlpack_device__() == (lava_flow.KDL_CUDA, memory.device)
    words = torch.from_dlpack(memory.view("int32", SIZE // 4))
    assert words.device.type == "cuda" and words.device.index == memory.device
    assert words.data_ptr() == memory.ptr, "torch made a copy"
    expected = torch.from_numpy(pattern_words(SIZE // 4).view(numpy.int32)).to(words.device)
    assert torch.equal(words, expected)
    # The raw bytes, and a 2-D view at an offset.
    raw = torch.from_dlpack(memory)
    assert raw.dtype == torch.uint8 and raw.numel() == SIZE and raw.data_ptr() == memory.ptr
    rows = torch.from_dlpack(memory.view(torch.int32, (16, 64), offset=4096))
    assert rows.data_ptr() == memory.ptr + 4096
    assert torch.equal(rows.flatten(), expected[1024 : 1024 + 16 * 64])


def test_cupy_reads_the_import_without_a_copy(served):
    cupy, why = cupy_cuda()
    if cupy is None:
        unavailable("cuda", why)
    client, pattern, memory = served
    words = cupy.from_dlpack(memory.view("uint32", SIZE // 4))
    assert words.data.ptr == memory.ptr, "CuPy made a copy"
    assert (cupy.asnumpy(words) == pattern_words(SIZE // 4)).all()
    via_interface = cupy.asarray(memory)
    assert via_interface.data.ptr == memory.ptr and via_interface.dtype == cupy.uint8
    assert int(via_interface[0]) == int(pattern_words(1)[0] & 0xFF)


def test_a_torch_kernel_writes_memory_vulkan_then_reads(allocator):
    torch, why = torch_cuda()
    if torch is None:
        unavailable("cuda", why)
    allocation = allocator.allocate(SIZE, location="gpu")
    exported = allocation.export()
    try:
        memory = exported.import_cuda()
    except (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound) as e:
        unavailable("cuda", str(e))
    t = torch.from_dlpack(memory.view("float32", SIZE // 4))
    assert t.data_ptr() == memory.ptr
    t.copy_(torch.arange(SIZE // 4, dtype=torch.float32, device=t.device))
    torch.cuda.synchronize(t.device)
    seen = numpy.frombuffer(allocation.read(0, SIZE), dtype=numpy.float32)
    assert (seen == numpy.arange(SIZE // 4, dtype=numpy.float32)).all()


def test_dlpack_stream_waits_for_the_ready_semaphore(served):
    torch, why = torch_cuda()
    if torch is None:
        unavailable("cuda", why)
    client, pattern, memory = served
    try:
        ready = client.get("pattern.ready").import_cuda()
    except lava_flow.PeerRefused as e:
        unavailable("semaphores", f"lava-flow serve shared no timeline semaphore here ({e})")
    except lava_flow.Error as e:
        unavailable("semaphores", str(e))
    assert ready.kind == "timeline"
    ready.wait(1)  # From the host: the producer signalled 1 once the pattern was in place.
    memory.set_ready(ready, 1)
    stream = torch.cuda.Stream(device=memory.device)
    with torch.cuda.stream(stream):
        words = torch.from_dlpack(memory.view("int32", SIZE // 4))  # enqueues the wait on `stream`
        total = words.sum()
    stream.synchronize()
    expected = pattern_words(SIZE // 4).view(numpy.int32).astype(numpy.int64).sum()
    assert int(total) == int(expected)
    ready.wait(1, stream=stream)
    ready.wait(1, stream=stream.cuda_stream)
    with pytest.raises(lava_flow.InvalidArgument, match="stream 0"):
        memory.__dlpack__(stream=0)
    with pytest.raises(TypeError, match="stream"):
        ready.wait(1, stream="not a stream")
    if torch.cuda.device_count() > 1:
        other = torch.cuda.Stream(device=(memory.device + 1) % torch.cuda.device_count())
        with pytest.raises(lava_flow.InvalidArgument, match="another CUDA context"):
            ready.wait(1, stream=other)


def test_cuda_bad_input_and_fds(served):
    client, pattern, memory = served
    with pytest.raises(lava_flow.InvalidArgument, match="memory holds"):
        memory.view("float64", SIZE // 4)
    with pytest.raises(BufferError, match="another device"):
        memory.__dlpack__(dl_device=(lava_flow.KDL_CPU, 0))
    with pytest.raises(lava_flow.DeviceNotFound):
        pattern.import_cuda(device=64)
    gc.collect()
    before = open_fds()
    for _ in range(3):
        m = pattern.import_cuda()
        capsule = m.__dlpack__()
        m.close()
        with pytest.raises(lava_flow.Closed):
            m.view("uint8", 1)
        del m, capsule
        gc.collect()
    assert open_fds() == before

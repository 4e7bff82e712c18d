"""Allocating and publishing from Python (Vulkan through lavapipe in CI): another process gets
the buffer, NumPy reads what this one wrote, and this one sees the other's writes."""

import numpy
import pytest

import lava_flow
from conftest import run_python

READER = """
import sys, numpy, lava_flow
buf = lava_flow.connect(sys.argv[1]).get(sys.argv[2])
a = numpy.from_dlpack(buf.map_host().view("uint32", buf.size // 4))
assert (a == numpy.arange(a.size, dtype=numpy.uint32) * 3).all(), a[:8]
a[-1] = 0xC0FFEE
print(buf.kind, buf.handle_kind, buf.size)
"""


@pytest.mark.parametrize("location", ["shared-host", "host-visible"])
def test_python_allocates_publishes_and_another_process_reads(allocator, tmp_socket, location):
    allocation = allocator.allocate(1 << 16, location=location)
    assert (allocation.size, allocation.location) == (1 << 16, location)
    words = numpy.from_dlpack(allocation.map_host().view("uint32", (1 << 16) // 4))
    words[:] = numpy.arange(words.size, dtype=numpy.uint32) * 3
    with lava_flow.Server(tmp_socket) as server:
        server.publish("frames", allocation)
        kind, handle_kind, size = run_python(READER, tmp_socket, "frames").split()
    assert (kind, int(size)) == ("buffer", 1 << 16)
    assert handle_kind == ("host-memfd" if location == "shared-host" else "opaque-fd")
    assert words[-1] == 0xC0FFEE


def test_allocation_errors_are_clear(allocator):
    with pytest.raises(lava_flow.InvalidArgument, match="\"gpu\", \"host-visible\" and \"shared-host\""):
        allocator.allocate(4096, location="vram")
    with pytest.raises(lava_flow.Error):
        allocator.allocate(0)
    with pytest.raises((lava_flow.OutOfMemory, lava_flow.InvalidArgument), match="bytes"):
        allocator.allocate(1 << 60, location="host-visible")
    with pytest.raises(lava_flow.DeviceNotFound, match="device_id 99"):
        lava_flow.Allocator(99)
    allocation = allocator.allocate(4096)
    mapping = allocation.map_host()
    array = numpy.from_dlpack(mapping)
    allocation.close()
    with pytest.raises(lava_flow.Closed):
        allocation.export()
    # The mapping made before close() keeps the buffer alive.
    array[:] = 1
    assert array.sum() == 4096


def test_read_returns_what_vulkan_sees(allocator):
    allocation = allocator.allocate(4096, location="host-visible")
    numpy.from_dlpack(allocation.map_host())[:] = numpy.arange(4096) % 13
    assert allocation.read(100, 4) == bytes([100 % 13, 101 % 13, 102 % 13, 103 % 13])
    with pytest.raises(lava_flow.InvalidArgument, match="holds 4096 bytes"):
        allocation.read(4000, 200)

"""The package against `lava-flow serve` (the CLI, another process): every memory location it
serves, read through NumPy with the pattern checked, writes seen by another client."""

import numpy
import pytest

import lava_flow
from conftest import pattern_words, run_python

SIZE = 256 << 10


@pytest.mark.parametrize("location", ["host", "shared-host", "host-visible", "gpu"])
def test_numpy_reads_the_pattern_lava_flow_serve_wrote(serve, location):
    client = serve("--location", location, "--size", str(SIZE), needs_vulkan=location != "host")
    pattern = client.get("pattern")
    assert pattern.size == SIZE and pattern.kind in ("memory", "buffer")
    assert pattern.allocation_size >= SIZE
    if location in ("host", "shared-host"):
        assert pattern.handle_kind == "host-memfd"
    else:
        assert pattern.handle_kind == "opaque-fd"
    if not pattern.host_visible:
        # Device-local memory a GPU does not expose to the host (on lavapipe every type is
        # host-visible): mapping it is refused, with what to do instead.
        with pytest.raises(lava_flow.InvalidArgument, match="import_cuda"):
            pattern.map_host()
        return
    words = numpy.from_dlpack(pattern.map_host().view("uint32", SIZE // 4))
    assert (words == pattern_words(SIZE // 4)).all()
    # A write through this mapping is seen by a second client's mapping of the same object.
    words[0] = 0xDEADBEEF
    again = numpy.from_dlpack(client.get("pattern").map_host().view(numpy.uint32, 1))
    assert again[0] == 0xDEADBEEF


def test_another_process_sees_this_ones_writes(serve, tmp_socket):
    client = serve("--location", "host", "--size", "64K", needs_vulkan=False)
    words = numpy.from_dlpack(client.get("pattern").map_host().view("uint32", (16, 1024)))
    words[3, :] = 7
    code = """
import sys, numpy, lava_flow
w = numpy.from_dlpack(lava_flow.connect(sys.argv[1]).get("pattern").map_host().view("uint32", (16, 1024)))
print(int(w[3].sum()), int(w[2, 0]))
"""
    total, other = run_python(code, tmp_socket).split()
    assert int(total) == 7 * 1024
    assert int(other) == int(pattern_words(2 * 1024 + 1)[2 * 1024])


def test_a_served_view_larger_than_the_object_is_refused(serve):
    client = serve("--location", "host", "--size", "64K", needs_vulkan=False)
    mapping = client.get("pattern").map_host()
    with pytest.raises(lava_flow.InvalidArgument, match="memory holds 65536 bytes"):
        mapping.view("float32", (128, 129))

"""Host memory through the protocol, with no GPU: a Python server and client, NumPy over DLPack,
memoryviews, ownership (fd counts, collection order, close) and bad input."""

import gc
import os

import numpy
import pytest

import lava_flow
from conftest import open_fds, run_python


def publish_pattern(tmp_socket, size=1 << 16):
    memory = lava_flow.HostMemory(size)
    host = numpy.from_dlpack(memory.map_host())
    host[:] = numpy.arange(size) % 251
    server = lava_flow.Server(tmp_socket)
    server.publish("frames", memory)
    return server, memory, host


def test_numpy_sees_what_the_server_published_and_writes_go_both_ways(tmp_socket):
    server, memory, host = publish_pattern(tmp_socket)
    with lava_flow.connect(tmp_socket) as client:
        frames = client.get("frames")
        assert (frames.name, frames.kind, frames.size, frames.handle_kind) == ("frames", "memory", 1 << 16, "host-memfd")
        assert frames.host_visible and frames.allocation_size == 1 << 16
        assert frames.description["memory"]["allocation_size"] == 1 << 16
        mapping = frames.map_host()
        assert mapping.__dlpack_device__() == (lava_flow.KDL_CPU, 0)
        seen = numpy.from_dlpack(mapping)
        assert seen.dtype == numpy.uint8 and seen.shape == (1 << 16,)
        assert (seen == host).all()
        # The same pages: a write on either side is seen by the other, no copy.
        seen[10] = 200
        assert host[10] == 200
        host[11] = 201
        assert seen[11] == 201
    server.close()


def test_another_process_reads_and_writes_the_published_memory(tmp_socket):
    server, memory, host = publish_pattern(tmp_socket)
    code = """
import sys, numpy, lava_flow
frames = lava_flow.connect(sys.argv[1]).get("frames")
a = numpy.from_dlpack(frames.map_host())
assert (a == numpy.arange(a.size) % 251).all(), a[:8]
a[:4] = [9, 8, 7, 6]
print("ok")
"""
    assert run_python(code, tmp_socket).strip() == "ok"
    assert list(host[:4]) == [9, 8, 7, 6]
    server.close()


def test_typed_views_memoryview_and_array_interface(tmp_socket):
    memory = lava_flow.HostMemory(4096)
    mapping = memory.map_host()
    words = numpy.from_dlpack(mapping.view("uint32", (4, 256)))
    words[:] = numpy.arange(1024, dtype=numpy.uint32).reshape(4, 256)
    floats = numpy.from_dlpack(mapping.view(numpy.float32, 8, offset=16))
    assert floats.view(numpy.uint32).tolist() == list(range(4, 12))
    strided = mapping.view("uint32", (4,), strides=(256,))
    assert numpy.asarray(strided).tolist() == [0, 256, 512, 768]
    assert numpy.from_dlpack(strided).tolist() == [0, 256, 512, 768]
    view = mapping.memoryview()
    assert (view.format, len(view), view.readonly) == ("B", 4096, False)
    view[0] = 77
    assert words[0, 0] & 0xFF == 77
    assert repr(mapping.view("bfloat16", (2, 2))).startswith("lava_flow.Tensor(dtype=bfloat16")
    # Every spelling of a dtype means what NumPy means by it.
    for spelling, name in [
        (float, "float64"),
        (int, "int64"),
        (bool, "bool"),
        ("<f4", "float32"),
        ("u2", "uint16"),
        (numpy.dtype("complex64"), "complex64"),
        (numpy.int8, "int8"),
        ("half", "float16"),
    ]:
        assert mapping.view(spelling, 2).dtype == name
        assert numpy.from_dlpack(mapping.view(spelling, 2)).dtype == numpy.dtype(name)


def test_views_that_do_not_fit_are_refused_with_the_sizes():
    mapping = lava_flow.HostMemory(4096).map_host()
    cases = [
        (("float64", (1024,)), "reaches byte 8192 and the memory holds 4096 bytes"),
        (("float32", (1024,), None, 4), "reaches byte 4100"),
        (("float32", (2,), None, 2), "not a multiple of the element size"),
        (("uint8", (2, 2), (1 << 62, 1)), "memory holds 4096 bytes"),
        (("uint8", (-1,)), "negative"),
        (("uint8", (4,), (1, 1)), "2 strides for 1 dimensions"),
        (("float128", (4,)), "lava-flow knows bool"),
    ]
    for args, message in cases:
        with pytest.raises(lava_flow.InvalidArgument, match=message.replace("(", r"\(")):
            mapping.view(*args)
    # Overflowing shapes are refused too, not wrapped around.
    with pytest.raises(lava_flow.InvalidArgument):
        mapping.view("uint64", (1 << 62, 1 << 62))
    with pytest.raises(BufferError, match="copy"):
        mapping.__dlpack__(copy=True)
    with pytest.raises(BufferError, match="another device"):
        mapping.__dlpack__(dl_device=(lava_flow.KDL_CUDA, 0))


def test_a_mapping_outlives_close_and_collection_while_an_array_uses_it(tmp_socket):
    server, memory, host = publish_pattern(tmp_socket)
    client = lava_flow.connect(tmp_socket)
    frames = client.get("frames")
    mapping = frames.map_host()
    array = numpy.from_dlpack(mapping)
    capsule = mapping.__dlpack__()
    view = mapping.memoryview()
    # Every Python object is closed and dropped, in the order that would hurt most; the array,
    # the unconsumed capsule and the memoryview keep the pages mapped.
    mapping.close()
    frames.close()
    client.close()
    server.close()
    memory.close()
    del mapping, frames, client, server, memory
    gc.collect()
    assert (array == numpy.arange(array.size) % 251).all()
    assert view[5] == 5
    del capsule
    gc.collect()
    assert array[7] == 7


def test_fds_are_closed_once_whatever_the_collection_order(tmp_socket):
    server, memory, host = publish_pattern(tmp_socket)
    client = lava_flow.connect(tmp_socket)
    client.get("frames").map_host()  # warm-up (lazy loads)
    gc.collect()
    before = open_fds()
    for order in range(3):
        objects = client.get_all()
        mappings = [o.map_host() for o in objects]
        arrays = [numpy.from_dlpack(m) for m in mappings]
        if order == 0:
            del objects, mappings, arrays
        elif order == 1:
            del arrays, mappings, objects
        else:
            for o in objects:
                o.close()
                o.close()
            del mappings, objects, arrays
        gc.collect()
        assert open_fds() == before, f"collection order {order}"
    client.close()
    server.close()


def test_closed_objects_raise_closed():
    memory = lava_flow.HostMemory(4096)
    mapping = memory.map_host()
    exported = memory.export()
    mapping.close()
    exported.close()
    memory.close()
    assert mapping.closed and exported.closed
    for call in (
        lambda: mapping.__dlpack__(),
        lambda: mapping.view("uint8", 1),
        lambda: mapping.memoryview(),
        lambda: exported.map_host(),
        lambda: memory.export(),
    ):
        with pytest.raises(lava_flow.Closed, match="was closed"):
            call()
    assert issubclass(lava_flow.Closed, lava_flow.Error)


def test_protocol_errors_are_lava_flow_errors(tmp_socket):
    server, memory, host = publish_pattern(tmp_socket)
    client = lava_flow.connect(tmp_socket)
    with pytest.raises(lava_flow.Error, match="no object is named \"missing\""):
        client.get("missing")
    with pytest.raises(lava_flow.Error, match="name"):
        server.publish("", memory)
    with pytest.raises(TypeError, match="publish"):
        server.publish("x", 42)
    assert server.names() == ["frames"]
    assert server.remove("frames") and not server.remove("frames")
    # The server goes away: the client's next request fails with an error, not a hang or a crash.
    server.close()
    with pytest.raises(lava_flow.Error):
        client.get("frames")
    with pytest.raises(lava_flow.Error):
        lava_flow.connect(tmp_socket)
    with pytest.raises(lava_flow.Error):
        lava_flow.connect(os.path.join(os.path.dirname(tmp_socket), "nothing-here.sock"))
    with lava_flow.Server(tmp_socket) as again, lava_flow.connect(tmp_socket) as fresh:
        with pytest.raises(lava_flow.Timeout, match="timed out"):
            fresh.wait_for("never", timeout=0.2)


def test_a_cuda_import_without_cuda_is_a_clear_error_and_leaks_no_fd():
    exported = lava_flow.HostMemory(4096).export()
    refused = (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound, lava_flow.Unsupported, lava_flow.IncompatibleDevice)
    try:
        exported.import_cuda()
    except refused as e:
        assert str(e)
    else:
        pytest.skip("CUDA imported host memory here (a GPU machine): tests/test_cuda.py checks it")
    before = open_fds()
    for _ in range(3):
        with pytest.raises(refused):
            exported.import_cuda()
        with pytest.raises(lava_flow.InvalidArgument, match="not a number"):
            exported.import_cuda(device="cuda:x")
        with pytest.raises(lava_flow.InvalidArgument, match="does not name a CUDA device"):
            exported.import_cuda(device="cpu")
        with pytest.raises(TypeError, match="device"):
            exported.import_cuda(device=1.5)
    assert open_fds() == before


def test_the_bench_measures_both_halves():
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lava_flow.bench", "--iterations", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["steps"] == "get + map_host + numpy.from_dlpack"
    assert result["rust_us"] > 0 and result["python_us"] > 0
    assert result["bound_us"] >= result["rust_us"] + 10

"""Channels from Python: a Python or Rust producer, a Python consumer reading frames through
DLPack without a copy; slots held by arrays, end of stream, fd counts, argument checks. Host
frames need no GPU; Vulkan frames run on lavapipe in CI; the CUDA view runs on a GPU machine.

    python -m pytest -q -rs crates/lava-flow-py/tests/test_channel.py
"""

import gc
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy
import pytest

import lava_flow
from conftest import lava_flow_bin, open_fds, unavailable


@pytest.fixture
def sock():
    with tempfile.TemporaryDirectory(prefix="lava-flow-py-chan-") as d:
        yield os.path.join(d, "channel.sock")


def pair(path, **producer_args):
    """A producer and a consumer of one process (the consumer connects from a thread: the
    producer accepts consumers inside its calls)."""
    producer = lava_flow.Channel.producer(path, **producer_args)
    box = []
    t = threading.Thread(target=lambda: box.append(lava_flow.Channel.consumer(path, timeout=10)))
    t.start()
    producer.wait_for_consumers(1, 10)
    t.join()
    return producer, box[0]


def vulkan_or_skip():
    try:
        lava_flow.Allocator()
    except (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound) as e:
        unavailable("vulkan", str(e))


def frame_words(k, n):
    """lava_flow::channel::run::frame_word(k, j) for j < n, as uint64 (the CLI's pattern)."""
    mask = (1 << 64) - 1
    j = numpy.arange(n, dtype=numpy.uint64)
    return numpy.uint64((k * 0x9E3779B97F4A7C15) & mask) ^ (j * numpy.uint64(0xD6E8FEB86659FD93)) ^ numpy.uint64(0x5555)


PRODUCER = r"""
import sys, numpy, lava_flow
path, frames = sys.argv[1], int(sys.argv[2])
with lava_flow.Channel.producer(path, frame_size=1 << 16, slots=3, memory="host") as p:
    p.wait_for_consumers(1, 20)
    for k in range(frames):
        frame = p.acquire()
        a = numpy.from_dlpack(frame.array("float32", (16, 32)))
        a[:] = numpy.arange(16 * 32, dtype=numpy.float32).reshape(16, 32) + k
        del a
        frame.send(timestamp=1000 + k, user=b"frame %d" % k)
    assert p.finish(20)
print("sent", frames)
"""


def test_python_producer_to_python_consumer_in_two_processes(sock):
    frames = 50
    child = subprocess.Popen([sys.executable, "-c", PRODUCER, sock, str(frames)], stdout=subprocess.PIPE, text=True)
    try:
        consumer = lava_flow.Channel.consumer(sock, timeout=20)
        seen = 0
        for frame in consumer:
            with frame:
                k = frame.sequence
                m = frame.metadata
                assert (m.dtype, m.shape, m.strides, m.len) == ("float32", [16, 32], None, 16 * 32 * 4)
                assert m.dl_dtype == (2, 32, 1)
                assert (m.timestamp, m.user) == (1000 + k, b"frame %d" % k)
                a = numpy.from_dlpack(frame)
                assert a.dtype == numpy.float32 and a.shape == (16, 32)
                assert not a.flags.writeable
                assert numpy.array_equal(a, numpy.arange(16 * 32, dtype=numpy.float32).reshape(16, 32) + k)
                assert frame.read() == a.tobytes()
                del a
            seen += 1
        assert seen == frames
        assert consumer.recv(timeout=1) is None  # the end stays the end
    finally:
        out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and f"sent {frames}" in out


@pytest.mark.parametrize("api", ["host", "vulkan"])
def test_rust_producer_to_python_consumer_checks_the_pattern(sock, api):
    if api == "vulkan":
        vulkan_or_skip()
    frames, size = 40, 4096
    child = subprocess.Popen(
        [lava_flow_bin(), "channel", "--role", "producer", "--socket", sock, "--api", api]
        + ["--frames", str(frames), "--size", str(size), "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with lava_flow.Channel.consumer(sock, timeout=30) as consumer:
            assert consumer.memory == api and consumer.frame_size == size
            seen = 0
            for frame in consumer:
                words = numpy.from_dlpack(frame).view(numpy.uint64)
                assert numpy.array_equal(words, frame_words(frame.sequence, size // 8)), frame.sequence
                assert frame.metadata.timestamp == frame.sequence and frame.metadata.dtype == "bytes"
                del words
                frame.release()
                seen += 1
            assert seen == frames
    finally:
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err


def test_threads_of_one_process_exchange_frames(sock):
    """acquire and recv release the GIL: a producer thread blocked on a full pool does not stop
    the consumer thread that frees it."""
    producer, consumer = pair(sock, frame_size=256, slots=1, memory="host")
    got = []

    def consume():
        for frame in consumer:
            got.append(bytes(numpy.from_dlpack(frame)[:4]))
            frame.release()

    t = threading.Thread(target=consume)
    t.start()
    for k in range(30):
        frame = producer.acquire(timeout=10)
        frame.write(0, k.to_bytes(4, "little"))
        frame.send(len=4)
    producer.finish(10)
    t.join(timeout=30)
    assert got == [k.to_bytes(4, "little") for k in range(30)]


def test_try_acquire_raises_full_and_acquire_times_out(sock):
    producer, consumer = pair(sock, frame_size=64, slots=2, memory="host")
    for _ in range(2):
        producer.try_acquire().send()
    with pytest.raises(lava_flow.Full, match="in flight"):
        producer.try_acquire()
    assert issubclass(lava_flow.Full, lava_flow.Error)
    t0 = time.monotonic()
    with pytest.raises(lava_flow.Timeout):
        producer.acquire(timeout=0.2)
    assert time.monotonic() - t0 < 5
    consumer.recv().release()
    producer.try_acquire().release()
    producer.close()
    consumer.close()


def test_end_of_stream_and_a_producer_that_dies(sock):
    producer, consumer = pair(sock, frame_size=64, slots=2, memory="host")
    producer.acquire().send(len=1)
    producer.close()
    assert consumer.recv().sequence == 0  # frames sent before the end are delivered
    assert consumer.recv() is None
    assert list(consumer) == []
    consumer.close()
    with pytest.raises(lava_flow.Closed):
        consumer.recv()

    # A producer killed without ending the channel: Closed, not a quiet end.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, lava_flow\n"
         "p = lava_flow.Channel.producer(sys.argv[1], frame_size=64, memory='host')\n"
         "p.wait_for_consumers(1, 20); p.acquire().send(); time.sleep(60)", sock],
    )
    try:
        consumer = lava_flow.Channel.consumer(sock, timeout=20)
        assert consumer.recv().sequence == 0
        child.kill()
        child.wait()
        with pytest.raises(lava_flow.Closed, match="hung up"):
            consumer.recv(timeout=5)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("holder", ["dlpack", "array-interface", "capsule", "tensor"])
def test_arrays_keep_their_frame_until_they_are_gone(sock, holder):
    producer, consumer = pair(sock, frame_size=64, slots=1, memory="host")
    frame = producer.acquire()
    frame.write(0, bytes(range(64)))
    frame.send()
    received = consumer.recv()
    if holder == "dlpack":
        held = numpy.from_dlpack(received)
    elif holder == "array-interface":
        held = numpy.asarray(received.view())  # the array keeps the view, which keeps the frame
        assert not held.flags.writeable
    elif holder == "capsule":
        held = received.__dlpack__()  # a capsule nobody took holds the frame too
    else:
        held = received.view("uint32", (4, 4))
    received.release()
    del received
    consumer.close()  # the consumer stays alive (mapped) while a frame of it is held
    gc.collect()
    with pytest.raises(lava_flow.Full):
        producer.try_acquire()
    if holder in ("dlpack", "array-interface"):
        assert held[63] == 63  # still mapped, still the frame's bytes
    del held
    gc.collect()
    producer.try_acquire().release()  # the holder is gone: the slot is back


def test_writable_views_are_refused_at_send_while_alive(sock):
    producer, consumer = pair(sock, frame_size=1024, slots=2, memory="host")
    frame = producer.acquire()
    view = frame.array("int32", (4, 4))
    a = numpy.from_dlpack(view)
    assert a.flags.writeable
    a[:] = 7
    b = numpy.asarray(view)
    with pytest.raises(BufferError, match="still alive"):
        frame.send()
    del a
    with pytest.raises(BufferError, match="1 view"):
        frame.send()
    del b, view
    frame.send()  # dtype and shape of the last array()
    with pytest.raises(lava_flow.Closed):
        frame.array("int32", 4)
    got = consumer.recv()
    assert got.metadata.dtype == "int32" and got.metadata.shape == [4, 4]
    assert (numpy.from_dlpack(got) == 7).all()
    got.release()

    # A frame released unsent while its view lives keeps its slot until the view is gone.
    frame = producer.acquire()
    a = numpy.from_dlpack(frame.array("uint8", 16))
    frame.release()
    del frame
    other = producer.try_acquire()
    with pytest.raises(lava_flow.Full):
        producer.try_acquire()
    del a
    gc.collect()
    producer.try_acquire().release()
    other.release()


def test_fd_count_is_flat_over_many_frames(sock):
    producer, consumer = pair(sock, frame_size=4096, slots=4, memory="host")

    def run(n):
        for k in range(n):
            f = producer.acquire()
            x = numpy.from_dlpack(f.array("uint32", 1024))
            x[:] = k
            del x
            f.send()
            got = consumer.recv()
            assert numpy.from_dlpack(got)[0] == k
            del got

    run(20)
    before = open_fds()
    run(500)
    gc.collect()
    assert open_fds() == before


def test_bad_arguments_are_refused_clearly(sock):
    ch = lava_flow.Channel
    with pytest.raises(lava_flow.InvalidArgument, match="memory"):
        ch.producer(sock, frame_size=64, memory="disk")
    with pytest.raises(lava_flow.InvalidArgument, match="policy"):
        ch.producer(sock, frame_size=64, memory="host", policy="newest")
    with pytest.raises(lava_flow.InvalidArgument, match="slot count"):
        ch.producer(sock, frame_size=64, memory="host", slots=0)
    with pytest.raises(lava_flow.InvalidArgument, match="frame size"):
        ch.producer(sock, frame_size=0, memory="host")
    with pytest.raises(lava_flow.InvalidArgument, match="seconds"):
        ch.producer(sock, frame_size=64, memory="host", timeout=-1)
    with pytest.raises(lava_flow.InvalidArgument, match="views"):
        ch.consumer(sock, views="gl", timeout=0.1)
    with pytest.raises(TypeError):
        ch.producer(sock)  # frame_size is required
    producer, consumer = pair(sock, frame_size=64, slots=2, memory="host", policy="drop-oldest")
    frame = producer.acquire()
    with pytest.raises(lava_flow.InvalidArgument, match="frames hold 64 bytes"):
        frame.write(60, b"too long")
    with pytest.raises(TypeError, match="bytes-like"):
        frame.write(0, 42)
    with pytest.raises(lava_flow.InvalidArgument, match="reaches byte"):
        frame.array("float64", 9)
    with pytest.raises(lava_flow.InvalidArgument, match="dtype"):
        frame.array("float7", 2)
    with pytest.raises(lava_flow.InvalidArgument, match="user data"):
        frame.send(user=bytes(257))
    with pytest.raises(lava_flow.InvalidArgument, match="reaches byte"):
        frame.send(dtype="float32", shape=(100,))
    with pytest.raises(lava_flow.InvalidArgument, match="len=65"):
        frame.send(len=65)
    with pytest.raises(lava_flow.InvalidArgument, match="shape"):
        frame.send(dtype="float32")
    frame.send(len=8, dtype="uint8", shape=(2, 4), strides=(4, 1))
    got = consumer.recv()
    assert got.metadata.strides == [4, 1]
    with pytest.raises(lava_flow.InvalidArgument):
        got.read(60, 8)
    with pytest.raises(BufferError, match="another device"):
        got.__dlpack__(dl_device=(lava_flow.KDL_CUDA, 0))
    with pytest.raises(lava_flow.InvalidArgument, match="reaches byte"):
        got.view("uint32", 3)
    with pytest.raises(lava_flow.InvalidArgument, match="both a dtype and a shape"):
        got.view("uint32")
    got.release()
    with pytest.raises(lava_flow.Closed, match="release"):
        got.read()
    with pytest.raises(lava_flow.Closed):
        numpy.from_dlpack(got)


def test_vulkan_frames_write_and_export(sock):
    vulkan_or_skip()
    producer, consumer = pair(sock, frame_size=4096, slots=2, memory="vulkan")
    frame = producer.acquire()
    with pytest.raises(lava_flow.InvalidArgument, match="Vulkan frame"):
        frame.array("uint8", 4)
    frame.write(0, numpy.arange(8, dtype=numpy.uint16))
    frame.send(dtype=numpy.uint16, shape=8)
    got = consumer.recv()
    assert got.read() == numpy.arange(8, dtype=numpy.uint16).tobytes()
    # Host-visible Vulkan frames map on the host here: kDLCPU, read-only.
    assert got.__dlpack_device__() == (lava_flow.KDL_CPU, 0)
    assert numpy.array_equal(numpy.from_dlpack(got), numpy.arange(8, dtype=numpy.uint16))
    got.release()


def test_cuda_view_exports_kdlcuda(sock):
    """views="cuda": each Vulkan frame imported into CUDA once; the frame exports kDLCUDA."""
    vulkan_or_skip()
    try:
        import torch
    except ImportError as e:
        unavailable("cuda", f"torch is not installed ({e})")
    if not torch.cuda.is_available():
        unavailable("cuda", "torch sees no CUDA device")
    size = 1 << 16
    child = subprocess.Popen(
        [lava_flow_bin(), "channel", "--role", "producer", "--socket", sock, "--api", "vulkan"]
        + ["--frames", "10", "--size", str(size), "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            consumer = lava_flow.Channel.consumer(sock, timeout=30, views="cuda")
        except (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound, lava_flow.Unsupported) as e:
            unavailable("cuda", str(e))
        for frame in consumer:
            kind, ordinal = frame.__dlpack_device__()
            assert kind == lava_flow.KDL_CUDA
            t = torch.from_dlpack(frame)
            assert t.device.type == "cuda" and t.device.index == ordinal and t.numel() == size
            words = t.view(torch.int64).cpu().numpy().view(numpy.uint64)
            assert numpy.array_equal(words, frame_words(frame.sequence, size // 8))
            del t
            frame.release()
        consumer.close()
    finally:
        child.communicate(timeout=60)
    assert child.returncode == 0


def test_a_frame_released_while_another_thread_waits_in_recv(sock):
    """The consumer's lock is busy while a thread waits in recv: a frame released meanwhile is
    queued and handed back within one wait slice, so the producer gets its slot."""
    producer, consumer = pair(sock, frame_size=64, slots=1, memory="host")
    producer.acquire().send(len=1)
    first = consumer.recv()
    box = []
    waiter = threading.Thread(target=lambda: box.append(consumer.recv(timeout=20)))
    waiter.start()
    time.sleep(0.2)  # the waiter holds the consumer in recv now
    del first  # released from this thread while the waiter holds the lock
    gc.collect()
    frame = producer.acquire(timeout=10)  # the slot came back
    frame.write(0, b"\x07")
    frame.send(len=1)
    waiter.join(timeout=20)
    assert box and box[0].sequence == 1 and box[0].read() == b"\x07"


def test_drop_oldest_never_blocks_the_producer(sock):
    producer, consumer = pair(sock, frame_size=64, slots=2, memory="host", policy="drop-oldest")
    for k in range(6):
        frame = producer.try_acquire()  # never Full: untaken frames are taken back
        frame.write(0, bytes([k]))
        frame.send(len=1)
    got = []
    while True:
        frame = consumer.recv(timeout=0.5) if not got or got[-1] < 5 else None
        if frame is None:
            break
        got.append(frame.read()[0])
        assert frame.sequence == got[-1]
        frame.release()
    assert got[-1] == 5 and len(got) <= 2

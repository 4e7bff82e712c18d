"""docs/PYTHON.md's examples, run as written (the socket path aside): every ```python block whose
first line is `# example: NAME`."""

import os
import re
import subprocess

import pytest

from conftest import lava_flow_bin, unavailable

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "PYTHON.md")
SOCKET = "/tmp/lava-flow.sock"


def examples():
    text = open(DOC, encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = {}
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# example: "):
            found[first[len("# example: "):].strip()] = block
    return found


def run(name, socket):
    code = examples()[name].replace(SOCKET, socket)
    exec(compile(code, f"docs/PYTHON.md example {name}", "exec"), {})


def test_every_example_is_run_here():
    assert sorted(examples()) == ["allocate", "channel", "channel-torch", "cupy", "numpy", "torch"]


def test_the_numpy_example(tmp_socket):
    run("numpy", tmp_socket)


def test_the_allocate_example(allocator, tmp_socket):
    run("allocate", tmp_socket)


def test_the_channel_example(tmp_socket):
    run("channel", tmp_socket)


def test_the_channel_torch_example(allocator, tmp_socket):
    try:
        import torch
    except ImportError as e:
        unavailable("cuda", f"torch is not installed ({e})")
    if not torch.cuda.is_available():
        unavailable("cuda", "torch sees no CUDA device")
    producer = subprocess.Popen(
        [lava_flow_bin(), "channel", "--role", "producer", "--socket", tmp_socket, "--api", "vulkan"]
        + ["--frames", "100", "--size", "1M"],
    )
    try:
        run("channel-torch", tmp_socket)
    except (__import__("lava_flow").LibraryUnavailable, __import__("lava_flow").DeviceNotFound) as e:
        unavailable("cuda", str(e))
    finally:
        producer.wait(timeout=60)
    assert producer.returncode == 0


@pytest.mark.parametrize("name", ["torch", "cupy"])
def test_the_cuda_examples(serve, tmp_socket, name):
    try:
        module = __import__(name)
    except ImportError as e:
        unavailable("cuda", f"{name} is not installed ({e})")
    if name == "torch" and not module.cuda.is_available():
        unavailable("cuda", "torch sees no CUDA device")
    serve("--location", "gpu", "--size", "64M")
    try:
        run(name, tmp_socket)
    except (__import__("lava_flow").LibraryUnavailable, __import__("lava_flow").DeviceNotFound) as e:
        unavailable("cuda", str(e))

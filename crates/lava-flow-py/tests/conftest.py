"""Shared helpers of the lava_flow test suite (run by `cargo xtask test`'s python step).

A test that cannot run here calls `unavailable(name, reason)`: it skips with the marker line
lava-flow's Rust tests print (`SKIPPED (<name> unavailable): <reason>`, counted by xtask), and
fails instead when LAVA_FLOW_REQUIRE names `name` (or `all`).
"""

import os
import subprocess
import sys
import tempfile
import time

import pytest

import lava_flow


def required(name):
    names = [n.strip().lower() for n in os.environ.get("LAVA_FLOW_REQUIRE", "").split(",")]
    return name in names or "all" in names


def unavailable(name, reason):
    marker = f"SKIPPED ({name} unavailable): {reason}"
    print(marker)
    if required(name):
        pytest.fail(f"LAVA_FLOW_REQUIRE names {name}, and {reason}")
    pytest.skip(marker)


def pattern_words(n):
    """The pattern `lava-flow serve` writes (lava_flow_diag::pattern::pattern_word), as uint32."""
    import numpy

    i = numpy.arange(n, dtype=numpy.uint32)
    return (i * numpy.uint32(0x9E3779B1)) ^ numpy.uint32(0xA5A5A5A5)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def tmp_socket():
    with tempfile.TemporaryDirectory(prefix="lava-flow-py-") as d:
        yield os.path.join(d, "server.sock")


@pytest.fixture
def allocator():
    """A Vulkan allocator on the default device (a GPU where there is one, lavapipe in CI); skips
    (or fails under LAVA_FLOW_REQUIRE=vulkan) where there is no Vulkan."""
    try:
        return lava_flow.Allocator()
    except (lava_flow.LibraryUnavailable, lava_flow.DeviceNotFound) as e:
        unavailable("vulkan", str(e))


def lava_flow_bin():
    """The `lava-flow` binary: $LAVA_FLOW_BIN (xtask sets it), else the workspace's debug build."""
    path = os.environ.get("LAVA_FLOW_BIN") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "target", "debug", "lava-flow"
    )
    if not os.path.exists(path):
        pytest.fail(f"{path} does not exist: build it (cargo build -p lava-flow-cli) or set LAVA_FLOW_BIN")
    return path


class Serve:
    """`lava-flow serve` in a child process, stopped (and checked) at the end."""

    def __init__(self, socket, *args):
        self.socket = socket
        self.proc = subprocess.Popen(
            [lava_flow_bin(), "serve", "--socket", socket, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def connect(self):
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                return None, (out + err).strip()
            try:
                return lava_flow.connect(self.socket, timeout=1.0), None
            except lava_flow.Error:
                if time.monotonic() > deadline:
                    raise

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def serve(tmp_socket):
    """Starts `lava-flow serve ARGS...`; returns a connected client."""
    started = []

    def start(*args, needs_vulkan=True):
        s = Serve(tmp_socket, *args)
        started.append(s)
        client, error = s.connect()
        if client is None:
            if needs_vulkan and ("Vulkan" in error or "vulkan" in error):
                unavailable("vulkan", f"lava-flow serve {' '.join(args)}: {error}")
            pytest.fail(f"lava-flow serve {' '.join(args)} exited: {error}")
        # The server listens before it publishes: a `get` right after the connect could find
        # nothing yet (seen under load). Every `lava-flow serve` publishes "pattern".
        client.wait_for("pattern", 60)
        return client

    yield start
    for s in started:
        s.stop()


def run_python(code, *args):
    """Runs `code` in another Python process (another process maps what this one shares)."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout

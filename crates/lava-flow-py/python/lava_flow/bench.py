"""`python -m lava_flow.bench`: what Python adds to lava-flow, measured in one run.

Times `client.get(name)` + `map_host()` + `numpy.from_dlpack` (host) or `client.get(name)` +
`import_cuda()` + `torch.from_dlpack` (`--cuda`) from Python, beside the same get + map/import
through the Rust library alone, in the same process against the same server. The bound the
package keeps: Python's median at most 2x Rust's, or Rust's + 10 us, whichever is larger.

    python -m lava_flow.bench                                  # serves its own host memory
    python -m lava_flow.bench --socket /tmp/lf.sock --name pattern --cuda
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import lava_flow
from lava_flow import _native


def python_rounds(socket, name, iterations, cuda):
    client = lava_flow.connect(socket)
    if cuda:
        import torch

        def consume(obj):
            return torch.from_dlpack(obj.import_cuda())

    else:
        import numpy

        def consume(obj):
            return numpy.from_dlpack(obj.map_host())

    consume(client.get(name))  # loads what the first round would
    seconds = []
    for _ in range(iterations):
        started = time.perf_counter()
        array = consume(client.get(name))
        seconds.append(time.perf_counter() - started)
        del array
    client.close()
    return seconds


def measure(socket, name, iterations, cuda):
    """{"rust_us", "python_us", "bound_us", "within"}: medians in microseconds."""
    _native._bench_rust(str(socket), name, 3, cuda)  # warm-up
    rust = statistics.median(_native._bench_rust(str(socket), name, iterations, cuda)) * 1e6
    python = statistics.median(python_rounds(socket, name, iterations, cuda)) * 1e6
    bound = max(2 * rust, rust + 10)
    return {
        "steps": "get + import_cuda + torch.from_dlpack" if cuda else "get + map_host + numpy.from_dlpack",
        "iterations": iterations,
        "rust_us": round(rust, 2),
        "python_us": round(python, 2),
        "bound_us": round(bound, 2),
        "within": python <= bound,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lava_flow.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="a lava-flow server's socket (default: serve 1 MiB of host memory here)")
    parser.add_argument("--name", default="pattern", help="the object to get (default: pattern)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--cuda", action="store_true", help="import into CUDA and hand it to torch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--check", action="store_true", help="exit 1 when Python exceeds the bound")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    server = None
    socket = args.socket
    if socket is None:
        directory = tempfile.mkdtemp(prefix="lava-flow-bench-")
        socket = os.path.join(directory, "bench.sock")
        server = lava_flow.Server(socket)
        server.publish(args.name, lava_flow.HostMemory(1 << 20))
    try:
        result = measure(socket, args.name, args.iterations, args.cuda)
    finally:
        if server is not None:
            server.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['steps']}, median of {result['iterations']}:")
        print(f"  rust    {result['rust_us']:>10.1f} us")
        print(f"  python  {result['python_us']:>10.1f} us")
        verdict = "within" if result["within"] else "OVER"
        print(f"  bound   {result['bound_us']:>10.1f} us (2x or +10 us): {verdict}")
    return 1 if args.check and not result["within"] else 0


if __name__ == "__main__":
    sys.exit(main())

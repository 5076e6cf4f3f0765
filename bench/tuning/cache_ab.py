"""reshape_and_cache on the bench's cache cells, for A/B runs of launch constants (run on a GPU machine).

PYTHONPATH=src python bench/tuning/cache_ab.py LABEL [NAME=VALUE ...]
``NAME=VALUE`` sets an integer constant of ``attnops.cache.triton`` first (e.g. ``_TILE_BYTES=4096``).
Each cell is the bench's (engine-like slots), timed eager and by CUDA-graph replay, L2 flushed.
"""

import sys

import torch

from attnops.bench.cases import build_case
from attnops.bench.shapes import grid
from attnops.bench.timing import time_cuda, time_cuda_graph
from attnops.cache import triton as kernels


def main() -> None:
    label, *overrides = sys.argv[1:]
    for override in overrides:
        name, value = override.split("=")
        setattr(kernels, name, int(value))
    device = torch.device("cuda")
    for shape in grid("cache"):
        (kernel,) = build_case("cache", shape, device).kernels
        call = kernel.make("triton")
        eager = time_cuda(call, budget_ms=40).median_us
        graph = time_cuda_graph(call, budget_ms=40).median_us
        gbps = shape.bytes_moved() / (graph * 1e3)
        print(f"{label} {shape.label}: eager {eager:.1f} us, graph {graph:.1f} us ({gbps:.0f} GB/s)", flush=True)


if __name__ == "__main__":
    main()

"""GPU time of small calls without host overhead (run on a GPU machine).

PYTHONPATH=src python bench/tuning/graph_times.py
Each call is captured once in a CUDA graph and replayed after an L2 flush
(:func:`attnops.bench.timing.time_cuda_graph`, also the bench's "graph µs" column): the kernels
alone, for calls shorter than their host cost. Prints merge at the SPEC §3 token counts (current
launch constants against the previous 4 KiB / 2 warps) and paged decode v1/v2 on the small-batch
cells.
"""

from workloads import decode_calls, merge_call

from attnops.bench.timing import time_cuda_graph
from attnops.merge import triton as merge_kernels

MERGE_CONFIGS = ((merge_kernels._TILE_BYTES, merge_kernels._NUM_WARPS), (4096, 2))
DECODE_CELLS = ((1, 1024), (1, 4096), (1, 16384), (8, 1024), (8, 4096), (32, 1024))


def graph_us(fn) -> float:
    return time_cuda_graph(fn, budget_ms=100).median_us


def _set_merge(tile: int, warps: int) -> None:
    merge_kernels._TILE_BYTES, merge_kernels._NUM_WARPS = tile, warps
    merge_kernels._launcher.compiled.clear()


def merge_cells() -> None:
    for tokens in (512, 4096, 32768):
        call, nbytes = merge_call(tokens)
        for tile, warps in MERGE_CONFIGS:
            _set_merge(tile, warps)
            us = graph_us(call)
            print(f"merge {tokens} tile={tile} w{warps}: {us:.1f} us {nbytes / us / 1e3:.0f} GB/s", flush=True)
    _set_merge(*MERGE_CONFIGS[0])


def decode_cells() -> None:
    for num_seqs, context in DECODE_CELLS:
        v1, v2, nbytes = decode_calls(num_seqs, context)
        t1, t2 = graph_us(v1), graph_us(v2)
        print(f"paged {num_seqs}x{context}: v1 {t1:.1f} us ({nbytes / t1 / 1e3:.0f} GB/s), "
              f"v2 {t2:.1f} us ({nbytes / t2 / 1e3:.0f} GB/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    merge_cells()
    decode_cells()

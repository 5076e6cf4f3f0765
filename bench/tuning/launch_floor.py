"""The fixed cost under the small paged cells (run on a GPU machine).

PYTHONPATH=src python bench/tuning/launch_floor.py
CUDA-graph replay times (L2 flushed, as the bench) of: one and two empty Triton kernels at the
paged launch sizes; one kernel whose programs make the paged kernel's first dependent loads
(sequence length, then a block id, then one 32-token K and V tile, as a 1×1024 decode program
does); the read and copy probes of the bench; then the paged breakdown's small cells (kernel
times under the profiler beside the whole call's graph replay).
"""

import torch
import triton
import triton.language as tl
from workloads import decode_calls, kernel_times

from attnops.bench.bandwidth import measure_peak_bandwidth, measure_read_bandwidth
from attnops.bench.timing import time_cuda_graph


@triton.jit
def _empty(out):
    pass


@triton.jit
def _chain(seq_lens, table, cache, out, STEPS: tl.constexpr, TILE: tl.constexpr):
    """``STEPS`` dependent loads of a ``TILE``-element tile, the first address from two scalar loads."""
    pid = tl.program_id(0)
    n = tl.load(seq_lens)
    block = tl.load(table + pid % n)
    offs = tl.arange(0, TILE)
    acc = tl.zeros([TILE], tl.float32)
    for step in range(STEPS):
        acc += tl.load(cache + (block + step) * TILE + offs).to(tl.float32)
    tl.store(out + pid, tl.sum(acc))


def graph_us(fn) -> float:
    return time_cuda_graph(fn, budget_ms=40).median_us


def main() -> None:
    out = torch.empty(4096, device="cuda")
    for programs in (1, 128, 1024):
        one = graph_us(lambda p=programs: _empty[(p,)](out))
        two = graph_us(lambda p=programs: (_empty[(p,)](out), _empty[(p,)](out)))
        print(f"empty kernel x{programs} programs: one {one:.2f} us, two back to back {two:.2f} us", flush=True)
    seq_lens = torch.full((1,), 64, dtype=torch.int32, device="cuda")
    table = torch.randperm(4096, device="cuda", dtype=torch.int32)[:64].contiguous()
    cache = torch.randn(4200 * 4096, dtype=torch.bfloat16, device="cuda")
    for steps in (1, 2, 4):
        us = graph_us(lambda s=steps: _chain[(128,)](seq_lens, table, cache, out, STEPS=s, TILE=4096, num_warps=1))
        print(f"dependent chain, 128 one-warp programs, {steps} 8 KiB tiles each: {us:.2f} us", flush=True)
    device = torch.device("cuda")
    copy = measure_peak_bandwidth(device, budget_ms=200).gbps
    read = measure_read_bandwidth(device, budget_ms=200).gbps
    print(f"copy {copy:.0f} GB/s, read (torch.sum) {read:.0f} GB/s", flush=True)
    for num_seqs, context in ((1, 1024), (1, 4096), (8, 1024), (8, 4096)):
        v1, _, nbytes = decode_calls(num_seqs, context)
        graph = graph_us(v1)
        print(
            f"paged {num_seqs}x{context} ({nbytes / 1e6:.1f} MB, floor {nbytes / read / 1e3:.1f} us at read peak):"
            f" graph {graph:.1f} us; {kernel_times(v1)}",
            flush=True,
        )


if __name__ == "__main__":
    main()

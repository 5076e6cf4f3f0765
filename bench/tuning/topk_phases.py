"""Where one short-row top-k program's time goes (run on a GPU machine).

PYTHONPATH=src python bench/tuning/topk_phases.py
Variants of the 8192-key program built from the kernel's own helpers, timed by CUDA-graph replay
on 1, 128 and 4096 rows (k = 2048): the load alone, the load and 20 block-wide one-count probes,
the bisection search, and the search followed by writing the results either from tiles read
again or from the register tile (docs/performance.md, version 5).
"""

import torch
import triton
import triton.language as tl

from attnops.bench.timing import time_cuda_graph
from attnops.topk import triton as kernels

VARIANTS = {0: "load", 1: "load + 20 probes", 2: "load + search", 3: "search + tiles", 4: "search + registers"}


@triton.jit
def _phases(logits, out, n, k, VARIANT: tl.constexpr, ROW: tl.constexpr, TILE: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits + row.to(tl.int64) * n
    out_row = out + row.to(tl.int64) * k
    cols = tl.arange(0, ROW)
    valid = cols < n
    keys = kernels._load_keys(row_ptr, cols, valid, 1, False)
    if VARIANT == 0:
        tl.store(out_row, tl.max(keys, 0))
    elif VARIANT == 1:
        # A dependent chain of probes, as in a search.
        mid = tl.max(keys, 0) * 0
        for _ in range(20):
            mid = mid + tl.sum((keys >= mid).to(tl.int32), axis=0) - k
        tl.store(out_row, mid)
    else:
        lo, hi, count_hi, _ = kernels._search(keys, n, k, k, True, 0)
        if VARIANT == 2:
            tl.store(out_row, lo.to(tl.int32))
        elif VARIANT == 3:
            kernels._emit_tiles(
                row_ptr, 0, n, 1, lo, hi, count_hi, k - count_hi, n * 0, n * 0, n * 0, out_row, out_row, 1, out_row,
                TILE, False, False, 0, 0,
            )  # fmt: skip
        else:
            take, _, position, _, _ = kernels._rank(keys, valid, lo, hi, count_hi, k - count_hi, n * 0, 0, 0, 0, 0)
            tl.store(out_row + position, cols, mask=take)


def variant_us(rows: int, variant: int) -> float:
    logits = torch.randn(rows, 8192, device="cuda")
    out = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")

    def call():
        _phases[(rows,)](logits, out, 8192, 2048, VARIANT=variant, ROW=8192, TILE=kernels._TILE, num_warps=8)

    call()
    return time_cuda_graph(call, budget_ms=60).median_us


def main() -> None:
    for rows in (1, 128, 4096):
        timings = [f"{name} {variant_us(rows, variant):.1f} us" for variant, name in VARIANTS.items()]
        print(f"rows {rows}: " + " | ".join(timings), flush=True)


if __name__ == "__main__":
    main()

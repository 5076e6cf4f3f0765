"""GPU time of each Triton top-k kernel (chunk vs finish) per decode cell (run on a GPU machine).

PYTHONPATH=src python bench/tuning/topk_breakdown.py
Ten calls per SPEC §3 decode cell (k = 2048, fp32 logits), L2 flushed before each, under
torch.profiler; prints the mean device time of each kernel.
"""

import functools

import torch
from workloads import kernel_times

from attnops.topk import top_k_per_row_decode

CELLS = ((1, 8192), (1, 32768), (1, 131072), (32, 131072), (128, 8192), (128, 32768), (128, 131072))


def main() -> None:
    for rows, length in CELLS:
        logits = torch.randn(rows, length, device="cuda")
        lens = torch.full((rows,), length, dtype=torch.int32, device="cuda")
        indices = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")
        call = functools.partial(top_k_per_row_decode, logits, 1, lens, indices, rows, length, 1, 2048)
        print(f"topk {rows}x{length}: {kernel_times(call)}", flush=True)


if __name__ == "__main__":
    main()

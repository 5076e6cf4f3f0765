"""GPU time of each paged-decode kernel (partition, reduce) on the small cells (run on a GPU machine).

PYTHONPATH=src python bench/tuning/paged_breakdown.py
Ten v1 calls per cell (bf16, 32 q / 8 kv heads, head 128, block 16), L2 flushed before each,
under torch.profiler: the mean device time of each kernel, beside the CUDA-graph replay time of
the whole call (kernels plus the gaps between them).
"""

import torch
from torch.profiler import ProfilerActivity, profile
from workloads import decode_calls

from attnops.bench.timing import time_cuda_graph

FLUSH = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
CELLS = ((1, 1024), (1, 4096), (1, 16384), (8, 1024), (8, 4096), (32, 1024), (8, 16384))


def main() -> None:
    for num_seqs, context in CELLS:
        v1, _, nbytes = decode_calls(num_seqs, context)
        v1()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                FLUSH.zero_()
                v1()
            torch.cuda.synchronize()
        kernels = {e.key: e.device_time_total / e.count for e in prof.key_averages() if e.key.startswith("_")}
        graph = time_cuda_graph(v1, budget_ms=50).median_us
        print(f"paged {num_seqs}x{context} ({nbytes / 1e6:.1f} MB): graph {graph:.1f} us; "
              + ", ".join(f"{k} {v:.1f} us" for k, v in kernels.items()), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""CUDA-graph times of paged decode v1/v2 on chosen cells (run on a GPU machine), for A/B runs of two trees.

PYTHONPATH=<src> python bench/tuning/paged_cells.py SEQSxCTX [SEQSxCTX ...]
"""

import sys

import torch
from workloads import decode_calls

from attnops.bench.timing import time_cuda_graph


def main() -> None:
    for cell in sys.argv[1:]:
        num_seqs, context = (int(part) for part in cell.split("x"))
        v1, v2, nbytes = decode_calls(num_seqs, context)
        t1, t2 = (time_cuda_graph(call, budget_ms=100).median_us for call in (v1, v2))
        print(f"{torch.cuda.get_device_name()} {cell}: v1 {t1:.1f} us {nbytes / t1 / 1e3:.0f} GB/s, "
              f"v2 {t2:.1f} us {nbytes / t2 / 1e3:.0f} GB/s", flush=True)  # fmt: skip
        del v1, v2
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

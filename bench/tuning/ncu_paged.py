"""A paged-decode workload for Nsight Compute (run on a GPU machine).

PYTHONPATH=src ncu --clock-control none -k regex:_partition_kernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section WarpStateStats --section LaunchStats python bench/tuning/ncu_paged.py 128 4096
Four v1 calls (bf16, 32 q / 8 kv heads, head 128, block 16) on NUM_SEQS sequences of CONTEXT tokens.
"""

import sys

import torch

from attnops import paged_attention_v1
from attnops.cache import make_paged_kv_cache


def main(num_seqs: int, context: int) -> None:
    cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cuda")
    query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    for _ in range(4):
        paged_attention_v1(out, query, cache.key_cache, cache.value_cache, 8, 128**-0.5, cache.block_tables,
                           cache.seq_lens, 16, context, None, "auto", cache.k_scale, cache.v_scale)  # fmt: skip
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

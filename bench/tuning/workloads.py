"""SPEC §3 workloads shared by the tuning scripts (bf16, CUDA): zero-argument calls and their bytes."""

import functools

import torch
from torch.profiler import ProfilerActivity, profile

from attnops import merge_attn_states
from attnops.bench.timing import l2_flush
from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import PARTITION_SIZE
from attnops.paged_attention import triton as kernels


def decode_calls(num_seqs: int, context: int):
    """v1 and v2 Triton calls (32 q / 8 kv heads, head 128, block 16) on a random cache, and the K+V bytes read."""
    cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cuda")
    query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    parts = -(-context // PARTITION_SIZE)
    stats = torch.empty(2, num_seqs, 32, parts, device="cuda")
    tmp = torch.empty(num_seqs, 32, parts, 128, dtype=torch.bfloat16, device="cuda")
    common = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 128**-0.5, None,
              "auto", cache.k_scale, cache.v_scale, None)  # fmt: skip
    v1 = functools.partial(kernels.paged_attention_v1, out, *common)
    v2 = functools.partial(kernels.paged_attention_v2, out, stats[0], stats[1], tmp, *common)
    return v1, v2, num_seqs * context * 8 * 128 * 2 * 2


def merge_call(tokens: int):
    """merge_attn_states (32 heads, head 128, with output_lse) on random inputs, and the bytes moved."""
    prefix, suffix = (torch.randn(tokens, 32, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    prefix_lse, suffix_lse = (torch.randn(32, tokens, device="cuda") for _ in range(2))
    out, out_lse = torch.empty_like(prefix), torch.empty_like(prefix_lse)
    nbytes = 3 * prefix.numel() * 2 + 3 * prefix_lse.numel() * 4
    return functools.partial(merge_attn_states, out, prefix, prefix_lse, suffix, suffix_lse, out_lse), nbytes


def kernel_times(call, runs: int = 10) -> str:
    """Mean device time of each Triton kernel ``call`` launches, L2 flushed before each of ``runs`` calls."""
    flush = l2_flush()
    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            flush()
            call()
        torch.cuda.synchronize()
    times = {e.key: e.device_time_total / e.count for e in prof.key_averages() if e.key.startswith("_")}
    return ", ".join(f"{name} {us:.1f} us" for name, us in times.items())

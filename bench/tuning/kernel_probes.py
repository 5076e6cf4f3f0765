"""Experiments behind the performance log's version-4 entries (run on a GPU machine).

PYTHONPATH=src python bench/tuning/kernel_probes.py [SECTION ...]
Sections (all by default):
- ``bandwidth``: the bench's copy peak and a read-only streaming sum (the read ceiling).
- ``paged_ceiling``: v1 decode on random vs contiguous block tables, and a load-only kernel with
  the decode kernel's K/V addressing (with and without the two products) at a few launch
  parameters: how much of the gap to the ceiling the access pattern alone explains.
- ``sparse_sweep``: sparse prefill at 32K over warps / stages / column tile, beside dense flash SDPA;
  conversion time at 32K and 128K.
- ``merge_sweep``: merge over tile bytes x warps at the SPEC §3 token counts.
"""

import functools
import sys
import traceback

import torch
import triton
import triton.language as tl

from attnops.bench.bandwidth import measure_peak_bandwidth
from attnops.bench.timing import time_fn
from attnops.cache import make_paged_kv_cache

DEVICE = torch.device("cuda")


def timed(fn, budget_ms: float = 300) -> float:
    return time_fn(fn, DEVICE, budget_ms=budget_ms).median_us


@triton.jit
def _read_sum(x, out, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        acc += tl.load(x + i + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out + pid, tl.sum(acc))


@triton.jit
def _load_only(
    key_cache, value_cache, block_tables, out, table_stride, k_stride_block, k_stride_head, v_stride_block,
    v_stride_head, SPLIT: tl.constexpr, TILE: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD: tl.constexpr,
    X: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """The decode kernel's K [HEAD, TILE] / V [TILE, HEAD] gathers (version 3), summed or multiplied."""
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    t = tl.arange(0, TILE)
    d = tl.arange(0, HEAD)
    table = block_tables + seq.to(tl.int64) * table_stride
    k_base = key_cache + kv_head * k_stride_head
    v_base = value_cache + kv_head * v_stride_head
    q = tl.full([16, HEAD], 1.0, tl.bfloat16)
    acc = tl.zeros([16, HEAD], tl.float32)
    acc_k = tl.zeros([HEAD, TILE], tl.float32)
    acc_v = tl.zeros([TILE, HEAD], tl.float32)
    for tile_start in range(split * SPLIT, split * SPLIT + SPLIT, TILE):
        block = tl.load(table + tile_start // BLOCK_SIZE + t // BLOCK_SIZE)
        block = tl.max_constancy(block.to(tl.int64), [BLOCK_SIZE])
        slot = t % BLOCK_SIZE
        k_ptrs = k_base + (block * k_stride_block)[None, :] + ((d // X) * (BLOCK_SIZE * X) + d % X)[:, None]
        k = tl.load(k_ptrs + (slot * X)[None, :])
        v = tl.load(v_base + (block * v_stride_block + slot)[:, None] + (d * BLOCK_SIZE)[None, :])
        if DOT:
            acc += tl.dot(tl.dot(q, k).to(tl.bfloat16), v)
        else:
            acc_k += k.to(tl.float32)
            acc_v += v.to(tl.float32)
    total = tl.sum(tl.sum(acc, 1), 0) + tl.sum(tl.sum(acc_k, 1), 0) + tl.sum(tl.sum(acc_v, 1), 0)
    tl.store(out + (seq * tl.num_programs(0) + kv_head) * tl.num_programs(2) + split, total)


def bandwidth() -> None:
    print(f"copy peak {measure_peak_bandwidth(DEVICE).gbps:.0f} GB/s")
    x = torch.ones(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    out = torch.empty(132 * 8, device="cuda")
    for programs in (132 * 4, 132 * 8):
        us = timed(functools.partial(_read_sum[(programs,)], x, out, x.numel(), BLOCK=4096, num_warps=8))
        print(f"read-only sum, {programs} programs: {us:.1f} us {2**30 / us / 1e3:.0f} GB/s")


def _cache(num_seqs: int, context: int, contiguous: bool):
    cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cuda")
    if contiguous:
        per_seq = context // 16
        ids = torch.arange(num_seqs * per_seq, dtype=torch.int32, device="cuda").reshape(num_seqs, per_seq)
        cache.block_tables[:, :per_seq].copy_(ids)
    return cache


def paged_ceiling() -> None:
    from attnops import paged_attention_v1

    for num_seqs, context in ((128, 4096), (32, 16384), (32, 4096)):
        nbytes = num_seqs * context * 8 * 128 * 2 * 2
        for contiguous in (False, True):
            cache = _cache(num_seqs, context, contiguous)
            kc, vc, bt = cache.key_cache, cache.value_cache, cache.block_tables
            query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16, device="cuda")
            decode = functools.partial(
                paged_attention_v1, torch.empty_like(query), query, kc, vc, 8, 128**-0.5, bt, cache.seq_lens, 16,
                context, None, "auto", cache.k_scale, cache.v_scale,
            )  # fmt: skip
            us = timed(decode)
            print(f"v1 {num_seqs}x{context} contiguous={contiguous}: {us:.1f} us {nbytes / us / 1e3:.0f} GB/s")
            res = torch.empty(num_seqs * 8 * (context // 512), device="cuda")
            for dot in (False, True):
                for split, warps, stages in ((512, 4, 2), (512, 4, 3), (512, 8, 2), (2048, 4, 2)):
                    kernel = _load_only[(8, num_seqs, context // split)]
                    call = functools.partial(
                        kernel, kc, vc, bt, res, bt.stride(0), kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
                        SPLIT=split, TILE=64, BLOCK_SIZE=16, HEAD=128, X=8, DOT=dot, num_warps=warps,
                        num_stages=stages,
                    )  # fmt: skip
                    us = timed(call)
                    print(f"  load-only dot={dot} split={split} w{warps} s{stages}: {us:.1f} us "
                          f"{nbytes / us / 1e3:.0f} GB/s")  # fmt: skip
            del cache


def sparse_sweep() -> None:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnops.bench.cases import vertical_slash_pattern
    from attnops.sparse import convert_vertical_slash_indexes, sparse_prefill_attention
    from attnops.sparse import triton as kernels

    defaults = (kernels.NUM_WARPS, kernels.NUM_STAGES, kernels.BLOCK_C)
    for context in (32768, 131072):
        lens = torch.tensor([context], dtype=torch.int32, device="cuda")
        vertical, slash = vertical_slash_pattern(1, 32, context, 1000, 6096, seed=0, device=DEVICE)
        convert = functools.partial(convert_vertical_slash_indexes, lens, lens, vertical, slash, context, 64, 64)
        print(f"convert {context}: {timed(convert):.1f} us")
        if context > 32768:
            continue
        tables = convert()
        q, k, v = (torch.randn(1, 32, context, 128, dtype=torch.bfloat16, device="cuda") for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            dense = timed(functools.partial(F.scaled_dot_product_attention, q, k, v, is_causal=True), 1000)
        print(f"dense flash {context}: {dense:.0f} us")
        for warps, stages, columns in ((4, 2, 64), (4, 3, 64), (8, 2, 64), (8, 3, 64), (4, 2, 32), (4, 4, 64)):
            kernels.NUM_WARPS, kernels.NUM_STAGES, kernels.BLOCK_C = warps, stages, columns
            us = timed(functools.partial(sparse_prefill_attention, q, k, v, *tables), 1000)
            print(f"sparse {context} w{warps} s{stages} C{columns}: {us:.0f} us  {dense / us:.2f}x dense")
    kernels.NUM_WARPS, kernels.NUM_STAGES, kernels.BLOCK_C = defaults


def merge_sweep() -> None:
    from workloads import merge_call

    from attnops.merge import triton as kernels

    defaults = (kernels._TILE_BYTES, kernels._NUM_WARPS)
    for tokens in (512, 4096, 32768):
        call, nbytes = merge_call(tokens)
        for tile, warps in ((8192, 4), (8192, 8), (8192, 2), (4096, 4), (4096, 2), (2048, 2), (2048, 1)):
            kernels._TILE_BYTES, kernels._NUM_WARPS = tile, warps
            kernels._launcher.compiled.clear()
            us = timed(call)
            print(f"merge {tokens} tile={tile} w{warps}: {us:.1f} us {nbytes / us / 1e3:.0f} GB/s")
    kernels._TILE_BYTES, kernels._NUM_WARPS = defaults
    kernels._launcher.compiled.clear()


SECTIONS = {f.__name__: f for f in (bandwidth, paged_ceiling, sparse_sweep, merge_sweep)}

if __name__ == "__main__":
    for name in sys.argv[1:] or SECTIONS:
        print(f"\n===== {name}", flush=True)
        try:
            SECTIONS[name]()
        except Exception:
            traceback.print_exc()
        sys.stdout.flush()

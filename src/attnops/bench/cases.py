"""One benchmark case per op and shape: the attnops calls to time and the baseline beside them.

A case holds, for every attnops kernel of the op, a factory that returns a
zero-argument call for a given backend (inputs built once, outputs
preallocated, so only the op itself is timed), and a baseline call doing the
same work the way plain PyTorch users would. Op families are imported only
when their case is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnops.bench import shapes as S

Call = Callable[[], Any]
# SDPA backends the dense-attention baseline may use, in PyTorch's priority order (flash first).
_DENSE_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class Kernel:
    """One attnops op to time: ``make(backend)`` returns the call."""

    family: str
    name: str
    make: Callable[[str], Call]


@dataclass(frozen=True)
class BenchCase:
    kernels: tuple[Kernel, ...]
    baseline_name: str | None
    baseline: Call | None


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float32, device=device, generator=gen).to(dtype)


def merge_eager(
    prefix_output: torch.Tensor, prefix_lse: torch.Tensor, suffix_output: torch.Tensor, suffix_lse: torch.Tensor
) -> torch.Tensor:
    """The log-sum-exp merge as plain PyTorch expressions (the merge baseline)."""
    max_lse = torch.maximum(prefix_lse, suffix_lse)
    p_weight = torch.exp(prefix_lse - max_lse)
    s_weight = torch.exp(suffix_lse - max_lse)
    total = p_weight + s_weight
    p_scale = (p_weight / total).T.unsqueeze(-1)
    s_scale = (s_weight / total).T.unsqueeze(-1)
    return (prefix_output.float() * p_scale + suffix_output.float() * s_scale).to(prefix_output.dtype)


def _merge_case(shape: S.MergeShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.merge import merge_attn_states

    gen = _generator(device, seed)
    dtype = getattr(torch, shape.dtype)
    out_shape = (shape.num_tokens, shape.num_heads, shape.head_size)
    lse_shape = (shape.num_heads, shape.num_tokens)
    prefix, suffix = _randn(out_shape, dtype, device, gen), _randn(out_shape, dtype, device, gen)
    prefix_lse, suffix_lse = (
        _randn(lse_shape, torch.float32, device, gen),
        _randn(lse_shape, torch.float32, device, gen),
    )
    output = torch.empty_like(prefix)
    output_lse = torch.empty_like(prefix_lse) if shape.with_output_lse else None

    def make(backend: str) -> Call:
        return lambda: merge_attn_states(
            output, prefix, prefix_lse, suffix, suffix_lse, output_lse=output_lse, backend=backend
        )

    kernel = Kernel("merge", "merge_attn_states", make)
    return BenchCase((kernel,), "eager formula", lambda: merge_eager(prefix, prefix_lse, suffix, suffix_lse))


def _topk_case(shape: S.TopKShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.topk import top_k_per_row_decode, top_k_per_row_prefill

    logits = torch.randn((shape.num_rows, shape.length), device=device, generator=_generator(device, seed))
    lengths = torch.tensor(shape.row_lengths(), dtype=torch.int32, device=device)
    indices = torch.empty((shape.num_rows, shape.k), dtype=torch.int32, device=device)
    stride0, stride1 = logits.stride()
    if shape.mode == "decode":

        def make(backend: str) -> Call:
            return lambda: top_k_per_row_decode(
                logits, 1, lengths, indices, shape.num_rows, stride0, stride1, shape.k, backend=backend
            )

        kernel = Kernel("topk", "top_k_per_row_decode", make)
    else:
        starts = torch.zeros_like(lengths)

        def make(backend: str) -> Call:
            return lambda: top_k_per_row_prefill(
                logits, starts, lengths, indices, shape.num_rows, stride0, stride1, shape.k, backend=backend
            )

        kernel = Kernel("topk", "top_k_per_row_prefill", make)
    outside = torch.arange(shape.length, device=device) >= lengths[:, None]
    return BenchCase(
        (kernel,), "mask + torch.topk", lambda: logits.masked_fill(outside, float("-inf")).topk(shape.k, dim=1)
    )


def vertical_slash_pattern(
    batch: int, num_heads: int, context: int, nnz_vertical: int, nnz_slash: int, *, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A realistic MInference pattern: int32 vertical columns (ascending) and slash offsets (descending).

    Verticals: the first 64 columns (attention sinks) then random columns.
    Slashes: a local band of diagonal offsets ``0 .. nnz_slash // 2 - 1``
    (offset 0, the main diagonal, always included), the rest in runs of 64
    consecutive offsets at random distances, as attention to repeated
    content looks. Both ``[batch, num_heads, nnz]`` on ``device``.
    """
    gen = torch.Generator().manual_seed(seed)
    heads = batch * num_heads
    sinks = min(64, nnz_vertical)
    others = torch.rand((heads, context - sinks), generator=gen).argsort(dim=1)[:, : nnz_vertical - sinks] + sinks
    vertical = torch.cat([torch.arange(sinks).expand(heads, sinks), others], dim=1).sort(dim=1).values

    band = max(1, nnz_slash // 2)
    run = 64
    first_slot = -(-band // run)
    runs = -(-(nnz_slash - band) // run)
    if runs > context // run - first_slot:
        raise ValueError(f"nnz_slash: {nnz_slash} slash offsets do not fit in runs of {run} below {context}")
    slots = torch.rand((heads, context // run - first_slot), generator=gen).argsort(dim=1)[:, :runs] + first_slot
    far = (slots[:, :, None] * run + torch.arange(run)).reshape(heads, -1)[:, : nnz_slash - band]
    slash = torch.cat([torch.arange(band).expand(heads, band), far], dim=1).sort(dim=1, descending=True).values
    as_index = lambda t: t.to(torch.int32).reshape(batch, num_heads, -1).to(device)
    return as_index(vertical), as_index(slash)


def _convert_inputs(shape: S.VerticalSlashShape, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    seqlens = torch.full((shape.batch,), shape.context, dtype=torch.int32, device=device)
    vertical, slash = vertical_slash_pattern(
        shape.batch, shape.num_heads, shape.context, shape.nnz_vertical, shape.nnz_slash, seed=seed, device=device
    )
    return seqlens, vertical, slash


def _vertical_slash_case(shape: S.VerticalSlashShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.sparse import convert_vertical_slash_indexes

    seqlens, vertical, slash = _convert_inputs(shape, device, seed)

    def make(backend: str) -> Call:
        return lambda: convert_vertical_slash_indexes(
            seqlens, seqlens, vertical, slash, shape.context, shape.block_size_m, shape.block_size_n, backend=backend
        )

    return BenchCase((Kernel("sparse", "convert_vertical_slash_indexes", make),), None, None)


def _sparse_prefill_case(shape: S.SparsePrefillShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.sparse import convert_vertical_slash_indexes, sparse_prefill_attention

    index = shape.index_shape()
    seqlens, vertical, slash = _convert_inputs(index, device, seed)
    tables = convert_vertical_slash_indexes(
        seqlens, seqlens, vertical, slash, index.context, index.block_size_m, index.block_size_n
    )
    gen = _generator(device, seed)
    dtype = getattr(torch, shape.dtype)
    qkv_shape = (shape.batch, shape.num_heads, shape.context, shape.head_size)
    q, k, v = (_randn(qkv_shape, dtype, device, gen) for _ in range(3))

    def make(backend: str) -> Call:
        return lambda: sparse_prefill_attention(q, k, v, *tables, backend=backend)

    def dense() -> torch.Tensor:
        # FlashAttention where it applies (cuDNN excluded, so the baseline is the same kernel everywhere).
        with sdpa_kernel(_DENSE_SDPA):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    kernel = Kernel("sparse", "sparse_prefill_attention", make)
    return BenchCase((kernel,), "dense causal SDPA (flash)", dense)


def _decode_case(shape: S.DecodeShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.cache import gather_paged_kv, make_paged_kv_cache
    from attnops.paged_attention import PARTITION_SIZE, paged_attention_v1, paged_attention_v2

    dtype = getattr(torch, shape.dtype)
    cache = make_paged_kv_cache(
        [shape.context] * shape.num_seqs,
        shape.num_kv_heads,
        shape.head_size,
        shape.block_size,
        dtype,
        device=device,
        seed=seed,
    )
    query = _randn((shape.num_seqs, shape.num_heads, shape.head_size), dtype, device, _generator(device, seed))
    scale = shape.head_size**-0.5
    out = torch.empty_like(query)
    partitions = -(-shape.context // PARTITION_SIZE)
    stats_shape = (shape.num_seqs, shape.num_heads, partitions)
    exp_sum = torch.empty(stats_shape, dtype=torch.float32, device=device)
    max_logits = torch.empty_like(exp_sum)
    tmp_out = torch.empty((*stats_shape, shape.head_size), dtype=dtype, device=device)
    common = (cache.key_cache, cache.value_cache, shape.num_kv_heads, scale, cache.block_tables, cache.seq_lens)
    tail = (shape.block_size, cache.max_seq_len, None, "auto", cache.k_scale, cache.v_scale)

    def make_v1(backend: str) -> Call:
        return lambda: paged_attention_v1(out, query, *common, *tail, backend=backend)

    def make_v2(backend: str) -> Call:
        return lambda: paged_attention_v2(out, exp_sum, max_logits, tmp_out, query, *common, *tail, backend=backend)

    def baseline() -> torch.Tensor:
        # Every sequence has the same length, so the dense keys need no padding mask.
        k, v = gather_paged_kv(cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, shape.context)
        return F.scaled_dot_product_attention(query.unsqueeze(2), k, v, scale=scale, enable_gqa=True)

    kernels = (
        Kernel("paged_attention", "paged_attention_v1", make_v1),
        Kernel("paged_attention", "paged_attention_v2", make_v2),
    )
    return BenchCase(kernels, "gather + SDPA", baseline)


def _cache_case(shape: S.CacheShape, device: torch.device, seed: int) -> BenchCase:
    from attnops.cache import reshape_and_cache
    from attnops.cache.reference import reshape_and_cache as reference

    gen = _generator(device, seed)
    dtype = getattr(torch, shape.dtype)
    storage = dtype if shape.kv_cache_dtype == "auto" else torch.uint8
    x = 16 // storage.itemsize
    # Slots as an engine hands them out: consecutive within blocks taken in random order (a
    # prefill chunk), one token per block for a decode step's batch (up to 256 tokens).
    decode = shape.num_tokens <= 256
    num_blocks = shape.num_tokens if decode else -(-shape.num_tokens // shape.block_size)
    key_cache = torch.zeros(
        (num_blocks, shape.num_kv_heads, shape.head_size // x, shape.block_size, x), dtype=storage, device=device
    )
    value_shape = (num_blocks, shape.num_kv_heads, shape.head_size, shape.block_size)
    value_cache = torch.zeros(value_shape, dtype=storage, device=device)
    new = (shape.num_tokens, shape.num_kv_heads, shape.head_size)
    key, value = _randn(new, dtype, device, gen), _randn(new, dtype, device, gen)
    blocks = torch.randperm(num_blocks, device=device, generator=gen)
    if decode:
        offsets = torch.randint(shape.block_size, (shape.num_tokens,), device=device, generator=gen)
        slots = blocks * shape.block_size + offsets
    else:
        tokens = torch.arange(shape.num_tokens, device=device)
        slots = blocks[tokens // shape.block_size] * shape.block_size + tokens % shape.block_size
    scales = (torch.ones(1, device=device), torch.ones(1, device=device))
    args = (key, value, key_cache, value_cache, slots, shape.kv_cache_dtype, *scales)

    def make(backend: str) -> Call:
        return lambda: reshape_and_cache(*args, backend=backend)

    return BenchCase((Kernel("cache", "reshape_and_cache", make),), "index_put", lambda: reference(*args))


_BUILDERS: dict[str, Callable[[Any, torch.device, int], BenchCase]] = {
    "paged_attention": _decode_case,
    "merge": _merge_case,
    "topk": _topk_case,
    "vertical_slash": _vertical_slash_case,
    "sparse_prefill": _sparse_prefill_case,
    "cache": _cache_case,
}


def build_case(op: str, shape: S.Shape, device: torch.device, seed: int = 0) -> BenchCase:
    """The case of ``op`` (one of :data:`attnops.bench.shapes.OPS`) at ``shape`` on ``device``."""
    return _BUILDERS[op](shape, device, seed)

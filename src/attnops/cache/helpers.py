"""Building random paged KV caches and reading them back densely (tests, benchmarks, demo)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnops._common.dtypes import cache_storage_dtype, fp8_dequantize, is_fp8, x_for
from attnops.cache.api import reshape_and_cache


@dataclass
class PagedKVCache:
    """A paged KV cache in vLLM's layout plus the block tables of the sequences it holds.

    Attributes:
        key_cache: ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``.
        value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]``.
        block_tables: int32 ``[num_seqs, max_num_blocks_per_seq]``; entries past a sequence's
            last block are 0.
        seq_lens: int32 ``[num_seqs]``.
        max_seq_len: ``max(seq_lens)``.
        block_size: tokens per block.
        kv_cache_dtype: ``"auto"`` or an fp8 kind.
        k_scale: one-element fp32 tensor.
        v_scale: one-element fp32 tensor.
    """

    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    max_seq_len: int
    block_size: int
    kv_cache_dtype: str
    k_scale: torch.Tensor
    v_scale: torch.Tensor


def _scale_tensor(scale: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(())


def make_paged_kv_cache(
    seq_lens: Sequence[int] | torch.Tensor,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    kv_cache_dtype: str = "auto",
    device: torch.device | str = "cpu",
    seed: int = 0,
    extra_blocks: int = 0,
    k_scale: float | torch.Tensor = 1.0,
    v_scale: float | torch.Tensor = 1.0,
) -> PagedKVCache:
    """A cache holding standard-normal random keys and values for sequences of ``seq_lens`` tokens.

    Each sequence gets ``ceil(seq_len / block_size)`` blocks drawn from a random permutation of
    all blocks, so its blocks are scattered. The tokens are written through
    :func:`reshape_and_cache` (so fp8 caches hold ``value / scale`` in fp8). Every slot that holds
    no token, including the ``extra_blocks`` spare blocks, is NaN (fp8 NaN bytes for fp8 caches),
    as a recycled block may hold anything: readers must never let those slots reach a result.

    Args:
        seq_lens: the number of tokens of each sequence.
        num_kv_heads, head_size, block_size: cache geometry (vLLM's head and block sizes).
        dtype: the dtype the tokens are generated in (the query dtype of the attention using the cache).
        kv_cache_dtype: ``"auto"`` (cache in ``dtype``) or ``"fp8"``/``"fp8_e4m3"``/``"fp8_e5m2"``.
        device: where the tensors live.
        seed: seeds the values and the block permutation.
        extra_blocks: spare blocks beyond those the sequences use.
        k_scale, v_scale: fp8 scales (float or one-element tensor), stored as fp32 tensors.
    """
    device = torch.device(device)
    lens = [int(n) for n in (seq_lens.tolist() if isinstance(seq_lens, torch.Tensor) else seq_lens)]
    generator = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(n / block_size) for n in lens]
    num_blocks = max(sum(blocks_per_seq) + extra_blocks, 1)
    storage = cache_storage_dtype(kv_cache_dtype, dtype)
    x = x_for(storage)
    # 0x7F is NaN in both fp8 formats.
    poison = 0x7F if is_fp8(kv_cache_dtype) else float("nan")
    key_cache = torch.full((num_blocks, num_kv_heads, head_size // x, block_size, x), poison, dtype=storage)
    value_cache = torch.full((num_blocks, num_kv_heads, head_size, block_size), poison, dtype=storage)
    key_cache, value_cache = key_cache.to(device), value_cache.to(device)

    permutation = torch.randperm(num_blocks, generator=generator)
    block_tables = torch.zeros(len(lens), max([*blocks_per_seq, 1]), dtype=torch.int32)
    slot_mapping = []
    first = 0
    for seq, (n, nb) in enumerate(zip(lens, blocks_per_seq, strict=True)):
        blocks = permutation[first : first + nb]
        first += nb
        block_tables[seq, :nb] = blocks.to(torch.int32)
        positions = torch.arange(n)
        slot_mapping.append(blocks[positions // block_size] * block_size + positions % block_size)
    slots = torch.cat([torch.zeros(0, dtype=torch.int64), *slot_mapping])
    shape = (slots.numel(), num_kv_heads, head_size)
    key = torch.randn(shape, generator=generator).to(dtype)
    value = torch.randn(shape, generator=generator).to(dtype)
    k_scale_t, v_scale_t = _scale_tensor(k_scale, device), _scale_tensor(v_scale, device)
    reshape_and_cache(
        key.to(device), value.to(device), key_cache, value_cache, slots.to(device), kv_cache_dtype, k_scale_t, v_scale_t
    )
    return PagedKVCache(
        key_cache=key_cache,
        value_cache=value_cache,
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        max_seq_len=max([*lens, 0]),
        block_size=block_size,
        kv_cache_dtype=kv_cache_dtype,
        k_scale=k_scale_t,
        v_scale=v_scale_t,
    )


def gather_paged_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_len: int,
    kv_cache_dtype: str = "auto",
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_len`` tokens of every sequence as dense ``[num_seqs, num_kv_heads, max_len, head_size]``.

    Positions ``>= seq_lens[s]`` are zero. fp8 caches are dequantised with ``k_scale``/``v_scale``
    and rounded to ``dtype`` (as vLLM's kernels do); ``dtype`` defaults to the cache dtype for
    ``"auto"`` and must be given for fp8. Block-table entries past a sequence's last block are
    never read.
    """
    if dtype is None:
        if is_fp8(kv_cache_dtype):
            raise ValueError("dtype: expected the compute dtype for an fp8 cache, got None")
        dtype = key_cache.dtype
    num_seqs = block_tables.shape[0]
    _, num_kv_heads, _, block_size, _ = key_cache.shape
    head_size = value_cache.shape[2]
    num_blocks = math.ceil(max_len / block_size)
    lens = seq_lens.long()
    used = torch.arange(num_blocks, device=lens.device) < ((lens + block_size - 1) // block_size)[:, None]
    table = torch.zeros(num_seqs, num_blocks, dtype=torch.long, device=block_tables.device)
    width = min(num_blocks, block_tables.shape[1])
    table[:, :width] = block_tables[:, :width].long()
    table = torch.where(used, table, 0)

    # [S, NB, H, D/x, bs, x] -> [S, H, NB, bs, D/x, x] -> [S, H, T, D]
    keys = key_cache[table].permute(0, 2, 1, 4, 3, 5).reshape(num_seqs, num_kv_heads, -1, head_size)
    # [S, NB, H, D, bs] -> [S, H, NB, bs, D] -> [S, H, T, D]
    values = value_cache[table].permute(0, 2, 1, 4, 3).reshape(num_seqs, num_kv_heads, -1, head_size)
    if is_fp8(kv_cache_dtype):
        keys = fp8_dequantize(keys, kv_cache_dtype, k_scale, dtype)
        values = fp8_dequantize(values, kv_cache_dtype, v_scale, dtype)
    keys, values = keys.to(dtype), values.to(dtype)
    # Zero only the slots past each sequence's end (they may hold NaN), not the whole tensors.
    outside = torch.arange(keys.shape[2], device=lens.device) >= lens[:, None]
    seq_idx, pos_idx = outside.nonzero(as_tuple=True)
    keys[seq_idx, :, pos_idx] = 0
    values[seq_idx, :, pos_idx] = 0
    return keys[:, :, :max_len].contiguous(), values[:, :, :max_len].contiguous()

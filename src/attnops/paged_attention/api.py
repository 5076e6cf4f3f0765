"""Paged decode attention: validation, backend dispatch and ``torch.ops.attnops`` registration.

``paged_attention_v1`` and ``paged_attention_v2`` keep vLLM's ``vllm._custom_ops`` signatures;
``paged_decode`` is the functional variant that also returns the log-sum-exp, so results over
several KV shards merge with ``merge_attn_states``.
"""

from __future__ import annotations

import math

import torch

from attnops._common.backend import Dispatcher
from attnops._common.dtypes import ATTENTION_DTYPES, is_fp8
from attnops._common.registry import register_op
from attnops._common.validate import (
    check_divisible,
    check_float,
    check_int,
    check_optional_tensor,
    check_same_device,
    check_tensor,
    check_values_in_range,
    values_checked,
)
from attnops.cache.layout import BLOCK_SIZES, CacheGeometry, check_inner_contiguous, check_kv_caches, check_scale
from attnops.paged_attention import reference
from attnops.paged_attention.reference import PARTITION_SIZE, BlockSparse


def _validate_attention_inputs(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int | None,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> CacheGeometry:
    """The metadata checks of the inputs every paged decode op shares."""
    check_tensor("query", query, dtype=ATTENTION_DTYPES, ndim=3)
    num_seqs, num_heads, head_size = query.shape
    check_inner_contiguous("query", query, 1)
    geometry = check_kv_caches(key_cache, value_cache, kv_cache_dtype, query.dtype)
    if head_size != geometry.head_size:
        raise ValueError(f"query: expected head size {geometry.head_size} (from key_cache), got {head_size}")
    check_divisible("query heads (query.shape[1])", num_heads, geometry.num_kv_heads, "num_kv_heads")
    check_tensor("block_tables", block_tables, dtype=torch.int32, shape=(num_seqs, None), contiguous=True)
    check_tensor("seq_lens", seq_lens, dtype=torch.int32, shape=(num_seqs,), contiguous=True)
    check_optional_tensor("alibi_slopes", alibi_slopes, dtype=torch.float32, shape=(num_heads,), contiguous=True)
    if k_scale is not None:
        check_scale("k_scale", k_scale)
    if v_scale is not None:
        check_scale("v_scale", v_scale)
    if max_seq_len is not None:
        _check_max_seq_len(max_seq_len)
    return geometry


def _check_devices_and_values(
    tensors: dict[str, torch.Tensor | None],
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int | None,
    geometry: CacheGeometry,
) -> None:
    """All ``tensors`` on the query's device; then, where affordable, the block-table values."""
    check_same_device("query", tensors)
    if values_checked(seq_lens, block_tables):
        _check_table_values(block_tables, seq_lens, max_seq_len, geometry)


def _check_table_values(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, max_seq_len: int | None, geometry: CacheGeometry
) -> None:
    upper = max_seq_len if max_seq_len is not None else 2**31 - 1
    check_values_in_range("seq_lens", seq_lens, 0, upper + 1)
    blocks_used = (seq_lens.long() + geometry.block_size - 1) // geometry.block_size
    if seq_lens.numel() and int(blocks_used.max()) > block_tables.shape[1]:
        raise ValueError(
            f"block_tables: expected at least {int(blocks_used.max())} columns for seq_lens up to "
            f"{int(seq_lens.max())} with block_size {geometry.block_size}, got {block_tables.shape[1]}"
        )
    # Entries past a sequence's last block may hold anything.
    used = torch.arange(block_tables.shape[1], device=block_tables.device) < blocks_used[:, None]
    check_values_in_range("block_tables", block_tables[used], 0, geometry.num_blocks)


def _validate_paged_attention(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    num_kv_heads: int,
    scale: float,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    max_seq_len: int,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    tp_rank: int,
    blocksparse_local_blocks: int,
    blocksparse_vert_stride: int,
    blocksparse_block_size: int,
    blocksparse_head_sliding_step: int,
    exp_sum: torch.Tensor | None = None,
    max_logits: torch.Tensor | None = None,
    tmp_out: torch.Tensor | None = None,
) -> BlockSparse | None:
    """Checks of ``paged_attention_v1`` and (with its buffers) ``v2``; returns the block-sparse pattern, if any.

    Besides value checks, the checks of ``max_seq_len`` are those of :func:`_check_max_seq_len`, which
    the ops repeat on every call (their dispatchers key it by its type alone).
    """
    check_scale("k_scale", k_scale)
    check_scale("v_scale", v_scale)
    _check_max_seq_len(max_seq_len)
    geometry = _validate_attention_inputs(
        query, key_cache, value_cache, block_tables, seq_lens, max_seq_len, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale,
    )  # fmt: skip
    check_tensor("out", out, dtype=query.dtype, shape=tuple(query.shape), contiguous=True)
    v2_buffers = {} if exp_sum is None else {"exp_sum": exp_sum, "max_logits": max_logits, "tmp_out": tmp_out}
    if v2_buffers:
        _validate_v2_buffers(**v2_buffers, query=query, max_seq_len=max_seq_len)
    check_int("num_kv_heads", num_kv_heads, min_value=1)
    if num_kv_heads != geometry.num_kv_heads:
        raise ValueError(f"num_kv_heads: expected {geometry.num_kv_heads} (key_cache.shape[1]), got {num_kv_heads}")
    check_float("scale", scale)
    check_int("block_size", block_size, choices=BLOCK_SIZES)
    if block_size != geometry.block_size:
        raise ValueError(f"block_size: expected {geometry.block_size} (key_cache.shape[3]), got {block_size}")
    check_int("tp_rank", tp_rank, min_value=0)
    check_int("blocksparse_local_blocks", blocksparse_local_blocks)
    check_int("blocksparse_vert_stride", blocksparse_vert_stride)
    check_int("blocksparse_block_size", blocksparse_block_size)
    check_int("blocksparse_head_sliding_step", blocksparse_head_sliding_step)
    if blocksparse_vert_stride > 1:
        check_int("blocksparse_block_size", blocksparse_block_size, min_value=1)
    tensors = {
        "query": query,
        "key_cache": key_cache,
        "value_cache": value_cache,
        "block_tables": block_tables,
        "seq_lens": seq_lens,
        "alibi_slopes": alibi_slopes,
        "k_scale": k_scale,
        "v_scale": v_scale,
        "out": out,
        **v2_buffers,
    }
    _check_devices_and_values(tensors, block_tables, seq_lens, max_seq_len, geometry)
    if blocksparse_vert_stride <= 1:
        return None
    return BlockSparse(
        local_blocks=blocksparse_local_blocks,
        vert_stride=blocksparse_vert_stride,
        block_size=blocksparse_block_size,
        head_sliding_step=blocksparse_head_sliding_step,
        tp_rank=tp_rank,
    )


def _validate_v2_buffers(
    exp_sum: torch.Tensor, max_logits: torch.Tensor, tmp_out: torch.Tensor, query: torch.Tensor, max_seq_len: int
) -> None:
    num_seqs, num_heads, head_size = query.shape
    check_tensor("exp_sum", exp_sum, dtype=torch.float32, shape=(num_seqs, num_heads, None), contiguous=True)
    num_partitions = exp_sum.shape[2]
    _check_partitions(max_seq_len, exp_sum)
    check_tensor(
        "max_logits", max_logits, dtype=torch.float32, shape=(num_seqs, num_heads, num_partitions), contiguous=True
    )
    check_tensor(
        "tmp_out", tmp_out, dtype=query.dtype, shape=(num_seqs, num_heads, num_partitions, head_size), contiguous=True
    )


def _check_partitions(max_seq_len: int, exp_sum: torch.Tensor) -> None:
    """v2's buffers must hold a partition per ``PARTITION_SIZE`` tokens of ``max_seq_len``."""
    needed = math.ceil(max_seq_len / PARTITION_SIZE)
    if exp_sum.shape[2] < needed:
        raise ValueError(
            f"exp_sum: expected at least ceil(max_seq_len / {PARTITION_SIZE}) = {needed} partitions (dim 2), "
            f"got {exp_sum.shape[2]}"
        )


def _check_max_seq_len(max_seq_len: object, exp_sum: torch.Tensor | None = None) -> None:
    """The checks of ``max_seq_len`` that read no tensor values (``paged_decode`` skips its ``None``),
    repeated on every call after the memoised ones, which key it by its type alone (it grows every
    decode step; see :class:`Dispatcher`)."""
    check_int("max_seq_len", max_seq_len, min_value=0)
    if exp_sum is not None:
        _check_partitions(max_seq_len, exp_sum)


_v1_dispatcher = Dispatcher(
    "paged_attention_v1", reference.paged_attention_v1, _validate_paged_attention, unkeyed="max_seq_len"
)
_v2_dispatcher = Dispatcher(
    "paged_attention_v2", reference.paged_attention_v2, _validate_paged_attention, unkeyed="max_seq_len"
)


@register_op("paged_attention_v1", mutates_args=("out",), validate=_validate_paged_attention)
def paged_attention_v1(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    num_kv_heads: int,
    scale: float,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    max_seq_len: int,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    tp_rank: int = 0,
    blocksparse_local_blocks: int = 0,
    blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64,
    blocksparse_head_sliding_step: int = 0,
    backend: str | None = None,
) -> None:
    """Decode attention (one query token per sequence) over vLLM's paged KV cache, written to ``out``.

    For sequence ``s``, head ``h`` (kv head ``h // (num_heads // num_kv_heads)``) and tokens
    ``t < seq_lens[s]``: ``logit[t] = scale * q·k[t] (+ slope[h] * (t - seq_len + 1))``,
    ``out[s, h] = sum_t softmax(logit)[t] * v[t]``, the softmax normalised by ``exp_sum + 1e-6``
    as vLLM's kernel does. An empty sequence gives a zero row. Math is fp32; fp8 caches are
    dequantised to the query dtype first (vLLM's ``scaled_convert``).

    Args:
        out: ``[num_seqs, num_heads, head_size]``, query dtype, contiguous. Written in place.
        query: ``[num_seqs, num_heads, head_size]`` fp32/fp16/bf16; heads and head dim contiguous
            (the sequence stride may be anything, e.g. a slice of a qkv tensor).
        key_cache: ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``, x = 16 bytes /
            element size; query dtype for ``"auto"``, ``uint8`` for fp8. Head size in
            {32, 64, 80, 96, 112, 120, 128, 192, 256}, block size in {8, 16, 32}.
        value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]``, same dtype.
        num_kv_heads: ``key_cache.shape[1]``; divides ``num_heads``.
        scale: softmax scale, usually ``head_size ** -0.5``.
        block_tables: int32 ``[num_seqs, max_num_blocks_per_seq]``; token ``t`` of sequence ``s``
            is in block ``block_tables[s, t // block_size]``; entries past the last block are never read.
        seq_lens: int32 ``[num_seqs]``, each in ``[0, max_seq_len]``.
        block_size: ``key_cache.shape[3]``.
        max_seq_len: upper bound of ``seq_lens``.
        alibi_slopes: optional fp32 ``[num_heads]``.
        kv_cache_dtype: ``"auto"``, ``"fp8"`` (= ``"fp8_e4m3"``) or ``"fp8_e5m2"``.
        k_scale: one-element fp32 tensor, key dequantisation scale (fp8 only).
        v_scale: one-element fp32 tensor, value dequantisation scale (fp8 only).
        tp_rank: tensor-parallel rank; offsets the block-sparse head pattern.
        blocksparse_local_blocks: sparse blocks before (and including) the query's that every head attends.
        blocksparse_vert_stride: block-sparse decode when ``> 1``: every ``vert_stride``-th sparse block.
        blocksparse_block_size: tokens per sparse block.
        blocksparse_head_sliding_step: per-head shift of the vertical pattern; ``>= 0`` slides over
            query heads, ``< 0`` over kv heads by ``-step``. Skipped blocks get the logit ``-FLT_MAX``
            as in vLLM (so a partition with no attended block has output 0).
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Raises:
        TypeError, ValueError: on bad input, before anything is written.
    """
    sparse, impl = _v1_dispatcher.prepare(
        backend, out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
        max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
        blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
    )  # fmt: skip
    _check_max_seq_len(max_seq_len)
    impl(
        out, query, key_cache, value_cache, block_tables, seq_lens, float(scale), alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, sparse,
    )  # fmt: skip


@register_op(
    "paged_attention_v2", mutates_args=("out", "exp_sum", "max_logits", "tmp_out"), validate=_validate_paged_attention
)
def paged_attention_v2(
    out: torch.Tensor,
    exp_sum: torch.Tensor,
    max_logits: torch.Tensor,
    tmp_out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    num_kv_heads: int,
    scale: float,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    max_seq_len: int,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    tp_rank: int = 0,
    blocksparse_local_blocks: int = 0,
    blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64,
    blocksparse_head_sliding_step: int = 0,
    backend: str | None = None,
) -> None:
    """:func:`paged_attention_v1`, computed in partitions of 512 tokens (``PARTITION_SIZE``) and reduced.

    ``out`` receives the same result as v1. For every sequence ``s``, head ``h`` and partition
    ``p < ceil(seq_lens[s] / 512)`` (tokens ``[512 p, 512 (p + 1))``):

    - ``max_logits[s, h, p]``: the partition's max logit (``-FLT_MAX`` if block-sparse skips all of it),
    - ``exp_sum[s, h, p]``: ``sum(exp(logit - max_logits[s, h, p]))`` over the partition,
    - ``tmp_out[s, h, p]``: the partition's output normalised by ``exp_sum + 1e-6`` (vLLM's epsilon).

    Later partitions are left untouched, as in vLLM. The reduction weights partition ``p`` by
    ``exp_sum * exp(max_logits - max)`` and divides by the weights' sum + 1e-6 (vLLM's reduce
    kernel); it reads the fp32 partition outputs rather than their rounded ``tmp_out`` copies, so
    ``out`` is identical to v1's.

    Args:
        out: ``[num_seqs, num_heads, head_size]``, query dtype, contiguous. Written in place.
        exp_sum: fp32 ``[num_seqs, num_heads, max_num_partitions]``, contiguous,
            ``max_num_partitions >= ceil(max_seq_len / 512)``. Written in place.
        max_logits: fp32, same shape as ``exp_sum``, contiguous. Written in place.
        tmp_out: ``[num_seqs, num_heads, max_num_partitions, head_size]``, query dtype, contiguous.
            Written in place.
        query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
        max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_*,
        backend: as in :func:`paged_attention_v1`.

    Raises:
        TypeError, ValueError: on bad input, before anything is written.
    """
    sparse, impl = _v2_dispatcher.prepare(
        backend, out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
        max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
        blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step, exp_sum, max_logits, tmp_out,
    )  # fmt: skip
    _check_max_seq_len(max_seq_len, exp_sum)
    impl(
        out, exp_sum, max_logits, tmp_out, query, key_cache, value_cache, block_tables, seq_lens, float(scale),
        alibi_slopes, kv_cache_dtype, k_scale, v_scale, sparse,
    )  # fmt: skip


def _validate_paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None,
    max_seq_len: int | None,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> None:
    """Checks of ``paged_decode``; those of ``max_seq_len`` are repeated on every call, as in v1."""
    if scale is not None:
        check_float("scale", scale)
    geometry = _validate_attention_inputs(
        query, key_cache, value_cache, block_tables, seq_lens, max_seq_len, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale,
    )  # fmt: skip
    tensors = {
        "query": query,
        "key_cache": key_cache,
        "value_cache": value_cache,
        "block_tables": block_tables,
        "seq_lens": seq_lens,
        "alibi_slopes": alibi_slopes,
        "k_scale": k_scale,
        "v_scale": v_scale,
    }
    _check_devices_and_values(tensors, block_tables, seq_lens, max_seq_len, geometry)


_decode_dispatcher = Dispatcher("paged_decode", reference.paged_decode, _validate_paged_decode, unkeyed="max_seq_len")


def _paged_decode_outputs(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake ``(out, lse)``: query-shaped output and fp32 ``[num_heads, num_seqs]`` lse."""
    num_seqs, num_heads, _ = query.shape
    return torch.empty_like(query), query.new_empty((num_heads, num_seqs), dtype=torch.float32)


@register_op("paged_decode", mutates_args=(), validate=_validate_paged_decode, outputs=_paged_decode_outputs)
def _paged_decode_op(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    max_seq_len: int | None = None,
    alibi_slopes: torch.Tensor | None = None,
    kv_cache_dtype: str = "auto",
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.attnops.paged_decode``: :func:`paged_decode` that always returns ``(out, lse)``."""
    _, impl = _decode_dispatcher.prepare(
        backend, query, key_cache, value_cache, block_tables, seq_lens, scale, max_seq_len, alibi_slopes,
        kv_cache_dtype, k_scale, v_scale,
    )  # fmt: skip
    if max_seq_len is not None:
        _check_max_seq_len(max_seq_len)
    # Only fp8 caches read the scales, whose default 1.0 must then be a tensor (on a GPU, a fill
    # kernel and an allocation: microseconds that an "auto" cache's call skips).
    if is_fp8(kv_cache_dtype) and (k_scale is None or v_scale is None):
        one = torch.ones((), dtype=torch.float32, device=query.device)
        k_scale = one if k_scale is None else k_scale
        v_scale = one if v_scale is None else v_scale
    return impl(
        query, key_cache, value_cache, block_tables, seq_lens,
        query.shape[2] ** -0.5 if scale is None else float(scale), alibi_slopes, kv_cache_dtype, k_scale, v_scale,
    )  # fmt: skip


def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    max_seq_len: int | None = None,
    alibi_slopes: torch.Tensor | None = None,
    kv_cache_dtype: str = "auto",
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Paged decode attention returning its output and, on request, its log-sum-exp.

    Same math as :func:`paged_attention_v1` (without block sparsity); ``num_kv_heads`` and
    ``block_size`` are read off the cache shapes. With ``return_lse`` the result merges with
    other KV shards' results through ``merge_attn_states`` (its ``[num_heads, num_tokens]`` lse layout).

    Args:
        query: ``[num_seqs, num_heads, head_size]`` fp32/fp16/bf16 (heads and head dim contiguous).
        key_cache: ``[num_blocks, num_kv_heads, head_size // x, block_size, x]`` (see ``paged_attention_v1``).
        value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]``.
        block_tables: int32 ``[num_seqs, max_num_blocks_per_seq]``.
        seq_lens: int32 ``[num_seqs]``.
        scale: softmax scale; default ``head_size ** -0.5``.
        max_seq_len: optional upper bound of ``seq_lens`` (checked where values are checked).
        alibi_slopes: optional fp32 ``[num_heads]``.
        kv_cache_dtype: ``"auto"``, ``"fp8"``, ``"fp8_e4m3"`` or ``"fp8_e5m2"``.
        k_scale, v_scale: optional one-element fp32 tensors (default 1.0), fp8 only.
        return_lse: also return the lse.
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Returns:
        ``out`` ``[num_seqs, num_heads, head_size]`` in the query dtype (zero rows for empty
        sequences) and, with ``return_lse``, ``lse`` fp32 ``[num_heads, num_seqs]``:
        ``log(sum_t exp(logit[t]))``, ``-inf`` for an empty sequence.

    Raises:
        TypeError, ValueError: on bad input.
    """
    out, lse = _paged_decode_op(
        query, key_cache, value_cache, block_tables, seq_lens, scale, max_seq_len, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, backend,
    )  # fmt: skip
    return (out, lse) if return_lse else out

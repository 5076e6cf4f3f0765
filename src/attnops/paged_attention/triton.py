"""Triton kernels of paged decode attention (``paged_attention_v1``/``v2``, ``paged_decode``).

Two launches per call, both reading vLLM's cache layouts in place:

1. :func:`_partition_kernel`, one program per (sequence, kv head, split of ``SPLIT`` tokens). It
   serves every query head of its GQA group at once (a ``[GROUP_PAD, HEAD_PAD]`` query tile), so
   each K/V byte is read once per kv head, and walks its split in tiles of ``TILE`` tokens
   (gathered through the block table, whole cache rows per load) with an online softmax in fp32.
   It writes the split's ``(max logit, exp sum, output / (exp sum + 1e-6))``: vLLM's v2 partition
   statistics, whose partition is the split (``SPLIT = PARTITION_SIZE``). Programs past their
   sequence's end exit without writing.
2. :func:`_reduce_kernel`, one program per (sequence, query head): vLLM's v2 reduction of the
   splits (a one-split sequence copies its split output) and the log-sum-exp.

Grid sizes come from tensor shapes only (no host synchronisation), so the calls can be captured
in CUDA graphs.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from attnops.paged_attention.api import _decode_dispatcher, _v1_dispatcher, _v2_dispatcher
from attnops.paged_attention.reference import FLT_MAX, PARTITION_SIZE, SOFTMAX_EPS, BlockSparse

# fp8 cache formats, as the kernel's FP8 constexpr.
_FP8_KINDS = {"auto": 0, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 2}
# Upper bound of GROUP_PAD * HEAD_PAD * TILE: the broadcast products' size in registers.
_PRODUCT_ELEMENTS = 16384
# Partitions reduced per step of the reduce kernel.
_REDUCE_TILE = 16


@triton.jit
def _dequantize(raw, scale, FP8: tl.constexpr, COMPUTE: tl.constexpr):
    """Cache elements as fp32; fp8 bytes decoded, scaled and rounded to ``COMPUTE`` (vLLM's ``scaled_convert``)."""
    if FP8 == 1:
        return (raw.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale).to(COMPUTE).to(tl.float32)
    elif FP8 == 2:
        return (raw.to(tl.float8e5, bitcast=True).to(tl.float32) * scale).to(COMPUTE).to(tl.float32)
    else:
        return raw.to(tl.float32)


@triton.jit
def _partition_kernel(
    query,  # [num_seqs, num_heads, HEAD_SIZE], heads and head dim contiguous
    key_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE // X, BLOCK_SIZE, X]
    value_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE, BLOCK_SIZE]
    block_tables,  # int32 [num_seqs, table_stride]
    seq_lens,  # int32 [num_seqs]
    alibi_slopes,  # fp32 [num_heads] (read only with HAS_ALIBI)
    k_scale,  # fp32 [1] (read only for fp8)
    v_scale,  # fp32 [1] (read only for fp8)
    max_logits,  # fp32 [num_seqs, num_heads, num_splits]
    exp_sums,  # fp32 [num_seqs, num_heads, num_splits]
    split_out,  # fp32 [num_seqs, num_heads, num_splits, HEAD_SIZE]
    tmp_out,  # query dtype, as split_out (written only with WRITE_TMP)
    scale,
    query_stride,
    table_stride,
    k_stride_block,
    k_stride_head,
    v_stride_block,
    v_stride_head,
    num_heads,
    num_kv_heads,
    num_splits,
    sparse_local_blocks,
    sparse_vert_stride,
    sparse_block_size,
    sparse_head_sliding_step,
    sparse_tp_rank,
    HEADS_PER_KV: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    X: tl.constexpr,
    SPLIT: tl.constexpr,
    TILE: tl.constexpr,
    FP8: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    SPARSE: tl.constexpr,
    WRITE_TMP: tl.constexpr,
):
    """The softmax statistics and normalised output of one split for one GQA group of heads."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    start = split * SPLIT
    if start >= seq_len:
        return
    end = tl.minimum(start + SPLIT, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    t = tl.arange(0, TILE)
    g_mask = g < HEADS_PER_KV
    d_mask = d < HEAD_SIZE
    heads = kv_head * HEADS_PER_KV + g
    q_ptrs = query + seq.to(tl.int64) * query_stride + heads[:, None] * HEAD_SIZE + d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32) * scale
    if HAS_ALIBI:
        slopes = tl.load(alibi_slopes + heads, mask=g_mask, other=0.0)
    if FP8 != 0:
        ks = tl.load(k_scale)
        vs = tl.load(v_scale)
    else:
        ks = 1.0
        vs = 1.0
    if SPARSE:
        query_block = (seq_len - 1) // sparse_block_size
        step = sparse_head_sliding_step
        offset = tl.where(
            step >= 0,
            (sparse_tp_rank * num_heads + heads) * step + 1,
            (sparse_tp_rank * num_kv_heads + kv_head) * -step + 1,
        )
    # Within a cache block: key element d of slot s at (d // X) * BLOCK_SIZE * X + s * X + d % X.
    k_dim = (d // X) * (BLOCK_SIZE * X) + d % X
    k_base = key_cache + kv_head * k_stride_head
    v_base = value_cache + kv_head * v_stride_head
    table = block_tables + seq.to(tl.int64) * table_stride
    compute = query.dtype.element_ty

    m = tl.full([GROUP_PAD], -FLT_MAX, tl.float32)
    s = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    for tile_start in range(start, end, TILE):
        tok = tile_start + t
        valid = tok < end
        # Table entries past the sequence's last block are never read.
        block = tl.load(table + tok // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        slot = tok % BLOCK_SIZE
        kv_mask = d_mask[:, None] & valid[None, :]
        # Slots past the sequence's end may hold NaN: masked to 0, they never reach the result.
        k_ptrs = k_base + block[None, :] * k_stride_block + k_dim[:, None] + slot[None, :] * X
        k = _dequantize(tl.load(k_ptrs, mask=kv_mask, other=0.0), ks, FP8, compute)  # [HEAD_PAD, TILE]
        logits = tl.sum(q[:, :, None] * k[None, :, :], axis=1)  # [GROUP_PAD, TILE]
        if HAS_ALIBI:
            logits += slopes[:, None] * (tok - seq_len + 1).to(tl.float32)[None, :]
        if SPARSE:
            sparse_block = (tok // BLOCK_SIZE) * BLOCK_SIZE // sparse_block_size
            remote = (sparse_block[None, :] + offset[:, None]) % sparse_vert_stride == 0
            local = sparse_block > query_block - sparse_local_blocks
            attended = remote | local[None, :]
            # As vLLM: skipped tokens take the logit -FLT_MAX (they count in the max and exp sum).
            logits = tl.where(attended, logits, -FLT_MAX)
        logits = tl.where(valid[None, :], logits, float("-inf"))

        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])
        s = s * alpha + tl.sum(p, axis=1)
        if SPARSE:
            p = tl.where(attended, p, 0.0)
        v_ptrs = v_base + block[None, :] * v_stride_block + d[:, None] * BLOCK_SIZE + slot[None, :]
        v = _dequantize(tl.load(v_ptrs, mask=kv_mask, other=0.0), vs, FP8, compute)  # [HEAD_PAD, TILE]
        acc = acc * alpha[:, None] + tl.sum(p[:, None, :] * v[None, :, :], axis=2)
        m = m_new

    rows = (seq * num_heads + heads).to(tl.int64) * num_splits + split
    tl.store(max_logits + rows, m, mask=g_mask)
    tl.store(exp_sums + rows, s, mask=g_mask)
    out = acc / (s + SOFTMAX_EPS)[:, None]
    out_offsets = rows[:, None] * HEAD_SIZE + d[None, :]
    out_mask = g_mask[:, None] & d_mask[None, :]
    tl.store(split_out + out_offsets, out, mask=out_mask)
    if WRITE_TMP:
        tl.store(tmp_out + out_offsets, out.to(tmp_out.dtype.element_ty), mask=out_mask)


@triton.jit
def _reduce_kernel(
    out,  # [num_seqs, num_heads, HEAD_SIZE], contiguous
    lse,  # fp32 [num_heads, num_seqs] (written only with WRITE_LSE)
    max_logits,  # fp32 [num_seqs, num_heads, num_splits]
    exp_sums,  # fp32 [num_seqs, num_heads, num_splits]
    split_out,  # fp32 [num_seqs, num_heads, num_splits, HEAD_SIZE]
    seq_lens,  # int32 [num_seqs]
    num_seqs,
    num_heads,
    num_splits,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    SPLIT: tl.constexpr,
    REDUCE_TILE: tl.constexpr,
    WRITE_LSE: tl.constexpr,
):
    """vLLM's v2 reduction of one (sequence, head)'s splits, reading only the splits its length uses."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    count = tl.cdiv(tl.load(seq_lens + seq), SPLIT)
    row = (seq * num_heads + head).to(tl.int64)
    base = row * num_splits
    p = tl.arange(0, REDUCE_TILE)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_SIZE

    peak = tl.full([REDUCE_TILE], -FLT_MAX, tl.float32)
    for first in range(0, count, REDUCE_TILE):
        part = first + p
        peak = tl.maximum(peak, tl.load(max_logits + base + part, mask=part < count, other=-FLT_MAX))
    global_max = tl.max(peak, axis=0)

    total = tl.zeros([REDUCE_TILE], tl.float32)
    acc = tl.zeros([HEAD_PAD], tl.float32)
    for first in range(0, count, REDUCE_TILE):
        part = first + p
        used = part < count
        m = tl.load(max_logits + base + part, mask=used, other=-FLT_MAX)
        weight = tl.load(exp_sums + base + part, mask=used, other=0.0) * tl.exp(m - global_max)
        total += weight
        o_ptrs = split_out + (base + part)[:, None] * HEAD_SIZE + d[None, :]
        o = tl.load(o_ptrs, mask=used[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(weight[:, None] * o, axis=0)
    total_sum = tl.sum(total, axis=0)
    merged = acc / (total_sum + SOFTMAX_EPS)
    # A one-split sequence takes its split's output as is (zeros for an empty sequence).
    single = tl.load(split_out + base * HEAD_SIZE + d, mask=d < HEAD_SIZE * tl.minimum(count, 1), other=0.0)
    result = tl.where(count <= 1, single, merged)
    tl.store(out + row * HEAD_SIZE + d, result.to(out.dtype.element_ty), mask=d_mask)
    if WRITE_LSE:
        # log(0) = -inf for an empty sequence.
        tl.store(lse + head * num_seqs + seq, global_max + tl.log(total_sum))


@functools.cache
def _tile(group_pad: int, head_pad: int) -> int:
    """Tokens per step: the broadcast products stay within ``_PRODUCT_ELEMENTS`` (8 to 64 tokens)."""
    return max(8, min(64, _PRODUCT_ELEMENTS // (group_pad * head_pad)))


def _launch(
    out: torch.Tensor,
    lse: torch.Tensor | None,
    max_logits: torch.Tensor,
    exp_sums: torch.Tensor,
    split_out: torch.Tensor,
    tmp_out: torch.Tensor | None,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sparse: BlockSparse | None,
    split: int,
) -> None:
    """Both kernels; the split count is ``max_logits.shape[2]``, the split ``split`` tokens."""
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads, block_size, x = key_cache.shape[1], key_cache.shape[3], key_cache.shape[4]
    num_splits = max_logits.shape[2]
    if num_seqs == 0:
        return
    heads_per_kv = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(heads_per_kv)
    head_pad = triton.next_power_of_2(head_size)
    if sparse is None:
        sparse = BlockSparse(local_blocks=0, vert_stride=1, block_size=1, head_sliding_step=0, tp_rank=0)
        is_sparse = False
    else:
        is_sparse = True
    # Unused pointer arguments get a tensor that is never read.
    _partition_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, seq_lens,
        seq_lens if alibi_slopes is None else alibi_slopes, k_scale, v_scale,
        max_logits, exp_sums, split_out, split_out if tmp_out is None else tmp_out,
        scale, query.stride(0), block_tables.stride(0), key_cache.stride(0), key_cache.stride(1),
        value_cache.stride(0), value_cache.stride(1), num_heads, num_kv_heads, num_splits,
        sparse.local_blocks, sparse.vert_stride, sparse.block_size, sparse.head_sliding_step, sparse.tp_rank,
        HEADS_PER_KV=heads_per_kv, GROUP_PAD=group_pad, HEAD_SIZE=head_size, HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size, X=x, SPLIT=split, TILE=_tile(group_pad, head_pad),
        FP8=_FP8_KINDS[kv_cache_dtype], HAS_ALIBI=alibi_slopes is not None, SPARSE=is_sparse,
        WRITE_TMP=tmp_out is not None,
    )  # fmt: skip
    _reduce_kernel[(num_seqs, num_heads)](
        out, exp_sums if lse is None else lse, max_logits, exp_sums, split_out, seq_lens,
        num_seqs, num_heads, num_splits,
        HEAD_SIZE=head_size, HEAD_PAD=head_pad, SPLIT=split, REDUCE_TILE=_REDUCE_TILE, WRITE_LSE=lse is not None,
    )  # fmt: skip


def _split_buffers(
    query: torch.Tensor, block_tables: torch.Tensor, block_size: int, split: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 (max logits, exp sums, outputs) for as many splits as the block table can hold."""
    num_seqs, num_heads, head_size = query.shape
    num_splits = max(1, triton.cdiv(block_tables.shape[1] * block_size, split))
    stats = torch.empty((2, num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
    outs = torch.empty((num_seqs, num_heads, num_splits, head_size), dtype=torch.float32, device=query.device)
    return stats[0], stats[1], outs


@_v1_dispatcher.register("triton")
def paged_attention_v1(
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sparse: BlockSparse | None,
    split: int = PARTITION_SIZE,
) -> None:
    """:func:`attnops.paged_attention.reference.paged_attention_v1` on Triton; ``split`` tokens per program."""
    max_logits, exp_sums, split_out = _split_buffers(query, block_tables, key_cache.shape[3], split)
    _launch(
        out, None, max_logits, exp_sums, split_out, None, query, key_cache, value_cache, block_tables, seq_lens,
        scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale, sparse, split,
    )  # fmt: skip


@_v2_dispatcher.register("triton")
def paged_attention_v2(
    out: torch.Tensor,
    exp_sums: torch.Tensor,
    max_logits: torch.Tensor,
    tmp_out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sparse: BlockSparse | None,
) -> None:
    """:func:`attnops.paged_attention.reference.paged_attention_v2` on Triton (splits = vLLM's partitions).

    The reduction reads fp32 copies of the partition outputs (a scratch buffer), as the reference does.
    """
    split_out = torch.empty(tmp_out.shape, dtype=torch.float32, device=query.device)
    _launch(
        out, None, max_logits, exp_sums, split_out, tmp_out, query, key_cache, value_cache, block_tables, seq_lens,
        scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale, sparse, PARTITION_SIZE,
    )  # fmt: skip


@_decode_dispatcher.register("triton")
def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    split: int = PARTITION_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnops.paged_attention.reference.paged_decode` on Triton: ``(out, lse [num_heads, num_seqs])``."""
    num_seqs, num_heads, _ = query.shape
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty((num_heads, num_seqs), dtype=torch.float32, device=query.device)
    max_logits, exp_sums, split_out = _split_buffers(query, block_tables, key_cache.shape[3], split)
    _launch(
        out, lse, max_logits, exp_sums, split_out, None, query, key_cache, value_cache, block_tables, seq_lens,
        scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale, None, split,
    )  # fmt: skip
    return out, lse

"""Triton kernels of paged decode attention (``paged_attention_v1``/``v2``, ``paged_decode``).

Both kernels read vLLM's cache layouts in place:

1. :func:`_partition_kernel`, one program per (kv head, sequence, split of ``split_size`` tokens). It
   serves every query head of its GQA group at once (a ``[GROUP_PAD, HEAD_PAD]`` query tile), so
   each K/V byte is read once per kv head, and walks its split in tiles of ``TILE`` tokens
   (gathered through the block table) with an online softmax in fp32. GQA groups multiply on
   tensor cores (``tl.dot``, the group padded to 16 rows); one head per kv head uses broadcast
   products. It writes the split's ``(max logit, exp sum, output / (exp sum + 1e-6))``: vLLM's v2
   partition statistics, whose partition is the split (``split_size = PARTITION_SIZE``). Programs past
   their sequence's end exit without writing.
2. :func:`_reduce_kernel`, one program per (sequence, query head), or per head-dim chunk of one
   when there are fewer pairs than SMs: vLLM's v2 reduction of the splits (a one-split sequence
   copies its split output) and the log-sum-exp.

The split is device-aware: ``PARTITION_SIZE`` tokens, or fewer where a few sequences would leave
SMs idle (:func:`_auto_split`); v2 then computes each partition as sub-splits whose statistics the
reduction folds into the partition's. v1 and ``paged_decode`` launches of many programs take the
split that packs them into whole waves of resident programs (:func:`_wave_split`). When the block
table holds a single split, the partition kernel writes the result itself and the reduction is
skipped.
Grid sizes come from tensor shapes only (no host synchronisation), so the calls can be captured
in CUDA graphs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from attnops._common.backend import sm_count, triton_interpreted
from attnops._common.fastpath import (
    MAX_ENTRIES,
    UNALIGNED,
    UNBOUND,
    Launcher,
    cdiv,
    current_stream,
    next_power_of_2,
)
from attnops._common.fp8_bits import FP8_KINDS
from attnops.paged_attention.api import _decode_dispatcher, _v1_dispatcher, _v2_dispatcher
from attnops.paged_attention.reference import FLT_MAX, PARTITION_SIZE, SOFTMAX_EPS, BlockSparse

# Launch parameters of the partition kernel (bench/tuning/paged_decode_sweep.py, H200, bf16,
# head 128): with line-wide K loads, one warp and a two-stage pipeline (many small resident
# programs) beat 4 warps / 2 stages by 10-30 % on every swept shape (128x4096: 91.6 % of copy
# peak), although ptxas spills ~1.3 KB a thread at one warp. Rows wider than _NARROW_ROW_BYTES
# (head x element size) keep version 3's 4 warps, which spill far less there (sm_90, ptxas: fp16
# head 256 168 B vs 1.5 KB at 2 warps) and are not yet tuned.
_TILE_TOKENS = 64
_NUM_WARPS = 1
_NUM_STAGES = 2
# Launches of at least _MANY_PROGRAMS_PER_SM programs per SM take tiles of 32 tokens and one
# stage: eight resident one-warp programs per SM instead of six (CUDA-graph replay, H200, head 128
# bf16, `paged_split_sweep.py`: 8x16384 at whole partitions 156.3 -> 145.5 us, 1x16384 35.1 ->
# 32.5 us, 8x4096 55.0 -> 50.0 us). Fewer programs (one short sequence) are latency-bound each and
# keep the pipelined 64-token tiles (1x1024: 11.6 us vs 13.3 us; v2 1x16384 at whole partitions,
# 256 programs: 36.5 us vs 50.8 us).
_MANY_TILE_TOKENS = 32
_MANY_STAGES = 1
_MANY_PROGRAMS_PER_SM = 2
_NARROW_ROW_BYTES = 256
_WIDE_ROW_WARPS = 4
# Shared memory the pipeline stages of K and V tiles may use (fp32 head 256 takes one stage).
_STAGE_BYTES = 128 * 1024
# Device-aware split: programs wanted per SM, and the smallest split (tokens) to go down to.
_PROGRAMS_PER_SM = 4
_MIN_SPLIT = 64
_MAX_SPLIT = PARTITION_SIZE
# Whole-wave splits (v1, paged_decode): multiples of _MIN_SPLIT up to _MAX_WAVE_SPLIT tokens. A
# launch whose programs fill a fraction of their last wave leaves SMs idle for that wave (H200,
# 8x16384, 8 resident programs an SM: split 768 in 1.33 waves 176 us, 1024 in 0.97 waves 142 us);
# the cap bounds the time one long sequence of a ragged batch spends in a single program. A
# program's fixed cost (query load, statistics written, one more split to reduce) counts as
# _PROGRAM_COST_TOKENS tokens.
_MAX_WAVE_SPLIT = 2048
_PROGRAM_COST_TOKENS = 32
# The reference's constants, as Triton needs globals used in kernels to be constexpr.
_FLT_MAX = tl.constexpr(FLT_MAX)
_SOFTMAX_EPS = tl.constexpr(SOFTMAX_EPS)
# The block-sparse arguments of dense calls (never read: SPARSE is off).
_DENSE = BlockSparse(local_blocks=0, vert_stride=1, block_size=1, head_sliding_step=0, tp_rank=0)
# Splits reduced per step of the reduce kernel, at most (its fp32 tile holds at most
# _REDUCE_ELEMENTS outputs): one step for up to 64 splits of a head-128 row (245 registers a
# thread on sm_90, no spills), or 256 of a 32-dim chunk, so a small batch's reduction waits on one
# round of loads.
_REDUCE_TILE = 256
_REDUCE_ELEMENTS = 8192
# Launches of fewer (sequence, head) pairs than SMs split each head's reduction over head-dim
# chunks of at least _MIN_REDUCE_CHUNK dims (a 128-byte line of fp32 per split), so that more SMs
# pull the splits' outputs: one sequence of 32 heads reads 64 KiB a head at 128 splits.
_MIN_REDUCE_CHUNK = 32


@triton.jit
def _dequantize(raw, scale, FP8: tl.constexpr, COMPUTE: tl.constexpr):
    """Cache elements in the query dtype ``COMPUTE``: fp8 bytes decoded, scaled, rounded (vLLM's ``scaled_convert``)."""
    if FP8 == 1:
        return (raw.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale).to(COMPUTE)
    elif FP8 == 2:
        return (raw.to(tl.float8e5, bitcast=True).to(tl.float32) * scale).to(COMPUTE)
    else:
        return raw


@triton.jit
def _operand(x, HALF_DOT: tl.constexpr, COMPUTE: tl.constexpr):
    """A product operand: the query dtype on tensor cores (GPU, fp16/bf16), else fp32."""
    if HALF_DOT:
        return x.to(COMPUTE)
    else:
        return x.to(tl.float32)


@triton.jit
def _logits(q, k, scale, USE_DOT: tl.constexpr, HALF_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled logits, fp32 ``[GROUP_PAD, TILE]``, of ``q [GROUP_PAD, HEAD_PAD]`` and ``k [HEAD_PAD, TILE]``.

    Both hold query-dtype values (fp8 caches are rounded to it), so their products are exact in
    fp32: the half-precision tensor-core product (fp32 accumulation) equals the fp32 one up to the
    order of the sum. fp32 inputs use ``PRECISION`` (tf32x3, about fp32 accuracy).
    """
    if USE_DOT:
        if HALF_DOT:
            return tl.dot(q, k) * scale
        else:
            return tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision=PRECISION) * scale
    else:
        return tl.sum(q.to(tl.float32)[:, :, None] * k.to(tl.float32)[None, :, :], axis=1) * scale


@triton.jit
def _weighted_values(p, v, USE_DOT: tl.constexpr, HALF_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """``p @ v``, fp32 ``[GROUP_PAD, HEAD_PAD]``, of fp32 ``p [GROUP_PAD, TILE]`` and ``v [TILE, HEAD_PAD]``.

    On half-precision tensor cores ``p`` is rounded to the query dtype first, as vLLM's kernel does.
    """
    if USE_DOT:
        if HALF_DOT:
            return tl.dot(p.to(v.dtype), v)
        else:
            return tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
    else:
        return tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)


@triton.jit
def _block_ids(table, tile_start, end, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr):
    """The cache block of each token of the tile from ``tile_start`` (0 from ``end`` on), int32 ``[TILE]``.

    Loaded a tile ahead of its use, so that a tile's K/V loads do not wait on its block ids (with
    one pipeline stage nothing else overlaps that round trip).
    """
    t = tl.arange(0, TILE)
    # tile_start is a multiple of BLOCK_SIZE: token t is slot t % BLOCK_SIZE of its block.
    return tl.load(table + tile_start // BLOCK_SIZE + t // BLOCK_SIZE, mask=tile_start + t < end, other=0)


@triton.jit
def _tile(
    m, s, acc, q, tile_start, end, seq_len, block, k_base, v_base, k_stride_block, v_stride_block, d_mask,
    ks, vs, scale, slopes, query_block, offset, sparse_local_blocks, sparse_vert_stride, sparse_block_size,
    COMPUTE: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr, X: tl.constexpr,
    FP8: tl.constexpr, HAS_ALIBI: tl.constexpr, SPARSE: tl.constexpr, USE_DOT: tl.constexpr,
    HALF_DOT: tl.constexpr, PRECISION: tl.constexpr, MASKED: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the ``TILE`` tokens from ``tile_start``: the new ``(m, s, acc)``.

    K (as ``[TILE, HEAD_PAD // X, X]``, then viewed as ``[HEAD_PAD, TILE]``) and V
    ``[TILE, HEAD_PAD]`` are gathered through the per-token block ids ``block`` (see
    :func:`_block_ids`), hinted constant over each block's slots so that the loads stay vectorised
    and cover whole cache lines (``X`` head elements of a key slot, ``BLOCK_SIZE`` slots of a value
    row are contiguous). ``MASKED`` tiles may run past ``end``: slots there may hold NaN and are
    loaded as 0.
    """
    t = tl.arange(0, TILE)
    d = tl.arange(0, HEAD_PAD)
    tok = tile_start + t
    slot = t % BLOCK_SIZE
    if MASKED:
        valid = tok < end
    block = tl.max_constancy(block.to(tl.int64), [BLOCK_SIZE])
    v_ptrs = v_base + (block * v_stride_block + slot)[:, None] + (d * BLOCK_SIZE)[None, :]
    # K as [TILE, HEAD_PAD // X, X]: Triton puts a warp's threads along the first non-contiguous
    # axis, the tokens, whose X-element pieces of one head chunk are contiguous within a block, so
    # a warp's load covers whole 128-byte lines. (As [HEAD_PAD, TILE] a warp read one 32-byte
    # sector of 16 lines: L2 tag lookups capped the kernel at ~63 % of HBM bandwidth.)
    c = tl.arange(0, HEAD_PAD // X)
    x = tl.arange(0, X)
    k_ptrs = k_base + (block * k_stride_block + slot * X)[:, None, None] + (c * (BLOCK_SIZE * X))[None, :, None]
    k_ptrs += x[None, None, :]
    k_dims = (c[None, :, None] * X + x[None, None, :]) < HEAD_SIZE
    if MASKED:
        k_raw = tl.load(k_ptrs, mask=k_dims & valid[:, None, None], other=0.0)
    else:
        k_raw = tl.load(k_ptrs, mask=k_dims, other=0.0)
    k_raw = tl.trans(tl.reshape(k_raw, [TILE, HEAD_PAD]))
    if MASKED:
        v_raw = tl.load(v_ptrs, mask=valid[:, None] & d_mask[None, :], other=0.0)
    else:
        v_raw = tl.load(v_ptrs, mask=d_mask[None, :], other=0.0)

    k = _dequantize(k_raw, ks, FP8, COMPUTE)
    logits = _logits(q, _operand(k, HALF_DOT, COMPUTE), scale, USE_DOT, HALF_DOT, PRECISION)
    if HAS_ALIBI:
        logits += slopes[:, None] * (tok - seq_len + 1).to(tl.float32)[None, :]
    if SPARSE:
        sparse_block = (tok // BLOCK_SIZE) * BLOCK_SIZE // sparse_block_size
        remote = (sparse_block[None, :] + offset[:, None]) % sparse_vert_stride == 0
        local = sparse_block > query_block - sparse_local_blocks
        attended = remote | local[None, :]
        # As vLLM: skipped tokens take the logit -FLT_MAX (they count in the max and exp sum).
        logits = tl.where(attended, logits, -_FLT_MAX)
    if MASKED:
        logits = tl.where(valid[None, :], logits, float("-inf"))

    m_new = tl.maximum(m, tl.max(logits, axis=1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(logits - m_new[:, None])
    s = s * alpha + tl.sum(p, axis=1)
    if SPARSE:
        p = tl.where(attended, p, 0.0)
    v = _dequantize(v_raw, vs, FP8, COMPUTE)
    acc = acc * alpha[:, None] + _weighted_values(p, _operand(v, HALF_DOT, COMPUTE), USE_DOT, HALF_DOT, PRECISION)
    return m_new, s, acc


@triton.jit
def _partition_kernel(
    query,  # [num_seqs, num_heads, HEAD_SIZE], heads and head dim contiguous
    key_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE // X, BLOCK_SIZE, X]
    value_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE, BLOCK_SIZE]
    block_tables,  # int32 [num_seqs, table_columns], rows table_stride apart
    seq_lens,  # int32 [num_seqs]
    alibi_slopes,  # fp32 [num_heads] (read only with HAS_ALIBI)
    k_scale,  # fp32 [1] (read only for fp8)
    v_scale,  # fp32 [1] (read only for fp8)
    max_logits,  # fp32 [num_seqs, num_heads, num_splits]
    exp_sums,  # fp32 [num_seqs, num_heads, num_splits], from exp_sums_offset
    split_out,  # fp32 [num_seqs, num_heads, num_splits, HEAD_SIZE], from split_out_offset
    tmp_out,  # query dtype, as split_out (written only with WRITE_TMP)
    out,  # [num_seqs, num_heads, HEAD_SIZE], contiguous (written only with DIRECT)
    lse,  # fp32 [num_heads, num_seqs] (written only with DIRECT and WRITE_LSE)
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
    split_size,
    sparse_local_blocks,
    sparse_vert_stride,
    sparse_block_size,
    sparse_head_sliding_step,
    sparse_tp_rank,
    exp_sums_offset,
    split_out_offset,
    table_columns,
    HEADS_PER_KV: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    X: tl.constexpr,
    TILE: tl.constexpr,
    FP8: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
    SPARSE: tl.constexpr,
    WRITE_TMP: tl.constexpr,
    DIRECT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    USE_DOT: tl.constexpr,
    HALF_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The softmax statistics and normalised output of one split for one GQA group of heads."""
    # The kv heads of one (sequence, split) run side by side: they read neighbouring 4 KiB runs of
    # the same cache blocks.
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    start = split * split_size
    table = block_tables + seq.to(tl.int64) * table_stride
    # The first tile's block ids load alongside the length, masked by the table's width rather than
    # the length (one round trip less before the first K/V loads). Ids past the sequence's end may
    # hold anything: only the loads of masked tiles, masked by the length, use them.
    block = _block_ids(table, start, table_columns * BLOCK_SIZE, BLOCK_SIZE, TILE)
    # With one split, empty sequences still write their zero rows (and -inf lse).
    if not DIRECT:  # noqa: SIM102 - a constexpr test, kept apart from the runtime one
        if start >= seq_len:
            return
    end = tl.minimum(start + split_size, seq_len)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    g_mask = g < HEADS_PER_KV
    d_mask = d < HEAD_SIZE
    heads = kv_head * HEADS_PER_KV + g
    q_ptrs = query + seq.to(tl.int64) * query_stride + heads[:, None] * HEAD_SIZE + d[None, :]
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    slopes = 0.0
    if HAS_ALIBI:
        slopes = tl.load(alibi_slopes + heads, mask=g_mask, other=0.0)
    ks = 1.0
    vs = 1.0
    if FP8 != 0:
        ks = tl.load(k_scale)
        vs = tl.load(v_scale)
    query_block = 0
    offset = 0
    if SPARSE:
        query_block = (seq_len - 1) // sparse_block_size
        step = sparse_head_sliding_step
        offset = tl.where(
            step >= 0,
            (sparse_tp_rank * num_heads + heads) * step + 1,
            (sparse_tp_rank * num_kv_heads + kv_head) * -step + 1,
        )
    # Tiles are whole cache blocks, and every split starts at a block boundary (split_size is a
    # multiple of BLOCK_SIZE, checked on the host).
    tl.static_assert(TILE % BLOCK_SIZE == 0)
    tl.static_assert(HEAD_SIZE % X == 0)
    k_base = key_cache + kv_head * k_stride_head
    v_base = value_cache + kv_head * v_stride_head
    compute = query.dtype.element_ty

    m = tl.full([GROUP_PAD], -_FLT_MAX, tl.float32)
    s = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    # Full tiles load without per-slot masks; the last, partial tile of the split is masked.
    full_end = start + (end - start) // TILE * TILE
    for tile_start in range(start, full_end, TILE):
        following = _block_ids(table, tile_start + TILE, end, BLOCK_SIZE, TILE)
        m, s, acc = _tile(
            m, s, acc, q, tile_start, end, seq_len, block, k_base, v_base, k_stride_block, v_stride_block, d_mask,
            ks, vs, scale, slopes, query_block, offset, sparse_local_blocks, sparse_vert_stride, sparse_block_size,
            compute, BLOCK_SIZE, TILE, HEAD_SIZE, HEAD_PAD, X, FP8, HAS_ALIBI, SPARSE, USE_DOT, HALF_DOT, PRECISION,
            False,
        )  # fmt: skip
        block = following
    if full_end < end:
        m, s, acc = _tile(
            m, s, acc, q, full_end, end, seq_len, block, k_base, v_base, k_stride_block, v_stride_block, d_mask,
            ks, vs, scale, slopes, query_block, offset, sparse_local_blocks, sparse_vert_stride, sparse_block_size,
            compute, BLOCK_SIZE, TILE, HEAD_SIZE, HEAD_PAD, X, FP8, HAS_ALIBI, SPARSE, USE_DOT, HALF_DOT, PRECISION,
            True,
        )  # fmt: skip

    result = acc / (s + _SOFTMAX_EPS)[:, None]
    rows = (seq * num_heads + heads).to(tl.int64) * num_splits + split
    out_offsets = rows[:, None] * HEAD_SIZE + d[None, :]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:
        # The only split: its output is the result, as in the reduction's one-split case.
        tl.store(out + out_offsets, result.to(out.dtype.element_ty), mask=out_mask)
        if WRITE_LSE:
            # log(0) = -inf for an empty sequence.
            tl.store(lse + heads * tl.num_programs(1) + seq, m + tl.log(s), mask=g_mask)
    else:
        tl.store(max_logits + rows, m, mask=g_mask)
        tl.store(exp_sums + exp_sums_offset + rows, s, mask=g_mask)
        tl.store(split_out + split_out_offset + out_offsets, result, mask=out_mask)
        if WRITE_TMP:
            tl.store(tmp_out + out_offsets, result.to(tmp_out.dtype.element_ty), mask=out_mask)


@triton.jit
def _fold(
    running, total_sum, acc, m, s, o, row, first, count, d, d_mask, num_partitions, part_max, part_sum, part_out,
    write_stats, HEAD_SIZE: tl.constexpr, HEAD_CHUNK: tl.constexpr, REDUCE_TILE: tl.constexpr, SUB: tl.constexpr,
    WRITE_PARTITIONS: tl.constexpr,
):  # fmt: skip
    """One step of :func:`_reduce_kernel`: splits ``first + [0, REDUCE_TILE)`` (unused ones masked:
    max logit ``-FLT_MAX``, exp sum and output 0) folded into the running ``(max, sum, acc)``; v2's
    partition maxima and sums are written where ``write_stats``."""
    # One pass: the running max rescales what was summed so far (a single step, the usual case,
    # is exactly vLLM's max-first reduction).
    tile_max = tl.max(m, axis=0)
    new_max = tl.maximum(running, tile_max)
    shrink = tl.exp(running - new_max)
    weight = s * tl.exp(m - new_max)
    total_sum = total_sum * shrink + tl.sum(weight, axis=0)
    acc = acc * shrink + tl.sum(weight[:, None] * o, axis=0)
    if WRITE_PARTITIONS:
        # The step holds PARTS whole partitions of SUB splits each. A split's output is its
        # acc / (s + eps): acc rescaled to the partition's max is o * (s + eps).
        PARTS: tl.constexpr = REDUCE_TILE // SUB
        m_parts = tl.reshape(m, [PARTS, SUB])
        s_parts = tl.reshape(s, [PARTS, SUB])
        o_parts = tl.reshape(o, [PARTS, SUB, HEAD_CHUNK])
        parts_max = tl.max(m_parts, axis=1)
        rescale = tl.exp(m_parts - parts_max[:, None])
        parts_sum = tl.sum(s_parts * rescale, axis=1)
        weighted = ((s_parts + _SOFTMAX_EPS) * rescale)[:, :, None] * o_parts
        parts_out = tl.sum(weighted, axis=1) / (parts_sum + _SOFTMAX_EPS)[:, None]
        index = first // SUB + tl.arange(0, PARTS)
        # Partitions with no used split stay untouched, as vLLM's.
        written = index < tl.cdiv(count, SUB)
        slots = row * num_partitions + index
        # (A compare, not written & write_stats: the interpreter rejects a tensor & scalar mask.)
        stats_written = index < tl.where(write_stats, tl.cdiv(count, SUB), 0)
        tl.store(part_max + slots, parts_max, mask=stats_written)
        tl.store(part_sum + slots, parts_sum, mask=stats_written)
        out_ptrs = part_out + slots[:, None] * HEAD_SIZE + d[None, :]
        tl.store(out_ptrs, parts_out.to(part_out.dtype.element_ty), mask=written[:, None] & d_mask[None, :])
    return new_max, total_sum, acc


@triton.jit
def _split_tile(max_logits, exp_sums, split_out, base, part, used, d, d_mask, HEAD_SIZE: tl.constexpr):
    """Max logits, exp sums and fp32 outputs ``[REDUCE_TILE, HEAD_CHUNK]`` of the splits ``part``
    (``-FLT_MAX``, 0 and 0 where not ``used``)."""
    m = tl.load(max_logits + base + part, mask=used, other=-_FLT_MAX)
    s = tl.load(exp_sums + base + part, mask=used, other=0.0)
    o_ptrs = split_out + (base + part)[:, None] * HEAD_SIZE + d[None, :]
    o = tl.load(o_ptrs, mask=used[:, None] & d_mask[None, :], other=0.0)
    return m, s, o


@triton.jit
def _reduce_kernel(
    out,  # [num_seqs, num_heads, HEAD_SIZE], contiguous
    lse,  # fp32 [num_heads, num_seqs] (written only with WRITE_LSE)
    max_logits,  # fp32 [num_seqs, num_heads, num_splits]
    exp_sums,  # fp32 [num_seqs, num_heads, num_splits], from exp_sums_offset
    split_out,  # fp32 [num_seqs, num_heads, num_splits, HEAD_SIZE], from split_out_offset
    part_max,  # fp32 [num_seqs, num_heads, num_partitions] (written only with WRITE_PARTITIONS)
    part_sum,  # fp32 [num_seqs, num_heads, num_partitions] (written only with WRITE_PARTITIONS)
    part_out,  # [num_seqs, num_heads, num_partitions, HEAD_SIZE] (written only with WRITE_PARTITIONS)
    seq_lens,  # int32 [num_seqs]
    num_seqs,
    num_heads,
    num_splits,
    num_partitions,
    split_size,
    exp_sums_offset,
    split_out_offset,
    HEAD_SIZE: tl.constexpr,
    HEAD_CHUNK: tl.constexpr,
    REDUCE_TILE: tl.constexpr,
    SUB: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    WRITE_PARTITIONS: tl.constexpr,
):
    """vLLM's v2 reduction of one (sequence, head)'s splits, reading only the splits its length uses.

    Program ``(seq, head, chunk)`` reduces head dims ``[chunk * HEAD_CHUNK, (chunk + 1) * HEAD_CHUNK)``
    (a few heads spread over more SMs); the first chunk also writes the statistics. With
    ``WRITE_PARTITIONS`` the splits are sub-splits of v2's partitions, ``SUB`` of them per
    partition, and each step of ``REDUCE_TILE`` splits (whole partitions) also folds them into
    their partitions' statistics (max logit, exp sum, output / (exp sum + 1e-6)), as the partition
    kernel writes them when a split is a partition.
    """
    seq = tl.program_id(0)
    head = tl.program_id(1)
    chunk = tl.program_id(2)
    exp_sums += exp_sums_offset
    split_out += split_out_offset
    row = (seq * num_heads + head).to(tl.int64)
    base = row * num_splits
    p = tl.arange(0, REDUCE_TILE)
    d = chunk * HEAD_CHUNK + tl.arange(0, HEAD_CHUNK)
    d_mask = d < HEAD_SIZE
    write_stats = chunk == 0
    # The first step's splits are loaded before the sequence's length arrives (the scratch holds
    # every split; those past the length hold anything and are masked after).
    seq_len = tl.load(seq_lens + seq)
    m, s, o = _split_tile(max_logits, exp_sums, split_out, base, p, p < num_splits, d, d_mask, HEAD_SIZE)
    # At most num_splits even for a length past the block table (unchecked on the GPU).
    count = tl.minimum(tl.cdiv(seq_len, split_size), num_splits)
    used = p < count
    m = tl.where(used, m, -_FLT_MAX)
    s = tl.where(used, s, 0.0)
    o = tl.where(used[:, None], o, 0.0)
    running = tl.full((), -_FLT_MAX, tl.float32)
    total_sum = tl.zeros((), tl.float32)
    acc = tl.zeros([HEAD_CHUNK], tl.float32)
    running, total_sum, acc = _fold(
        running, total_sum, acc, m, s, o, row, 0, count, d, d_mask, num_partitions, part_max, part_sum, part_out,
        write_stats, HEAD_SIZE, HEAD_CHUNK, REDUCE_TILE, SUB, WRITE_PARTITIONS,
    )  # fmt: skip
    for first in range(REDUCE_TILE, count, REDUCE_TILE):
        part = first + p
        m, s, o = _split_tile(max_logits, exp_sums, split_out, base, part, part < count, d, d_mask, HEAD_SIZE)
        running, total_sum, acc = _fold(
            running, total_sum, acc, m, s, o, row, first, count, d, d_mask, num_partitions, part_max, part_sum,
            part_out, write_stats, HEAD_SIZE, HEAD_CHUNK, REDUCE_TILE, SUB, WRITE_PARTITIONS,
        )  # fmt: skip
    merged = acc / (total_sum + _SOFTMAX_EPS)
    # A one-split sequence takes its split's output as is (zeros for an empty sequence).
    single = tl.load(split_out + base * HEAD_SIZE + d, mask=d < HEAD_SIZE * tl.minimum(count, 1), other=0.0)
    result = tl.where(count <= 1, single, merged)
    tl.store(out + row * HEAD_SIZE + d, result.to(out.dtype.element_ty), mask=d_mask)
    if WRITE_LSE:
        # log(0) = -inf for an empty sequence.
        tl.store(lse + head * num_seqs + seq, running + tl.log(total_sum), mask=write_stats)


_partition_launcher = Launcher(_partition_kernel)
_reduce_launcher = Launcher(_reduce_kernel)


@functools.cache
def _config(
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    interpreted: bool,
    many: bool,
) -> dict[str, object]:
    """The partition kernel's shape constexprs and launch options.

    GQA groups run their two products on tensor cores (``tl.dot`` needs 16 rows: the group is
    padded), in the query dtype for fp16/bf16 on the GPU (the CPU interpreter's half-precision
    ``tl.dot`` is unreliable, so there they run in fp32); a single head per kv head uses broadcast
    products. Tiles hold ``_TILE_TOKENS`` tokens (``_MANY_TILE_TOKENS`` with ``_MANY_STAGES`` for
    a launch of ``many`` programs, see ``_MANY_PROGRAMS_PER_SM``), at least one whole cache block. Rows wider
    than ``_NARROW_ROW_BYTES`` get ``_WIDE_ROW_WARPS`` warps, and a single stage when two stages
    of K and V tiles would pass ``_STAGE_BYTES`` of shared memory.
    """
    heads_per_kv = num_heads // num_kv_heads
    use_dot = heads_per_kv > 1
    head_pad = next_power_of_2(head_size)
    tile = max(block_size, _MANY_TILE_TOKENS if many else _TILE_TOKENS)
    row_bytes = head_pad * dtype.itemsize
    wanted_stages = _MANY_STAGES if many else _NUM_STAGES
    stages = wanted_stages if wanted_stages * 2 * tile * row_bytes <= _STAGE_BYTES else 1
    return {
        "HEADS_PER_KV": heads_per_kv,
        "GROUP_PAD": max(16, next_power_of_2(heads_per_kv)) if use_dot else 1,
        "HEAD_SIZE": head_size,
        "HEAD_PAD": head_pad,
        "TILE": tile,
        "USE_DOT": use_dot,
        "HALF_DOT": use_dot and dtype != torch.float32 and not interpreted,
        # fp32 values take tf32x3 (about fp32 accuracy).
        "PRECISION": "tf32x3",
        "num_warps": _NUM_WARPS if row_bytes <= _NARROW_ROW_BYTES else _WIDE_ROW_WARPS,
        "num_stages": stages,
    }


def _auto_split(num_seqs: int, num_kv_heads: int, capacity: int, device: torch.device) -> int:
    """Tokens per program: the largest of ``_MAX_SPLIT, /2, /4, ...`` (down to ``_MIN_SPLIT``)
    that still gives every SM ``_PROGRAMS_PER_SM`` programs, so that a few sequences fill the GPU.

    ``capacity`` (the block table's tokens) stands for the context length, which only the device knows.
    """
    if device.type != "cuda":
        return PARTITION_SIZE
    wanted = _PROGRAMS_PER_SM * sm_count(device)
    split = _MAX_SPLIT
    while split > _MIN_SPLIT and num_seqs * num_kv_heads * cdiv(capacity, split) < wanted:
        split //= 2
    return split


def _check_split(split: int | None, block_size: int, partitions: bool) -> None:
    """A caller's split must hold whole cache blocks (and, for v2, divide a partition)."""
    if split is None:
        return
    if split <= 0 or split % block_size or (partitions and PARTITION_SIZE % split):
        within = f" dividing {PARTITION_SIZE}" if partitions else ""
        raise ValueError(f"split: expected a positive multiple of the block size {block_size}{within}, got {split}")


def _many_programs(programs: int, device: torch.device) -> bool:
    """Whether a launch of ``programs`` partition programs has ``_MANY_PROGRAMS_PER_SM`` per SM."""
    return programs >= _MANY_PROGRAMS_PER_SM * sm_count(device)


def _reduce_width(head_chunk: int, partitions: bool) -> int:
    """Splits one step of :func:`_reduce_kernel` folds, at most (a power of two), for chunks of
    ``head_chunk`` head dims (a power of two)."""
    # Partition statistics hold a second weighted copy of the tile: half the width (sm_90, head 128:
    # 64 splits a step spill there, 32 take 194 registers).
    elements = _REDUCE_ELEMENTS // 2 if partitions else _REDUCE_ELEMENTS
    return min(_REDUCE_TILE, max(1, elements // head_chunk))


def _reduce_chunks(layout: _Layout) -> int:
    """Head-dim chunks of each (sequence, head)'s reduction (see ``_MIN_REDUCE_CHUNK``)."""
    pairs = layout.num_seqs * layout.num_heads
    chunks = 1
    head_pad = next_power_of_2(layout.head_size)
    while pairs * chunks < sm_count(layout.device) and head_pad // (2 * chunks) >= _MIN_REDUCE_CHUNK:
        chunks *= 2
    return chunks


def _v2_split(num_seqs: int, num_kv_heads: int, capacity: int, head_size: int, device: torch.device) -> int:
    """v2's default split: :func:`_auto_split`'s, but no finer than one reduction step can fold.

    Sub-splits that take the reduction several steps cost more than the idle SMs they fill (H200,
    graph replay: 1x16384 in 128-token sub-splits 51.0 us, in whole partitions 36.5 us; 1x4096 in
    64-token ones 21.7 us, 128-token ones 19.3 us).
    """
    split = min(PARTITION_SIZE, _auto_split(num_seqs, num_kv_heads, capacity, device))
    folded = next_power_of_2(cdiv(capacity, _reduce_width(next_power_of_2(head_size), partitions=True)))
    return max(split, min(PARTITION_SIZE, folded))


def _wave_split(pairs: int, capacity: int, slots: int) -> int:
    """Tokens per program of a launch over ``pairs`` (sequence, kv head) pairs when ``slots``
    programs run at once: the multiple of ``_MIN_SPLIT`` up to ``_MAX_WAVE_SPLIT`` that minimises
    waves x (split + ``_PROGRAM_COST_TOKENS``), the finish time of the last wave; ties go to the
    larger split (fewer programs).
    """
    largest = min(_MAX_WAVE_SPLIT, cdiv(capacity, _MIN_SPLIT) * _MIN_SPLIT)
    best, best_cost = _MIN_SPLIT, None
    for split in range(_MIN_SPLIT, largest + 1, _MIN_SPLIT):
        waves = cdiv(pairs * cdiv(capacity, split), slots)
        cost = waves * (split + _PROGRAM_COST_TOKENS)
        if best_cost is None or cost <= best_cost:
            best, best_cost = split, cost
    return best


class _Layout(NamedTuple):
    """The metadata of a call's inputs that its launches depend on (the key of its plan)."""

    num_seqs: int
    num_heads: int
    head_size: int
    num_kv_heads: int
    block_size: int
    x: int
    table_columns: int
    # Query sequence, block-table row, key block, key head, value block, value head.
    strides: tuple[int, ...]
    dtype: torch.dtype
    cache_dtype: torch.dtype
    kv_cache_dtype: str
    has_alibi: bool
    sparse: BlockSparse | None
    device: torch.device
    interpreted: bool

    @property
    def capacity(self) -> int:
        """Tokens the block table holds (it stands for the context length, which only the device knows)."""
        return self.table_columns * self.block_size


def _layout(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    sparse: BlockSparse | None,
) -> _Layout:
    num_seqs, num_heads, head_size = query.shape
    _, num_kv_heads, _, block_size, x = key_cache.shape
    k_stride, v_stride = key_cache.stride(), value_cache.stride()
    strides = (query.stride(0), block_tables.stride(0), k_stride[0], k_stride[1], v_stride[0], v_stride[1])
    return _Layout(
        num_seqs, num_heads, head_size, num_kv_heads, block_size, x, block_tables.shape[1], strides, query.dtype,
        key_cache.dtype, kv_cache_dtype, alibi_slopes is not None, sparse, query.device, triton_interpreted(),
    )  # fmt: skip


class _Tensors(NamedTuple):
    """The input tensors every partition launch of a call reads (dtypes in their place for a warm-up;
    a plain tuple of their addresses on a bound call's direct path)."""

    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    alibi_slopes: torch.Tensor | None
    k_scale: torch.Tensor
    v_scale: torch.Tensor


class _Step(NamedTuple):
    """One launch of a plan, all but its pointers (and the partition kernel's scale)."""

    key: tuple | None
    grid: tuple[int, ...]
    scalars: tuple
    constexprs: dict[str, object]


class _Plan(NamedTuple):
    """A call's launches: the partition kernel, then the reduction unless the partition kernel
    writes ``out`` itself (``reduce is None``: one split)."""

    split: int
    num_splits: int
    partition: _Step
    reduce: _Step | None
    # fp32 elements of split statistics the call allocates (see _stats_offsets); 0 for none.
    scratch: int


def _launch_key(layout: _Layout, constexprs: dict[str, object], ints: tuple) -> tuple | None:
    """What a launch specialises on besides its pointers (see :class:`Launcher`): ``None`` off the GPU."""
    return None if layout.interpreted else (tuple(constexprs.items()), ints)


def _stats_offsets(layout: _Layout, num_splits: int, whole_partitions: bool) -> tuple[int, int]:
    """Where the exp sums and the fp32 outputs start (elements) from the pointers the kernels get for them.

    The split statistics live in one scratch buffer (see :func:`_scratch`), passed for all three;
    v2's whole partitions write their max logits and exp sums to the caller's tensors instead.
    """
    rows = layout.num_seqs * layout.num_heads * num_splits
    return (0 if whole_partitions else rows), 2 * rows


def _partition_step(
    layout: _Layout, split: int, num_splits: int, many: bool, direct: bool, write_tmp: bool, write_lse: bool
) -> _Step:
    """:func:`_partition_kernel` over (kv head, sequence, split): into split statistics, or, ``direct``
    (one split), straight into ``out`` (and the lse with ``write_lse``); v2's whole partitions
    (``write_tmp``) into the caller's ``max_logits``/``exp_sums``, their outputs also into ``tmp_out``."""
    pattern = layout.sparse or _DENSE
    ints = (
        *layout.strides, layout.num_heads, layout.num_kv_heads, num_splits, split, pattern.local_blocks,
        pattern.vert_stride, pattern.block_size, pattern.head_sliding_step, pattern.tp_rank,
        *_stats_offsets(layout, num_splits, write_tmp), layout.table_columns,
    )  # fmt: skip
    config = _config(
        layout.num_heads, layout.num_kv_heads, layout.head_size, layout.block_size, layout.dtype, layout.interpreted,
        many,
    )  # fmt: skip
    constexprs = dict(
        BLOCK_SIZE=layout.block_size, X=layout.x, FP8=FP8_KINDS[layout.kv_cache_dtype], HAS_ALIBI=layout.has_alibi,
        SPARSE=layout.sparse is not None, WRITE_TMP=write_tmp, DIRECT=direct, WRITE_LSE=write_lse, **config,
    )  # fmt: skip
    grid = (layout.num_kv_heads, layout.num_seqs, num_splits)
    return _Step(_launch_key(layout, constexprs, ints), grid, ints, constexprs)


def _partition_pointers(
    tensors: _Tensors,
    fp8: bool,
    stats: tuple | None,
    tmp_out: torch.Tensor | None,
    out: torch.Tensor | None,
    lse: torch.Tensor | None,
) -> tuple:
    """:func:`_partition_kernel`'s pointers: into ``stats`` (max logits, exp sums, fp32 outputs; see
    :func:`_stats_offsets`), or into ``out`` (and ``lse``) when ``stats`` is ``None``. Those a launch
    never reads are ``None`` (no launcher checks, no specialisation)."""
    direct = stats is None
    max_logits, exp_sums, split_out = stats or (None, None, None)
    query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale, v_scale = tensors
    return (
        query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale if fp8 else None,
        v_scale if fp8 else None, max_logits, exp_sums, split_out, tmp_out, out if direct else None,
        lse if direct else None,
    )  # fmt: skip


def _reduce_step(
    layout: _Layout, split: int, num_splits: int, num_partitions: int, with_lse: bool, whole_partitions: bool = False
) -> _Step:
    """:func:`_reduce_kernel` over (sequence, head) for ``num_splits`` splits of ``split`` tokens; with
    ``num_partitions`` > 0 (v2's sub-splits) it also writes the statistics of ``PARTITION_SIZE``-token
    partitions; ``whole_partitions``: the splits are v2's partitions (statistics in the caller's tensors)."""
    partitions = num_partitions > 0
    sub = PARTITION_SIZE // split if partitions else 1
    chunks = _reduce_chunks(layout)
    head_chunk = next_power_of_2(layout.head_size) // chunks
    # Powers of two: a step always holds whole partitions.
    reduce_tile = max(sub, min(_reduce_width(head_chunk, partitions), next_power_of_2(num_splits)))
    constexprs = dict(
        HEAD_SIZE=layout.head_size, HEAD_CHUNK=head_chunk, REDUCE_TILE=reduce_tile, SUB=sub, WRITE_LSE=with_lse,
        WRITE_PARTITIONS=partitions,
    )  # fmt: skip
    ints = (
        layout.num_seqs, layout.num_heads, num_splits, num_partitions, split,
        *_stats_offsets(layout, num_splits, whole_partitions),
    )  # fmt: skip
    grid = (layout.num_seqs, layout.num_heads, chunks)
    return _Step(_launch_key(layout, constexprs, ints), grid, ints, constexprs)


# Resident programs per kernel configuration (a layout without its sizes and strides).
_residents: dict[_Layout, int] = {}


def _resident_programs(layout: _Layout) -> int:
    """Partition programs of a many-program launch into split statistics that one SM runs at once."""
    key = layout._replace(num_seqs=0, table_columns=0, strides=(), sparse=layout.sparse and _DENSE)
    if key not in _residents:
        step = _partition_step(layout, _MAX_SPLIT, 2, True, direct=False, write_tmp=False, write_lse=False)
        fp32 = torch.float32
        dtypes = _Tensors(
            layout.dtype, layout.cache_dtype, layout.cache_dtype, torch.int32, torch.int32,
            fp32 if layout.has_alibi else None, fp32, fp32,
        )  # fmt: skip
        fp8 = FP8_KINDS[layout.kv_cache_dtype] != 0
        pointers = _partition_pointers(dtypes, fp8, (fp32,) * 3, None, None, None)
        _residents[key] = _partition_launcher.resident((*pointers, 1.0, *step.scalars), step.constexprs, layout.device)
    return _residents[key]


@functools.lru_cache(maxsize=MAX_ENTRIES)
def _v1_plan(layout: _Layout, split: int | None, with_lse: bool) -> _Plan:
    """v1 and ``paged_decode``: as many splits as the block table can hold; one launch if that is one.

    The default split on the GPU: :func:`_auto_split`'s, then, for a launch of many programs,
    :func:`_wave_split`'s for the compiled kernel's resident programs.
    """
    pairs = layout.num_seqs * layout.num_kv_heads
    chosen = split or _auto_split(layout.num_seqs, layout.num_kv_heads, layout.capacity, layout.device)
    many = _many_programs(pairs * cdiv(layout.capacity, chosen), layout.device)
    if split is None and many and layout.device.type == "cuda":
        chosen = _wave_split(pairs, layout.capacity, _resident_programs(layout) * sm_count(layout.device))
    num_splits = cdiv(layout.capacity, chosen)
    if num_splits <= 1:
        return _Plan(chosen, 1, _partition_step(layout, chosen, 1, many, True, False, with_lse), None, 0)
    partition = _partition_step(layout, chosen, num_splits, many, False, False, False)
    reduce = _reduce_step(layout, chosen, num_splits, 0, with_lse)
    return _Plan(chosen, num_splits, partition, reduce, _scratch_size(layout, num_splits))


@functools.lru_cache(maxsize=MAX_ENTRIES)
def _v2_plan(layout: _Layout, split: int | None, num_partitions: int) -> _Plan:
    """v2: vLLM's partitions, computed whole (the partition kernel writes their statistics) or, by
    default where few sequences would leave SMs idle (:func:`_v2_split`), as sub-splits that the
    reduction folds into them."""
    split = split or _v2_split(layout.num_seqs, layout.num_kv_heads, layout.capacity, layout.head_size, layout.device)
    num_splits = num_partitions * (PARTITION_SIZE // split)
    whole = split == PARTITION_SIZE
    many = _many_programs(layout.num_seqs * layout.num_kv_heads * num_splits, layout.device)
    partition = _partition_step(layout, split, num_splits, many, False, whole, False)
    reduce = _reduce_step(layout, split, num_splits, 0 if whole else num_partitions, False, whole)
    return _Plan(split, num_splits, partition, reduce, _scratch_size(layout, num_splits))


def _clear_plans() -> None:
    """Forget every plan and resident-program count (after a change of the launch constants), and the
    bound implementations of memoised calls, which keep their plans' launches."""
    _v1_plan.cache_clear()
    _v2_plan.cache_clear()
    _residents.clear()
    for dispatcher in (_v1_dispatcher, _v2_dispatcher, _decode_dispatcher):
        dispatcher.clear()


def _scratch_size(layout: _Layout, num_splits: int) -> int:
    """fp32 elements of every split's max logit, exp sum and output, in this order (see
    :func:`_stats_offsets`): one allocation, carved in the kernels (slicing costs microseconds a call)."""
    rows = layout.num_seqs * layout.num_heads * num_splits
    return rows * (layout.head_size + 2)


def _scratch(plan: _Plan, device: torch.device) -> torch.Tensor:
    """A call's split statistics (see :func:`_scratch_size`)."""
    return torch.empty(plan.scratch, dtype=torch.float32, device=device)


def _v1_pointers(tensors: _Tensors, fp8: bool, out: object, lse: object, scratch: object) -> tuple[tuple, tuple | None]:
    """The pointers of v1's (and ``paged_decode``'s) launches: straight into ``out`` (and ``lse``) without
    ``scratch`` (one split, no reduction), else through the split statistics in ``scratch``. Tensors,
    or their addresses (a bound call's direct path), or dtypes (to find compiled launches)."""
    if scratch is None:
        return _partition_pointers(tensors, fp8, None, None, out, lse), None
    stats = (scratch,) * 3
    return _partition_pointers(tensors, fp8, stats, None, out, lse), (out, lse, *stats, None, None, None, tensors[4])


def _v2_pointers(
    tensors: _Tensors,
    fp8: bool,
    whole: bool,
    out: object,
    exp_sums: object,
    max_logits: object,
    tmp_out: object,
    scratch: object,
) -> tuple[tuple, tuple]:
    """The pointers of v2's launches (as :func:`_v1_pointers` takes them). ``whole`` partitions: the
    partition kernel writes their statistics and ``tmp_out``, the reduction only ``out``; sub-splits:
    the reduction folds their statistics (in ``scratch``) into the partitions'."""
    seq_lens = tensors[4]
    if whole:
        stats = (max_logits, exp_sums, scratch)
        partition = _partition_pointers(tensors, fp8, stats, tmp_out, out, None)
        return partition, (out, None, *stats, None, None, None, seq_lens)
    stats = (scratch,) * 3
    partition = _partition_pointers(tensors, fp8, stats, None, out, None)
    return partition, (out, None, *stats, max_logits, exp_sums, tmp_out, seq_lens)


def _launch(
    plan: _Plan, scale: float, partition_pointers: tuple, reduce_pointers: tuple | None, device: torch.device
) -> None:
    """Runs a plan's launches with this call's pointers."""
    step = plan.partition
    _partition_launcher.launch(
        step.key, step.grid, partition_pointers, (scale, *step.scalars), lambda: step.constexprs, device
    )
    if plan.reduce is not None:
        step = plan.reduce
        _reduce_launcher.launch(step.key, step.grid, reduce_pointers, step.scalars, lambda: step.constexprs, device)


def _attention(
    out: torch.Tensor,
    lse: torch.Tensor | None,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    sparse: BlockSparse | None,
    split: int | None,
) -> None:
    """v1 and ``paged_decode`` (see :func:`_v1_plan`)."""
    _check_split(split, key_cache.shape[3], partitions=False)
    if query.shape[0] == 0:
        return
    layout = _layout(query, key_cache, value_cache, block_tables, alibi_slopes, kv_cache_dtype, sparse)
    plan = _v1_plan(layout, split, lse is not None)
    tensors = _Tensors(query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale, v_scale)
    scratch = _scratch(plan, layout.device) if plan.scratch else None
    pointers = _v1_pointers(tensors, FP8_KINDS[kv_cache_dtype] != 0, out, lse, scratch)
    _launch(plan, scale, *pointers, layout.device)


class _Handles(NamedTuple):
    """A bound call's direct launches (see :class:`attnops._common.fastpath.Bound`) and what else they need."""

    index: int
    scratch: int
    # v2's whole partitions (see _v2_pointers).
    whole: bool
    partition: Callable[..., None]
    reduce: Callable[..., None] | None


def _handles(plan: _Plan, pointers: tuple[tuple, tuple | None], device: torch.device) -> _Handles | None:
    """``plan``'s launches with the (dtypes of) ``pointers`` all 16-byte aligned, once compiled."""
    step = plan.partition
    partition = _partition_launcher.direct(step.key, step.grid, pointers[0], step.scalars, device)
    if partition is None:
        return None
    reduce = None
    if plan.reduce is not None:
        step = plan.reduce
        reduce = _reduce_launcher.direct(step.key, step.grid, pointers[1], step.scalars, device)
        if reduce is None:
            return None
    return _Handles(device.index, plan.scratch, plan.split == PARTITION_SIZE, partition, reduce)


def _input_addresses(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> tuple[tuple, int]:
    """The addresses of a call's inputs in :class:`_Tensors`' order (``None`` for the scales unless fp8:
    the kernel never reads them, and their alignment must not matter), and their bitwise or."""
    addresses = (
        query.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(), block_tables.data_ptr(), seq_lens.data_ptr(),
    )  # fmt: skip
    mask = addresses[0] | addresses[1] | addresses[2] | addresses[3] | addresses[4]
    alibi = None
    if alibi_slopes is not None:
        alibi = alibi_slopes.data_ptr()
        mask |= alibi
    if FP8_KINDS[kv_cache_dtype] == 0:
        return (*addresses, alibi, None, None), mask
    scales = (k_scale.data_ptr(), v_scale.data_ptr())
    return (*addresses, alibi, *scales), mask | scales[0] | scales[1]


def _attention_direct(
    handles: _Handles | None,
    out: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    sparse: BlockSparse | None,
    lse: torch.Tensor | None = None,
) -> object:
    """v1 (arguments as :func:`paged_attention_v1` takes them) and, with ``lse``, ``paged_decode``
    through captured ``handles`` (see :class:`attnops._common.fastpath.Bound`)."""
    inputs, mask = _input_addresses(
        query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, kv_cache_dtype, k_scale, v_scale
    )
    out_address = out.data_ptr()
    lse_address = None if lse is None else lse.data_ptr()
    if (mask | out_address | (lse_address or 0)) & 15:
        return UNALIGNED
    if handles is None:
        return UNBOUND
    stream = current_stream(handles.index)
    # The addresses hold None for the scales unless fp8: _v1_pointers need not be told.
    if not handles.scratch:
        partition, _ = _v1_pointers(inputs, True, out_address, lse_address, None)
        handles.partition(stream, *partition, scale)
        return None
    scratch = out.new_empty(handles.scratch, dtype=torch.float32).data_ptr()
    if scratch & 15:
        return UNALIGNED
    partition, reduce = _v1_pointers(inputs, True, out_address, lse_address, scratch)
    handles.partition(stream, *partition, scale)
    handles.reduce(stream, *reduce)
    return None


def _attention_capture(
    out: torch.Tensor | torch.dtype,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    sparse: BlockSparse | None,
    lse: torch.Tensor | torch.dtype | None = None,
) -> _Handles | None:
    """The handles of :func:`_attention`'s launches for this call's signature (``out``, ``lse``: tensors
    or dtypes; arguments as :func:`_attention_direct` takes them)."""
    if query.shape[0] == 0:
        return None
    layout = _layout(query, key_cache, value_cache, block_tables, alibi_slopes, kv_cache_dtype, sparse)
    plan = _v1_plan(layout, None, lse is not None)
    tensors = _Tensors(query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale, v_scale)
    scratch = torch.float32 if plan.scratch else None
    return _handles(plan, _v1_pointers(tensors, FP8_KINDS[kv_cache_dtype] != 0, out, lse, scratch), layout.device)


@_v1_dispatcher.register("triton", direct=_attention_direct, capture=_attention_capture)
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
    split: int | None = None,
) -> None:
    """:func:`attnops.paged_attention.reference.paged_attention_v1` on Triton.

    ``split`` tokens per program (a multiple of the cache block size); by default
    ``PARTITION_SIZE``, or less where that leaves SMs idle.
    """
    _attention(
        out, None, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, sparse, split,
    )  # fmt: skip


def _v2_direct(
    handles: _Handles | None,
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
) -> object:
    """:func:`paged_attention_v2` through captured ``handles`` (see :class:`attnops._common.fastpath.Bound`)."""
    inputs, mask = _input_addresses(
        query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, kv_cache_dtype, k_scale, v_scale
    )
    outputs = (out.data_ptr(), exp_sums.data_ptr(), max_logits.data_ptr(), tmp_out.data_ptr())
    if (mask | outputs[0] | outputs[1] | outputs[2] | outputs[3]) & 15:
        return UNALIGNED
    if handles is None:
        return UNBOUND
    scratch = out.new_empty(handles.scratch, dtype=torch.float32).data_ptr()
    if scratch & 15:
        return UNALIGNED
    # The addresses hold None for the scales unless fp8: _v2_pointers need not be told.
    partition, reduce = _v2_pointers(inputs, True, handles.whole, *outputs, scratch)
    stream = current_stream(handles.index)
    handles.partition(stream, *partition, scale)
    handles.reduce(stream, *reduce)
    return None


def _v2_capture(
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
) -> _Handles | None:
    """The handles of :func:`paged_attention_v2`'s launches for this call's signature."""
    if query.shape[0] == 0:
        return None
    layout = _layout(query, key_cache, value_cache, block_tables, alibi_slopes, kv_cache_dtype, sparse)
    plan = _v2_plan(layout, None, exp_sums.shape[2])
    tensors = _Tensors(query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale, v_scale)
    fp8 = FP8_KINDS[kv_cache_dtype] != 0
    whole = plan.split == PARTITION_SIZE
    pointers = _v2_pointers(tensors, fp8, whole, out, exp_sums, max_logits, tmp_out, torch.float32)
    return _handles(plan, pointers, layout.device)


@_v2_dispatcher.register("triton", direct=_v2_direct, capture=_v2_capture)
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
    split: int | None = None,
) -> None:
    """:func:`attnops.paged_attention.reference.paged_attention_v2` on Triton (vLLM's partitions).

    When few sequences would leave SMs idle, each partition is computed as sub-splits whose
    statistics the reduction folds into the partition's. The reduction reads fp32 copies of the
    outputs (a scratch buffer), as the reference does.
    """
    _check_split(split, key_cache.shape[3], partitions=True)
    if query.shape[0] == 0:
        return
    layout = _layout(query, key_cache, value_cache, block_tables, alibi_slopes, kv_cache_dtype, sparse)
    plan = _v2_plan(layout, split, exp_sums.shape[2])
    tensors = _Tensors(query, key_cache, value_cache, block_tables, seq_lens, alibi_slopes, k_scale, v_scale)
    pointers = _v2_pointers(
        tensors, FP8_KINDS[kv_cache_dtype] != 0, plan.split == PARTITION_SIZE, out, exp_sums, max_logits, tmp_out,
        _scratch(plan, layout.device),
    )  # fmt: skip
    _launch(plan, scale, *pointers, layout.device)


def _decode_outputs(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``paged_decode``'s ``(out, lse)``, to be written."""
    num_seqs, num_heads, _ = query.shape
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    return out, torch.empty((num_heads, num_seqs), dtype=torch.float32, device=query.device)


def _decode_direct(
    handles: _Handles | None,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> object:
    """:func:`paged_decode` through captured ``handles`` (see :class:`attnops._common.fastpath.Bound`)."""
    out, lse = _decode_outputs(query)
    fallback = _attention_direct(
        handles, out, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, None, lse,
    )  # fmt: skip
    return (out, lse) if fallback is None else fallback


def _decode_capture(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> _Handles | None:
    return _attention_capture(
        query.dtype, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, None, torch.float32,
    )  # fmt: skip


@_decode_dispatcher.register("triton", direct=_decode_direct, capture=_decode_capture)
def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attnops.paged_attention.reference.paged_decode` on Triton: ``(out, lse [num_heads, num_seqs])``.

    ``split``: tokens per program, as in :func:`paged_attention_v1`. The scales are read for fp8 caches only.
    """
    out, lse = _decode_outputs(query)
    _attention(
        out, lse, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, None, split,
    )  # fmt: skip
    return out, lse

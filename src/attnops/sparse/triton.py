"""Triton vertical/slash index conversion and block-sparse prefill attention.

Conversion (``convert_vertical_slash_indexes`` and its ``_mergehead`` variant)
------------------------------------------------------------------------------
Two launches, no host synchronisation:

1. :func:`_runs_kernel`, one program per (batch, head): splits the head's
   slash list into *runs*, maximal stretches whose consecutive values are at
   most ``M = block_size_M`` apart, and stores for every slash position the
   last position of its run and that slash's value (a reverse running minimum
   over chunks of the list).
2. :func:`_convert_kernel`, one program per (batch, head, row block), the
   heaviest (last) row blocks first. With ``E = m*M + M + off`` (see
   :mod:`attnops.sparse.reference`) a slash ``s`` reaches keys ``T = E - s``.
   The first consumed slash ``j0``, the first unclamped slash (``s < E - M``)
   and, non-causal, the last consumed one come from one vectorised binary
   search over the descending slash list. vLLM's merge then only has to be
   replayed at run boundaries: inside a run no slash ever starts a new range
   and the range end grows to the smallest value ``>= T`` of its grid
   ``base + k*M``, so one step per run reproduces the per-slash loop exactly.
   A closed range writes its ``block_size_N`` blocks with one vector store,
   and the verticals in the gap before it are found by a vectorised scan that
   resumes where the previous range left off (both lists are sorted), and are
   copied to ``column_index`` in one vector copy. Only the entries below the
   counts are written (SPEC's contract, and all that a consumer reads): the
   outputs come from ``torch.empty``, so entries past the counts are
   unspecified here, where the PyTorch path (like vLLM's ``torch.zeros``)
   leaves zeros. Padding the rows would write ~1.9 GB at 128K context, more
   than every valid entry together.

   The sequential part is the loop over runs (tens per row for MInference
   patterns: the local band is one run); whether a run opens a new range
   depends on where the current range's ``M``-grid lies (vLLM grows ranges in
   steps of ``M``), which is a true dependency on the previous range, so it
   is not a prefix scan. Everything per slash or per vertical is vectorised.

Attention (``sparse_prefill_attention``)
----------------------------------------
:func:`_attention_kernel`, FlashAttention-style, one program per (batch, head,
query tile of ``BLOCK_M`` rows of one row block), longest tiles first. It
walks the tile's listed blocks (``BLOCK_N`` keys per step) and then its
listed columns in chunks of ``BLOCK_C`` gathered keys, with an fp32 online
softmax in base 2 (``tl.dot`` on the input dtype with fp32 accumulation;
fp32 inputs as tf32x3 on half-size key tiles). Both loops are software
pipelined (K/V of the next step load while this one computes). A block tile
is addressed as a scalar base plus loop-invariant offsets, and its masks are
lane windows computed from scalars, so the hot loop is mostly the two
products and the softmax; blocks wholly left of the tile's causal edge (a
prefix of a sorted list) skip the causal mask. A key selected twice counts
once, as in the dense mask: sorted block lists (what the conversion
produces) skip keys below the furthest block end seen so far, sorted column
lists skip repeats of the previous entry and columns inside a block (binary
search); unsorted lists fall back to exhaustive comparisons. Head sizes above
``MAX_HEAD_SIZE`` run on the PyTorch reference.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from attnops._common.backend import triton_interpreted
from attnops.sparse import reference
from attnops.sparse.api import _attention_dispatcher, _convert_dispatcher, _mergehead_dispatcher

# --- conversion launch parameters -------------------------------------------------------------
# Slash positions per step of the run-splitting pre-pass.
_RUN_CHUNK = 1024
# Verticals looked at per step of the gap scan and per vector copy.
_VERTICAL_CHUNK = 64
# Block offsets written per vector store of a closed range.
_BLOCK_CHUNK = 64
_CONVERT_WARPS = 1

# --- attention launch parameters ---------------------------------------------------------------
# Query rows and keys per tile; columns gathered per step (fp16/bf16).
BLOCK_M = 64
BLOCK_N = 64
BLOCK_C = 64
NUM_WARPS = 4
# Software-pipeline depth for head sizes up to 128 (H200, 32K SPEC pattern: 3 stages 12.2 ms,
# 2 stages 14.0 ms, 4 stages 15.0 ms); larger heads keep 2 (shared memory).
NUM_STAGES = 3
# fp32 products run as tf32x3, whose split operands need twice the registers and shared memory:
# half-size key tiles, and a single stage for head sizes above 128 (fits 227 KB of shared memory).
FP32_BLOCK_N = 32
# Larger head sizes run on the PyTorch reference (register budget of one tile).
MAX_HEAD_SIZE = 256

_LN2 = tl.constexpr(math.log(2.0))
_LOG2E = math.log2(math.e)
_INT32_MAX = tl.constexpr(2**31 - 1)


# ================================================================================================
# Conversion
# ================================================================================================


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


@triton.jit(do_not_specialize=["num_heads", "nnz_s", "M"])
def _runs_kernel(
    slash_ptr,
    s_count_ptr,
    run_end_ptr,
    run_bottom_ptr,
    num_heads,
    nnz_s,
    M,
    stride_sb,
    stride_sh,
    stride_sj,
    HAS_COUNTS: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """``run_end[p]``: last position of the run holding slash ``p``; ``run_bottom[p]``: its slash value."""
    bh = tl.program_id(0)
    b = bh // num_heads
    h = bh - b * num_heads
    ns = tl.load(s_count_ptr + h) if HAS_COUNTS else nnz_s
    s_row = slash_ptr + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
    aux = bh.to(tl.int64) * nnz_s
    lanes = tl.arange(0, CHUNK)
    carry = ns - 1
    num_chunks = tl.cdiv(ns, CHUNK)
    # Chunks from the end of the list, each read back to front: the running minimum over
    # lanes is then a minimum over the positions at and after each one.
    for i in range(num_chunks):
        pos = (num_chunks - i) * CHUNK - 1 - lanes
        valid = pos < ns
        here = tl.load(s_row + pos.to(tl.int64) * stride_sj, mask=valid, other=0)
        has_next = pos + 1 < ns
        after = tl.load(s_row + (pos + 1).to(tl.int64) * stride_sj, mask=valid & has_next, other=0)
        last = valid & (~has_next | (here - after > M))
        end = tl.minimum(tl.associative_scan(tl.where(last, pos, _INT32_MAX), 0, _minimum), carry)
        tl.store(run_end_ptr + aux + pos, end, mask=valid)
        bottom = tl.load(s_row + end.to(tl.int64) * stride_sj, mask=valid, other=0)
        tl.store(run_bottom_ptr + aux + pos, bottom, mask=valid)
        carry = tl.minimum(carry, tl.min(tl.where(last, pos, _INT32_MAX), 0))


@triton.jit
def _count_at_least(row_ptr, stride, count, targets, BITS: tl.constexpr):
    """Per target: how many of the first ``count`` (``< 2**BITS``) entries of a descending row are ``>= target``."""
    pos = tl.zeros(targets.shape, tl.int32)
    for k in tl.static_range(BITS):
        cand = pos + (1 << (BITS - 1 - k))
        ok = cand <= count
        value = tl.load(row_ptr + (cand - 1).to(tl.int64) * stride, mask=ok, other=0)
        pos = tl.where(ok & (value >= targets), cand, pos)
    return pos


@triton.jit
def _count_below(row_ptr, stride, start, count, bound, CHUNK: tl.constexpr):
    """First index in ``[start, count)`` of an ascending row whose entry is ``>= bound`` (else ``count``).

    Entries before ``start`` are known to be below ``bound``.
    """
    lanes = tl.arange(0, CHUNK)
    pos = start
    more = start < count
    while more:
        idx = pos + lanes
        ok = idx < count
        value = tl.load(row_ptr + idx.to(tl.int64) * stride, mask=ok, other=0)
        below = tl.sum((ok & (value < bound)).to(tl.int32), 0)
        pos += below
        more = (below == CHUNK) & (pos < count)
    return pos


@triton.jit
def _copy_verticals(v_row, stride_vj, first, stop, ci_row, ncol, nnz_v, CHUNK: tl.constexpr):
    """Append verticals ``[first, stop)`` to the column list at ``ncol``; returns the new count."""
    lanes = tl.arange(0, CHUNK)
    for k0 in range(first, stop, CHUNK):
        idx = k0 + lanes
        ok = idx < stop
        value = tl.load(v_row + idx.to(tl.int64) * stride_vj, mask=ok, other=0)
        dst = ncol + (idx - first)
        tl.store(ci_row + dst, value, mask=ok & (dst < nnz_v))
    return ncol + tl.maximum(stop - first, 0)


@triton.jit
def _close_range(
    range_start,
    range_end,
    kv,
    N,
    nblk,
    ncol,
    vcur,
    nv,
    nnz_s,
    nnz_v,
    v_row,
    stride_vj,
    bo_row,
    ci_row,
    V_CHUNK: tl.constexpr,
    B_CHUNK: tl.constexpr,
):
    """Emit one merged key range: the verticals in the gap before it, then its blocks of ``N``."""
    inside = _count_below(v_row, stride_vj, vcur, nv, range_start, V_CHUNK)
    ncol = _copy_verticals(v_row, stride_vj, vcur, inside, ci_row, ncol, nnz_v, V_CHUNK)
    vcur = _count_below(v_row, stride_vj, inside, nv, range_end, V_CHUNK)
    if range_start < kv:
        count = tl.cdiv(tl.minimum(range_end, kv) - range_start, N).to(tl.int32)
        lanes = tl.arange(0, B_CHUNK)
        for k0 in range(0, count, B_CHUNK):
            k = k0 + lanes
            dst = nblk + k
            tl.store(bo_row + dst, (range_start + k.to(tl.int64) * N).to(tl.int32), mask=(k < count) & (dst < nnz_s))
        nblk += count
    return nblk, ncol, vcur


@triton.jit(do_not_specialize=["num_heads", "num_rows", "nnz_v", "nnz_s", "M", "N"])
def _convert_kernel(
    q_seqlens_ptr,
    kv_seqlens_ptr,
    vertical_ptr,
    slash_ptr,
    v_count_ptr,
    s_count_ptr,
    run_end_ptr,
    run_bottom_ptr,
    block_count_ptr,
    block_offset_ptr,
    column_count_ptr,
    column_index_ptr,
    num_heads,
    num_rows,
    nnz_v,
    nnz_s,
    M,
    N,
    stride_vb,
    stride_vh,
    stride_vj,
    stride_sb,
    stride_sh,
    stride_sj,
    bo_stride,
    ci_stride,
    CAUSAL: tl.constexpr,
    HAS_COUNTS: tl.constexpr,
    SEARCH_BITS: tl.constexpr,
    V_CHUNK: tl.constexpr,
    B_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid // num_rows
    m = num_rows - 1 - (pid - bh * num_rows)  # the longest row blocks first
    b = bh // num_heads
    h = bh - b * num_heads
    q_len = tl.load(q_seqlens_ptr + b).to(tl.int64)
    kv = tl.load(kv_seqlens_ptr + b).to(tl.int64)
    if HAS_COUNTS:
        nv = tl.load(v_count_ptr + h)
        ns = tl.load(s_count_ptr + h)
    else:
        nv = nnz_v
        ns = nnz_s
    v_row = vertical_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    s_row = slash_ptr + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
    aux = bh.to(tl.int64) * nnz_s
    row = bh.to(tl.int64) * num_rows + m
    # Row strides of the outputs (nnz_s, nnz_v) as specialised arguments: 16-byte aligned rows get vector stores.
    bo_row = block_offset_ptr + row * bo_stride
    ci_row = column_index_ptr + row * ci_stride

    nblk = tl.full((), 0, tl.int32)
    ncol = tl.full((), 0, tl.int32)
    start_m = m.to(tl.int64) * M
    if start_m < q_len:
        if CAUSAL:
            edge = start_m + M + kv - q_len
            lone = edge
        else:
            edge = start_m + M + kv
            lone = kv
        # How many slashes reach the row block (>= E), are clamped (>= E - M), are >= m*M.
        lanes = tl.arange(0, 4)
        targets = tl.where(lanes == 0, edge, tl.where(lanes == 1, edge - M, start_m))
        counts = _count_at_least(s_row, stride_sj, ns, targets, SEARCH_BITS)
        first_free = tl.sum(tl.where(lanes == 1, counts, 0), 0)
        j0 = tl.minimum(tl.sum(tl.where(lanes == 0, counts, 0), 0), ns - 1)
        s_j0 = tl.load(s_row + j0.to(tl.int64) * stride_sj).to(tl.int64)
        # No slash reaches the row block: one range past the causal edge / the keys.
        range_start = lone
        range_end = lone + N
        pos = ns
        end = ns
        if s_j0 <= edge:
            # The first range: its base is the first slash, clamped to T = M (slash E - M).
            base_t = edge - tl.minimum(s_j0, edge - M)
            range_start = base_t - M
            range_end = base_t
            pos = tl.where(j0 < first_free, first_free, first_free + 1)
            if not CAUSAL:
                end = tl.maximum(j0 + 1, tl.sum(tl.where(lanes == 2, counts, 0), 0))
        vcur = tl.full((), 0, tl.int32)
        while pos < end:
            last = tl.load(run_end_ptr + aux + pos)
            top = tl.load(s_row + pos.to(tl.int64) * stride_sj).to(tl.int64)
            bottom = tl.load(run_bottom_ptr + aux + pos).to(tl.int64)
            if last >= end:
                last = end - 1
                bottom = tl.load(s_row + last.to(tl.int64) * stride_sj).to(tl.int64)
            t_top = edge - top
            if t_top > range_end + M:
                nblk, ncol, vcur = _close_range(
                    range_start, range_end, kv, N, nblk, ncol, vcur, nv, nnz_s, nnz_v,
                    v_row, stride_vj, bo_row, ci_row, V_CHUNK, B_CHUNK,
                )  # fmt: skip
                range_start = t_top - M
                range_end = t_top
            t_bottom = edge - bottom
            if t_bottom > range_end:
                range_end += M * tl.cdiv(t_bottom - range_end, M)
            pos = last + 1
        nblk, ncol, vcur = _close_range(
            range_start, range_end, kv, N, nblk, ncol, vcur, nv, nnz_s, nnz_v,
            v_row, stride_vj, bo_row, ci_row, V_CHUNK, B_CHUNK,
        )  # fmt: skip
        # Causal rows stop with their last range; non-causal ones keep verticals below kv.
        cutoff = range_end if CAUSAL else tl.maximum(range_end, kv)
        kept = _count_below(v_row, stride_vj, vcur, nv, cutoff, V_CHUNK)
        ncol = _copy_verticals(v_row, stride_vj, vcur, kept, ci_row, ncol, nnz_v, V_CHUNK)

    tl.store(block_count_ptr + row, nblk)
    tl.store(column_count_ptr + row, ncol)


def _convert(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    vertical_indices_count: torch.Tensor | None,
    slash_indices_count: torch.Tensor | None,
    context_size: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, nnz_v = vertical_indexes.shape
    nnz_s = slash_indexes.shape[2]
    rows = -(-context_size // block_size_M)
    new = lambda *shape: torch.empty(shape, dtype=torch.int32, device=q_seqlens.device)
    block_count, column_count = new(batch, heads, rows), new(batch, heads, rows)
    block_offset, column_index = new(batch, heads, rows, nnz_s), new(batch, heads, rows, nnz_v)
    if batch * heads * rows == 0:
        return block_count, block_offset, column_count, column_index
    has_counts = vertical_indices_count is not None
    v_count = vertical_indices_count if has_counts else q_seqlens
    s_count = slash_indices_count if has_counts else q_seqlens
    run_end, run_bottom = new(batch * heads, nnz_s), new(batch * heads, nnz_s)
    s_strides = slash_indexes.stride()
    _runs_kernel[(batch * heads,)](
        slash_indexes, s_count, run_end, run_bottom, heads, nnz_s, block_size_M, *s_strides,
        HAS_COUNTS=has_counts, CHUNK=_RUN_CHUNK, num_warps=4,
    )  # fmt: skip
    _convert_kernel[(batch * heads * rows,)](
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, v_count, s_count, run_end, run_bottom,
        block_count, block_offset, column_count, column_index,
        heads, rows, nnz_v, nnz_s, block_size_M, block_size_N, *vertical_indexes.stride(), *s_strides, nnz_s, nnz_v,
        CAUSAL=causal, HAS_COUNTS=has_counts, SEARCH_BITS=nnz_s.bit_length(),
        V_CHUNK=_VERTICAL_CHUNK, B_CHUNK=_BLOCK_CHUNK, num_warps=_CONVERT_WARPS,
    )  # fmt: skip
    return block_count, block_offset, column_count, column_index


@_convert_dispatcher.register("triton")
def convert_vertical_slash_indexes(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    context_size: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton version of :func:`attnops.sparse.reference.convert_vertical_slash_indexes` (inputs validated)."""
    return _convert(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, None, None,
        context_size, block_size_M, block_size_N, causal,
    )  # fmt: skip


@_mergehead_dispatcher.register("triton")
def convert_vertical_slash_indexes_mergehead(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    vertical_indices_count: torch.Tensor,
    slash_indices_count: torch.Tensor,
    context_size: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton version of :func:`attnops.sparse.reference.convert_vertical_slash_indexes_mergehead`."""
    return _convert(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count, slash_indices_count,
        context_size, block_size_M, block_size_N, causal,
    )  # fmt: skip


# ================================================================================================
# Attention
# ================================================================================================


@triton.jit
def _attend(q, k, v, visible, m_i, l_i, acc, qk_scale, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
            POSITIVE: tl.constexpr):  # fmt: skip
    """One online-softmax step (base 2) over a key tile; ``visible [TILE_M, keys]`` masks the logits.

    ``POSITIVE``: ``qk_scale > 0``, so the scale can go into the exponent's FMA after masking.
    """
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if POSITIVE:
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    else:
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows that have seen nothing yet shift by 0, so exp2(-inf - 0) = 0 and never NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2((s * qk_scale if POSITIVE else s) - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _scan_offsets(row_ptr, stride, count, bound, CHUNK: tl.constexpr):
    """Whether the first ``count`` entries of a row are non-decreasing, and how many are ``<= bound``."""
    lanes = tl.arange(0, CHUNK)
    drops = tl.full((), 0, tl.int32)
    below = tl.full((), 0, tl.int32)
    for k0 in range(0, count, CHUNK):
        idx = k0 + lanes
        ok = idx < count
        here = tl.load(row_ptr + idx * stride, mask=ok, other=0)
        before = tl.load(row_ptr + (idx - 1) * stride, mask=ok & (idx >= 1), other=-(2**31))
        drops += tl.sum((ok & (here < before)).to(tl.int32), 0)
        below += tl.sum((ok & (here <= bound)).to(tl.int32), 0)
    return drops == 0, below


@triton.jit
def _block_step(it, bo_row, sbo_e, block_size_N, kv_len, TILE_N: tl.constexpr, PIECES: tl.constexpr):
    """Step ``it`` of the block loop: its first key, its block's end, and the lanes ``[lo, hi)`` of the
    ``TILE_N`` keys from the first that lie inside the block and inside ``[0, kv_len)``."""
    e = it // PIECES
    start = tl.load(bo_row + e * sbo_e).to(tl.int64)
    first = start + (it - e * PIECES) * TILE_N
    end = start + block_size_N
    lo = tl.minimum(tl.maximum(-first, 0), TILE_N).to(tl.int32)
    hi = tl.minimum(tl.maximum(tl.minimum(end, kv_len) - first, 0), TILE_N).to(tl.int32)
    return first, end, lo, hi


@triton.jit
def _lane_window(first, bound, TILE_N: tl.constexpr):
    """``bound - first`` clamped to ``[0, TILE_N]``, as int32 (a lane index)."""
    return tl.minimum(tl.maximum(bound - first, 0), TILE_N).to(tl.int32)


@triton.jit
def _in_sorted_blocks(keys, bo_row, stride, count, block_size_N):
    """Per key: inside one of the first ``count`` blocks of a non-decreasing offset list (binary search)."""
    pos = tl.zeros(keys.shape, tl.int32)
    step = tl.full((), 1, tl.int32)
    while step * 2 <= count:
        step *= 2
    while step > 0:
        cand = pos + step
        ok = cand <= count
        start = tl.load(bo_row + (cand - 1) * stride, mask=ok, other=0).to(tl.int64)
        pos = tl.where(ok & (start <= keys), cand, pos)
        step = step // 2
    found = pos >= 1
    start = tl.load(bo_row + (pos - 1) * stride, mask=found, other=0).to(tl.int64)
    return found & (keys < start + block_size_N)


@triton.jit
def _in_blocks(keys, bo_row, stride, first, stop, block_size_N, CHUNK: tl.constexpr):
    """Per key: inside one of the blocks ``[first, stop)`` of any offset list (exhaustive)."""
    lanes = tl.arange(0, CHUNK)
    hits = tl.zeros(keys.shape, tl.int32)
    for e0 in range(first, stop, CHUNK):
        e = e0 + lanes
        ok = e < stop
        start = tl.load(bo_row + e * stride, mask=ok, other=0).to(tl.int64)
        inside = ok[None, :] & (start[None, :] <= keys[:, None]) & (keys[:, None] < start[None, :] + block_size_N)
        hits += tl.sum(inside.to(tl.int32), 1)
    return hits > 0


@triton.jit
def _repeats_earlier(cols, idx, ci_row, stride, count, CHUNK: tl.constexpr):
    """Per column entry ``idx``: an earlier entry of the list holds the same value (exhaustive)."""
    lanes = tl.arange(0, CHUNK)
    hits = tl.zeros(cols.shape, tl.int32)
    for f0 in range(0, tl.minimum(tl.max(idx, 0), count), CHUNK):
        f = f0 + lanes
        ok = f < count
        other = tl.load(ci_row + f * stride, mask=ok, other=0).to(tl.int64)
        same = ok[None, :] & (f[None, :] < idx[:, None]) & (other[None, :] == cols[:, None])
        hits += tl.sum(same.to(tl.int32), 1)
    return hits > 0


@triton.jit(do_not_specialize=["num_heads", "kv_group", "q_len", "kv_len", "block_size_M", "block_size_N"])
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    block_count_ptr,
    block_offset_ptr,
    column_count_ptr,
    column_index_ptr,
    qk_scale,
    batch_heads,
    num_heads,
    kv_group,
    q_len,
    kv_len,
    num_tiles,
    tiles_per_row,
    block_size_M,
    block_size_N,
    nnz_s,
    nnz_v,
    sq_b,
    sq_h,
    sq_t,
    sq_d,
    sk_b,
    sk_h,
    sk_t,
    sk_d,
    sv_b,
    sv_h,
    sv_t,
    sv_d,
    sbc_b,
    sbc_h,
    sbc_m,
    sbo_b,
    sbo_h,
    sbo_m,
    sbo_e,
    scc_b,
    scc_h,
    scc_m,
    sci_b,
    sci_h,
    sci_m,
    sci_e,
    HEAD_SIZE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE_M: tl.constexpr,
    TILE_N: tl.constexpr,
    PIECES: tl.constexpr,
    TILE_C: tl.constexpr,
    CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    POSITIVE: tl.constexpr,
    OFFSETS_32: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid % batch_heads
    tile = num_tiles - 1 - pid // batch_heads  # the longest (last) query tiles first
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    kvh = (h // kv_group).to(tl.int64)
    h = h.to(tl.int64)
    m = tile // tiles_per_row
    first_row = m * block_size_M + (tile - m * tiles_per_row) * TILE_M
    row_stop = tl.minimum((m + 1) * block_size_M, q_len)
    rows = first_row + tl.arange(0, TILE_M)
    row_ok = rows < row_stop
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_SIZE

    q_tile = tl.load(
        q_ptr + b * sq_b + h * sq_h + rows[:, None].to(tl.int64) * sq_t + dims[None, :] * sq_d,
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
    k_base = k_ptr + b * sk_b + kvh * sk_h
    v_base = v_ptr + b * sv_b + kvh * sv_h
    # The last key each query row may see (bottom-right causal alignment).
    diagonal = rows + (kv_len - q_len)

    m_i = tl.full([TILE_M], float("-inf"), tl.float32)
    l_i = tl.zeros([TILE_M], tl.float32)
    acc = tl.zeros([TILE_M, BLOCK_D], tl.float32)

    m64 = m.to(tl.int64)
    num_blocks = tl.load(block_count_ptr + b * sbc_b + h * sbc_h + m64 * sbc_m)
    num_blocks = tl.minimum(tl.maximum(num_blocks, 0), nnz_s)
    bo_row = block_offset_ptr + b * sbo_b + h * sbo_h + m64 * sbo_m
    num_cols = tl.load(column_count_ptr + b * scc_b + h * scc_h + m64 * scc_m)
    num_cols = tl.minimum(tl.maximum(num_cols, 0), nnz_v)
    ci_row = column_index_ptr + b * sci_b + h * sci_h + m64 * sci_m

    key_lanes = tl.arange(0, TILE_N)
    row_lanes = tl.arange(0, TILE_M)
    # Block tiles are addressed as a scalar first key plus these loop-invariant offsets (int32:
    # the wrapper checks that TILE_N rows of K or V span fewer than 2**31 elements).
    k_offsets = key_lanes[:, None] * sk_t + dims[None, :] * sk_d
    v_offsets = key_lanes[:, None] * sv_t + dims[None, :] * sv_d
    # The last key visible to the tile's first row (bottom-right causal alignment).
    edge = first_row.to(tl.int64) + (kv_len - q_len)
    # Blocks that lie wholly left of the tile's causal edge need no causal mask; with a
    # sorted list they are a prefix of it.
    blocks_sorted, num_free = _scan_offsets(bo_row, sbo_e, num_blocks, edge - block_size_N + 1, TILE_C)
    if not CAUSAL:
        num_free = num_blocks
    if blocks_sorted:
        # Keys below `covered` were in an earlier block.
        covered = tl.full((), -(2**40), tl.int64)
        for it in range(0, num_free * PIECES):
            first, end, lo, hi = _block_step(it, bo_row, sbo_e, block_size_N, kv_len, TILE_N, PIECES)
            inside = (key_lanes >= lo) & (key_lanes < hi)
            k_tile = tl.load(k_base + first * sk_t + k_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            v_tile = tl.load(v_base + first * sv_t + v_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            fresh = tl.maximum(lo, _lane_window(first, covered, TILE_N))
            visible = ((key_lanes >= fresh) & (key_lanes < hi))[None, :]
            m_i, l_i, acc = _attend(
                q_tile, k_tile, v_tile, visible, m_i, l_i, acc, qk_scale, UPCAST, PRECISION, POSITIVE
            )
            covered = tl.where((it + 1) % PIECES == 0, tl.maximum(covered, end), covered)
        for it in range(num_free * PIECES, num_blocks * PIECES):
            first, end, lo, hi = _block_step(it, bo_row, sbo_e, block_size_N, kv_len, TILE_N, PIECES)
            inside = (key_lanes >= lo) & (key_lanes < hi)
            k_tile = tl.load(k_base + first * sk_t + k_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            v_tile = tl.load(v_base + first * sv_t + v_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            fresh = tl.maximum(lo, _lane_window(first, covered, TILE_N))
            visible = ((key_lanes >= fresh) & (key_lanes < hi))[None, :]
            if CAUSAL:
                # Row r sees lanes <= edge + r - first.
                limit = tl.minimum(tl.maximum(edge - first, -TILE_M - 1), TILE_N).to(tl.int32) + row_lanes
                visible = visible & (key_lanes[None, :] <= limit[:, None])
            m_i, l_i, acc = _attend(
                q_tile, k_tile, v_tile, visible, m_i, l_i, acc, qk_scale, UPCAST, PRECISION, POSITIVE
            )
            covered = tl.where((it + 1) % PIECES == 0, tl.maximum(covered, end), covered)
    else:
        for it in range(0, num_blocks * PIECES):
            first, end, lo, hi = _block_step(it, bo_row, sbo_e, block_size_N, kv_len, TILE_N, PIECES)
            inside = (key_lanes >= lo) & (key_lanes < hi)
            k_tile = tl.load(k_base + first * sk_t + k_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            v_tile = tl.load(v_base + first * sv_t + v_offsets, mask=inside[:, None] & dim_ok[None, :], other=0.0)
            keys = first + key_lanes
            fresh = inside & ~_in_blocks(keys, bo_row, sbo_e, 0, it // PIECES, block_size_N, TILE_C)
            visible = fresh[None, :]
            if CAUSAL:
                visible = visible & (keys[None, :] <= diagonal[:, None])
            m_i, l_i, acc = _attend(
                q_tile, k_tile, v_tile, visible, m_i, l_i, acc, qk_scale, UPCAST, PRECISION, POSITIVE
            )

    cols_sorted, _ = _scan_offsets(ci_row, sci_e, num_cols, 0, TILE_C)
    col_lanes = tl.arange(0, TILE_C)
    for c0 in range(0, num_cols, TILE_C):
        idx = c0 + col_lanes
        listed = idx < num_cols
        cols = tl.load(ci_row + idx * sci_e, mask=listed, other=-1)
        ok = listed & (cols >= 0) & (cols < kv_len)
        # A key selected twice counts once: skip repeats and columns inside a listed block.
        if cols_sorted:
            before = tl.load(ci_row + (idx - 1) * sci_e, mask=listed & (idx >= 1), other=-1)
            ok = ok & ~((idx >= 1) & (before == cols))
        else:
            ok = ok & ~_repeats_earlier(cols.to(tl.int64), idx, ci_row, sci_e, num_cols, TILE_C)
        if blocks_sorted:
            ok = ok & ~_in_sorted_blocks(cols.to(tl.int64), bo_row, sbo_e, num_blocks, block_size_N)
        else:
            ok = ok & ~_in_blocks(cols.to(tl.int64), bo_row, sbo_e, 0, num_blocks, block_size_N, TILE_C)
        # Gather offsets: int32 when every key of K and V lies within 2**31 elements of the head's base.
        rows_k = cols * sk_t if OFFSETS_32 else cols.to(tl.int64) * sk_t
        rows_v = cols * sv_t if OFFSETS_32 else cols.to(tl.int64) * sv_t
        mask = ok[:, None] & dim_ok[None, :]
        k_tile = tl.load(k_base + rows_k[:, None] + dims[None, :] * sk_d, mask=mask, other=0.0)
        v_tile = tl.load(v_base + rows_v[:, None] + dims[None, :] * sv_d, mask=mask, other=0.0)
        visible = ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= diagonal[:, None])
        m_i, l_i, acc = _attend(q_tile, k_tile, v_tile, visible, m_i, l_i, acc, qk_scale, UPCAST, PRECISION, POSITIVE)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * _LN2, float("-inf"))
    # out and lse are fresh contiguous tensors: [batch, heads, q_len, HEAD_SIZE] and [batch, heads, q_len].
    bh64 = bh.to(tl.int64)
    out_rows = bh64 * q_len + rows.to(tl.int64)
    tl.store(
        out_ptr + out_rows[:, None] * HEAD_SIZE + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    tl.store(lse_ptr + out_rows, lse, mask=row_ok)


def _tile(size: int, cap: int) -> int:
    """Tile length for ``size`` rows or keys: ``cap`` for large sizes, else the next power of two (>= 16)."""
    return cap if size >= cap else max(16, triton.next_power_of_2(size))


def _attention_config(dtype: torch.dtype, block_d: int, block_size_N: int) -> tuple[int, int, int, int]:
    """``(TILE_N, TILE_C, num_warps, num_stages)`` for the input dtype and the padded head size."""
    if dtype == torch.float32:
        return _tile(block_size_N, FP32_BLOCK_N), FP32_BLOCK_N, 4 if block_d <= 64 else 8, 2 if block_d <= 128 else 1
    if block_d <= 128:
        return _tile(block_size_N, BLOCK_N), BLOCK_C, NUM_WARPS, NUM_STAGES
    return _tile(block_size_N, BLOCK_N), BLOCK_C, 2 * NUM_WARPS, 2


@_attention_dispatcher.register("triton")
def sparse_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    scale: float,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`attnops.sparse.reference.sparse_prefill_attention` (inputs validated)."""
    batch, heads, q_len, head_size = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    tile_m = _tile(block_size_M, BLOCK_M)
    block_d = max(16, triton.next_power_of_2(head_size))
    tile_n, tile_c, num_warps, num_stages = _attention_config(q.dtype, block_d, block_size_N)
    # Offsets inside one K/V tile are int32 in the kernel.
    tile_span = max(t.stride(2) * (tile_n - 1) + t.stride(3) * (block_d - 1) for t in (k, v))
    head_span = max(t.stride(2) * (kv_len - 1) + t.stride(3) * (block_d - 1) for t in (k, v))
    if head_size > MAX_HEAD_SIZE or tile_span >= 2**31 or q_len == 0 or kv_len == 0 or batch * heads == 0:
        return reference.sparse_prefill_attention(
            q, k, v, block_count, block_offset, column_count, column_index, scale, block_size_M, block_size_N, causal
        )
    out = torch.empty((batch, heads, q_len, head_size), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, q_len), dtype=torch.float32, device=q.device)
    tiles_per_row = -(-block_size_M // tile_m)
    num_tiles = -(-q_len // block_size_M) * tiles_per_row
    interpreted = triton_interpreted()
    fp32 = q.dtype == torch.float32
    _attention_kernel[(num_tiles * batch * heads,)](
        q, k, v, out, lse, block_count, block_offset, column_count, column_index,
        scale * _LOG2E, batch * heads, heads, heads // kv_heads, q_len, kv_len, num_tiles, tiles_per_row,
        block_size_M, block_size_N, block_offset.shape[3], column_index.shape[3],
        *q.stride(), *k.stride(), *v.stride(),
        *block_count.stride(), *block_offset.stride(), *column_count.stride(), *column_index.stride(),
        HEAD_SIZE=head_size, BLOCK_D=block_d, TILE_M=tile_m, TILE_N=tile_n, PIECES=-(-block_size_N // tile_n),
        TILE_C=tile_c, CAUSAL=causal, UPCAST=interpreted or fp32, PRECISION="tf32x3" if fp32 else "tf32",
        POSITIVE=scale > 0, OFFSETS_32=head_span < 2**31,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out, lse

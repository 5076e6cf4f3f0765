"""Triton kernels of paged decode attention (``paged_attention_v1``/``v2``, ``paged_decode``).

Both kernels read vLLM's cache layouts in place:

1. :func:`_partition_kernel`, one program per (sequence, kv head, split of ``SPLIT`` tokens). It
   serves every query head of its GQA group at once (a ``[GROUP_PAD, HEAD_PAD]`` query tile), so
   each K/V byte is read once per kv head, and walks its split in tiles of ``TILE`` tokens
   (gathered through the block table) with an online softmax in fp32. GQA groups multiply on
   tensor cores (``tl.dot``, the group padded to 16 rows); one head per kv head uses broadcast
   products. It writes the split's ``(max logit, exp sum, output / (exp sum + 1e-6))``: vLLM's v2
   partition statistics, whose partition is the split (``SPLIT = PARTITION_SIZE``). Programs past
   their sequence's end exit without writing.
2. :func:`_reduce_kernel`, one program per (sequence, query head): vLLM's v2 reduction of the
   splits (a one-split sequence copies its split output) and the log-sum-exp.

v1 and ``paged_decode`` use the same splits (``split`` tokens, a parameter); when the block table
holds a single split, the partition kernel writes the result itself and the reduction is skipped.
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
# Upper bound of HEAD_PAD * TILE: a K or V tile's size in registers.
_TILE_ELEMENTS = 8192
# The reference's constants, as Triton needs globals used in kernels to be constexpr.
_FLT_MAX = tl.constexpr(FLT_MAX)
_SOFTMAX_EPS = tl.constexpr(SOFTMAX_EPS)
# The block-sparse arguments of dense calls (never read: SPARSE is off).
_DENSE = BlockSparse(local_blocks=0, vert_stride=1, block_size=1, head_sliding_step=0, tp_rank=0)
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
def _logits(q, k, scale, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """Scaled logits, fp32 ``[GROUP_PAD, TILE]``, of ``q [GROUP_PAD, HEAD_PAD]`` (query dtype) and fp32 ``k``.

    ``q`` and ``k`` hold query-dtype values (fp8 caches are rounded to it): for fp16/bf16 they are
    exact in tf32, so the tensor-core product equals the fp32 one; fp32 uses ``PRECISION`` tf32x3.
    """
    if USE_DOT:
        return tl.dot(q.to(tl.float32), k, input_precision=PRECISION) * scale
    else:
        return tl.sum(q.to(tl.float32)[:, :, None] * k[None, :, :], axis=1) * scale


@triton.jit
def _weighted_values(p, v, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """``p @ v.T``, fp32 ``[GROUP_PAD, HEAD_PAD]``, of fp32 ``p [GROUP_PAD, TILE]`` and fp32 ``v [HEAD_PAD, TILE]``.

    On tensor cores as tf32 for half-precision caches: their values are exact in tf32, and ``p``
    keeps 10 mantissa bits (vLLM rounds it to the query dtype).
    """
    if USE_DOT:
        return tl.dot(p, tl.trans(v), input_precision=PRECISION)
    else:
        return tl.sum(p[:, None, :] * v[None, :, :], axis=2)


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
    DIRECT: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    USE_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The softmax statistics and normalised output of one split for one GQA group of heads."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    start = split * SPLIT
    # With one split, empty sequences still write their zero rows (and -inf lse).
    if not DIRECT:  # noqa: SIM102 - a constexpr test, kept apart from the runtime one
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
    q = tl.load(q_ptrs, mask=g_mask[:, None] & d_mask[None, :], other=0.0)
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
    # Tiles are whole cache blocks, and every split starts at a block boundary.
    tl.static_assert(TILE % BLOCK_SIZE == 0)
    tl.static_assert(SPLIT % BLOCK_SIZE == 0)
    tl.static_assert(HEAD_SIZE % X == 0)
    n = tl.arange(0, TILE // BLOCK_SIZE)
    slot = tl.arange(0, BLOCK_SIZE)
    # The contiguous runs of the caches are innermost aranges, so the loads are vectorised:
    # key chunk c of slot s holds X elements at c * BLOCK_SIZE * X + s * X, a value row d the
    # BLOCK_SIZE slots at d * BLOCK_SIZE.
    k_dim = (tl.arange(0, HEAD_PAD // X) * (BLOCK_SIZE * X))[None, None, :, None] + tl.arange(0, X)[None, None, None, :]
    k_dim += (slot * X)[None, :, None, None]  # [1, BLOCK_SIZE, HEAD_PAD // X, X]
    k_dim_mask = (tl.arange(0, HEAD_PAD // X) * X < HEAD_SIZE)[None, None, :, None]
    v_dim = d[:, None, None] * BLOCK_SIZE + slot[None, None, :]  # [HEAD_PAD, 1, BLOCK_SIZE]
    k_base = key_cache + kv_head * k_stride_head
    v_base = value_cache + kv_head * v_stride_head
    table = block_tables + seq.to(tl.int64) * table_stride
    compute = query.dtype.element_ty

    m = tl.full([GROUP_PAD], -_FLT_MAX, tl.float32)
    s = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    for tile_start in range(start, end, TILE):
        tok = tile_start + t
        valid = tok < end
        blocks = tile_start // BLOCK_SIZE + n
        # Table entries past the sequence's last block are never read.
        block_valid = blocks * BLOCK_SIZE < end
        block = tl.load(table + blocks, mask=block_valid, other=0).to(tl.int64)
        # [TILE // BLOCK_SIZE, BLOCK_SIZE]: token t of the tile is slot t % BLOCK_SIZE of block t // BLOCK_SIZE.
        slot_valid = (tile_start + n * BLOCK_SIZE)[:, None] + slot[None, :] < end
        # Slots past the sequence's end may hold NaN: masked to 0, they never reach the result.
        k_ptrs = k_base + block[:, None, None, None] * k_stride_block + k_dim
        k_raw = tl.load(k_ptrs, mask=slot_valid[:, :, None, None] & k_dim_mask, other=0.0)
        # [TILE // BLOCK_SIZE, BLOCK_SIZE, HEAD_PAD // X, X] -> [HEAD_PAD, TILE], in registers.
        k = _dequantize(tl.trans(tl.reshape(k_raw, [TILE, HEAD_PAD])), ks, FP8, compute)
        logits = _logits(q, k, scale, USE_DOT, PRECISION)
        if HAS_ALIBI:
            logits += slopes[:, None] * (tok - seq_len + 1).to(tl.float32)[None, :]
        if SPARSE:
            sparse_block = (tok // BLOCK_SIZE) * BLOCK_SIZE // sparse_block_size
            remote = (sparse_block[None, :] + offset[:, None]) % sparse_vert_stride == 0
            local = sparse_block > query_block - sparse_local_blocks
            attended = remote | local[None, :]
            # As vLLM: skipped tokens take the logit -FLT_MAX (they count in the max and exp sum).
            logits = tl.where(attended, logits, -_FLT_MAX)
        logits = tl.where(valid[None, :], logits, float("-inf"))

        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])
        s = s * alpha + tl.sum(p, axis=1)
        if SPARSE:
            p = tl.where(attended, p, 0.0)
        v_ptrs = v_base + block[None, :, None] * v_stride_block + v_dim
        # As in vLLM's kernel, whole blocks are read (a per-slot mask would split the vectors) and the
        # slots past the end zeroed in registers: they may hold NaN, and 0 * NaN is NaN.
        v_raw = tl.load(v_ptrs, mask=d_mask[:, None, None] & block_valid[None, :, None], other=0.0)
        v = tl.where(slot_valid[None, :, :], _dequantize(v_raw, vs, FP8, compute), 0.0)
        v = tl.reshape(v, [HEAD_PAD, TILE])  # [HEAD_PAD, TILE // BLOCK_SIZE, BLOCK_SIZE] -> [HEAD_PAD, TILE]
        acc = acc * alpha[:, None] + _weighted_values(p, v, USE_DOT, PRECISION)
        m = m_new

    result = acc / (s + _SOFTMAX_EPS)[:, None]
    rows = (seq * num_heads + heads).to(tl.int64) * num_splits + split
    out_offsets = rows[:, None] * HEAD_SIZE + d[None, :]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:
        # The only split: its output is the result, as in the reduction's one-split case.
        tl.store(out + out_offsets, result.to(out.dtype.element_ty), mask=out_mask)
        if WRITE_LSE:
            # log(0) = -inf for an empty sequence.
            tl.store(lse + heads * tl.num_programs(0) + seq, m + tl.log(s), mask=g_mask)
    else:
        tl.store(max_logits + rows, m, mask=g_mask)
        tl.store(exp_sums + rows, s, mask=g_mask)
        tl.store(split_out + out_offsets, result, mask=out_mask)
        if WRITE_TMP:
            tl.store(tmp_out + out_offsets, result.to(tmp_out.dtype.element_ty), mask=out_mask)


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

    peak = tl.full([REDUCE_TILE], -_FLT_MAX, tl.float32)
    for first in range(0, count, REDUCE_TILE):
        part = first + p
        peak = tl.maximum(peak, tl.load(max_logits + base + part, mask=part < count, other=-_FLT_MAX))
    global_max = tl.max(peak, axis=0)

    total = tl.zeros([REDUCE_TILE], tl.float32)
    acc = tl.zeros([HEAD_PAD], tl.float32)
    for first in range(0, count, REDUCE_TILE):
        part = first + p
        used = part < count
        m = tl.load(max_logits + base + part, mask=used, other=-_FLT_MAX)
        weight = tl.load(exp_sums + base + part, mask=used, other=0.0) * tl.exp(m - global_max)
        total += weight
        o_ptrs = split_out + (base + part)[:, None] * HEAD_SIZE + d[None, :]
        o = tl.load(o_ptrs, mask=used[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(weight[:, None] * o, axis=0)
    total_sum = tl.sum(total, axis=0)
    merged = acc / (total_sum + _SOFTMAX_EPS)
    # A one-split sequence takes its split's output as is (zeros for an empty sequence).
    single = tl.load(split_out + base * HEAD_SIZE + d, mask=d < HEAD_SIZE * tl.minimum(count, 1), other=0.0)
    result = tl.where(count <= 1, single, merged)
    tl.store(out + row * HEAD_SIZE + d, result.to(out.dtype.element_ty), mask=d_mask)
    if WRITE_LSE:
        # log(0) = -inf for an empty sequence.
        tl.store(lse + head * num_seqs + seq, global_max + tl.log(total_sum))


@functools.cache
def _config(
    num_heads: int, num_kv_heads: int, head_size: int, block_size: int, dtype: torch.dtype
) -> dict[str, object]:
    """The partition kernel's shape constexprs and launch options.

    GQA groups run their two products on tensor cores (``tl.dot`` needs 16 rows: the group is
    padded); a single head per kv head uses broadcast products. Tiles of 16 to 64 tokens keep a
    K or V tile within ``_TILE_ELEMENTS``, and hold whole cache blocks (at least one). Four warps
    and two stages were the fastest of the launch-parameter sweep (bench/tuning).
    """
    heads_per_kv = num_heads // num_kv_heads
    use_dot = heads_per_kv > 1
    head_pad = triton.next_power_of_2(head_size)
    # fp32 products (three tf32 products each) hold split operands: half the tile avoids spills.
    tile_elements = _TILE_ELEMENTS // 2 if use_dot and dtype == torch.float32 else _TILE_ELEMENTS
    return {
        "HEADS_PER_KV": heads_per_kv,
        "GROUP_PAD": max(16, triton.next_power_of_2(heads_per_kv)) if use_dot else 1,
        "HEAD_SIZE": head_size,
        "HEAD_PAD": head_pad,
        "TILE": max(16, block_size, min(64, tile_elements // head_pad)),
        "USE_DOT": use_dot,
        # tf32 is exact on half-precision values; fp32 values take tf32x3 (about fp32 accuracy).
        "PRECISION": "tf32x3" if dtype == torch.float32 else "tf32",
        "num_warps": 4,
        "num_stages": 2,
    }


def _partition(
    out: torch.Tensor,
    lse: torch.Tensor | None,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
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
    num_splits: int,
) -> None:
    """Launches :func:`_partition_kernel`: into ``stats`` (max logits, exp sums, fp32 outputs), or
    straight into ``out`` (and ``lse``) when ``stats`` is ``None`` (one split)."""
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[1]
    pattern = sparse or _DENSE
    # Pointer arguments a launch does not use get a tensor that is never accessed.
    max_logits, exp_sums, split_out = stats or (out, out, out)
    _partition_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, seq_lens,
        seq_lens if alibi_slopes is None else alibi_slopes, k_scale, v_scale,
        max_logits, exp_sums, split_out, split_out if tmp_out is None else tmp_out, out, out if lse is None else lse,
        scale, query.stride(0), block_tables.stride(0), key_cache.stride(0), key_cache.stride(1),
        value_cache.stride(0), value_cache.stride(1), num_heads, num_kv_heads, num_splits,
        pattern.local_blocks, pattern.vert_stride, pattern.block_size, pattern.head_sliding_step, pattern.tp_rank,
        BLOCK_SIZE=key_cache.shape[3], X=key_cache.shape[4], SPLIT=split, FP8=_FP8_KINDS[kv_cache_dtype],
        HAS_ALIBI=alibi_slopes is not None, SPARSE=sparse is not None, WRITE_TMP=tmp_out is not None,
        DIRECT=stats is None, WRITE_LSE=lse is not None,
        **_config(num_heads, num_kv_heads, head_size, key_cache.shape[3], query.dtype),
    )  # fmt: skip


def _reduce(
    out: torch.Tensor,
    lse: torch.Tensor | None,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    seq_lens: torch.Tensor,
    split: int,
) -> None:
    """Launches :func:`_reduce_kernel` over the splits in ``stats``."""
    max_logits, exp_sums, split_out = stats
    num_seqs, num_heads, num_splits, head_size = split_out.shape
    _reduce_kernel[(num_seqs, num_heads)](
        out, exp_sums if lse is None else lse, max_logits, exp_sums, split_out, seq_lens, num_seqs, num_heads,
        num_splits, HEAD_SIZE=head_size, HEAD_PAD=triton.next_power_of_2(head_size), SPLIT=split,
        REDUCE_TILE=_REDUCE_TILE, WRITE_LSE=lse is not None,
    )  # fmt: skip


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
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sparse: BlockSparse | None,
    split: int,
) -> None:
    """v1 and ``paged_decode``: as many splits as the block table can hold; one launch if that is one."""
    num_seqs, num_heads, head_size = query.shape
    if num_seqs == 0:
        return
    num_splits = triton.cdiv(block_tables.shape[1] * key_cache.shape[3], split)
    args = (query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype, k_scale,
            v_scale, sparse, split)  # fmt: skip
    if num_splits <= 1:
        _partition(out, lse, None, None, *args, num_splits=1)
        return
    stats = torch.empty((2, num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
    split_out = torch.empty((num_seqs, num_heads, num_splits, head_size), dtype=torch.float32, device=query.device)
    _partition(out, lse, (stats[0], stats[1], split_out), None, *args, num_splits=num_splits)
    _reduce(out, lse, (stats[0], stats[1], split_out), seq_lens, split)


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
    _attention(
        out, None, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, sparse, split,
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
    if query.shape[0] == 0:
        return
    stats = (max_logits, exp_sums, torch.empty(tmp_out.shape, dtype=torch.float32, device=query.device))
    _partition(
        out, None, stats, tmp_out, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes,
        kv_cache_dtype, k_scale, v_scale, sparse, PARTITION_SIZE, exp_sums.shape[2],
    )  # fmt: skip
    _reduce(out, None, stats, seq_lens, PARTITION_SIZE)


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
    """:func:`attnops.paged_attention.reference.paged_decode` on Triton: ``(out, lse [num_heads, num_seqs])``.

    ``split`` (tokens per program) must be a multiple of the cache block size.
    """
    num_seqs, num_heads, _ = query.shape
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty((num_heads, num_seqs), dtype=torch.float32, device=query.device)
    _attention(
        out, lse, query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype,
        k_scale, v_scale, None, split,
    )  # fmt: skip
    return out, lse

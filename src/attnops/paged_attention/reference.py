"""PyTorch reference of vLLM's paged decode attention (``csrc/attention/attention_kernels.cuh``).

One core serves v1, v2 and the LSE variant: :func:`partition_stats` splits every sequence into
partitions of :data:`PARTITION_SIZE` tokens and returns, per (sequence, head, partition), the
statistics vLLM's v2 kernel writes: the max logit, the sum of ``exp(logit - max)`` and the
softmax-normalised partial output. :func:`reduce_partitions` combines them as vLLM's v2 reduce
kernel does; v1 and ``paged_decode`` are that reduction.

The work runs over groups of (sequence, partition) pairs, each group's K/V gathered from the
paged cache, converted to fp32 and kept small enough to stay in the CPU caches; the math is
fp32 (``(scale * q)·k`` + ALiBi, masked softmax, ``p @ V``) with two batched matmuls per group,
GQA handled by viewing the query heads as ``[num_kv_heads, heads_per_kv]``. Unlike vLLM's
kernel, the probabilities are not rounded to the query dtype before ``p @ V``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnops._common.chunking import chunk_budget
from attnops._common.dtypes import fp8_dequantize, is_fp8

PARTITION_SIZE = 512
FLT_MAX = torch.finfo(torch.float32).max
# vLLM normalises with 1 / (exp_sum + 1e-6), in the partition kernel and in the v2 reduction.
SOFTMAX_EPS = 1e-6
# fp32 K+V bytes gathered per group: small enough to stay in cache, large enough to amortise the
# per-group Python overhead (4, 8, 16 and 32 MiB measured on the decode bench shapes; 16 was fastest).
_GROUP_BYTES = 16 << 20


@dataclass(frozen=True)
class BlockSparse:
    """vLLM's block-sparse decode pattern (used when ``vert_stride > 1``).

    A KV block of ``block_size`` tokens (the sparse block, not the cache block) is attended by
    query head ``h`` when it is one of the ``local_blocks`` blocks ending at the query's block, or
    when ``(block + offset(h)) % vert_stride == 0`` with
    ``offset(h) = (tp_rank * num_heads + h) * head_sliding_step + 1`` (sliding on query heads,
    ``head_sliding_step >= 0``) or ``(tp_rank * num_kv_heads + h // heads_per_kv) * -head_sliding_step + 1``
    (sliding on kv heads, ``head_sliding_step < 0``).
    """

    local_blocks: int
    vert_stride: int
    block_size: int
    head_sliding_step: int
    tp_rank: int

    def attended(
        self,
        cache_blocks: torch.Tensor,
        seq_lens: torch.Tensor,
        cache_block_size: int,
        num_heads: int,
        num_kv_heads: int,
    ) -> torch.Tensor:
        """``[pairs, num_heads, blocks]`` bool: which cache blocks ``[pairs, blocks]`` each head attends."""
        sparse_block = cache_blocks * cache_block_size // self.block_size
        query_block = torch.div(seq_lens - 1, self.block_size, rounding_mode="trunc")
        heads = torch.arange(num_heads, device=cache_blocks.device)
        if self.head_sliding_step >= 0:
            offset = (self.tp_rank * num_heads + heads) * self.head_sliding_step + 1
        else:
            kv_heads = heads // (num_heads // num_kv_heads)
            offset = (self.tp_rank * num_kv_heads + kv_heads) * -self.head_sliding_step + 1
        remote = (sparse_block[:, None, :] + offset[None, :, None]) % self.vert_stride == 0
        local = sparse_block > (query_block - self.local_blocks)[:, None]
        return remote | local[:, None, :]


@dataclass
class Partitions:
    """Per-partition statistics of every sequence, fp32.

    Attributes:
        max_logits: ``[num_seqs, num_heads, num_partitions]``; ``-FLT_MAX`` where a partition has no
            attended token (vLLM's initial value).
        exp_sums: ``[num_seqs, num_heads, num_partitions]``, ``sum(exp(logit - max_logit))``.
        out: ``[num_seqs, num_heads, num_partitions, head_size]``, ``sum(exp(logit - max) * v) / (exp_sum + 1e-6)``.
        counts: int64 ``[num_seqs]``, ``ceil(seq_len / PARTITION_SIZE)``; later partitions hold
            ``(-FLT_MAX, 0, 0)``.
    """

    max_logits: torch.Tensor
    exp_sums: torch.Tensor
    out: torch.Tensor
    counts: torch.Tensor


def _dense_fp32(
    raw: torch.Tensor, kv_cache_dtype: str, scale: torch.Tensor | None, compute_dtype: torch.dtype
) -> torch.Tensor:
    """A permuted view of gathered cache blocks as a contiguous fp32 tensor (fp8 dequantised: only then is
    ``scale`` read)."""
    if is_fp8(kv_cache_dtype):
        return fp8_dequantize(raw.contiguous(), kv_cache_dtype, scale, compute_dtype)
    # One pass that converts and lays out at once.
    return torch.empty(raw.shape, dtype=torch.float32, device=raw.device).copy_(raw)


def _gather_blocks(cache: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``cache[ids]``: blocks ``[*ids.shape, *block_shape]``; ``index_select`` is several times faster on CPUs."""
    return cache.index_select(0, ids.flatten()).view(*ids.shape, *cache.shape[1:])


def partition_stats(
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
    sparse: BlockSparse | None = None,
    num_partitions: int | None = None,
) -> Partitions:
    """The per-partition statistics of decode attention over the paged cache.

    Shapes and layouts as in ``paged_attention_v2``; ``num_partitions`` (default: as many as the
    longest sequence needs) sets the partition dimension of the result.
    """
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads, block_size = key_cache.shape[1], key_cache.shape[3]
    heads_per_kv = num_heads // num_kv_heads
    device = query.device
    lens = seq_lens.long()
    counts = (lens + PARTITION_SIZE - 1) // PARTITION_SIZE
    max_len = int(lens.max()) if num_seqs else 0
    if num_partitions is None:
        num_partitions = max(math.ceil(max_len / PARTITION_SIZE), 1)
    result = Partitions(
        max_logits=torch.full((num_seqs, num_heads, num_partitions), -FLT_MAX, device=device),
        exp_sums=torch.zeros(num_seqs, num_heads, num_partitions, device=device),
        out=torch.zeros(num_seqs, num_heads, num_partitions, head_size, device=device),
        counts=counts,
    )
    # Short contexts fit one partition; gather only the blocks they use.
    span = min(PARTITION_SIZE, max(math.ceil(max_len / block_size), 1) * block_size)
    blocks_per_span = span // block_size
    pair_seq = torch.repeat_interleave(torch.arange(num_seqs, device=device), counts)
    first_pair = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    pair_part = torch.arange(pair_seq.numel(), device=device) - first_pair
    group = max(1, chunk_budget(device, _GROUP_BYTES) // (span * num_kv_heads * head_size * 4 * 2))
    # Scaling the query once is cheaper than scaling every logit.
    query_f = (query.float() * scale).view(num_seqs, num_kv_heads, heads_per_kv, head_size)
    tables = block_tables.long()
    for start in range(0, pair_seq.numel(), group):
        seqs, parts = pair_seq[start : start + group], pair_part[start : start + group]
        m, s, o = _group_stats(
            query_f[seqs], key_cache, value_cache, tables[seqs], lens[seqs], parts, blocks_per_span,
            alibi_slopes, kv_cache_dtype, k_scale, v_scale, sparse, query.dtype,
        )  # fmt: skip
        result.max_logits[seqs, :, parts] = m
        result.exp_sums[seqs, :, parts] = s
        result.out[seqs, :, parts] = o
    return result


def _group_stats(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    parts: torch.Tensor,
    blocks_per_span: int,
    alibi_slopes: torch.Tensor | None,
    kv_cache_dtype: str,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    sparse: BlockSparse | None,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max logit, exp sum, normalised output) of each (sequence, partition) pair of one group.

    ``query`` is the scaled fp32 query ``[pairs, num_kv_heads, heads_per_kv, head_size]``; ``tables``, ``lens`` and
    ``parts`` give each pair's block table row, sequence length and partition index.
    """
    pairs, num_kv_heads, heads_per_kv, head_size = query.shape
    num_heads = num_kv_heads * heads_per_kv
    block_size = key_cache.shape[3]
    span = blocks_per_span * block_size
    device = query.device

    blocks = parts[:, None] * blocks_per_span + torch.arange(blocks_per_span, device=device)
    used = blocks < ((lens + block_size - 1) // block_size)[:, None]
    # Table entries past a sequence's last block may hold anything: never use them as block ids.
    ids = torch.where(used, tables.gather(1, blocks.clamp(max=tables.shape[1] - 1)), 0)
    positions = (blocks[:, :, None] * block_size + torch.arange(block_size, device=device)).view(pairs, span)
    valid = positions < lens[:, None]

    # [pairs, blocks, kv_heads, D/x, bs, x] -> [pairs, kv_heads, D/x, x, blocks, bs] = [pairs, kv_heads, D, span]:
    # K transposed, the layout that both converts and multiplies fastest.
    keys = _dense_fp32(_gather_blocks(key_cache, ids).permute(0, 2, 3, 5, 1, 4), kv_cache_dtype, k_scale, compute_dtype)
    logits = torch.matmul(query, keys.view(pairs, num_kv_heads, head_size, span)).view(pairs, num_heads, span)
    if alibi_slopes is not None:
        logits += alibi_slopes[:, None] * (positions - lens[:, None] + 1)[:, None, :]
    if sparse is not None:
        attended = sparse.attended(blocks, lens, block_size, num_heads, num_kv_heads)
        attended = attended[:, :, :, None].expand(-1, -1, -1, block_size).reshape(pairs, num_heads, span)
        # vLLM gives skipped tokens the logit -FLT_MAX: they take part in the max and the exp sum.
        logits.masked_fill_(~attended, -FLT_MAX)
    logits.masked_fill_(~valid[:, None, :], float("-inf"))

    max_logits = logits.amax(-1).clamp_(min=-FLT_MAX)
    weights = logits.sub_(max_logits[..., None]).exp_()
    exp_sums = weights.sum(-1)
    if sparse is not None:
        # Skipped blocks never reach the value product.
        weights.masked_fill_(~attended, 0.0)

    # [pairs, blocks, kv_heads, D, bs] -> [pairs, kv_heads, D, blocks, bs] = [pairs, kv_heads, D, span]
    values = _gather_blocks(value_cache, ids).permute(0, 2, 3, 1, 4)
    values = _dense_fp32(values, kv_cache_dtype, v_scale, compute_dtype).view(pairs, num_kv_heads, head_size, span)
    partial = ~valid.all(-1)
    if bool(partial.any()):
        # Slots past the sequence end may hold NaN (vLLM zeroes them too); weight 0 would not clear them.
        tail = partial.nonzero()[:, 0]
        values[tail] = values[tail].masked_fill(~valid[tail][:, None, None, :], 0.0)
    out = torch.matmul(weights.view(pairs, num_kv_heads, heads_per_kv, span), values.transpose(-1, -2))
    out = out.view(pairs, num_heads, head_size) / (exp_sums + SOFTMAX_EPS)[..., None]
    return max_logits, exp_sums, out


def reduce_partitions(partitions: Partitions) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention output fp32 ``[num_seqs, num_heads, head_size]`` and its LSE fp32 ``[num_seqs, num_heads]``.

    As vLLM's v2 reduce kernel: a sequence of one partition takes that partition's output;
    otherwise the outputs are weighted by ``exp_sum * exp(max_logit - global_max)`` and divided by
    the weights' sum + 1e-6. The LSE is ``log(sum(exp(logit)))``, ``-inf`` for an empty sequence.
    """
    global_max = partitions.max_logits.amax(-1, keepdim=True)
    weights = partitions.exp_sums * torch.exp(partitions.max_logits - global_max)
    total = weights.sum(-1)
    merged = (partitions.out * weights[..., None]).sum(-2) / (total + SOFTMAX_EPS)[..., None]
    single = (partitions.counts <= 1)[:, None, None]
    out = torch.where(single, partitions.out[:, :, 0], merged)
    lse = global_max[..., 0] + torch.log(total)
    return out, lse


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
) -> None:
    """Write decode attention into ``out``."""
    partitions = partition_stats(
        query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale,
        sparse,
    )  # fmt: skip
    out.copy_(reduce_partitions(partitions)[0])


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
    """Write decode attention into ``out`` and the statistics of every used partition into the buffers."""
    partitions = partition_stats(
        query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale,
        sparse, num_partitions=exp_sums.shape[2],
    )  # fmt: skip
    # vLLM's kernel never touches partitions past a sequence's end.
    written = (torch.arange(exp_sums.shape[2], device=out.device) < partitions.counts[:, None])[:, None, :]
    written = written.expand_as(exp_sums)
    exp_sums[written] = partitions.exp_sums[written]
    max_logits[written] = partitions.max_logits[written]
    tmp_out[written] = partitions.out[written].to(tmp_out.dtype)
    out.copy_(reduce_partitions(partitions)[0])


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention (query dtype) and its LSE, fp32 ``[num_heads, num_seqs]`` (the scales may be
    ``None`` for an ``"auto"`` cache: only fp8 caches read them)."""
    partitions = partition_stats(
        query, key_cache, value_cache, block_tables, seq_lens, scale, alibi_slopes, kv_cache_dtype, k_scale, v_scale
    )
    out, lse = reduce_partitions(partitions)
    return out.to(query.dtype), lse.t().contiguous()

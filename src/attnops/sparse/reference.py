"""Pure-PyTorch vertical/slash index conversion and block-sparse prefill attention.

Conversion
----------
vLLM's ``convert_vertical_slash_indexes_kernel`` runs one thread per
(batch, head, row block) that merges the ascending vertical list with the
slash ranges of the descending slash list. Written out, the thread for row
block ``m`` (queries ``[m*M, m*M + M)``) computes this, with
``off = kv_seqlen - q_seqlen`` (causal) or ``kv_seqlen`` (non-causal),
``E = m*M + M + off`` and ``T(s) = max(E - s, M)``:

* It consumes the slashes ``s_j`` from ``j0`` on: ``j0`` is the first slash
  ``< E`` (the last one if none is). Causal rows consume all later slashes;
  non-causal rows stop at the first ``s_j < m*M`` (``j0`` itself always counts).
  ``T`` is non-decreasing along the consumed slashes.
* Slash ``s_j`` covers key columns ``[T - M, T)``. Consecutive slashes form
  *groups*: a group starts at its base ``T_b`` with range ``[T_b - M, T_b)``;
  a later ``T`` with ``T <= re`` changes nothing, ``re < T <= re + M`` grows
  the range by ``M`` (so ``re = T_b + M * ceil((T - T_b) / M)``) and
  ``T > re + M`` closes the group and starts a new one at ``T``.
* If the slash at ``j0`` is ``> E`` (no slash reaches the row block) the only
  range is ``[E, E + N)`` (causal) or ``[kv, kv + N)`` (non-causal).
* ``block_offset`` lists, group by group, ``rs, rs + N, ...`` below
  ``min(re, kv)`` (nothing for a group with ``rs >= kv``).
* A vertical is kept in ``column_index`` unless it lies inside a group range;
  causal rows also drop every vertical ``>= re`` of their last group (the
  kernel stops once its slashes are exhausted), non-causal rows drop verticals
  ``>= max(re_last, kv)``.

The only sequential part is where groups restart. Writing ``d = s_{j-1} - s_j``
for consecutive slashes: ``d <= M`` never restarts a group, and otherwise the
decision depends only on the base slash of the current group modulo ``M`` and
not on the row block (``T`` shifts by ``M`` per row block). So the reference
scans the slash pairs with ``d > M`` in order, vectorised over all row blocks
and heads; everything else is computed with whole-tensor ops.

Attention
---------
:func:`sparse_tables_to_mask` turns the tables into the boolean key mask they
describe and :func:`sparse_prefill_attention` runs fp32 softmax attention under
it, chunked over query row blocks to bound memory.
"""

from __future__ import annotations

import math

import torch

from attnops._common.chunking import chunk_budget

# Intermediate tensors are kept near this many elements by chunking.
_CHUNK_ELEMENTS = 1 << 24
_BIG = 1 << 40


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a + (b - 1), b, rounding_mode="floor")


def _count_at_least(desc_key: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Per row of ``bound``: how many leading valid slashes are ``>= bound``.

    ``desc_key`` is ``-slash`` (ascending) with ``+_BIG`` past each head's count.
    """
    return torch.searchsorted(desc_key, -bound, right=True)


def _group_starts(
    slash: torch.Tensor,
    slash_count: torch.Tensor,
    edge: torch.Tensor,
    j0: torch.Tensor,
    first_free: torch.Tensor,
    end: torch.Tensor,
    live: torch.Tensor,
    block_size_M: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slash positions where groups start, ``[bh, rows, G]`` with a validity mask.

    ``first_free`` is the first slash whose ``T`` is not clamped to ``M``;
    ``end`` is one past the last consumed slash; ``live`` marks rows that
    have slash ranges at all.
    """
    bh, nnz = slash.shape
    M = block_size_M
    s_j0 = slash.gather(1, j0)
    # The base slash of the current group; a clamped base (T = M) acts as slash E - M.
    base = torch.minimum(s_j0, edge - M)

    # Clamped slashes before first_free all have T = M; the first unclamped
    # one restarts the group iff it lies more than M past that.
    has_free = live & (j0 < first_free) & (first_free < end)
    s_free = slash.gather(1, first_free.clamp(max=nnz - 1))
    free_restart = has_free & ((edge - M) - s_free > M)
    base = torch.where(free_restart, s_free, base)

    # Candidate restarts: consecutive valid slashes more than M apart.
    j = torch.arange(nnz, device=slash.device)
    gap = torch.zeros_like(slash)
    gap[:, 1:] = slash[:, :-1] - slash[:, 1:]
    candidate = (gap > M) & (j < slash_count[:, None])
    num_cand = candidate.sum(1)
    width = int(num_cand.max()) if bh > 0 else 0
    cand_pos = torch.sort(torch.where(candidate, j, nnz), dim=1).values[:, :width]

    restarts = torch.zeros(*j0.shape, width, dtype=torch.bool, device=slash.device)
    for c in range(width):
        pos = cand_pos[:, c : c + 1]
        prev = slash.gather(1, (pos - 1).clamp(0, nnz - 1))
        here = slash.gather(1, pos.clamp(max=nnz - 1))
        active = live & (pos > first_free) & (pos < end)
        restart = active & (prev - here > M + torch.remainder(prev - base, M))
        base = torch.where(restart, here, base)
        restarts[..., c] = restart

    starts = torch.cat([j0[..., None], first_free[..., None], cand_pos[:, None, :].expand_as(restarts)], dim=-1)
    valid = torch.cat([live[..., None], free_restart[..., None], restarts], dim=-1)
    # Stable compaction keeps the (ascending) slash order of the valid starts.
    order = torch.sort((~valid).to(torch.uint8), dim=-1, stable=True).indices
    order = order[..., : max(1, int(valid.sum(-1).max()))]
    return starts.gather(-1, order), valid.gather(-1, order)


def _convert_chunk(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical: torch.Tensor,
    slash: torch.Tensor,
    vertical_count: torch.Tensor,
    slash_count: torch.Tensor,
    num_rows: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """Write the tables of ``bh`` (batch, head) pairs into ``outputs`` (int32 views, one row per pair).

    Every other tensor argument holds one int64 entry (or row) per pair.
    """
    M, N = block_size_M, block_size_N
    nnz_s = slash.shape[1]
    device = slash.device
    rows = torch.arange(num_rows, device=device)
    start_m = rows * M
    q = q_seqlens[:, None]
    kv = kv_seqlens[:, None]
    edge = start_m + M + (kv - q if causal else kv)  # E, [bh, rows]
    active = start_m < q

    s_valid = torch.arange(nnz_s, device=device) < slash_count[:, None]
    desc_key = torch.where(s_valid, -slash, _BIG)
    j0 = torch.minimum(_count_at_least(desc_key, edge), slash_count[:, None] - 1)
    has_slash = slash.gather(1, j0) <= edge
    live = active & has_slash
    first_free = _count_at_least(desc_key, edge - M)
    if causal:
        end = slash_count[:, None].expand_as(j0)
    else:
        end = torch.maximum(j0 + 1, _count_at_least(desc_key, start_m.expand_as(j0).contiguous()))

    starts, valid = _group_starts(slash, slash_count, edge, j0, first_free, end, live, M)
    num_groups = valid.sum(-1, keepdim=True)
    # A group ends just before the next group's start (the last one at `end`).
    next_start = torch.cat([starts[..., 1:], end[..., None]], dim=-1)
    group = torch.arange(starts.shape[-1], device=device)
    last = torch.where(group + 1 < num_groups, next_start, end[..., None]) - 1
    flat = lambda t: t.flatten(1).clamp(0, nnz_s - 1)
    t_first = (edge[..., None] - slash.gather(1, flat(starts)).view_as(starts)).clamp(min=M)
    t_last = (edge[..., None] - slash.gather(1, flat(last)).view_as(last)).clamp(min=M)
    range_start = t_first - M
    range_end = t_last + torch.remainder(t_first - t_last, M)

    # Rows that no slash reaches keep one range past the causal edge / the keys.
    lone = (active & ~has_slash)[..., None] & (group == 0)
    lone_start = (edge if causal else kv.expand_as(edge))[..., None]
    range_start = torch.where(lone, lone_start, range_start)
    range_end = torch.where(lone, lone_start + N, range_end)
    valid = valid | lone

    block_count, block_offset, column_count, column_index = outputs
    _expand_blocks(range_start, range_end, valid, kv, N, block_count, block_offset)
    cutoff = range_end.gather(-1, (num_groups - 1).clamp(min=0)).squeeze(-1)
    if not causal:
        cutoff = torch.maximum(cutoff, kv)
    _keep_verticals(vertical, vertical_count, range_start, range_end, valid, cutoff, active, column_count, column_index)


def _expand_blocks(
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    valid: torch.Tensor,
    kv: torch.Tensor,
    N: int,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
) -> None:
    """Write each range as blocks of ``N`` from its start, clipped at ``kv``, into the int32 outputs."""
    kv = kv[..., None]
    blocks = torch.where(valid & (range_start < kv), _ceil_div(torch.minimum(range_end, kv) - range_start, N), 0)
    counts = blocks.sum(-1)
    block_count.copy_(counts)
    width = int(counts.max())
    if width == 0:
        return
    # Within a range the offsets step by N, so offset[k] - k*N is constant per range (ranges
    # without blocks only trail): scatter its jumps at each range's first slot and take a running sum.
    first_slot = torch.cumsum(blocks, -1) - blocks
    level = range_start - first_slot * N
    jump = level - torch.cat([torch.zeros_like(level[..., :1]), level[..., :-1]], -1)
    jumps = torch.zeros(*counts.shape, width + 1, dtype=torch.int64, device=range_start.device)
    jumps.scatter_add_(-1, torch.where(blocks > 0, first_slot, width), torch.where(blocks > 0, jump, 0))
    slot = torch.arange(width, device=range_start.device)
    offsets = torch.cumsum(jumps[..., :width], -1) + slot * N
    block_offset[..., :width] = torch.where(slot < counts[..., None], offsets, 0)


def _keep_verticals(
    vertical: torch.Tensor,
    vertical_count: torch.Tensor,
    range_start: torch.Tensor,
    range_end: torch.Tensor,
    valid: torch.Tensor,
    cutoff: torch.Tensor,
    active: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
) -> None:
    """Write the verticals outside every range and below the row's ``cutoff`` into the int32 outputs."""
    bh, rows, _ = range_start.shape
    nnz_v = vertical.shape[1]
    device = vertical.device
    position = torch.arange(nnz_v, device=device)
    key = torch.where(position < vertical_count[:, None], vertical, _BIG)
    # The verticals inside [range_start, range_end) are positions [lo, hi) of the sorted list.
    lo = torch.searchsorted(key, range_start.flatten(1)).view_as(range_start)
    hi = torch.searchsorted(key, range_end.flatten(1)).view_as(range_end)
    ones = valid.to(torch.int32)
    cover = torch.zeros(bh, rows, nnz_v + 1, dtype=torch.int32, device=device)
    cover.scatter_add_(-1, lo, ones)
    cover.scatter_add_(-1, hi, -ones)
    below = torch.searchsorted(key, cutoff)  # positions [0, below) lie under the cut-off
    keep = (torch.cumsum(cover[..., :nnz_v], -1, dtype=torch.int32) == 0) & (position < below[..., None])
    keep &= active[..., None]
    counts = keep.sum(-1, dtype=torch.int32)
    column_count.copy_(counts)
    width = int(counts.max())
    if width == 0:
        return
    slot = torch.where(keep, torch.cumsum(keep, -1, dtype=torch.int32) - 1, width).long()
    kept = torch.zeros(bh, rows, width + 1, dtype=torch.int32, device=device)
    kept.scatter_(-1, slot, vertical.to(torch.int32)[:, None, :].expand(bh, rows, nnz_v))
    column_index[..., :width] = kept[..., :width]


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
    """Reference for both conversion ops (the plain one passes full counts)."""
    batch, heads, nnz_v = vertical_indexes.shape
    nnz_s = slash_indexes.shape[2]
    num_rows = (context_size + block_size_M - 1) // block_size_M
    device = slash_indexes.device
    block_count = torch.zeros(batch, heads, num_rows, dtype=torch.int32, device=device)
    block_offset = torch.zeros(batch, heads, num_rows, nnz_s, dtype=torch.int32, device=device)
    column_count = torch.zeros(batch, heads, num_rows, dtype=torch.int32, device=device)
    column_index = torch.zeros(batch, heads, num_rows, nnz_v, dtype=torch.int32, device=device)
    if batch * heads * num_rows == 0:
        return block_count, block_offset, column_count, column_index

    per_pair = lambda t: t.reshape(batch * heads, -1).long()
    pair_q = q_seqlens.long().repeat_interleave(heads)
    pair_kv = kv_seqlens.long().repeat_interleave(heads)
    pair_nv = vertical_indices_count.long().repeat(batch)
    pair_ns = slash_indices_count.long().repeat(batch)
    vertical, slash = per_pair(vertical_indexes), per_pair(slash_indexes)
    outputs = [t.view(batch * heads, num_rows, -1) for t in (block_count, block_offset, column_count, column_index)]
    outputs[0], outputs[2] = outputs[0].squeeze(-1), outputs[2].squeeze(-1)
    step = max(1, chunk_budget(block_count.device, _CHUNK_ELEMENTS) // (num_rows * (max(nnz_v, nnz_s) + 2)))
    for p in range(0, batch * heads, step):
        part = slice(p, p + step)
        _convert_chunk(
            pair_q[part],
            pair_kv[part],
            vertical[part],
            slash[part],
            pair_nv[part],
            pair_ns[part],
            num_rows,
            block_size_M,
            block_size_N,
            causal,
            tuple(t[part] for t in outputs),
        )
    return block_count, block_offset, column_count, column_index


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
    heads, nnz_v, nnz_s = vertical_indexes.shape[1], vertical_indexes.shape[2], slash_indexes.shape[2]
    device = slash_indexes.device
    return convert_vertical_slash_indexes_mergehead(
        q_seqlens,
        kv_seqlens,
        vertical_indexes,
        slash_indexes,
        torch.full((heads,), nnz_v, dtype=torch.int32, device=device),
        torch.full((heads,), nnz_s, dtype=torch.int32, device=device),
        context_size,
        block_size_M,
        block_size_N,
        causal,
    )


def _row_block_key_mask(
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    kv_len: int,
    block_size_N: int,
) -> torch.Tensor:
    """``[..., rows, kv_len]`` bool: the keys each row block's tables select (before causality)."""
    device = block_offset.device
    nnz_s, nnz_v = block_offset.shape[-1], column_index.shape[-1]
    block_ok = torch.arange(nnz_s, device=device) < block_count[..., None].long()
    first = block_offset.long().clamp(0, kv_len)
    stop = (block_offset.long() + block_size_N).clamp(0, kv_len)
    ones = block_ok.to(torch.int32)
    cover = torch.zeros(*block_count.shape, kv_len + 1, dtype=torch.int32, device=device)
    cover.scatter_add_(-1, first, ones)
    cover.scatter_add_(-1, stop, -ones)
    mask = torch.cumsum(cover[..., :kv_len], -1) > 0

    col = column_index.long()
    col_ok = (torch.arange(nnz_v, device=device) < column_count[..., None].long()) & (col >= 0) & (col < kv_len)
    hits = torch.zeros(*block_count.shape, kv_len + 1, dtype=torch.bool, device=device)
    hits.scatter_(-1, torch.where(col_ok, col, kv_len), True)
    return mask | hits[..., :kv_len]


def _rows_mask(
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    row_blocks: slice,
    q_len: int,
    kv_len: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> torch.Tensor:
    """``[batch, heads, rows, kv_len]`` bool mask of the query rows in ``row_blocks``."""
    block_count, block_offset, column_count, column_index = (t[:, :, row_blocks] for t in tables)
    keys = _row_block_key_mask(block_count, block_offset, column_count, column_index, kv_len, block_size_N)
    first_row = row_blocks.start * block_size_M
    rows = min(keys.shape[2] * block_size_M, q_len - first_row)
    mask = keys.repeat_interleave(block_size_M, dim=2)[:, :, :rows]
    if causal:
        query = torch.arange(first_row, first_row + rows, device=mask.device)
        key = torch.arange(kv_len, device=mask.device)
        mask = mask & (key[None, :] <= query[:, None] + (kv_len - q_len))
    return mask


def sparse_tables_to_mask(
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    q_len: int,
    kv_len: int,
    block_size_M: int = 64,
    block_size_N: int = 64,
    causal: bool = True,
) -> torch.Tensor:
    """The dense ``[batch, heads, q_len, kv_len]`` bool mask the tables describe.

    Query row ``i`` of (batch ``b``, head ``h``) lies in row block
    ``m = i // block_size_M`` and sees key ``j`` when ``j`` is one of the
    first ``column_count[b, h, m]`` entries of ``column_index[b, h, m]``
    or falls in ``[o, o + block_size_N)`` for one of the first
    ``block_count[b, h, m]`` entries ``o`` of ``block_offset[b, h, m]``;
    with ``causal`` also ``j <= i + kv_len - q_len``. Entries outside
    ``[0, kv_len)`` select nothing.
    """
    num_rows = -(-q_len // block_size_M)
    tables = (block_count, block_offset, column_count, column_index)
    return _rows_mask(tables, slice(0, num_rows), q_len, kv_len, block_size_M, block_size_N, causal)


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
    """fp32 softmax attention under :func:`sparse_tables_to_mask`; returns ``(out, lse)``."""
    batch, heads, q_len, head_size = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    out = torch.zeros(batch, heads, q_len, head_size, dtype=q.dtype, device=q.device)
    lse = torch.full((batch, heads, q_len), -math.inf, dtype=torch.float32, device=q.device)
    if q_len == 0 or kv_len == 0:
        return out, lse
    # Query heads sharing a KV head sit next to each other: [batch, kv_heads, group, ...].
    per_head_block = batch * group * block_size_M * kv_len
    budget = chunk_budget(q.device, _CHUNK_ELEMENTS)
    heads_per_step = max(1, min(kv_heads, budget // per_head_block))
    rows_per_step = max(1, budget // (per_head_block * heads_per_step))
    num_rows = -(-q_len // block_size_M)
    for h in range(0, kv_heads, heads_per_step):
        kv_part = slice(h, h + heads_per_step)
        q_part = slice(h * group, (h + heads_per_step) * group)
        tables = tuple(t[:, q_part] for t in (block_count, block_offset, column_count, column_index))
        kf = k[:, kv_part, None].float()
        vf = v[:, kv_part, None].float()
        for r in range(0, num_rows, rows_per_step):
            blocks = slice(r, min(num_rows, r + rows_per_step))
            mask = _rows_mask(tables, blocks, q_len, kv_len, block_size_M, block_size_N, causal)
            queries = slice(r * block_size_M, r * block_size_M + mask.shape[2])
            qf = q[:, q_part, queries].float().unflatten(1, (-1, group))
            logits = torch.matmul(qf, kf.transpose(-1, -2)) * scale
            logits = logits.masked_fill(~mask.reshape(logits.shape), -math.inf)
            row_lse = torch.logsumexp(logits, dim=-1)
            seen = torch.isfinite(row_lse)
            probs = torch.exp(logits - torch.where(seen, row_lse, 0.0)[..., None])
            out[:, q_part, queries] = torch.matmul(probs, vf).flatten(1, 2).to(q.dtype)
            lse[:, q_part, queries] = row_lse.flatten(1, 2)
    return out, lse


def estimate_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    last_q: int,
    n_vertical: int,
    n_slash: int,
    scale: float,
    sink_columns: int,
    local_diagonals: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top verticals (ascending) and slashes (descending) from the last ``last_q`` queries, int32."""
    batch, heads, q_len = q.shape[:3]
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    query = torch.arange(q_len - last_q, q_len, device=q.device) + (kv_len - q_len)
    key = torch.arange(kv_len, device=q.device)
    offset = query[:, None] - key[None, :]  # diagonal offset of each (query, key); < 0 is in the future
    column_score = torch.empty(batch, heads, kv_len, dtype=torch.float32, device=q.device)
    slash_score = torch.zeros(batch, heads, kv_len, dtype=torch.float32, device=q.device)
    heads_per_step = max(1, chunk_budget(q.device, _CHUNK_ELEMENTS) // max(1, batch * group * last_q * kv_len))
    for h in range(0, kv_heads, heads_per_step):
        q_part = slice(h * group, (h + heads_per_step) * group)
        qf = q[:, q_part, q_len - last_q :].float().unflatten(1, (-1, group))
        kf = k[:, h : h + heads_per_step, None].float()
        logits = torch.matmul(qf, kf.transpose(-1, -2)) * scale
        probs = torch.softmax(logits.masked_fill(offset < 0, -math.inf), dim=-1).flatten(1, 2)
        column_score[:, q_part] = probs.sum(-2)
        slash_score[:, q_part] = slash_score[:, q_part].scatter_add(
            -1, offset.clamp(min=0).flatten().expand(*probs.shape[:2], -1), probs.flatten(2)
        )
    column_score[..., :sink_columns] = math.inf
    slash_score[..., :local_diagonals] = math.inf
    vertical = torch.topk(column_score, n_vertical, dim=-1).indices.sort(dim=-1).values
    slash = torch.topk(slash_score, n_slash, dim=-1).indices.sort(dim=-1, descending=True).values
    return vertical.to(torch.int32), slash.to(torch.int32)

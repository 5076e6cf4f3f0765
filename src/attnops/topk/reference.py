"""Pure-PyTorch ``top_k_per_row_prefill`` / ``top_k_per_row_decode``: the CPU default and the oracle.

Row ``r`` of the logits starts at element ``r * stride0`` of the logits
storage (counted from the tensor's storage offset, as vLLM's raw pointer
does) and column ``c`` sits ``c * stride1`` further. The selection is exact:
``torch.topk`` runs on the fp32 values with the positions outside a row's
range set to ``-inf``, and the rare rows where that can go wrong (a ``-inf``
or NaN gets selected) are redone on an integer key that orders fp32 values
exactly and ranks every position outside the range below every real value,
so ties never produce duplicate or out-of-range indices. Equal values
(``-0.0`` and ``+0.0`` included) are ties, broken either way.
"""

from __future__ import annotations

import torch

from attnops._common.chunking import chunk_budget

# Rows per chunk are chosen so that one chunk's candidate matrix stays near
# this many elements, whatever the row length.
_CHUNK_ELEMENTS = 1 << 22
# Below the key of every fp32 value (keys fit in int32).
_OUT_OF_RANGE_KEY = -(1 << 40)


def storage_elements(logits: torch.Tensor) -> int:
    """fp32 elements addressable from ``logits.data_ptr()`` to the end of its storage."""
    return logits.untyped_storage().nbytes() // logits.element_size() - logits.storage_offset()


def decode_row_lengths(seq_lens: torch.Tensor, next_n: int, num_rows: int) -> torch.Tensor:
    """int64 ``[num_rows]`` row lengths of ``top_k_per_row_decode``.

    A 1-D ``seq_lens`` holds one length per request and row ``r`` is draft
    position ``r % next_n`` of request ``r // next_n``; a 2-D one holds each
    row's own length. Negative lengths mean an empty row (vLLM clamps to 0).
    """
    rows = torch.arange(num_rows, device=seq_lens.device)
    if seq_lens.dim() == 2:
        lengths = seq_lens.reshape(-1)[:num_rows].long()
    else:
        lengths = seq_lens[rows // next_n].long() - next_n + rows % next_n + 1
    return lengths.clamp_min(0)


def _ordered_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys with the order of the fp32 ``values`` (``-0.0`` just below ``+0.0``)."""
    bits = values.view(torch.int32).long()
    # Negative floats grow in magnitude as their bit pattern grows: flip the
    # magnitude bits so that a larger magnitude gives a smaller key.
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _read_window(
    logits: torch.Tensor, rows: torch.Tensor, first: int, width: int, stride0: int, stride1: int
) -> torch.Tensor:
    """fp32 ``[len(rows), width]`` copy of columns ``[first, first + width)`` of ``rows``, through a strided view."""
    window = torch.as_strided(
        logits, (int(rows[-1]) + 1, width), (stride0, stride1), logits.storage_offset() + first * stride1
    )
    return window.index_select(0, rows)


def _gather_ranges(
    logits: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, width: int, stride0: int, stride1: int
) -> torch.Tensor:
    """fp32 ``[len(rows), width]``: ``width`` columns of each row from its start, gathered element by element."""
    available = storage_elements(logits)
    flat = torch.as_strided(logits, (available,), (1,), logits.storage_offset())
    columns = torch.arange(width, device=logits.device)
    offsets = rows[:, None] * stride0 + (starts[:, None] + columns) * stride1
    # Past a row's end the offsets may leave the storage: read any valid element there instead.
    return flat[offsets.clamp_max(available - 1)]


def _mask_outside(
    values: torch.Tensor, columns: torch.Tensor, shift: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Set ``values`` outside each row's range ``[shift, shift + lengths)`` to ``-inf`` in place; returns ``values``.

    Only the leading and trailing columns that some row leaves out are
    touched: a full-width mask costs up to a fifth of the top-k itself.
    """
    ends = shift + lengths
    head, tail = int(shift.max()), int(ends.min())
    if head > 0:
        values[:, :head].masked_fill_(columns[:head] < shift, float("-inf"))
    if tail < values.shape[1]:
        values[:, tail:].masked_fill_(columns[tail:] >= ends, float("-inf"))
    return values


def _select_long_rows(
    logits: torch.Tensor,
    rows: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    out: torch.Tensor,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Write into ``out[rows]`` the column indices of the largest values of rows longer than ``topk_tokens``.

    Candidates: the rows' common column window ``[min(starts), max(ends))``
    read through a strided view when it lies inside the storage and is at
    most twice as wide as the longest range, else each range gathered from
    its own start. The layout is chosen for all the rows at once so that a
    row's result does not depend on the chunking.

    ``torch.topk`` runs on the candidates with everything outside a row's
    range set to ``-inf``. That is exact unless it selects a ``-inf`` (it may
    then pick a position outside the range) or a NaN (``torch.topk`` puts
    every NaN first; we follow vLLM's bit-pattern order, negative NaN below
    ``-inf``): those rows are redone on integer keys that order fp32 values
    exactly and rank positions outside the range below all of them.
    """
    first, last, longest = int(starts.min()), int((starts + lengths).max()), int(lengths.max())
    by_view = last - first <= 2 * longest and int(rows[-1]) * stride0 + (last - 1) * stride1 < storage_elements(logits)
    width = last - first if by_view else longest
    # Where each row's range begins among its candidates.
    shift = starts - first if by_view else torch.zeros_like(starts)
    columns = torch.arange(width, device=logits.device)
    chunk = max(1, chunk_budget(logits.device, _CHUNK_ELEMENTS) // width)
    for lo in range(0, rows.numel(), chunk):
        r, s, n = rows[lo : lo + chunk], shift[lo : lo + chunk, None], lengths[lo : lo + chunk, None]
        if by_view:
            values = _read_window(logits, r, first, width, stride0, stride1)
        else:
            values = _gather_ranges(logits, r, starts[lo : lo + chunk], width, stride0, stride1)
        top = _mask_outside(values, columns, s, n).topk(topk_tokens, dim=1, sorted=False)
        indices = top.indices
        exact = top.values > float("-inf")  # False for -inf and NaN
        if not bool(exact.all()):
            redo = torch.nonzero(~exact.all(dim=1)).flatten()
            # Masking left the values inside each range untouched.
            outside = (columns < s[redo]) | (columns >= (s + n)[redo])
            keys = torch.where(outside, _OUT_OF_RANGE_KEY, _ordered_key(values[redo]))
            indices[redo] = keys.topk(topk_tokens, dim=1, sorted=False).indices
        out[r] = (indices - s).to(out.dtype)


def _top_k_rows(
    logits: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Write each row's top-k column indices, relative to the row start, into ``raw_topk_indices``."""
    num_rows = lengths.numel()
    out = raw_topk_indices[:num_rows, :topk_tokens]
    long_rows = torch.nonzero(lengths > topk_tokens).flatten()
    if long_rows.numel() < num_rows:
        # A row no longer than k yields 0..len-1 then -1, like vLLM's shortcut
        # (the long rows get overwritten below).
        slots = torch.arange(topk_tokens, device=logits.device)
        out.copy_(torch.where(slots < lengths[:, None], slots, -1))
    if long_rows.numel() > 0:
        _select_long_rows(logits, long_rows, starts[long_rows], lengths[long_rows], out, stride0, stride1, topk_tokens)


def top_k_per_row_prefill(
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Top-k of row ``r`` over columns ``[cu_seqlen_ks[r], cu_seqlen_ke[r])``; inputs are validated."""
    starts = cu_seqlen_ks[:num_rows].long()
    lengths = cu_seqlen_ke[:num_rows].long() - starts
    _top_k_rows(logits, starts, lengths, raw_topk_indices, stride0, stride1, topk_tokens)


def top_k_per_row_decode(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Top-k of row ``r`` over columns ``[0, decode_row_lengths(...)[r])``; inputs are validated."""
    lengths = decode_row_lengths(seq_lens, next_n, num_rows)
    starts = torch.zeros_like(lengths)
    _top_k_rows(logits, starts, lengths, raw_topk_indices, stride0, stride1, topk_tokens)

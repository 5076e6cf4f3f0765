"""Pure-PyTorch ``top_k_per_row_prefill`` / ``top_k_per_row_decode``: the CPU default and the oracle.

Row ``r`` of the logits starts at element ``r * stride0`` of the logits
storage (counted from the tensor's storage offset, as vLLM's raw pointer
does) and column ``c`` sits ``c * stride1`` further. The selection is exact:
candidates are ranked by an integer key that orders fp32 values exactly
(``-inf`` included), and positions outside a row's range get a key below
every real value, so ties never produce duplicate or out-of-range indices.
"""

from __future__ import annotations

import torch

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


def _select_long_rows(
    logits: torch.Tensor,
    rows: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> torch.Tensor:
    """Column indices ``[len(rows), topk_tokens]`` of the largest values of rows longer than ``topk_tokens``."""
    flat = torch.as_strided(logits, (storage_elements(logits),), (1,), logits.storage_offset())
    width = int(lengths.max())
    columns = torch.arange(width, device=logits.device)
    chunk = max(1, _CHUNK_ELEMENTS // width)
    picked = []
    for lo in range(0, rows.numel(), chunk):
        r, s, n = rows[lo : lo + chunk, None], starts[lo : lo + chunk, None], lengths[lo : lo + chunk, None]
        in_range = columns < n
        offsets = torch.where(in_range, r * stride0 + (s + columns) * stride1, 0)
        keys = torch.where(in_range, _ordered_key(flat[offsets]), _OUT_OF_RANGE_KEY)
        picked.append(keys.topk(topk_tokens, dim=1, sorted=False).indices)
    return torch.cat(picked)


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
    # A row no longer than k yields 0..len-1 then -1, like vLLM's shortcut.
    slots = torch.arange(topk_tokens, device=logits.device)
    result = torch.where(slots < lengths[:, None], slots, -1)
    long_rows = torch.nonzero(lengths > topk_tokens).flatten()
    if long_rows.numel() > 0:
        result[long_rows] = _select_long_rows(
            logits, long_rows, starts[long_rows], lengths[long_rows], stride0, stride1, topk_tokens
        )
    raw_topk_indices[:num_rows, :topk_tokens].copy_(result)


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

"""``top_k_per_row_prefill`` / ``top_k_per_row_decode``: validation, dispatch and registration."""

from __future__ import annotations

import torch

from attnops._common.backend import Dispatcher
from attnops._common.registry import register_op
from attnops._common.validate import check_int, check_same_device, check_tensor, values_checked
from attnops.topk import reference


def _validate_common(
    logits: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Checks shared by both ops: logits, output and the integer arguments."""
    check_tensor("logits", logits, dtype=torch.float32, ndim=2)
    check_tensor("raw_topk_indices", raw_topk_indices, dtype=torch.int32, ndim=2)
    check_int("num_rows", num_rows, min_value=0, max_value=raw_topk_indices.shape[0])
    check_int("stride0", stride0, min_value=0)
    check_int("stride1", stride1, min_value=1)
    check_int("topk_tokens", topk_tokens, min_value=1, max_value=raw_topk_indices.shape[1])


def _check_rows_fit(
    arg: str, logits: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, stride0: int, stride1: int
) -> None:
    """Every non-empty row's last element must lie inside the logits storage (reads values)."""
    rows = torch.arange(lengths.numel(), device=lengths.device)
    last = torch.where(lengths > 0, rows * stride0 + (starts + lengths - 1) * stride1, -1)
    if last.numel() == 0:
        return
    row = int(last.argmax())
    available = reference.storage_elements(logits)
    if int(last[row]) >= available:
        raise ValueError(
            f"{arg}: row {row} (start {int(starts[row])}, length {int(lengths[row])}) reads logits element "
            f"{int(last[row])} with stride0={stride0}, stride1={stride1}, but the logits storage holds only "
            f"{available} elements from its start"
        )


def _validate_top_k_per_row_prefill(
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    _validate_common(logits, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)
    check_tensor("cu_seqlen_ks", cu_seqlen_ks, dtype=torch.int32, ndim=1)
    check_tensor("cu_seqlen_ke", cu_seqlen_ke, dtype=torch.int32, ndim=1)
    for name, bounds in (("cu_seqlen_ks", cu_seqlen_ks), ("cu_seqlen_ke", cu_seqlen_ke)):
        if bounds.shape[0] < num_rows:
            raise ValueError(f"{name}: expected at least num_rows ({num_rows}) entries, got {bounds.shape[0]}")
    check_same_device(
        "logits",
        {
            "logits": logits,
            "cu_seqlen_ks": cu_seqlen_ks,
            "cu_seqlen_ke": cu_seqlen_ke,
            "raw_topk_indices": raw_topk_indices,
        },
    )
    if not values_checked(logits, cu_seqlen_ks, cu_seqlen_ke) or num_rows == 0:
        return
    starts = cu_seqlen_ks[:num_rows].long()
    ends = cu_seqlen_ke[:num_rows].long()
    if int(starts.min()) < 0:
        raise ValueError(f"cu_seqlen_ks: expected values >= 0, got {int(starts.min())}")
    shorter = torch.nonzero(ends < starts).flatten()
    if shorter.numel() > 0:
        row = int(shorter[0])
        raise ValueError(
            f"cu_seqlen_ke: expected values >= cu_seqlen_ks, got {int(ends[row])} < {int(starts[row])} in row {row}"
        )
    _check_rows_fit("cu_seqlen_ke", logits, starts, ends - starts, stride0, stride1)


def _validate_top_k_per_row_decode(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    _validate_common(logits, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)
    check_int("next_n", next_n, min_value=1)
    check_tensor("seq_lens", seq_lens, dtype=torch.int32)
    if seq_lens.dim() == 1:
        needed, have = -(-num_rows // next_n), seq_lens.shape[0]
    elif seq_lens.dim() == 2:
        needed, have = num_rows, seq_lens.numel()
    else:
        raise ValueError(f"seq_lens: expected a 1-D or 2-D tensor, got {seq_lens.dim()}-D")
    if have < needed:
        raise ValueError(
            f"seq_lens: expected at least {needed} entries for num_rows={num_rows}, next_n={next_n}, "
            f"got shape {tuple(seq_lens.shape)}"
        )
    check_same_device("logits", {"logits": logits, "seq_lens": seq_lens, "raw_topk_indices": raw_topk_indices})
    if not values_checked(logits, seq_lens) or num_rows == 0:
        return
    lengths = reference.decode_row_lengths(seq_lens, next_n, num_rows)
    _check_rows_fit("seq_lens", logits, torch.zeros_like(lengths), lengths, stride0, stride1)


_prefill_dispatcher = Dispatcher(
    "top_k_per_row_prefill", reference.top_k_per_row_prefill, _validate_top_k_per_row_prefill
)
_decode_dispatcher = Dispatcher("top_k_per_row_decode", reference.top_k_per_row_decode, _validate_top_k_per_row_decode)


@register_op("top_k_per_row_prefill", mutates_args=("raw_topk_indices",), validate=_validate_top_k_per_row_prefill)
def top_k_per_row_prefill(
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
    backend: str | None = None,
) -> None:
    """Per-row top-k column indices over a ragged column range (DeepSeek V3.2 indexer, prefill).

    Row ``r`` (``0 <= r < num_rows``) covers columns
    ``[cu_seqlen_ks[r], cu_seqlen_ke[r])``; column ``c`` of row ``r`` is element
    ``r * stride0 + c * stride1`` of the logits storage counted from
    ``logits.data_ptr()`` (vLLM's addressing, so ``stride1 != 1`` and padded rows work).
    ``raw_topk_indices[r, :topk_tokens]`` receives the indices, relative to
    ``cu_seqlen_ks[r]``, of the ``topk_tokens`` largest values of the row, in
    no particular order; ties are broken arbitrarily but an index never
    repeats. A row of length ``n <= topk_tokens`` yields ``0, 1, ..., n-1``
    followed by ``-1``. Entries outside ``[:num_rows, :topk_tokens]`` are left alone.
    Follows vLLM's ``csrc/sampler.cu`` (``top_k_per_row_prefill``).

    Args:
        logits: ``[num_logit_rows, num_columns]`` fp32 (any strides; addressing uses ``stride0``/``stride1``).
        cu_seqlen_ks: ``[>= num_rows]`` int32, first column of each row (``>= 0``).
        cu_seqlen_ke: ``[>= num_rows]`` int32, end column of each row (``>= cu_seqlen_ks``).
        raw_topk_indices: ``[>= num_rows, >= topk_tokens]`` int32, written in place.
        num_rows: rows to process, ``0 <= num_rows <= raw_topk_indices.shape[0]``.
        stride0: elements between row starts (``>= 0``), usually ``logits.stride(0)``.
        stride1: elements between columns (``>= 1``), usually ``logits.stride(1)``.
        topk_tokens: ``k``, ``1 <= k <= raw_topk_indices.shape[1]``.
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Raises:
        TypeError, ValueError: on bad input (including rows that read past the
            logits storage, checked where values are checked), before anything is written.
    """
    _, impl = _prefill_dispatcher.prepare(
        backend, logits, cu_seqlen_ks, cu_seqlen_ke, raw_topk_indices, num_rows, stride0, stride1, topk_tokens
    )
    impl(logits, cu_seqlen_ks, cu_seqlen_ke, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)


@register_op("top_k_per_row_decode", mutates_args=("raw_topk_indices",), validate=_validate_top_k_per_row_decode)
def top_k_per_row_decode(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
    backend: str | None = None,
) -> None:
    """Per-row top-k column indices for decode rows (DeepSeek V3.2 indexer, with ``next_n`` draft tokens).

    Row ``r`` covers columns ``[0, n_r)`` with
    ``n_r = max(0, seq_lens[r // next_n] - next_n + r % next_n + 1)`` for a
    1-D ``seq_lens`` (one length per request, ``next_n`` query tokens each),
    or ``n_r = max(0, seq_lens.flatten()[r])`` for a 2-D ``seq_lens`` holding
    each row's own length (newer vLLM). Addressing, output format, ties and
    short rows are as in :func:`top_k_per_row_prefill` with a row start of 0.
    Follows vLLM's ``csrc/sampler.cu`` (``top_k_per_row_decode``).

    Args:
        logits: ``[num_logit_rows, num_columns]`` fp32 (any strides; addressing uses ``stride0``/``stride1``).
        next_n: query tokens per request, ``>= 1``.
        seq_lens: int32, ``[>= ceil(num_rows / next_n)]`` or 2-D with ``>= num_rows`` elements.
        raw_topk_indices: ``[>= num_rows, >= topk_tokens]`` int32, written in place.
        num_rows: rows to process, ``0 <= num_rows <= raw_topk_indices.shape[0]``.
        stride0: elements between row starts (``>= 0``), usually ``logits.stride(0)``.
        stride1: elements between columns (``>= 1``), usually ``logits.stride(1)``.
        topk_tokens: ``k``, ``1 <= k <= raw_topk_indices.shape[1]``.
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Raises:
        TypeError, ValueError: on bad input (including rows that read past the
            logits storage, checked where values are checked), before anything is written.
    """
    _, impl = _decode_dispatcher.prepare(
        backend, logits, next_n, seq_lens, raw_topk_indices, num_rows, stride0, stride1, topk_tokens
    )
    impl(logits, next_n, seq_lens, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)

"""Vertical/slash conversion and sparse prefill attention: validation, dispatch and registration."""

from __future__ import annotations

import math

import torch

from attnops._common.backend import Dispatcher
from attnops._common.dtypes import ATTENTION_DTYPES
from attnops._common.registry import register_op
from attnops._common.validate import (
    check_float,
    check_int,
    check_same_device,
    check_tensor,
    check_values_in_range,
    values_checked,
)
from attnops.sparse import reference

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def _check_sorted(name: str, values: torch.Tensor, counts: torch.Tensor, descending: bool) -> None:
    """Each ``[b, h]`` row must be >= 0 and monotone over its first ``counts[h]`` entries (reads values)."""
    position = torch.arange(values.shape[2], device=values.device)
    inside = position < counts.long()[None, :, None]
    negative = torch.nonzero(inside & (values < 0))
    if negative.numel() > 0:
        b, h, j = negative[0].tolist()
        raise ValueError(f"{name}: expected values >= 0, got {int(values[b, h, j])} at [{b}, {h}, {j}]")
    step = values[..., 1:].long() - values[..., :-1].long()
    wrong = (step > 0) if descending else (step < 0)
    bad = torch.nonzero(inside[..., 1:] & wrong)
    if bad.numel() > 0:
        b, h, j = bad[0].tolist()
        order = "descending" if descending else "ascending"
        raise ValueError(
            f"{name}: expected {order} values within each head's count, got {int(values[b, h, j + 1])} "
            f"after {int(values[b, h, j])} at [{b}, {h}, {j + 1}]"
        )


def _validate_convert(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    context_size: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
    vertical_indices_count: torch.Tensor | None = None,
    slash_indices_count: torch.Tensor | None = None,
) -> None:
    """Checks for both conversion ops (the plain one has no counts)."""
    check_tensor("slash_indexes", slash_indexes, dtype=torch.int32, ndim=3)
    batch, heads, nnz_s = slash_indexes.shape
    check_tensor("vertical_indexes", vertical_indexes, dtype=torch.int32, shape=(batch, heads, None))
    for name, nnz in (("slash_indexes", nnz_s), ("vertical_indexes", vertical_indexes.shape[2])):
        if nnz < 1:
            raise ValueError(f"{name}: expected at least one index per head (dim 2 >= 1), got {nnz}")
    check_tensor("q_seqlens", q_seqlens, dtype=torch.int32, shape=(batch,))
    check_tensor("kv_seqlens", kv_seqlens, dtype=torch.int32, shape=(batch,))
    mergehead = vertical_indices_count is not None
    if mergehead:
        check_tensor("vertical_indices_count", vertical_indices_count, dtype=torch.int32, shape=(heads,))
        check_tensor("slash_indices_count", slash_indices_count, dtype=torch.int32, shape=(heads,))
    check_int("context_size", context_size, min_value=0)
    check_int("block_size_M", block_size_M, min_value=1)
    check_int("block_size_N", block_size_N, min_value=1)
    if block_size_N < block_size_M:
        # vLLM's kernel can then loop forever or overrun block_offset; see the docstring.
        raise ValueError(f"block_size_N: expected a value >= block_size_M ({block_size_M}), got {block_size_N}")
    _check_bool("causal", causal)
    check_same_device(
        "q_seqlens",
        {
            "q_seqlens": q_seqlens,
            "kv_seqlens": kv_seqlens,
            "vertical_indexes": vertical_indexes,
            "slash_indexes": slash_indexes,
            "vertical_indices_count": vertical_indices_count,
            "slash_indices_count": slash_indices_count,
        },
    )
    tensors = (q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, vertical_indices_count, slash_indices_count)
    if not values_checked(*tensors):
        return
    num_rows = (context_size + block_size_M - 1) // block_size_M
    check_values_in_range("q_seqlens", q_seqlens, 0, num_rows * block_size_M + 1)
    check_values_in_range("kv_seqlens", kv_seqlens, 0, 2**31)
    if mergehead:
        check_values_in_range("vertical_indices_count", vertical_indices_count, 1, vertical_indexes.shape[2] + 1)
        check_values_in_range("slash_indices_count", slash_indices_count, 1, nnz_s + 1)
        v_count, s_count = vertical_indices_count, slash_indices_count
    else:
        v_count = torch.full((heads,), vertical_indexes.shape[2], dtype=torch.int32, device=q_seqlens.device)
        s_count = torch.full((heads,), nnz_s, dtype=torch.int32, device=q_seqlens.device)
    _check_sorted("vertical_indexes", vertical_indexes, v_count, descending=False)
    _check_sorted("slash_indexes", slash_indexes, s_count, descending=True)
    if not causal:
        # Otherwise the kernel's non-causal merge never terminates for some rows.
        position = torch.arange(vertical_indexes.shape[2], device=vertical_indexes.device)
        inside = (position < v_count.long()[None, :, None]) & (q_seqlens > 0)[:, None, None]
        beyond = torch.nonzero(inside & (vertical_indexes >= kv_seqlens[:, None, None]))
        if beyond.numel() > 0:
            b, h, j = beyond[0].tolist()
            raise ValueError(
                f"vertical_indexes: expected values < kv_seqlens[{b}] ({int(kv_seqlens[b])}) when causal=False, "
                f"got {int(vertical_indexes[b, h, j])} at [{b}, {h}, {j}]"
            )


def _empty_tables(
    q_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    context_size: int,
    block_size_M: int,
) -> Tables:
    """Fake conversion outputs, shaped as vLLM allocates them."""
    batch, heads, nnz_s = slash_indexes.shape
    rows = (context_size + block_size_M - 1) // block_size_M
    new = lambda *shape: torch.empty(*shape, dtype=torch.int32, device=q_seqlens.device)
    return (
        new(batch, heads, rows),
        new(batch, heads, rows, nnz_s),
        new(batch, heads, rows),
        new(batch, heads, rows, vertical_indexes.shape[2]),
    )


_convert_dispatcher = Dispatcher(
    "convert_vertical_slash_indexes", reference.convert_vertical_slash_indexes, _validate_convert
)
_mergehead_dispatcher = Dispatcher(
    "convert_vertical_slash_indexes_mergehead", reference.convert_vertical_slash_indexes_mergehead, _validate_convert
)


@register_op("convert_vertical_slash_indexes", mutates_args=(), validate=_validate_convert, outputs=_empty_tables)
def convert_vertical_slash_indexes(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical_indexes: torch.Tensor,
    slash_indexes: torch.Tensor,
    context_size: int,
    block_size_M: int,
    block_size_N: int,
    causal: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Convert vertical/slash indexes into block-sparse lookup tables (vLLM's op of that name).

    MInference's vertical/slash sparse pattern (arXiv:2407.02490, Algorithm 4)
    is turned into per-row-block lookup tables for block-sparse attention,
    exactly as vLLM's ``csrc/attention/vertical_slash_index.cu``. Row block
    ``m`` holds queries ``[m*M, m*M + M)`` (``M = block_size_M``); query ``i``
    is aligned with key ``i + off``, ``off = kv_seqlen - q_seqlen`` when
    ``causal`` and ``off = kv_seqlen`` otherwise (the queries follow all keys).
    A slash value ``s`` is the diagonal ``key = query + off - s`` (``0`` is the
    main diagonal); a vertical value is a key column.

    For every row block, the slashes it reaches are merged into key ranges
    (each slash covers ``M`` columns, ranges grow in steps of ``M``) that are
    cut into blocks of ``block_size_N`` columns (``block_offset`` holds the
    first column of each block, clipped to ``kv_seqlen``); verticals outside
    every range go to ``column_index``. Like vLLM's kernel, a causal row block
    stops when its slashes are exhausted, so verticals past its last range are
    dropped (with the main diagonal, slash ``0``, in the pattern, every dropped
    column is masked by causality anyway), and a non-causal row block only
    takes slashes ``>= m*M`` after its first.

    Tables are exactly vLLM's below the counts (rows with
    ``m*M >= q_seqlens[b]`` have counts 0). Entries past
    ``block_count[b, h, m]`` / ``column_count[b, h, m]`` are unspecified:
    the PyTorch path leaves zeros there (as vLLM's ``torch.zeros`` outputs),
    the Triton path does not write them (at 128K context the padding would be
    ~1.9 GB of writes, several times all the valid entries).

    Requirements beyond vLLM's signature, checked before anything runs (value
    checks on CPU always, on GPU under ``ATTNOPS_CHECK=1``): at least one index
    per head; ``block_size_N >= block_size_M`` (otherwise vLLM's kernel can
    write past ``block_offset`` rows or never terminate);
    ``0 <= q_seqlens[b] <= ceil(context_size / M) * M`` (larger values make
    vLLM's kernel write into other heads' rows); indexes ``>= 0``, verticals
    ascending and slashes descending within each head's count (duplicates
    allowed); with ``causal=False`` verticals ``< kv_seqlens[b]`` (else vLLM's
    loop can hang).

    Args:
        q_seqlens: ``[batch]`` int32, query tokens per sequence.
        kv_seqlens: ``[batch]`` int32, key tokens per sequence.
        vertical_indexes: ``[batch, num_heads, nnz_vertical]`` int32, key
            columns, ascending per head.
        slash_indexes: ``[batch, num_heads, nnz_slash]`` int32, diagonal
            offsets, descending per head.
        context_size: int ``>= 0``; the tables have ``num_rows =
            ceil(context_size / block_size_M)`` row blocks.
        block_size_M: query rows per row block (``>= 1``; MInference uses 64).
        block_size_N: key columns per block (``>= block_size_M``; 64).
        causal: causal (intra-chunk) or non-causal (queries after all keys).
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Returns:
        ``(block_count, block_offset, column_count, column_index)``, int32 on
        the device of ``q_seqlens``: ``block_count [batch, num_heads,
        num_rows]``, ``block_offset [batch, num_heads, num_rows, nnz_slash]``,
        ``column_count [batch, num_heads, num_rows]``, ``column_index [batch,
        num_heads, num_rows, nnz_vertical]``.

    Raises:
        TypeError, ValueError: on bad input, before anything runs.
    """
    _, impl = _convert_dispatcher.prepare(
        backend, q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, context_size, block_size_M, block_size_N,
        causal,
    )  # fmt: skip
    return impl(
        q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, context_size, block_size_M, block_size_N, causal
    )


@register_op(
    "convert_vertical_slash_indexes_mergehead", mutates_args=(), validate=_validate_convert, outputs=_empty_tables
)
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
    causal: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`convert_vertical_slash_indexes` with a per-head number of valid indexes.

    Head ``h`` uses only the first ``vertical_indices_count[h]`` verticals
    and ``slash_indices_count[h]`` slashes (in every batch entry); the rest
    of ``vertical_indexes``/``slash_indexes`` is padding and never read.

    Args:
        vertical_indices_count: ``[num_heads]`` int32, each in ``[1, nnz_vertical]``.
        slash_indices_count: ``[num_heads]`` int32, each in ``[1, nnz_slash]``.
        Others: as in :func:`convert_vertical_slash_indexes`.

    Returns:
        The four tables, as in :func:`convert_vertical_slash_indexes`.

    Raises:
        TypeError, ValueError: on bad input, before anything runs.
    """
    _, impl = _mergehead_dispatcher.prepare(
        backend, q_seqlens, kv_seqlens, vertical_indexes, slash_indexes, context_size, block_size_M, block_size_N,
        causal, vertical_indices_count=vertical_indices_count, slash_indices_count=slash_indices_count,
    )  # fmt: skip
    return impl(
        q_seqlens,
        kv_seqlens,
        vertical_indexes,
        slash_indexes,
        vertical_indices_count,
        slash_indices_count,
        context_size,
        block_size_M,
        block_size_N,
        causal,
    )


def _validate_sparse_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    scale: float | None,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> None:
    check_tensor("q", q, dtype=ATTENTION_DTYPES, ndim=4)
    batch, heads, q_len, head_size = q.shape
    if head_size < 1:
        raise ValueError(f"q: expected head_size >= 1, got shape {tuple(q.shape)}")
    check_tensor("k", k, dtype=q.dtype, shape=(batch, None, None, head_size))
    kv_heads = k.shape[1]
    if kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(f"k: expected num_kv_heads dividing num_heads ({heads}), got {kv_heads}")
    check_tensor("v", v, dtype=q.dtype, shape=tuple(k.shape))
    if scale is not None and not math.isfinite(check_float("scale", scale)):
        raise ValueError(f"scale: expected a finite value, got {scale}")
    check_int("block_size_M", block_size_M, min_value=1)
    check_int("block_size_N", block_size_N, min_value=1)
    _check_bool("causal", causal)
    check_tensor("block_count", block_count, dtype=torch.int32, shape=(batch, heads, None))
    num_rows = block_count.shape[2]
    needed = -(-q_len // block_size_M)
    if num_rows < needed:
        raise ValueError(
            f"block_count: expected at least ceil(q_len / block_size_M) = {needed} row blocks, got {num_rows}"
        )
    check_tensor("block_offset", block_offset, dtype=torch.int32, shape=(batch, heads, num_rows, None))
    check_tensor("column_count", column_count, dtype=torch.int32, shape=(batch, heads, num_rows))
    check_tensor("column_index", column_index, dtype=torch.int32, shape=(batch, heads, num_rows, None))
    check_same_device(
        "q",
        {
            "q": q,
            "k": k,
            "v": v,
            "block_count": block_count,
            "block_offset": block_offset,
            "column_count": column_count,
            "column_index": column_index,
        },
    )
    if values_checked(block_count, column_count):
        check_values_in_range("block_count", block_count, 0, block_offset.shape[3] + 1)
        check_values_in_range("column_count", column_count, 0, column_index.shape[3] + 1)


_attention_dispatcher = Dispatcher(
    "sparse_prefill_attention", reference.sparse_prefill_attention, _validate_sparse_prefill
)


def _sparse_prefill_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake ``(out, lse)``: q-shaped output and fp32 ``[batch, num_heads, q_len]`` lse."""
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@register_op(
    "sparse_prefill_attention", mutates_args=(), validate=_validate_sparse_prefill, outputs=_sparse_prefill_outputs
)
def _sparse_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    scale: float | None,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The custom op behind :func:`sparse_prefill_attention`; always returns ``(out, lse)``."""
    _, impl = _attention_dispatcher.prepare(
        backend, q, k, v, block_count, block_offset, column_count, column_index, scale, block_size_M, block_size_N,
        causal,
    )  # fmt: skip
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    return impl(
        q, k, v, block_count, block_offset, column_count, column_index, scale, block_size_M, block_size_N, causal
    )


def sparse_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    *,
    scale: float | None = None,
    block_size_M: int = 64,
    block_size_N: int = 64,
    causal: bool = True,
    return_lse: bool = False,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse (vertical/slash) prefill attention over the converted tables.

    Query ``i`` of (batch ``b``, head ``h``) lies in row block ``m = i //
    block_size_M`` and attends to the keys of KV head ``h // (num_heads //
    num_kv_heads)`` that the tables select: the ``block_size_N`` columns from
    each of the first ``block_count[b, h, m]`` entries of ``block_offset[b,
    h, m]`` and the single columns of the first ``column_count[b, h, m]``
    entries of ``column_index[b, h, m]`` (a column selected twice counts
    once; entries outside ``[0, kv_len)`` select nothing). With ``causal`` it
    also needs ``key <= i + kv_len - q_len`` (the bottom-right alignment that
    :func:`convert_vertical_slash_indexes` uses). Softmax runs in fp32 with
    ``scale`` (default ``1 / sqrt(head_size)``); a query that sees no key
    gets zeros and an lse of ``-inf``. The dense mask is
    :func:`attnops.sparse.reference.sparse_tables_to_mask`.

    Args:
        q: ``[batch, num_heads, q_len, head_size]`` fp32/fp16/bf16.
        k: ``[batch, num_kv_heads, kv_len, head_size]``, q's dtype;
            ``num_heads % num_kv_heads == 0`` (MHA, GQA, MQA).
        v: like ``k``.
        block_count: ``[batch, num_heads, num_rows]`` int32 with ``num_rows
            >= ceil(q_len / block_size_M)``; values in ``[0, nnz_slash]``.
        block_offset: ``[batch, num_heads, num_rows, nnz_slash]`` int32.
        column_count: ``[batch, num_heads, num_rows]`` int32; values in ``[0, nnz_vertical]``.
        column_index: ``[batch, num_heads, num_rows, nnz_vertical]`` int32.
        scale: softmax scale (finite) or ``None``.
        block_size_M: query rows per row block, as in the conversion.
        block_size_N: key columns per block, as in the conversion.
        causal: apply the causal mask.
        return_lse: also return the natural-log LSE.
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Returns:
        ``out [batch, num_heads, q_len, head_size]`` in q's dtype, and with
        ``return_lse`` also ``lse [batch, num_heads, q_len]`` fp32. Through
        ``torch.ops.attnops.sparse_prefill_attention`` (no ``return_lse``)
        the op always returns ``(out, lse)``.

    Raises:
        TypeError, ValueError: on bad input, before anything runs.
    """
    _check_bool("return_lse", return_lse)
    out, lse = _sparse_prefill_attention(
        q,
        k,
        v,
        block_count,
        block_offset,
        column_count,
        column_index,
        scale,
        block_size_M,
        block_size_N,
        causal,
        backend,
    )
    return (out, lse) if return_lse else out


def estimate_vertical_slash(
    q: torch.Tensor,
    k: torch.Tensor,
    last_q: int = 64,
    n_vertical: int = 1000,
    n_slash: int = 6096,
    *,
    scale: float | None = None,
    sink_columns: int = 30,
    local_diagonals: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MInference's online vertical/slash estimate (arXiv:2407.02490, Algorithm 4, first half).

    The last ``last_q`` queries attend causally (query ``i`` sees keys
    ``<= i + kv_len - q_len``) to all keys in fp32. Column sums of their
    softmax probabilities rank the vertical columns, sums along each diagonal
    offset ``s = i + kv_len - q_len - key`` rank the slashes. The first
    ``sink_columns`` columns and the ``local_diagonals`` offsets nearest the
    main diagonal (offset 0 included) are always kept, as MInference does.

    Args:
        q: ``[batch, num_heads, q_len, head_size]`` fp32/fp16/bf16, ``q_len >= 1``.
        k: ``[batch, num_kv_heads, kv_len, head_size]``, q's dtype, ``kv_len >= q_len``.
        last_q: queries used for the estimate (capped at ``q_len``).
        n_vertical: verticals per head (capped at ``kv_len``).
        n_slash: slashes per head (capped at ``kv_len``).
        scale: softmax scale or ``None`` for ``1 / sqrt(head_size)``.
        sink_columns: leading columns always kept.
        local_diagonals: offsets ``0 .. local_diagonals - 1`` always kept.

    Returns:
        ``vertical_indexes [batch, num_heads, min(n_vertical, kv_len)]`` int32
        ascending and ``slash_indexes [batch, num_heads, min(n_slash,
        kv_len)]`` int32 descending: the layout
        :func:`convert_vertical_slash_indexes` takes (causal).
    """
    check_tensor("q", q, dtype=ATTENTION_DTYPES, ndim=4)
    batch, heads, q_len, head_size = q.shape
    if q_len < 1 or head_size < 1:
        raise ValueError(f"q: expected q_len >= 1 and head_size >= 1, got shape {tuple(q.shape)}")
    check_tensor("k", k, dtype=q.dtype, shape=(batch, None, None, head_size))
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if kv_heads < 1 or heads % kv_heads != 0:
        raise ValueError(f"k: expected num_kv_heads dividing num_heads ({heads}), got {kv_heads}")
    if kv_len < q_len:
        raise ValueError(f"k: expected kv_len >= q_len ({q_len}), got {kv_len}")
    check_same_device("q", {"q": q, "k": k})
    for name, value in (("last_q", last_q), ("n_vertical", n_vertical), ("n_slash", n_slash)):
        check_int(name, value, min_value=1)
    check_int("sink_columns", sink_columns, min_value=0)
    check_int("local_diagonals", local_diagonals, min_value=0)
    if scale is not None and not math.isfinite(check_float("scale", scale)):
        raise ValueError(f"scale: expected a finite value, got {scale}")
    scale = 1.0 / math.sqrt(head_size) if scale is None else float(scale)
    return reference.estimate_vertical_slash(
        q, k, min(last_q, q_len), min(n_vertical, kv_len), min(n_slash, kv_len), scale, sink_columns, local_diagonals
    )

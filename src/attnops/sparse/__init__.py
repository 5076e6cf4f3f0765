"""MInference vertical/slash sparse prefill: pattern estimate, index conversion, sparse attention.

Pipeline (arXiv:2407.02490; vLLM's ``convert_vertical_slash_indexes`` and its
dual-chunk sparse attention)::

    vertical, slash = estimate_vertical_slash(q, k)            # per-head pattern from the last queries
    tables = convert_vertical_slash_indexes(                    # row-block lookup tables, vLLM's op
        q_seqlens, kv_seqlens, vertical, slash, q_len, 64, 64)
    out = sparse_prefill_attention(q, k, v, *tables)            # attention under that pattern

Layouts: ``q [batch, num_heads, q_len, head_size]``, ``k``/``v [batch,
num_kv_heads, kv_len, head_size]``; ``vertical [batch, num_heads, nnz_v]``
int32 key columns ascending, ``slash [batch, num_heads, nnz_s]`` int32
diagonal offsets (``key = query + kv_len - q_len - s``) descending.
``sparse_tables_to_mask`` gives the dense
boolean mask of a set of tables, for tests and benchmarks.
"""

from attnops._common.backend import triton_available
from attnops.sparse.api import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
    estimate_vertical_slash,
    sparse_prefill_attention,
)
from attnops.sparse.reference import sparse_tables_to_mask

if triton_available():
    # Registers the "triton" backends on the ops' dispatchers.
    from attnops.sparse import triton as _triton  # noqa: F401

__all__ = [
    "convert_vertical_slash_indexes",
    "convert_vertical_slash_indexes_mergehead",
    "estimate_vertical_slash",
    "sparse_prefill_attention",
    "sparse_tables_to_mask",
]

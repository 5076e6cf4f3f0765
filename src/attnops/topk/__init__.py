"""Exact per-row top-k over ragged logit rows (vLLM's ``top_k_per_row_prefill``/``_decode``)."""

from attnops._common.backend import triton_available
from attnops.topk.api import top_k_per_row_decode, top_k_per_row_prefill

if triton_available():
    # Registers the "triton" backend on both ops' dispatchers.
    from attnops.topk import triton as _triton  # noqa: F401

__all__ = ["top_k_per_row_decode", "top_k_per_row_prefill"]

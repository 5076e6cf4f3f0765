"""Exact per-row top-k over ragged logit rows (vLLM's ``top_k_per_row_prefill``/``_decode``)."""

from attnops.topk.api import top_k_per_row_decode, top_k_per_row_prefill

__all__ = ["top_k_per_row_decode", "top_k_per_row_prefill"]

"""Paged decode attention: vLLM's ``paged_attention_v1``/``v2`` and the LSE-returning ``paged_decode``."""

from attnops._common.backend import triton_available
from attnops.paged_attention.api import paged_attention_v1, paged_attention_v2, paged_decode
from attnops.paged_attention.reference import PARTITION_SIZE

if triton_available():
    # Registers the Triton implementations on the dispatchers.
    from attnops.paged_attention import triton as _triton  # noqa: F401

__all__ = ["PARTITION_SIZE", "paged_attention_v1", "paged_attention_v2", "paged_decode"]

"""Paged decode attention: vLLM's ``paged_attention_v1``/``v2`` and the LSE-returning ``paged_decode``."""

from attnops.paged_attention.api import paged_attention_v1, paged_attention_v2, paged_decode
from attnops.paged_attention.reference import PARTITION_SIZE

__all__ = ["PARTITION_SIZE", "paged_attention_v1", "paged_attention_v2", "paged_decode"]

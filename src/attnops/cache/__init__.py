"""vLLM's paged KV cache: ``reshape_and_cache`` and helpers to build and read random caches."""

from attnops._common.backend import triton_available
from attnops.cache.api import reshape_and_cache
from attnops.cache.helpers import PagedKVCache, gather_paged_kv, make_paged_kv_cache
from attnops.cache.layout import BLOCK_SIZES, HEAD_SIZES

if triton_available():
    # Registers the "triton" backend on the op's dispatcher.
    from attnops.cache import triton as _triton  # noqa: F401

__all__ = [
    "BLOCK_SIZES",
    "HEAD_SIZES",
    "PagedKVCache",
    "gather_paged_kv",
    "make_paged_kv_cache",
    "reshape_and_cache",
]

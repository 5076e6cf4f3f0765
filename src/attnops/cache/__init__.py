"""vLLM's paged KV cache: ``reshape_and_cache`` and helpers to build and read random caches."""

from attnops.cache.api import reshape_and_cache
from attnops.cache.helpers import PagedKVCache, gather_paged_kv, make_paged_kv_cache
from attnops.cache.layout import BLOCK_SIZES, HEAD_SIZES

__all__ = [
    "BLOCK_SIZES",
    "HEAD_SIZES",
    "PagedKVCache",
    "gather_paged_kv",
    "make_paged_kv_cache",
    "reshape_and_cache",
]

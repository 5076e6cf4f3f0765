"""attnops: vLLM's attention-stage ops in Triton and portable PyTorch.

Every op of vLLM's ``torch.ops._C`` attention family is here with vLLM's
signature, argument order, defaults, layouts and in-place outputs, and is
registered as ``torch.ops.attnops.<name>`` for ``torch.compile`` and CUDA
graphs. Each takes a trailing ``backend=`` keyword (``"auto"``, ``"torch"``,
``"triton"``; default from ``ATTNOPS_BACKEND``).
"""

from attnops.cache import PagedKVCache, gather_paged_kv, make_paged_kv_cache, reshape_and_cache
from attnops.distributed import context_parallel_decode, merge_partials
from attnops.merge import merge_attn_states
from attnops.paged_attention import PARTITION_SIZE, paged_attention_v1, paged_attention_v2, paged_decode
from attnops.sparse import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
    estimate_vertical_slash,
    sparse_prefill_attention,
    sparse_tables_to_mask,
)
from attnops.topk import top_k_per_row_decode, top_k_per_row_prefill

__version__ = "0.1.0"

__all__ = [
    "PARTITION_SIZE",
    "PagedKVCache",
    "context_parallel_decode",
    "convert_vertical_slash_indexes",
    "convert_vertical_slash_indexes_mergehead",
    "estimate_vertical_slash",
    "gather_paged_kv",
    "make_paged_kv_cache",
    "merge_attn_states",
    "merge_partials",
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_decode",
    "reshape_and_cache",
    "sparse_prefill_attention",
    "sparse_tables_to_mask",
    "top_k_per_row_decode",
    "top_k_per_row_prefill",
]

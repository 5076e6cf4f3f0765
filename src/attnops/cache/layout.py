"""vLLM's paged KV-cache layout and the checks every op reading or writing it shares.

key_cache:   ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``, x = 16 bytes / element size
value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]``

Token ``t`` of a sequence lives in block ``block_tables[s, t // block_size]`` at slot
``t % block_size``; a flat slot id (``slot_mapping``) is ``block * block_size + slot``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnops._common.dtypes import KV_CACHE_DTYPES, cache_storage_dtype, x_for
from attnops._common.validate import check_choice, check_tensor

HEAD_SIZES = (32, 64, 80, 96, 112, 120, 128, 192, 256)
BLOCK_SIZES = (8, 16, 32)


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes read off a validated pair of caches."""

    num_blocks: int
    num_kv_heads: int
    head_size: int
    block_size: int


def check_inner_contiguous(name: str, t: torch.Tensor, first_dim: int) -> None:
    """Dimensions ``first_dim..`` of ``t`` must be densely packed (the outer strides may be anything)."""
    expected = 1
    for dim in range(t.dim() - 1, first_dim - 1, -1):
        if t.shape[dim] > 1 and t.stride(dim) != expected:
            raise ValueError(
                f"{name}: expected dimensions {first_dim}.. to be contiguous, got strides {t.stride()} "
                f"for shape {tuple(t.shape)}"
            )
        expected *= t.shape[dim]


def check_kv_caches(
    key_cache: object, value_cache: object, kv_cache_dtype: object, compute_dtype: torch.dtype
) -> CacheGeometry:
    """Validate a key/value cache pair for ``compute_dtype`` queries or tokens; return its sizes.

    The cache dtype must be ``compute_dtype`` for ``"auto"`` and ``uint8`` for the fp8 kinds; the
    key cache's last dimension must be x = 16 bytes / element size; head and block size must be
    in vLLM's sets; the value cache must match the key cache; dimensions past the block and head
    dimensions must be contiguous (the kernels index them densely).
    """
    kv_cache_dtype = check_choice("kv_cache_dtype", kv_cache_dtype, KV_CACHE_DTYPES)
    storage = cache_storage_dtype(kv_cache_dtype, compute_dtype)
    x = x_for(storage)
    key_cache = check_tensor("key_cache", key_cache, dtype=storage, ndim=5)
    num_blocks, num_kv_heads, head_chunks, block_size, key_x = key_cache.shape
    if key_x != x:
        raise ValueError(
            f"key_cache: expected last dimension x = 16 bytes / {storage} element size = {x}, got {key_x} "
            f"(shape {tuple(key_cache.shape)})"
        )
    if num_blocks < 1 or num_kv_heads < 1:
        raise ValueError(f"key_cache: expected at least one block and one head, got shape {tuple(key_cache.shape)}")
    head_size = head_chunks * x
    # Plain comparisons, not check_int: under torch.compile these sizes are SymInts.
    if head_size not in HEAD_SIZES:
        raise ValueError(f"key_cache: expected a head size (shape[2] * x) in {HEAD_SIZES}, got {head_size}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"key_cache: expected a block size (shape[3]) in {BLOCK_SIZES}, got {block_size}")
    check_tensor(
        "value_cache",
        value_cache,
        dtype=storage,
        shape=(num_blocks, num_kv_heads, head_size, block_size),
        device=key_cache.device,
    )
    check_inner_contiguous("key_cache", key_cache, 2)
    check_inner_contiguous("value_cache", value_cache, 2)
    return CacheGeometry(num_blocks, num_kv_heads, head_size, block_size)


def check_scale(name: str, scale: object) -> torch.Tensor:
    """A one-element fp32 scale tensor (vLLM's ``k_scale``/``v_scale``)."""
    scale = check_tensor(name, scale, dtype=torch.float32)
    if scale.numel() != 1:
        raise ValueError(f"{name}: expected a one-element tensor, got shape {tuple(scale.shape)}")
    return scale

"""PyTorch reference of vLLM's ``reshape_and_cache``: scatter new tokens' K/V into the paged cache."""

from __future__ import annotations

import torch

from attnops._common.dtypes import fp8_quantize, is_fp8


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> None:
    """Write token ``i`` of ``key``/``value`` to slot ``slot_mapping[i]``; negative slots are padding."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    if slots.numel() == 0:
        return
    blocks = slots // key_cache.shape[3]
    offsets = slots % key_cache.shape[3]
    new_keys, new_values = key[keep], value[keep]
    if is_fp8(kv_cache_dtype):
        new_keys = fp8_quantize(new_keys, kv_cache_dtype, k_scale)
        new_values = fp8_quantize(new_values, kv_cache_dtype, v_scale)
    num_tokens, num_kv_heads, head_size = new_keys.shape
    x = key_cache.shape[4]
    # The two index tensors are split by slices, so the indexed view is [tokens, heads, head_size // x, x].
    key_cache[blocks, :, :, offsets, :] = new_keys.reshape(num_tokens, num_kv_heads, head_size // x, x)
    value_cache[blocks, :, :, offsets] = new_values

"""``reshape_and_cache``: validation, backend dispatch and ``torch.ops.attnops`` registration."""

from __future__ import annotations

import torch

from attnops._common.backend import Dispatcher
from attnops._common.dtypes import ATTENTION_DTYPES
from attnops._common.registry import register_op
from attnops._common.validate import check_same_device, check_tensor, check_values_in_range, values_checked
from attnops.cache import reference
from attnops.cache.layout import check_kv_caches, check_scale


def _validate_reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> None:
    check_tensor("key", key, dtype=ATTENTION_DTYPES, ndim=3)
    num_tokens, num_kv_heads, head_size = key.shape
    geometry = check_kv_caches(key_cache, value_cache, kv_cache_dtype, key.dtype)
    if (num_kv_heads, head_size) != (geometry.num_kv_heads, geometry.head_size):
        raise ValueError(
            f"key: expected {geometry.num_kv_heads} heads of size {geometry.head_size} (from key_cache), "
            f"got shape {tuple(key.shape)}"
        )
    check_tensor("value", value, dtype=key.dtype, shape=(num_tokens, num_kv_heads, head_size))
    check_tensor("slot_mapping", slot_mapping, dtype=(torch.int64, torch.int32), shape=(num_tokens,))
    check_scale("k_scale", k_scale)
    check_scale("v_scale", v_scale)
    check_same_device(
        "key",
        {
            "key": key,
            "value": value,
            "key_cache": key_cache,
            "value_cache": value_cache,
            "slot_mapping": slot_mapping,
            "k_scale": k_scale,
            "v_scale": v_scale,
        },
    )
    if values_checked(slot_mapping):
        # Negative slots mark padding tokens; only the upper bound can be violated.
        check_values_in_range("slot_mapping", slot_mapping, -(2**63), geometry.num_blocks * geometry.block_size)


_dispatcher = Dispatcher("reshape_and_cache", reference.reshape_and_cache, _validate_reshape_and_cache)


@register_op("reshape_and_cache", mutates_args=("key_cache", "value_cache"), validate=_validate_reshape_and_cache)
def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    backend: str | None = None,
) -> None:
    """Write new tokens' keys and values into vLLM's paged KV cache (``csrc/cache_kernels.cu``).

    Token ``i`` goes to block ``slot_mapping[i] // block_size``, slot ``slot_mapping[i] % block_size``;
    a negative slot marks a padding token, which is skipped. fp8 caches store
    ``key / k_scale`` (``value / v_scale``) as saturated fp8 bytes.

    Args:
        key: ``[num_tokens, num_kv_heads, head_size]`` fp32/fp16/bf16, any strides
            (e.g. a slice of a fused qkv tensor).
        value: like ``key``, same dtype and shape.
        key_cache: ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``, x = 16 bytes / element
            size; ``key.dtype`` for ``"auto"``, ``uint8`` for fp8. Written in place.
        value_cache: ``[num_blocks, num_kv_heads, head_size, block_size]``, same dtype. Written in place.
        slot_mapping: ``[num_tokens]`` int64 (or int32) flat slot ids, ``< num_blocks * block_size``.
        kv_cache_dtype: ``"auto"``, ``"fp8"`` (= ``"fp8_e4m3"``) or ``"fp8_e5m2"``.
        k_scale: one-element fp32 tensor, the key dequantisation scale (unused for ``"auto"``).
        v_scale: one-element fp32 tensor, the value dequantisation scale (unused for ``"auto"``).
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Raises:
        TypeError, ValueError: on bad input, before anything is written.
    """
    _, impl = _dispatcher.prepare(
        backend, key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale
    )
    impl(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale)

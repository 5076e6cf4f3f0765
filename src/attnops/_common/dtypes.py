"""Dtype and layout helpers shared by the op families.

vLLM stores fp8 KV caches as ``uint8`` bytes; ``"fp8"`` and ``"fp8_e4m3"``
mean OCP e4m3 (``torch.float8_e4m3fn``), ``"fp8_e5m2"`` means e5m2.
Quantisation divides by the scale and saturates to the largest finite
value (CUDA's ``__NV_SATFINITE``); dequantisation multiplies by the scale and
rounds to the compute dtype, as vLLM's ``scaled_convert`` does.
"""

from __future__ import annotations

import torch

ATTENTION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_KV_DTYPES: dict[str, torch.dtype] = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
KV_CACHE_DTYPES = ("auto", *FP8_KV_DTYPES)


def is_fp8(kv_cache_dtype: str) -> bool:
    """Whether ``kv_cache_dtype`` names an fp8 cache (stored as uint8)."""
    return kv_cache_dtype in FP8_KV_DTYPES


def cache_storage_dtype(kv_cache_dtype: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the cache tensors for ``kv_cache_dtype`` with ``compute_dtype`` queries."""
    return torch.uint8 if is_fp8(kv_cache_dtype) else compute_dtype


def x_for(storage_dtype: torch.dtype) -> int:
    """vLLM's key-cache packing factor: 16 bytes / element size."""
    return 16 // torch.empty((), dtype=storage_dtype).element_size()


def fp8_quantize(values: torch.Tensor, kv_cache_dtype: str, scale: torch.Tensor) -> torch.Tensor:
    """``values / scale`` as saturated fp8 bytes (``uint8``, same shape)."""
    fp8 = FP8_KV_DTYPES[kv_cache_dtype]
    limit = torch.finfo(fp8).max
    scaled = values.float() / scale.float()
    return scaled.clamp(-limit, limit).to(fp8).view(torch.uint8)


def fp8_dequantize(
    raw: torch.Tensor, kv_cache_dtype: str, scale: torch.Tensor, compute_dtype: torch.dtype
) -> torch.Tensor:
    """fp8 bytes ``raw`` times ``scale``, rounded to ``compute_dtype``, returned as fp32."""
    fp8 = FP8_KV_DTYPES[kv_cache_dtype]
    return (raw.view(fp8).float() * scale.float()).to(compute_dtype).float()

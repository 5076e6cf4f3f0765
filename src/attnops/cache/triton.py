"""Triton ``reshape_and_cache``: new tokens' keys and values scattered into vLLM's paged cache.

One-dimensional grid of ``num_tokens * HEAD_BLOCKS`` programs: program ``i`` takes heads
``BLOCK_H * (i % HEAD_BLOCKS)`` onwards of token ``i // HEAD_BLOCKS``. It loads the token's slot
(a negative slot marks a padding token: the program returns) and writes its ``[BLOCK_H, HEAD_PAD]``
key tile into the slot's ``X``-element pieces of the key cache and its value tile into the slot's
column of the value cache (``BLOCK_SIZE`` elements apart: vLLM's layout). fp8 caches receive the
values divided by the scale, saturated and rounded to nearest even, bit-exact with the reference
(:mod:`attnops._common.fp8_bits`). Grid from shapes only: no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from attnops._common.backend import triton_interpreted
from attnops._common.fastpath import UNALIGNED, UNBOUND, Launcher, cdiv, current_stream, head_tile
from attnops._common.fp8_bits import FP8_KINDS, saturated_fp8_bits
from attnops.cache.api import _dispatcher

# Bytes of one program's key (or value) tile, and its warps: as merge_attn_states's tiles.
_TILE_BYTES = 8192
_NUM_WARPS = 4


@triton.jit
def _stored(x, scale_ptr, FP8: tl.constexpr):
    """Values as the cache stores them: themselves, or fp8 bytes of ``x / scale`` (as the reference divides)."""
    if FP8 == 0:
        return x
    else:
        return saturated_fp8_bits(x.to(tl.float32) / tl.load(scale_ptr), FP8)


@triton.jit
def _cache_kernel(
    key,  # [num_tokens, num_kv_heads, HEAD_SIZE], any strides
    value,  # [num_tokens, num_kv_heads, HEAD_SIZE], any strides
    key_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE // X, BLOCK_SIZE, X], dims 2.. contiguous
    value_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE, BLOCK_SIZE], dims 2.. contiguous
    slot_mapping,  # int64 or int32 [num_tokens]
    k_scale,  # fp32 [1] (read only for fp8)
    v_scale,  # fp32 [1] (read only for fp8)
    num_kv_heads,
    key_stride_t,
    key_stride_h,
    key_stride_d,
    value_stride_t,
    value_stride_h,
    value_stride_d,
    k_stride_block,
    k_stride_head,
    v_stride_block,
    v_stride_head,
    HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_BLOCKS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    X: tl.constexpr,
    FP8: tl.constexpr,
):
    program = tl.program_id(0)
    token = (program // HEAD_BLOCKS).to(tl.int64)
    slot = tl.load(slot_mapping + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = (program % HEAD_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, HEAD_PAD)
    mask = (heads < num_kv_heads)[:, None] & (d < HEAD_SIZE)[None, :]
    k = tl.load(key + token * key_stride_t + heads[:, None] * key_stride_h + d[None, :] * key_stride_d, mask=mask)
    v = tl.load(
        value + token * value_stride_t + heads[:, None] * value_stride_h + d[None, :] * value_stride_d, mask=mask
    )
    # Head element d of a key slot: piece d // X of the slot's X contiguous elements.
    k_dst = key_cache + block * k_stride_block + heads[:, None] * k_stride_head
    k_dst += ((d // X) * (BLOCK_SIZE * X) + offset * X + d % X)[None, :]
    v_dst = value_cache + block * v_stride_block + heads[:, None] * v_stride_head + (d * BLOCK_SIZE + offset)[None, :]
    tl.store(k_dst, _stored(k, k_scale, FP8), mask=mask)
    tl.store(v_dst, _stored(v, v_scale, FP8), mask=mask)


_launcher = Launcher(_cache_kernel)


def _launch_of(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, kv_cache_dtype: str
) -> tuple[tuple | None, tuple[int], tuple, Callable[[], dict[str, object]]]:
    """A call's launch but for its pointers: ``(launch key, grid, scalars, constexprs)``."""
    num_tokens, num_kv_heads, head_size = key.shape
    block_h, head_pad = head_tile(num_kv_heads, head_size, key.element_size(), _TILE_BYTES)
    head_blocks = cdiv(num_kv_heads, block_h)
    fp8 = FP8_KINDS[kv_cache_dtype]
    block_size, x = key_cache.shape[3], key_cache.shape[4]
    strides = (
        *key.stride(), *value.stride(), *key_cache.stride()[:2], *value_cache.stride()[:2],
    )  # fmt: skip
    # The token count is the grid alone: a new count reuses the launch.
    launch_key = None if triton_interpreted() else (head_size, block_h, block_size, x, fp8, num_kv_heads, strides)

    def constexprs() -> dict[str, object]:
        return dict(
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, BLOCK_H=block_h, HEAD_BLOCKS=head_blocks, BLOCK_SIZE=block_size,
            X=x, FP8=fp8, num_warps=_NUM_WARPS,
        )  # fmt: skip

    return launch_key, (num_tokens * head_blocks,), (num_kv_heads, *strides), constexprs


def _pointers(
    key: Any,
    value: Any,
    key_cache: Any,
    value_cache: Any,
    slot_mapping: Any,
    kv_cache_dtype: str,
    k_scale: Any,
    v_scale: Any,
) -> tuple:
    """The kernel's pointers (tensors, dtypes or addresses): the scales only for fp8 caches."""
    fp8 = FP8_KINDS[kv_cache_dtype] != 0
    return (key, value, key_cache, value_cache, slot_mapping, k_scale if fp8 else None, v_scale if fp8 else None)


def _direct(
    launch: Callable[..., None] | None,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> object:
    """:func:`reshape_and_cache` through a captured launch (see :class:`attnops._common.fastpath.Bound`)."""
    addresses = _pointers(
        key.data_ptr(), value.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(), slot_mapping.data_ptr(),
        kv_cache_dtype, k_scale.data_ptr(), v_scale.data_ptr(),
    )  # fmt: skip
    mask = addresses[0] | addresses[1] | addresses[2] | addresses[3] | addresses[4]
    if (mask | (addresses[5] or 0) | (addresses[6] or 0)) & 15:
        return UNALIGNED
    if launch is None:
        return UNBOUND
    launch(current_stream(key.get_device()), *addresses)
    return None


def _capture(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> Callable[..., None] | None:
    """The launch of :func:`reshape_and_cache` for a call's signature, with every pointer 16-byte aligned."""
    if key.shape[0] == 0:
        return None
    launch_key, grid, scalars, _ = _launch_of(key, value, key_cache, value_cache, kv_cache_dtype)
    dtypes = _pointers(
        key.dtype, value.dtype, key_cache.dtype, value_cache.dtype, slot_mapping.dtype, kv_cache_dtype,
        k_scale.dtype, v_scale.dtype,
    )  # fmt: skip
    return _launcher.direct(launch_key, grid, dtypes, scalars, key.device)


@_dispatcher.register("triton", direct=_direct, capture=_capture)
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
    """Triton version of :func:`attnops.cache.reference.reshape_and_cache` (inputs are validated).

    Shapes: ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` (any strides), caches in
    vLLM's layout (``key_cache`` ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``,
    ``value_cache`` ``[num_blocks, num_kv_heads, head_size, block_size]``), ``slot_mapping``
    int64/int32 ``[num_tokens]``.
    """
    if key.shape[0] == 0:
        return
    launch_key, grid, scalars, constexprs = _launch_of(key, value, key_cache, value_cache, kv_cache_dtype)
    pointers = _pointers(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale)
    _launcher.launch(launch_key, grid, pointers, scalars, constexprs, key.device)

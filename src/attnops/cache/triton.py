"""Triton ``reshape_and_cache``: new tokens' keys and values scattered into vLLM's paged cache.

One-dimensional grid of ``cdiv(num_tokens, TOKENS) * HEAD_BLOCKS`` programs: program ``i`` takes
heads ``BLOCK_H * (i % HEAD_BLOCKS)`` onwards of tokens ``TOKENS * (i // HEAD_BLOCKS)`` onwards.
It loads the tokens' slots (a negative slot marks a padding token: nothing of it is written) and
writes each token's key heads into the slot's ``X``-element pieces of the key cache and its value
heads into the slot's column of the value cache (``BLOCK_SIZE`` elements apart: vLLM's layout). fp8 caches receive the
values divided by the scale, saturated and rounded to nearest even, bit-exact with the reference
(:mod:`attnops._common.fp8_bits`). Grid from shapes only: no host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnops._common.backend import triton_interpreted
from attnops._common.fastpath import Launcher, cdiv, head_tile
from attnops._common.fp8_bits import FP8_KINDS, saturated_fp8_bits
from attnops.cache.api import _dispatcher

# Bytes of one program's key (or value) tile, and its warps: as merge_attn_states's tiles.
_TILE_BYTES = 8192
_NUM_WARPS = 4
# Tokens per program from _GROUPED_FROM tokens on (prefill chunks): a block's consecutive slots
# written side by side, whole 32-byte sectors of the value cache instead of 2 bytes of one per
# token. Fewer tokens (a decode batch, one slot per block) take one token per program.
_TOKENS = 16
_GROUPED_FROM = 1024


@triton.jit
def _stored(x, scale_ptr, FP8: tl.constexpr):
    """Values as the cache stores them: themselves, or fp8 bytes of ``x / scale`` (as the reference divides)."""
    if FP8 == 0:
        return x
    else:
        return saturated_fp8_bits(x.to(tl.float32) / tl.load(scale_ptr), FP8)


@triton.jit(do_not_specialize=["num_tokens"])
def _cache_kernel(
    key,  # [num_tokens, num_kv_heads, HEAD_SIZE], any strides
    value,  # [num_tokens, num_kv_heads, HEAD_SIZE], any strides
    key_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE // X, BLOCK_SIZE, X], dims 2.. contiguous
    value_cache,  # [num_blocks, num_kv_heads, HEAD_SIZE, BLOCK_SIZE], dims 2.. contiguous
    slot_mapping,  # int64 or int32 [num_tokens]
    k_scale,  # fp32 [1] (read only for fp8)
    v_scale,  # fp32 [1] (read only for fp8)
    num_tokens,
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
    TOKENS: tl.constexpr,
    FP8: tl.constexpr,
):
    program = tl.program_id(0)
    tokens = (program // HEAD_BLOCKS).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)
    slots = tl.load(slot_mapping + tokens, mask=tokens < num_tokens, other=-1).to(tl.int64)
    block = slots // BLOCK_SIZE
    offset = slots % BLOCK_SIZE
    heads = (program % HEAD_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)
    # Tiles [heads, pieces of X elements, tokens, X] for keys and [heads, head dim, tokens] for
    # values: tokens inside the head dimension, so that the consecutive slots of a prefill chunk
    # (one block's tokens side by side in both caches) are written by neighbouring lanes.
    h4 = heads[:, None, None, None]
    p4 = tl.arange(0, HEAD_PAD // X)[None, :, None, None]
    t4 = tokens[None, None, :, None]
    x4 = tl.arange(0, X)[None, None, None, :]
    d4 = p4 * X + x4
    k_mask = (h4 < num_kv_heads) & (d4 < HEAD_SIZE) & (slots >= 0)[None, None, :, None]
    k = tl.load(key + t4 * key_stride_t + h4 * key_stride_h + d4 * key_stride_d, mask=k_mask)
    k_dst = key_cache + block[None, None, :, None] * k_stride_block + h4 * k_stride_head
    k_dst += p4 * (BLOCK_SIZE * X) + offset[None, None, :, None] * X + x4
    tl.store(k_dst, _stored(k, k_scale, FP8), mask=k_mask)
    h3 = heads[:, None, None]
    d3 = tl.arange(0, HEAD_PAD)[None, :, None]
    t3 = tokens[None, None, :]
    v_mask = (h3 < num_kv_heads) & (d3 < HEAD_SIZE) & (slots >= 0)[None, None, :]
    v = tl.load(value + t3 * value_stride_t + h3 * value_stride_h + d3 * value_stride_d, mask=v_mask)
    v_dst = value_cache + block[None, None, :] * v_stride_block + h3 * v_stride_head + d3 * BLOCK_SIZE
    tl.store(v_dst + offset[None, None, :], _stored(v, v_scale, FP8), mask=v_mask)


_launcher = Launcher(_cache_kernel)


@_dispatcher.register("triton")
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
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    tokens = _TOKENS if num_tokens >= _GROUPED_FROM else 1
    block_h, head_pad = head_tile(num_kv_heads, head_size, key.element_size() * tokens, _TILE_BYTES)
    head_blocks = cdiv(num_kv_heads, block_h)
    fp8 = FP8_KINDS[kv_cache_dtype]
    block_size, x = key_cache.shape[3], key_cache.shape[4]
    strides = (
        *key.stride(), *value.stride(), *key_cache.stride()[:2], *value_cache.stride()[:2],
    )  # fmt: skip
    pointers = (key, value, key_cache, value_cache, slot_mapping, k_scale if fp8 else None, v_scale if fp8 else None)
    # The token count is not specialised on: a new count reuses the launch.
    launch_key = (
        None if triton_interpreted() else (head_size, block_h, block_size, x, tokens, fp8, num_kv_heads, strides)
    )

    def constexprs() -> dict[str, object]:
        return dict(
            HEAD_SIZE=head_size, HEAD_PAD=head_pad, BLOCK_H=block_h, HEAD_BLOCKS=head_blocks, BLOCK_SIZE=block_size,
            X=x, TOKENS=tokens, FP8=fp8, num_warps=_NUM_WARPS,
        )  # fmt: skip

    grid = (cdiv(num_tokens, tokens) * head_blocks,)
    scalars = (num_tokens, num_kv_heads, *strides)
    _launcher.launch(launch_key, grid, pointers, scalars, constexprs, key.device)

"""Triton ``merge_attn_states``: one memory-bound pass over both partial outputs.

One-dimensional grid of ``num_tokens * HEAD_BLOCKS`` programs in memory order:
program ``i`` merges a ``[BLOCK_H, BLOCK_D]`` tile, heads ``BLOCK_H * (i % HEAD_BLOCKS)``
onwards of token ``i // HEAD_BLOCKS`` (``BLOCK_D`` the head size padded to a power
of two and masked). Every element is read once
from each partial output and written once; each lse entry is read (and
the merged one written) once. Inputs are loaded in their storage dtype and merged
in fp32, exactly as :mod:`attnops.merge.reference` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from attnops._common.backend import triton_interpreted
from attnops._common.fastpath import UNALIGNED, UNBOUND, Launcher, cdiv, current_stream, head_tile
from attnops._common.fp8_bits import e4m3_bits
from attnops.merge.api import _dispatcher

# Bytes of one program's tile per input (2048 16-bit or 1024 fp32 elements) and its warps:
# four 16-byte loads per input per thread in flight. Programs run in memory order (a token's head
# blocks next to each other): H200, graph replay, clean L2, 512 / 4096 / 32768 tokens: 8 KiB with
# 4 warps 8.3 / 28.1 / 193.8 us, 4 KiB with 2 warps 8.3 / 29.3 / 198.1 us (and 8.4 / 29.8 / 204.5
# us when the grid's first axis walked the tokens of one head block, then the next block's).
_TILE_BYTES = 8192
_NUM_WARPS = 4
# fp8 output formats: (largest finite value, exponent bias).
_FP8_FORMATS = {torch.float8_e4m3fn: (448.0, 7), torch.float8_e4m3fnuz: (240.0, 8)}


@triton.jit(do_not_specialize=["num_with_context", "prefix_lse_stride_h", "suffix_lse_stride_h", "out_lse_stride_h"])
def _merge_kernel(
    out_ptr,
    prefix_ptr,
    prefix_lse_ptr,
    suffix_ptr,
    suffix_lse_ptr,
    out_lse_ptr,
    scale_ptr,
    num_heads,
    num_with_context,
    out_stride_t,
    out_stride_h,
    prefix_stride_t,
    prefix_stride_h,
    suffix_stride_t,
    suffix_stride_h,
    prefix_lse_stride_h,
    prefix_lse_stride_t,
    suffix_lse_stride_h,
    suffix_lse_stride_t,
    out_lse_stride_h,
    out_lse_stride_t,
    HEAD_SIZE: tl.constexpr,
    HAS_OUT_LSE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_BLOCKS: tl.constexpr,
):
    # int64 token index: token * stride can pass 2^31 for long prefills.
    program = tl.program_id(0)
    token = (program // HEAD_BLOCKS).to(tl.int64)
    heads = (program % HEAD_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    head_mask = heads < num_heads
    mask = head_mask[:, None] & (dims < HEAD_SIZE)[None, :]
    # Tokens past the context have no prefix: its loads are masked off (no
    # traffic). A per-head vector rather than a scalar flag, for the interpreter.
    has_prefix = heads < tl.where(token < num_with_context, num_heads, 0)

    p_lse = tl.load(
        prefix_lse_ptr + heads * prefix_lse_stride_h + token * prefix_lse_stride_t,
        mask=has_prefix,
        other=float("-inf"),
    )
    s_lse_raw = tl.load(suffix_lse_ptr + heads * suffix_lse_stride_h + token * suffix_lse_stride_t, mask=head_mask)
    prefix = tl.load(
        prefix_ptr + token * prefix_stride_t + heads[:, None] * prefix_stride_h + dims[None, :],
        mask=mask & has_prefix[:, None],
        other=0.0,
    ).to(tl.float32)
    suffix = tl.load(
        suffix_ptr + token * suffix_stride_t + heads[:, None] * suffix_stride_h + dims[None, :], mask=mask
    ).to(tl.float32)

    # An lse of +inf means an empty part, like -inf.
    p_lse = tl.where(p_lse == float("inf"), float("-inf"), p_lse)
    s_lse = tl.where(s_lse_raw == float("inf"), float("-inf"), s_lse_raw)
    max_lse = tl.maximum(p_lse, s_lse)
    both_empty = max_lse == float("-inf")
    # Shift by 0 where both parts are empty, avoiding -inf - -inf = NaN.
    shift = tl.where(both_empty, 0.0, max_lse)
    p_se = tl.exp(p_lse - shift)
    s_se = tl.exp(s_lse - shift)
    out_se = p_se + s_se
    # Scale first, then multiply (as vLLM does), so large lse never overflow.
    p_scale = p_se / out_se
    s_scale = s_se / out_se
    merged = prefix * p_scale[:, None] + suffix * s_scale[:, None]
    merged = tl.where(both_empty[:, None], prefix, merged)
    merged = tl.where(has_prefix[:, None], merged, suffix)
    lse = tl.where(both_empty, max_lse, tl.log(out_se) + max_lse)
    lse = tl.where(has_prefix, lse, s_lse_raw)

    out_ptrs = out_ptr + token * out_stride_t + heads[:, None] * out_stride_h + dims[None, :]
    if HAS_SCALE:
        # vLLM multiplies by the fp32 reciprocal of the scale and saturates.
        merged = merged * (1.0 / tl.load(scale_ptr))
        merged = tl.minimum(tl.maximum(merged, -FP8_MAX), FP8_MAX)
        tl.store(out_ptrs, e4m3_bits(merged, FP8_BIAS), mask=mask)
    else:
        tl.store(out_ptrs, merged.to(out_ptr.dtype.element_ty), mask=mask)
    if HAS_OUT_LSE:
        tl.store(out_lse_ptr + heads * out_lse_stride_h + token * out_lse_stride_t, lse, mask=head_mask)


_launcher = Launcher(_merge_kernel)


def _launch(
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None,
    prefill_tokens_with_context: int | None,
    output_scale: torch.Tensor | None,
) -> tuple:
    """The launch of a call with at least one token: :meth:`Launcher.launch`'s arguments (a plain tuple:
    a named one costs the general path ~0.4 µs)."""
    num_tokens, num_heads, head_size = output.shape
    block_h, block_d = head_tile(num_heads, head_size, prefix_output.element_size(), _TILE_BYTES)
    has_scale = output_scale is not None
    fp8_max, fp8_bias = _FP8_FORMATS.get(output.dtype, (0.0, 0))
    # fp8 bytes are assembled in the kernel and stored as uint8; pointers a launch never reads are None.
    pointers = (
        output.view(torch.uint8) if has_scale else output, prefix_output, prefix_lse, suffix_output, suffix_lse,
        output_lse, output_scale,
    )  # fmt: skip
    out_lse_strides = (0, 0) if output_lse is None else output_lse.stride()
    strides = (
        *output.stride()[:2], *prefix_output.stride()[:2], *suffix_output.stride()[:2], *prefix_lse.stride(),
        *suffix_lse.stride(), *out_lse_strides,
    )  # fmt: skip
    with_context = num_tokens if prefill_tokens_with_context is None else prefill_tokens_with_context
    head_blocks = cdiv(num_heads, block_h)
    key = None
    if not triton_interpreted():
        # Arguments not specialised on stay out of the key, but for their integer width.
        lse_heads = strides[6::2]
        fixed = strides[:6] + strides[7::2]
        wide = max(lse_heads) >= 2**31
        key = (head_size, block_h, block_d, fp8_max, fp8_bias, num_heads, fixed, wide)

    def constexprs() -> dict[str, object]:
        return dict(
            HEAD_SIZE=head_size, HAS_OUT_LSE=output_lse is not None, HAS_SCALE=has_scale, FP8_MAX=fp8_max,
            FP8_BIAS=fp8_bias, BLOCK_H=block_h, BLOCK_D=block_d, HEAD_BLOCKS=head_blocks,
            num_warps=_NUM_WARPS,
        )  # fmt: skip

    grid = (num_tokens * head_blocks,)
    return key, grid, pointers, (num_heads, with_context, *strides), constexprs, output.device


def _merge_direct(
    handles: tuple[int, Callable[..., None]] | None,
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None,
    prefill_tokens_with_context: int | None,
    output_scale: torch.Tensor | None,
) -> object:
    """:func:`merge_attn_states` through captured ``(device index, launch)`` (see
    :class:`attnops._common.fastpath.Bound`): every scalar is fixed by the call's signature."""
    out_lse = None if output_lse is None else output_lse.data_ptr()
    scale = None if output_scale is None else output_scale.data_ptr()
    addresses = (
        output.data_ptr(), prefix_output.data_ptr(), prefix_lse.data_ptr(), suffix_output.data_ptr(),
        suffix_lse.data_ptr(),
    )  # fmt: skip
    if (addresses[0] | addresses[1] | addresses[2] | addresses[3] | addresses[4] | (out_lse or 0) | (scale or 0)) & 15:
        return UNALIGNED
    if handles is None:
        return UNBOUND
    index, launch = handles
    launch(current_stream(index), *addresses, out_lse, scale)
    return None


def _merge_capture(
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None,
    prefill_tokens_with_context: int | None,
    output_scale: torch.Tensor | None,
) -> tuple[int, Callable[..., None]] | None:
    """The direct launch of this call's signature, with its device index."""
    if output.shape[0] == 0:
        return None
    key, grid, pointers, scalars, _, device = _launch(
        output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, prefill_tokens_with_context,
        output_scale,
    )  # fmt: skip
    direct = _launcher.direct(key, grid, pointers, scalars, device)
    return None if direct is None else (device.index, direct)


@_dispatcher.register("triton", direct=_merge_direct, capture=_merge_capture)
def merge_attn_states(
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None,
    prefill_tokens_with_context: int | None,
    output_scale: torch.Tensor | None,
) -> None:
    """Triton version of :func:`attnops.merge.reference.merge_attn_states` (inputs are validated).

    Shapes: outputs ``[num_tokens, num_heads, head_size]`` (last-dim stride 1),
    lse fp32 ``[num_heads, num_tokens]`` (any strides); ``output`` is fp8
    (e4m3fn/e4m3fnuz) exactly when ``output_scale`` (one fp32 element) is given.
    """
    if output.shape[0] == 0:
        return
    _launcher.launch(
        *_launch(
            output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, prefill_tokens_with_context,
            output_scale,
        )
    )  # fmt: skip

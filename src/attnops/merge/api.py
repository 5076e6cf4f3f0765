"""``merge_attn_states``: validation, backend dispatch and ``torch.ops.attnops`` registration."""

from __future__ import annotations

import torch

from attnops._common.backend import Dispatcher
from attnops._common.dtypes import ATTENTION_DTYPES
from attnops._common.registry import register_op
from attnops._common.validate import (
    check_int,
    check_optional_tensor,
    check_same_device,
    check_tensor,
    values_checked,
)
from attnops.merge import reference

# vLLM's quantised output path accepts the e4m3 fp8 formats only.
FP8_OUTPUT_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def _validate_merge_attn_states(
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None,
    prefill_tokens_with_context: int | None,
    output_scale: torch.Tensor | None,
) -> None:
    check_tensor("prefix_output", prefix_output, dtype=ATTENTION_DTYPES, ndim=3, last_dim_contiguous=True)
    num_tokens, num_heads, head_size = prefix_output.shape
    out_shape = (num_tokens, num_heads, head_size)
    lse_shape = (num_heads, num_tokens)
    check_tensor("suffix_output", suffix_output, dtype=prefix_output.dtype, shape=out_shape, last_dim_contiguous=True)
    check_tensor("prefix_lse", prefix_lse, dtype=torch.float32, shape=lse_shape)
    check_tensor("suffix_lse", suffix_lse, dtype=torch.float32, shape=lse_shape)
    check_optional_tensor("output_lse", output_lse, dtype=torch.float32, shape=lse_shape)
    check_optional_tensor("output_scale", output_scale, dtype=torch.float32)
    if output_scale is not None and output_scale.numel() != 1:
        raise ValueError(f"output_scale: expected a one-element tensor, got shape {tuple(output_scale.shape)}")
    # Without a scale the output keeps the input dtype; with one it is fp8.
    out_dtype = prefix_output.dtype if output_scale is None else FP8_OUTPUT_DTYPES
    check_tensor("output", output, dtype=out_dtype, shape=out_shape, last_dim_contiguous=True)
    if prefill_tokens_with_context is not None:
        check_int("prefill_tokens_with_context", prefill_tokens_with_context, min_value=0, max_value=num_tokens)
    check_same_device(
        "output",
        {
            "output": output,
            "prefix_output": prefix_output,
            "prefix_lse": prefix_lse,
            "suffix_output": suffix_output,
            "suffix_lse": suffix_lse,
            "output_lse": output_lse,
            "output_scale": output_scale,
        },
    )
    if output_scale is not None and values_checked(output_scale):
        scale = float(output_scale.reshape(()))
        if not (0.0 < scale < float("inf")):
            raise ValueError(f"output_scale: expected a finite value > 0, got {scale}")


_dispatcher = Dispatcher("merge_attn_states", reference.merge_attn_states, _validate_merge_attn_states)


@register_op("merge_attn_states", mutates_args=("output", "output_lse"), validate=_validate_merge_attn_states)
def merge_attn_states(
    output: torch.Tensor,
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None = None,
    prefill_tokens_with_context: int | None = None,
    output_scale: torch.Tensor | None = None,
    backend: str | None = None,
) -> None:
    """Merge two partial attention results by their log-sum-exp (arXiv:2501.01005, §2.2).

    Typical use: ``prefix`` is attention over the cached context, ``suffix``
    over the new tokens (or two KV shards of a split-KV decode); the merge
    equals softmax attention over both key sets together. Semantics follow
    vLLM's ``csrc/attention/merge_attn_states.cu`` and
    ``vllm/v1/attention/ops/merge_attn_states.py`` (with
    ``prefill_tokens_with_context`` and the fp8 ``output_scale``).

    For token ``t < prefill_tokens_with_context`` and head ``h``, with
    ``p = prefix_lse[h, t]``, ``s = suffix_lse[h, t]`` (``+inf`` read as
    ``-inf``) and ``m = max(p, s)``::

        output[t, h]     = (e^(p-m) * prefix_output[t, h] + e^(s-m) * suffix_output[t, h]) / (e^(p-m) + e^(s-m))
        output_lse[h, t] = log(e^(p-m) + e^(s-m)) + m

    When both parts are empty (``m = -inf``) ``output[t, h]`` is a copy of
    ``prefix_output[t, h]`` and ``output_lse[h, t] = -inf`` (vLLM's CUDA
    behaviour). Tokens ``t >= prefill_tokens_with_context`` have no prefix:
    ``output[t]`` is ``suffix_output[t]`` and ``output_lse[:, t]`` is
    ``suffix_lse[:, t]`` as given. Math runs in fp32.

    Args:
        output: ``[num_tokens, num_heads, head_size]``, written in place. Same
            dtype as ``prefix_output``, or ``float8_e4m3fn``/``float8_e4m3fnuz``
            when ``output_scale`` is given. Any strides with last-dim stride 1.
        prefix_output: ``[num_tokens, num_heads, head_size]`` fp32/fp16/bf16,
            last-dim stride 1 (views such as ``x[..., :head_size]`` are fine).
        prefix_lse: ``[num_heads, num_tokens]`` fp32, natural-log LSE of the prefix part.
        suffix_output: like ``prefix_output``, same dtype.
        suffix_lse: like ``prefix_lse``.
        output_lse: optional ``[num_heads, num_tokens]`` fp32, receives the merged lse.
        prefill_tokens_with_context: optional int in ``[0, num_tokens]``; the
            number of leading tokens that are merged. ``None`` merges all.
        output_scale: optional one-element fp32 tensor (> 0): the output is
            ``clamp(merged * (1 / output_scale), ±fp8_max)`` rounded to fp8.
        backend: ``"auto"`` (default, or ``ATTNOPS_BACKEND``), ``"torch"`` or ``"triton"``.

    Raises:
        TypeError, ValueError: on bad input, before anything is written.
    """
    _, impl = _dispatcher.prepare(
        backend,
        output,
        prefix_output,
        prefix_lse,
        suffix_output,
        suffix_lse,
        output_lse,
        prefill_tokens_with_context,
        output_scale,
    )
    impl(
        output,
        prefix_output,
        prefix_lse,
        suffix_output,
        suffix_lse,
        output_lse,
        prefill_tokens_with_context,
        output_scale,
    )

"""Pure-PyTorch ``merge_attn_states``: the CPU default and the oracle for kernels.

Follows vLLM's CUDA kernel (``csrc/attention/merge_attn_states.cu``) step by
step in fp32: an lse of ``+inf`` counts as ``-inf``; the weights are
``exp(lse - max)`` normalised by their sum; both parts empty gives a copy of
``prefix_output`` with merged lse ``-inf``; tokens at or past
``prefill_tokens_with_context`` copy the suffix output and its raw lse; an fp8
output is ``saturate(merged * (1 / output_scale))``.
"""

from __future__ import annotations

import torch

from attnops._common.chunking import chunk_budget

# Tokens per chunk are chosen so that one chunk's fp32 temporaries stay near
# this many elements, whatever the head count and size.
_CHUNK_ELEMENTS = 1 << 22


def _empty_as_neg_inf(lse: torch.Tensor) -> torch.Tensor:
    """vLLM treats an lse of +inf like -inf: that part holds no keys."""
    return torch.where(torch.isinf(lse), float("-inf"), lse)


def _merge_chunk(
    prefix_output: torch.Tensor,
    prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor,
    suffix_lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged fp32 output ``[t, h, d]`` and lse ``[t, h]`` for token-major lse ``[t, h]``."""
    p_lse = _empty_as_neg_inf(prefix_lse)
    s_lse = _empty_as_neg_inf(suffix_lse)
    max_lse = torch.maximum(p_lse, s_lse)
    both_empty = torch.isinf(max_lse)
    # Shifting by 0 where both parts are empty avoids -inf - -inf = NaN in the
    # lse; the output of those entries is replaced below.
    shift = torch.where(both_empty, 0.0, max_lse)
    p_se = torch.exp(p_lse - shift)
    s_se = torch.exp(s_lse - shift)
    out_se = p_se + s_se
    # Scale first, then multiply (as vLLM does), so large lse never overflow.
    p_scale = (p_se / out_se).unsqueeze(-1)
    s_scale = (s_se / out_se).unsqueeze(-1)
    # fp32 products of the (possibly half-precision) inputs, without fp32 copies of them.
    merged = torch.mul(prefix_output, p_scale)
    merged.addcmul_(suffix_output, s_scale)
    if bool(both_empty.any()):
        merged[both_empty] = prefix_output[both_empty].float()
    lse = torch.where(both_empty, max_lse, torch.log(out_se) + max_lse)
    return merged, lse


def _to_output_dtype(values: torch.Tensor, dtype: torch.dtype, output_scale: torch.Tensor | None) -> torch.Tensor:
    """Round fp32 ``values`` to ``dtype``; with a scale, quantise to saturated fp8 like vLLM."""
    if output_scale is None:
        return values.to(dtype)
    limit = torch.finfo(dtype).max
    # vLLM multiplies by the fp32 reciprocal of the scale rather than dividing.
    inverse = torch.reciprocal(output_scale.reshape(()).float())
    return (values * inverse).clamp(-limit, limit).to(dtype)


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
    """Write the merged attention state into ``output`` (and ``output_lse``); inputs are validated."""
    num_tokens, num_heads, head_size = output.shape
    with_context = num_tokens if prefill_tokens_with_context is None else prefill_tokens_with_context
    chunk = max(1, chunk_budget(output.device, _CHUNK_ELEMENTS) // max(1, num_heads * head_size))
    for start in range(0, num_tokens, chunk):
        end = min(start + chunk, num_tokens)
        merged, lse = _merge_chunk(
            prefix_output[start:end],
            prefix_lse[:, start:end].T,
            suffix_output[start:end],
            suffix_lse[:, start:end].T,
        )
        # Tokens without prefix context take the suffix as is, lse included.
        tail = max(with_context, start) - start
        merged[tail:] = suffix_output[start + tail : end].float()
        lse[tail:] = suffix_lse[:, start + tail : end].T
        output[start:end].copy_(_to_output_dtype(merged, output.dtype, output_scale))
        if output_lse is not None:
            output_lse[:, start:end].copy_(lse.T)

"""Context-parallel paged decode over ``torch.distributed``.

The KV cache of each sequence is split across the ranks of a process group:
every rank holds its own paged cache with the tokens it owns, its own block
tables, and ``seq_lens`` counting only its local tokens (any split works:
contiguous chunks, round-robin blocks, ranks holding nothing for a
sequence). Softmax attention over the union of the shards is the
log-sum-exp merge of the per-shard results, so each rank computes its
partial output and LSE with :func:`attnops.paged_attention.paged_decode`,
the partials are all-gathered, and :func:`attnops.merge.merge_attn_states`
folds them in fp32. Every rank returns the single-device result.

Works with gloo (CPU tensors) and NCCL (CUDA tensors). ALiBi is not
accepted: its bias depends on a token's global position, which a shard does
not know.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attnops.merge import merge_attn_states
from attnops.paged_attention import paged_decode


def merge_partials(
    outputs: list[torch.Tensor], lses: list[torch.Tensor], backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets.

    Args:
        outputs: per part, ``[num_tokens, num_heads, head_size]``, each
            normalised over its own keys (any float dtype).
        lses: per part, fp32 ``[num_heads, num_tokens]``, natural-log sum of
            exp(logit) over the part's keys (−inf for an empty part).
        backend: passed to :func:`merge_attn_states`.

    Returns:
        ``(output, lse)``: fp32 ``[num_tokens, num_heads, head_size]`` and fp32
        ``[num_heads, num_tokens]``, attention over the union of the parts.
    """
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(f"outputs/lses: expected equally many (>= 1) parts, got {len(outputs)} and {len(lses)}")
    merged, merged_lse = outputs[0].float(), lses[0]
    for output, lse in zip(outputs[1:], lses[1:], strict=True):
        folded = torch.empty_like(merged)
        folded_lse = torch.empty_like(merged_lse)
        merge_attn_states(folded, merged, merged_lse, output.float(), lse, output_lse=folded_lse, backend=backend)
        merged, merged_lse = folded, folded_lse
    return merged, merged_lse


def context_parallel_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    kv_cache_dtype: str = "auto",
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    return_lse: bool = False,
    group: dist.ProcessGroup | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode attention for sequences whose KV cache is sharded across ranks.

    Every rank calls this collectively with the same ``query``
    ``[num_seqs, num_heads, head_size]`` and its own shard: ``key_cache``
    ``[num_blocks, num_kv_heads, head_size // x, block_size, x]``,
    ``value_cache`` ``[num_blocks, num_kv_heads, head_size, block_size]``,
    int32 ``block_tables`` ``[num_seqs, max_blocks]`` and int32 ``seq_lens``
    ``[num_seqs]`` (tokens of each sequence held by this rank, 0 allowed).
    ``scale`` defaults to ``head_size ** -0.5``; fp8 caches as in
    :func:`attnops.paged_attention.paged_decode`.

    Returns ``out`` ``[num_seqs, num_heads, head_size]`` in the query dtype
    (and, with ``return_lse``, the fp32 lse ``[num_heads, num_seqs]`` over all
    shards), identical on every rank.
    """
    out, lse = paged_decode(
        query,
        key_cache,
        value_cache,
        block_tables,
        seq_lens,
        scale=scale,
        kv_cache_dtype=kv_cache_dtype,
        k_scale=k_scale,
        v_scale=v_scale,
        return_lse=True,
        backend=backend,
    )
    world = dist.get_world_size(group)
    partial = out.float()
    outputs = [torch.empty_like(partial) for _ in range(world)]
    lses = [torch.empty_like(lse) for _ in range(world)]
    dist.all_gather(outputs, partial, group=group)
    dist.all_gather(lses, lse.contiguous(), group=group)
    merged, merged_lse = merge_partials(outputs, lses, backend=backend)
    merged = merged.to(query.dtype)
    return (merged, merged_lse) if return_lse else merged

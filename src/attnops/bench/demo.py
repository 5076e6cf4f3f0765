"""``attnops demo``: the ops end to end on a small, realistic example.

1. Write the K/V of three sequences into a paged cache with ``reshape_and_cache``.
2. Decode one token per sequence with ``paged_attention_v1`` and ``_v2``.
3. Split every context in two, attend to each half separately (with LSE),
   merge the halves with ``merge_attn_states`` and compare with full attention.
4. Pick the top 2048 of 8192 indexer logits per row with ``top_k_per_row_decode``.
5. Convert an MInference vertical/slash pattern into block-sparse tables.
"""

from __future__ import annotations

import torch
from rich.console import Console

from attnops.bench.cases import vertical_slash_pattern

SEQ_LENS = (37, 700, 1300)
HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 8, 2, 128, 16
DTYPE = torch.bfloat16


def run_demo(console: Console | None = None) -> None:
    console = console or Console()
    gen = torch.Generator().manual_seed(0)
    cache = _build_cache(console, gen)
    query = torch.randn((len(SEQ_LENS), HEADS, HEAD_SIZE), generator=gen).to(DTYPE)
    full = _decode(console, cache, query)
    _split_and_merge(console, cache, query, full)
    _top_k(console, gen)
    _vertical_slash(console)


def _heading(console: Console, text: str) -> None:
    console.print(f"\n[bold]{text}[/]")


def _build_cache(console: Console, gen: torch.Generator) -> dict[str, torch.Tensor]:
    from attnops._common.dtypes import x_for
    from attnops.cache import reshape_and_cache

    _heading(console, "1. reshape_and_cache: write the context of 3 sequences into a paged KV cache")
    blocks_per_seq = [-(-n // BLOCK_SIZE) for n in SEQ_LENS]
    num_blocks = sum(blocks_per_seq) + 4
    x = x_for(DTYPE)
    key_cache = torch.zeros((num_blocks, KV_HEADS, HEAD_SIZE // x, BLOCK_SIZE, x), dtype=DTYPE)
    value_cache = torch.zeros((num_blocks, KV_HEADS, HEAD_SIZE, BLOCK_SIZE), dtype=DTYPE)
    # Scattered blocks, as an allocator that has run for a while hands them out.
    free = torch.randperm(num_blocks, generator=gen)
    block_tables = torch.zeros((len(SEQ_LENS), max(blocks_per_seq)), dtype=torch.int32)
    slots = []
    used = 0
    for seq, (n, nb) in enumerate(zip(SEQ_LENS, blocks_per_seq, strict=True)):
        block_tables[seq, :nb] = free[used : used + nb].int()
        used += nb
        position = torch.arange(n)
        slots.append(block_tables[seq, position // BLOCK_SIZE].long() * BLOCK_SIZE + position % BLOCK_SIZE)
    slot_mapping = torch.cat(slots)
    key, value = (torch.randn((len(slot_mapping), KV_HEADS, HEAD_SIZE), generator=gen).to(DTYPE) for _ in range(2))
    one = torch.ones(())
    reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, "auto", one, one)
    console.print(
        f"   {len(slot_mapping)} tokens (lengths {list(SEQ_LENS)}), {KV_HEADS} kv heads x {HEAD_SIZE}, "
        f"{DTYPE}, block size {BLOCK_SIZE}: key_cache {tuple(key_cache.shape)}, "
        f"value_cache {tuple(value_cache.shape)}, {num_blocks} blocks"
    )
    return {
        "key_cache": key_cache,
        "value_cache": value_cache,
        "block_tables": block_tables,
        "seq_lens": torch.tensor(SEQ_LENS, dtype=torch.int32),
    }


def _decode(console: Console, cache: dict[str, torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    from attnops.paged_attention import PARTITION_SIZE, paged_attention_v1, paged_attention_v2

    _heading(console, f"2. paged_attention_v1 / _v2: decode {HEADS} query heads (GQA {HEADS // KV_HEADS}:1)")
    scale, max_len = HEAD_SIZE**-0.5, max(SEQ_LENS)
    one = torch.ones(())
    args = (cache["key_cache"], cache["value_cache"], KV_HEADS, scale, cache["block_tables"], cache["seq_lens"])
    tail = (BLOCK_SIZE, max_len, None, "auto", one, one)
    out_v1 = torch.empty_like(query)
    paged_attention_v1(out_v1, query, *args, *tail)
    parts = -(-max_len // PARTITION_SIZE)
    exp_sum = torch.empty((len(SEQ_LENS), HEADS, parts))
    max_logits = torch.empty_like(exp_sum)
    tmp_out = torch.empty((len(SEQ_LENS), HEADS, parts, HEAD_SIZE), dtype=DTYPE)
    out_v2 = torch.empty_like(query)
    paged_attention_v2(out_v2, exp_sum, max_logits, tmp_out, query, *args, *tail)
    console.print(f"   out {tuple(out_v1.shape)} {out_v1.dtype}; v2 used {parts} partitions of {PARTITION_SIZE} tokens")
    console.print(f"   max |v1 - v2| = {_max_diff(out_v1, out_v2):.2e}")
    return out_v1


def _split_and_merge(console: Console, cache: dict[str, torch.Tensor], query: torch.Tensor, full: torch.Tensor) -> None:
    from attnops.merge import merge_attn_states
    from attnops.paged_attention import paged_decode

    _heading(console, "3. merge_attn_states: attend to each half of the context, merge by log-sum-exp")
    seq_lens = cache["seq_lens"]
    # Split on a block boundary so each half is a valid paged view of the same cache.
    split_blocks = (seq_lens // 2 + BLOCK_SIZE - 1) // BLOCK_SIZE
    first_lens = torch.minimum(split_blocks * BLOCK_SIZE, seq_lens).int()
    second_lens = (seq_lens - first_lens).int()
    second_tables = torch.zeros_like(cache["block_tables"])
    for seq, start in enumerate(split_blocks.tolist()):
        rest = cache["block_tables"][seq, start:]
        second_tables[seq, : rest.numel()] = rest
    halves = []
    for tables, lens in ((cache["block_tables"], first_lens), (second_tables, second_lens)):
        out, lse = paged_decode(query, cache["key_cache"], cache["value_cache"], tables, lens, return_lse=True)
        halves.append((out, lse))
    merged = torch.empty_like(query)
    merged_lse = torch.empty((HEADS, len(SEQ_LENS)))
    (out_a, lse_a), (out_b, lse_b) = halves
    merge_attn_states(merged, out_a, lse_a, out_b, lse_b, output_lse=merged_lse)
    _, full_lse = paged_decode(
        query, cache["key_cache"], cache["value_cache"], cache["block_tables"], seq_lens, return_lse=True
    )
    console.print(f"   halves of {first_lens.tolist()} + {second_lens.tolist()} tokens")
    console.print(
        f"   max |merged - full attention| = {_max_diff(merged, full):.2e} ({DTYPE} rounding), "
        f"max |merged lse - full lse| = {_max_diff(merged_lse, full_lse):.2e}"
    )


def _top_k(console: Console, gen: torch.Generator) -> None:
    from attnops.topk import top_k_per_row_decode

    _heading(console, "4. top_k_per_row_decode: keep the 2048 best of each row of indexer logits")
    rows, width, k = 4, 8192, 2048
    logits = torch.randn((rows, width), generator=gen)
    seq_lens = torch.tensor([1500, 4096, 6000, 8192], dtype=torch.int32)
    indices = torch.empty((rows, k), dtype=torch.int32)
    top_k_per_row_decode(logits, 1, seq_lens, indices, rows, logits.stride(0), logits.stride(1), k)
    same = []
    for r, n in enumerate(seq_lens.tolist()):
        picked = indices[r][indices[r] >= 0].long()
        want = logits[r, :n].topk(min(k, n)).values
        same.append(torch.equal(logits[r, picked].sort(descending=True).values, want))
    console.print(f"   rows of {seq_lens.tolist()} tokens -> indices {tuple(indices.shape)} int32")
    console.print(f"   row 0 (1500 < k): {int((indices[0] >= 0).sum())} indices then -1 padding")
    console.print(f"   selected values equal torch.topk's in every row: {all(same)}")


def _vertical_slash(console: Console) -> None:
    from attnops.sparse import convert_vertical_slash_indexes

    _heading(console, "5. convert_vertical_slash_indexes: an MInference pattern -> block-sparse lookup tables")
    context, heads, nnz_v, nnz_s, block = 8192, 4, 200, 400, 64
    vertical, slash = vertical_slash_pattern(1, heads, context, nnz_v, nnz_s, seed=0, device=torch.device("cpu"))
    seqlens = torch.tensor([context], dtype=torch.int32)
    block_count, _, column_count, _ = convert_vertical_slash_indexes(
        seqlens, seqlens, vertical, slash, context, block, block
    )
    rows = block_count.shape[-1]
    causal_blocks = rows * (rows + 1) // 2 * heads
    dense_fraction = (block_count.sum().item() + column_count.sum().item() / block) / causal_blocks
    console.print(
        f"   context {context}, {heads} heads, {nnz_v} vertical + {nnz_s} slash indexes per head, "
        f"{block}x{block} blocks: tables {tuple(block_count.shape)}"
    )
    console.print(
        f"   {int(block_count.sum())} key blocks + {int(column_count.sum())} single columns: "
        f"{100 * dense_fraction:.1f}% of the causal attention work"
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())

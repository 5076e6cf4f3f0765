"""One rank of the context-parallel decode test (launched by test_distributed.py).

Usage: cp_worker.py RANK WORLD STORE_FILE SPLIT DTYPE KV_CACHE_DTYPE
Every rank builds the same random problem, keeps its shard of each sequence's
tokens (SPLIT: "chunks" = contiguous token ranges, "blocks" = round-robin
16-token blocks), runs context_parallel_decode, and compares with paged_decode
over the whole cache. Exit code 0 means the results match.
"""

import sys

import torch
import torch.distributed as dist

from attnops.cache import reshape_and_cache
from attnops.distributed import context_parallel_decode
from attnops.paged_attention import paged_decode

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 4, 2, 64, 16
SEQ_LENS = [0, 1, 37, 530, 1100]


def owned_tokens(seq_len: int, rank: int, world: int, split: str) -> torch.Tensor:
    tokens = torch.arange(seq_len)
    if split == "chunks":
        bounds = torch.linspace(0, seq_len, world + 1).round().long()
        return tokens[bounds[rank] : bounds[rank + 1]]
    return tokens[(tokens // BLOCK_SIZE) % world == rank]


def build_cache(keys, values, token_sets, dtype, kv_cache_dtype, k_scale, v_scale):
    """A paged cache holding, for sequence s, the tokens token_sets[s] in order."""
    x = 16 // (1 if kv_cache_dtype != "auto" else torch.empty((), dtype=dtype).element_size())
    cache_dtype = torch.uint8 if kv_cache_dtype != "auto" else dtype
    blocks_per_seq = [max(1, -(-len(t) // BLOCK_SIZE)) for t in token_sets]
    num_blocks = sum(blocks_per_seq)
    key_cache = torch.zeros(num_blocks, NUM_KV_HEADS, HEAD_SIZE // x, BLOCK_SIZE, x, dtype=cache_dtype)
    value_cache = torch.zeros(num_blocks, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, dtype=cache_dtype)
    block_tables = torch.zeros(len(token_sets), max(blocks_per_seq), dtype=torch.int32)
    first = 0
    for s, tokens in enumerate(token_sets):
        block_tables[s, : blocks_per_seq[s]] = torch.arange(first, first + blocks_per_seq[s])
        slots = first * BLOCK_SIZE + torch.arange(len(tokens))
        reshape_and_cache(
            keys[s][tokens], values[s][tokens], key_cache, value_cache, slots, kv_cache_dtype, k_scale, v_scale
        )
        first += blocks_per_seq[s]
    seq_lens = torch.tensor([len(t) for t in token_sets], dtype=torch.int32)
    return key_cache, value_cache, block_tables, seq_lens


def main() -> int:
    rank, world, store, split, dtype_name, kv_cache_dtype = sys.argv[1:7]
    rank, world, dtype = int(rank), int(world), getattr(torch, dtype_name)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(1234)
    keys = [torch.randn(n, NUM_KV_HEADS, HEAD_SIZE, generator=gen).to(dtype) for n in SEQ_LENS]
    values = [torch.randn(n, NUM_KV_HEADS, HEAD_SIZE, generator=gen).to(dtype) for n in SEQ_LENS]
    query = torch.randn(len(SEQ_LENS), NUM_HEADS, HEAD_SIZE, generator=gen).to(dtype)
    k_scale, v_scale = torch.tensor([0.05]), torch.tensor([0.04])
    args = (dtype, kv_cache_dtype, k_scale, v_scale)
    full = build_cache(keys, values, [torch.arange(n) for n in SEQ_LENS], *args)
    shard = build_cache(keys, values, [owned_tokens(n, rank, world, split) for n in SEQ_LENS], *args)
    kw = dict(kv_cache_dtype=kv_cache_dtype, k_scale=k_scale, v_scale=v_scale, return_lse=True)
    want_out, want_lse = paged_decode(query, *full, **kw)
    got_out, got_lse = context_parallel_decode(query, *shard, **kw)
    dist.destroy_process_group()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    ok = torch.allclose(got_out.float(), want_out.float(), atol=tol, rtol=tol) and torch.allclose(
        got_lse, want_lse, atol=1e-4, rtol=1e-5
    )
    if not ok:
        err = (got_out.float() - want_out.float()).abs().max().item()
        print(f"rank {rank}: mismatch, max |out error| {err}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

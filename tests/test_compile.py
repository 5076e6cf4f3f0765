"""torch.library registration: opcheck of every op and a fullgraph-compiled decode step."""

import pytest
import torch

import attnops

SEQ_LENS = [0, 1, 17, 40]
NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, TOPK = 4, 2, 64, 16, 8


def _decode_inputs(seed: int = 0):
    cache = attnops.make_paged_kv_cache(SEQ_LENS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, torch.float32, seed=seed)
    query = torch.randn(len(SEQ_LENS), NUM_HEADS, HEAD_SIZE, generator=torch.Generator().manual_seed(seed))
    return cache, query


def _opcheck_cases():
    cache, query = _decode_inputs()
    decode_args = (
        query,
        cache.key_cache,
        cache.value_cache,
        NUM_KV_HEADS,
        HEAD_SIZE**-0.5,
        cache.block_tables,
        cache.seq_lens,
        BLOCK_SIZE,
        cache.max_seq_len,
        None,
        "auto",
        cache.k_scale,
        cache.v_scale,
    )
    num_seqs = len(SEQ_LENS)
    partitions = -(-cache.max_seq_len // attnops.PARTITION_SIZE)
    out = torch.empty_like(query)
    exp_sum = torch.empty(num_seqs, NUM_HEADS, partitions)
    tmp_out = torch.empty(num_seqs, NUM_HEADS, partitions, HEAD_SIZE)
    tokens = torch.randn(3, NUM_KV_HEADS, HEAD_SIZE)
    slots = torch.tensor([5, -1, 70])
    lse = torch.randn(NUM_HEADS, num_seqs)
    logits = torch.randn(6, 50)
    seq_lens = torch.tensor([50, 3, 20], dtype=torch.int32)
    starts = torch.tensor([0, 10, 0, 45, 5, 0], dtype=torch.int32)
    ends = torch.tensor([50, 12, 30, 50, 5, 33], dtype=torch.int32)
    indices = torch.empty(6, TOPK, dtype=torch.int32)
    lens = torch.tensor([300], dtype=torch.int32)
    vertical = torch.tensor([[[0, 7, 100, 201]]], dtype=torch.int32)
    slash = torch.tensor([[[130, 64, 3, 0]]], dtype=torch.int32)
    counts = torch.tensor([3], dtype=torch.int32)
    tables = attnops.convert_vertical_slash_indexes(lens, lens, vertical, slash, 300, 64, 64)
    q, k = torch.randn(1, 1, 300, 32), torch.randn(1, 1, 300, 32)
    return {
        "paged_attention_v1": (out, *decode_args),
        "paged_attention_v2": (out, exp_sum, torch.empty_like(exp_sum), tmp_out, *decode_args),
        "paged_decode": (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens),
        "reshape_and_cache": (
            tokens,
            tokens.clone(),
            cache.key_cache.clone(),
            cache.value_cache.clone(),
            slots,
            "auto",
            cache.k_scale,
            cache.v_scale,
        ),
        # The op schema gives mutable arguments no default (see attnops._common.registry).
        "merge_attn_states": (out, query, lse, query.flip(0), lse.flip(1), None, None, None),
        "top_k_per_row_prefill": (logits, starts, ends, indices, 6, 50, 1, TOPK),
        "top_k_per_row_decode": (logits, 2, seq_lens, indices, 6, 50, 1, TOPK),
        "convert_vertical_slash_indexes": (lens, lens, vertical, slash, 300, 64, 64),
        "convert_vertical_slash_indexes_mergehead": (lens, lens, vertical, slash, counts, counts, 300, 64, 64),
        "sparse_prefill_attention": (q, k, k.flip(2), *tables, None, 64, 64, True, None),
    }


@pytest.mark.parametrize("name", sorted(_opcheck_cases()))
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.attnops, name).default, _opcheck_cases()[name])


def test_compiled_decode_step_matches_eager():
    cache, query = _decode_inputs(seed=1)
    new_k = torch.randn(len(SEQ_LENS), NUM_KV_HEADS, HEAD_SIZE)

    def step(query, key_cache, value_cache, new_k, slots, logits, seq_lens):
        attnops.reshape_and_cache(new_k, new_k * 2, key_cache, value_cache, slots, "auto", cache.k_scale, cache.v_scale)
        out = torch.empty_like(query)
        attnops.paged_attention_v1(
            out,
            query,
            key_cache,
            value_cache,
            NUM_KV_HEADS,
            HEAD_SIZE**-0.5,
            cache.block_tables,
            seq_lens,
            BLOCK_SIZE,
            cache.max_seq_len,
            None,
            "auto",
            cache.k_scale,
            cache.v_scale,
        )
        half, lse = attnops.paged_decode(query, key_cache, value_cache, cache.block_tables, seq_lens, return_lse=True)
        merged = torch.empty_like(out)
        attnops.merge_attn_states(merged, out, lse, half, lse)
        indices = torch.empty(logits.shape[0], TOPK, dtype=torch.int32)
        attnops.top_k_per_row_decode(logits, 1, seq_lens, indices, logits.shape[0], logits.shape[1], 1, TOPK)
        return merged * 2, indices

    logits = torch.randn(len(SEQ_LENS), 64)
    seq_lens = cache.seq_lens.clone()
    # Overwrite the last token of each non-empty sequence, so the compiled cache write is observed.
    last = (seq_lens - 1).clamp(min=0)
    blocks = cache.block_tables.gather(1, (last // BLOCK_SIZE).long()[:, None])[:, 0]
    slots = torch.where(seq_lens > 0, blocks.long() * BLOCK_SIZE + last % BLOCK_SIZE, -1)
    eager_caches = (cache.key_cache.clone(), cache.value_cache.clone())
    compiled_caches = (cache.key_cache.clone(), cache.value_cache.clone())
    want = step(query, *eager_caches, new_k, slots, logits, seq_lens)
    got = torch.compile(step, fullgraph=True)(query, *compiled_caches, new_k, slots, logits, seq_lens)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1].sort(1).values, want[1].sort(1).values)
    torch.testing.assert_close(compiled_caches[0], eager_caches[0], equal_nan=True)
    torch.testing.assert_close(compiled_caches[1], eager_caches[1], equal_nan=True)


def test_fake_implementations_validate_and_shape_outputs():
    cases = _opcheck_cases()
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = lambda args: tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        merge = list(fake(cases["merge_attn_states"]))
        merge[2] = merge[2].double()
        with pytest.raises(TypeError, match="prefix_lse"):
            torch.ops.attnops.merge_attn_states(*merge)
        v2 = list(fake(cases["paged_attention_v2"]))
        v2[1] = v2[1][:, :, :0]
        with pytest.raises(ValueError, match="exp_sum"):
            torch.ops.attnops.paged_attention_v2(*v2)
        tables = torch.ops.attnops.convert_vertical_slash_indexes(*fake(cases["convert_vertical_slash_indexes"]))
        assert [tuple(t.shape) for t in tables] == [(1, 1, 5), (1, 1, 5, 4), (1, 1, 5), (1, 1, 5, 4)]
        out, lse = torch.ops.attnops.paged_decode(*fake(cases["paged_decode"]))
        assert tuple(out.shape) == (len(SEQ_LENS), NUM_HEADS, HEAD_SIZE) and tuple(lse.shape) == (
            NUM_HEADS,
            len(SEQ_LENS),
        )

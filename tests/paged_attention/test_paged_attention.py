"""paged_attention_v1/v2 and paged_decode against a float64 brute-force oracle written here.

The oracle reads the paged cache element by element through the block tables (with its own
fp8 decode), computes every logit in a Python loop and follows vLLM's kernel: softmax divided by
``exp_sum + 1e-6``, block-sparse skipped blocks at logit ``-FLT_MAX``, partitions of 512 tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import PARTITION_SIZE, paged_attention_v1, paged_attention_v2, paged_decode

FLT_MAX = float(torch.finfo(torch.float32).max)
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def decoded_cache(cache, kv_cache, scale, dtype):
    """The cache as nested lists of floats; fp8 bytes decoded, scaled in fp32 and rounded to ``dtype``."""
    if cache.kv_cache_dtype == "auto":
        return kv_cache.double().tolist()
    values = kv_cache.view(FP8[cache.kv_cache_dtype]).float() * scale.float()
    return values.to(dtype).double().tolist()


def sparse_skips(h, t, seq_len, num_heads, num_kv_heads, block_size, sparse):
    """Whether vLLM's block-sparse pattern skips token ``t`` for query head ``h``."""
    local_blocks, vert_stride, sparse_block, step, tp_rank = sparse
    k_block = (t // block_size) * block_size // sparse_block
    q_block = (seq_len - 1) // sparse_block
    if step >= 0:
        offset = (tp_rank * num_heads + h) * step + 1
    else:
        offset = (tp_rank * num_kv_heads + h // (num_heads // num_kv_heads)) * -step + 1
    return (k_block + offset) % vert_stride != 0 and not k_block > q_block - local_blocks


def softmax_part(logits, values):
    """vLLM's (max, exp_sum, normalised output) over one run of tokens; ``None`` logits are skipped blocks."""
    m = max([-FLT_MAX, *(-FLT_MAX if x is None else x for x in logits)])
    weights = [math.exp((-FLT_MAX if x is None else x) - m) for x in logits]
    exp_sum = sum(weights)
    head_size = len(values[0]) if values else 0
    out = [0.0] * head_size
    for x, w, v in zip(logits, weights, values, strict=True):
        if x is None:
            continue
        for d in range(head_size):
            out[d] += w / (exp_sum + 1e-6) * v[d]
    return m, exp_sum, out


def oracle(query, cache, scale, alibi_slopes=None, sparse=None):
    """Per (seq, head): output, per-partition (max, exp_sum, out) and lse, all float64."""
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads, block_size, x = cache.key_cache.shape[1], cache.block_size, cache.key_cache.shape[4]
    keys = decoded_cache(cache, cache.key_cache, cache.k_scale, query.dtype)
    values = decoded_cache(cache, cache.value_cache, cache.v_scale, query.dtype)
    tables, lens, q = cache.block_tables.tolist(), cache.seq_lens.tolist(), query.double().tolist()
    out = torch.zeros(num_seqs, num_heads, head_size, dtype=torch.float64)
    lse = torch.full((num_heads, num_seqs), -math.inf, dtype=torch.float64)
    parts = {}
    for s in range(num_seqs):
        n = lens[s]
        for h in range(num_heads):
            kvh = h // (num_heads // num_kv_heads)
            logits, vecs = [], []
            for t in range(n):
                block, slot = tables[s][t // block_size], t % block_size
                vecs.append([values[block][kvh][d][slot] for d in range(head_size)])
                if sparse is not None and sparse_skips(h, t, n, num_heads, num_kv_heads, block_size, sparse):
                    logits.append(None)
                    continue
                dot = sum(q[s][h][d] * keys[block][kvh][d // x][slot][d % x] for d in range(head_size))
                slope = 0.0 if alibi_slopes is None else float(alibi_slopes[h])
                logits.append(scale * dot + slope * (t - n + 1))
            m, exp_sum, o = softmax_part(logits, vecs)
            out[s, h] = torch.tensor(o, dtype=torch.float64) if n else 0.0
            if n:
                lse[h, s] = m + math.log(exp_sum)
            for p in range(math.ceil(n / PARTITION_SIZE)):
                window = slice(p * PARTITION_SIZE, (p + 1) * PARTITION_SIZE)
                parts[s, h, p] = softmax_part(logits[window], vecs[window])
    return out, parts, lse


def assert_out(got, want, dtype):
    tol = TOL[dtype]
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def make_case(
    seq_lens, num_heads, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype="auto", alibi=False, seed=0
):
    fp8 = kv_cache_dtype != "auto"
    cache = make_paged_kv_cache(
        seq_lens, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype, seed=seed, extra_blocks=2,
        k_scale=0.3 if fp8 else 1.0, v_scale=1.7 if fp8 else 1.0,
    )  # fmt: skip
    # Entries past a sequence's last block hold garbage ids: the ops must never read them.
    used = -(-cache.seq_lens.long() // block_size)
    garbage = torch.arange(cache.block_tables.shape[1]) >= used[:, None]
    cache.block_tables.masked_fill_(garbage, 10**6)
    g = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(len(seq_lens), num_heads, head_size, generator=g).to(dtype)
    slopes = -0.3 * torch.rand(num_heads, generator=g) if alibi else None
    return query, cache, slopes


def run_v1(query, cache, scale, slopes=None, sparse=(0, 0, 64, 0, 0), max_seq_len=None, op=paged_attention_v1):
    out = torch.full_like(query, math.nan)
    local_blocks, vert_stride, sparse_block, step, tp_rank = sparse
    op(
        out, query, cache.key_cache, cache.value_cache, cache.key_cache.shape[1], scale, cache.block_tables,
        cache.seq_lens, cache.block_size, cache.max_seq_len if max_seq_len is None else max_seq_len, slopes,
        cache.kv_cache_dtype, cache.k_scale, cache.v_scale, tp_rank, local_blocks, vert_stride, sparse_block, step,
    )  # fmt: skip
    return out


SENTINEL = -123.0


def run_v2(query, cache, scale, slopes=None, sparse=(0, 0, 64, 0, 0), extra_partitions=0):
    num_seqs, num_heads, head_size = query.shape
    partitions = math.ceil(cache.max_seq_len / PARTITION_SIZE) + extra_partitions
    out = torch.full_like(query, math.nan)
    exp_sum = torch.full((num_seqs, num_heads, partitions), SENTINEL)
    max_logits = torch.full_like(exp_sum, SENTINEL)
    tmp_out = torch.full((num_seqs, num_heads, partitions, head_size), SENTINEL, dtype=query.dtype)
    local_blocks, vert_stride, sparse_block, step, tp_rank = sparse
    paged_attention_v2(
        out, exp_sum, max_logits, tmp_out, query, cache.key_cache, cache.value_cache, cache.key_cache.shape[1], scale,
        cache.block_tables, cache.seq_lens, cache.block_size, cache.max_seq_len, slopes, cache.kv_cache_dtype,
        cache.k_scale, cache.v_scale, tp_rank, local_blocks, vert_stride, sparse_block, step,
    )  # fmt: skip
    return out, exp_sum, max_logits, tmp_out


def assert_partitions(exp_sum, max_logits, tmp_out, parts, seq_lens, dtype):
    num_seqs, num_heads, partitions = exp_sum.shape
    for s in range(num_seqs):
        for h in range(num_heads):
            for p in range(partitions):
                if (s, h, p) not in parts:
                    # vLLM leaves partitions past the sequence end untouched.
                    assert exp_sum[s, h, p] == max_logits[s, h, p] == SENTINEL, (s, h, p, seq_lens[s])
                    assert (tmp_out[s, h, p] == SENTINEL).all()
                    continue
                m, e, o = parts[s, h, p]
                assert math.isclose(float(max_logits[s, h, p]), m, rel_tol=1e-5, abs_tol=1e-4), (s, h, p)
                assert math.isclose(float(exp_sum[s, h, p]), e, rel_tol=1e-4), (s, h, p)
                assert_out(tmp_out[s, h, p], torch.tensor(o, dtype=torch.float64), dtype)


@pytest.mark.parametrize("head_size", [32, 64, 80, 96, 112, 120, 128, 192, 256])
def test_v1_every_head_size(head_size):
    query, cache, _ = make_case([0, 1, 37], 4, 2, head_size, 16, torch.bfloat16, seed=head_size)
    want, _, _ = oracle(query, cache, head_size**-0.5)
    assert_out(run_v1(query, cache, head_size**-0.5), want, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("alibi", [False, True])
def test_v1_matches_oracle(dtype, block_size, num_heads, num_kv_heads, alibi):
    query, cache, slopes = make_case(
        [0, 1, 5, block_size, 41], num_heads, num_kv_heads, 32, block_size, dtype, alibi=alibi
    )
    want, _, _ = oracle(query, cache, 0.2, slopes)
    assert_out(run_v1(query, cache, 0.2, slopes), want, dtype)


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_caches(kv_cache_dtype, dtype):
    query, cache, slopes = make_case([3, 0, 30], 4, 2, 64, 8, dtype, kv_cache_dtype, alibi=True, seed=5)
    want, _, lse = oracle(query, cache, 0.125, slopes)
    assert_out(run_v1(query, cache, 0.125, slopes), want, dtype)
    out, got_lse = paged_decode(
        query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, scale=0.125,
        alibi_slopes=slopes, kv_cache_dtype=kv_cache_dtype, k_scale=cache.k_scale, v_scale=cache.v_scale,
        return_lse=True,
    )  # fmt: skip
    assert_out(out, want, dtype)
    torch.testing.assert_close(got_lse.double(), lse, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_paged_decode_scales_default_to_one(kv_cache_dtype):
    # An fp8 cache's missing scale reads as 1.0; an "auto" cache's are never read (nor made).
    query, cache, _ = make_case([3, 30], 4, 2, 64, 8, torch.float16, kv_cache_dtype, seed=6)
    args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens)
    one = torch.ones(())
    explicit = paged_decode(*args, kv_cache_dtype=kv_cache_dtype, k_scale=one, v_scale=one, return_lse=True)
    for default in (
        paged_decode(*args, kv_cache_dtype=kv_cache_dtype, k_scale=one, return_lse=True),
        paged_decode(*args, kv_cache_dtype=kv_cache_dtype, return_lse=True),
    ):
        torch.testing.assert_close(default, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_v2_partitions_match_oracle_and_v1(dtype):
    seq_lens = [0, 1, 511, 512, 513, 1025]
    query, cache, slopes = make_case(seq_lens, 2, 1, 32, 16, dtype, alibi=True, seed=9)
    want, parts, _ = oracle(query, cache, 0.1, slopes)
    out, exp_sum, max_logits, tmp_out = run_v2(query, cache, 0.1, slopes, extra_partitions=1)
    assert_out(out, want, dtype)
    assert_partitions(exp_sum, max_logits, tmp_out, parts, seq_lens, dtype)
    assert torch.equal(out, run_v1(query, cache, 0.1, slopes))


# (local_blocks, vert_stride, sparse block size, head sliding step, tp_rank)
SPARSE = [
    (1, 2, 16, 0, 0),
    (2, 3, 32, 1, 0),
    (1, 4, 16, 1, 1),
    (2, 2, 64, -1, 0),
    (1, 3, 16, -2, 1),
    (0, 8, 16, 0, 0),  # partitions with no attended block at all
    (0, 40, 16, 3, 2),
]


@pytest.mark.parametrize("sparse", SPARSE)
def test_block_sparse(sparse):
    seq_lens = [1, 70, 600, 1100]
    query, cache, slopes = make_case(seq_lens, 4, 2, 32, 16, torch.float32, alibi=sparse[3] == 1, seed=11)
    want, parts, _ = oracle(query, cache, 0.15, slopes, sparse)
    assert_out(run_v1(query, cache, 0.15, slopes, sparse), want, torch.float32)
    out, exp_sum, max_logits, tmp_out = run_v2(query, cache, 0.15, slopes, sparse)
    assert_out(out, want, torch.float32)
    assert_partitions(exp_sum, max_logits, tmp_out, parts, seq_lens, torch.float32)


def test_block_sparse_fully_skipped_partition_keeps_vllm_statistics():
    # local_blocks 0 and a stride past the sequence: partition 0 attends nothing.
    query, cache, _ = make_case([700], 2, 2, 32, 16, torch.float32, seed=12)
    _, exp_sum, max_logits, tmp_out = run_v2(query, cache, 0.1, None, (0, 1000, 16, 0, 0))
    assert (max_logits[0, :, 0] == -FLT_MAX).all()
    assert (exp_sum[0, :, 0] == PARTITION_SIZE).all()
    assert (tmp_out[0, :, 0] == 0).all()


def test_paged_decode_lse_and_empty_sequences():
    query, cache, slopes = make_case([0, 1, 17, 513], 4, 2, 32, 8, torch.float16, alibi=True, seed=13)
    want, _, want_lse = oracle(query, cache, 32**-0.5, slopes)
    out, lse = paged_decode(
        query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, alibi_slopes=slopes,
        max_seq_len=600, return_lse=True,
    )  # fmt: skip
    assert out.dtype == query.dtype and lse.dtype == torch.float32 and lse.shape == (4, 4)
    assert_out(out, want, torch.float16)
    assert (out[0] == 0).all() and (lse[:, 0] == -math.inf).all()
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-4)
    only_out = paged_decode(query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens)
    assert isinstance(only_out, torch.Tensor)
    torch.testing.assert_close(
        only_out,
        paged_decode(
            query,
            cache.key_cache,
            cache.value_cache,
            cache.block_tables,
            cache.seq_lens,
            scale=32**-0.5,
            alibi_slopes=None,
        ),
    )


def merge_by_lse(out_a, lse_a, out_b, lse_b):
    """Log-sum-exp merge of two partial results (float64), an empty part having lse -inf."""
    out = torch.zeros_like(out_a, dtype=torch.float64)
    for s in range(out_a.shape[0]):
        for h in range(out_a.shape[1]):
            a, b = float(lse_a[h, s]), float(lse_b[h, s])
            if a == b == -math.inf:
                continue
            m = max(a, b)
            wa, wb = math.exp(a - m), math.exp(b - m)
            out[s, h] = (wa * out_a[s, h].double() + wb * out_b[s, h].double()) / (wa + wb)
    return out


@pytest.mark.parametrize("split_blocks", [0, 1, 3])
def test_two_kv_shards_merge_into_full_attention(split_blocks):
    block_size = 16
    query, cache, _ = make_case([0, 5, 40, 520], 4, 1, 64, block_size, torch.float32, seed=14)
    full, _, _ = oracle(query, cache, 0.125)
    split = split_blocks * block_size
    lens_a = cache.seq_lens.clamp(max=split)
    lens_b = (cache.seq_lens - split).clamp(min=0)
    tables_b = cache.block_tables[:, split_blocks:].contiguous()
    common = (query, cache.key_cache, cache.value_cache)
    out_a, lse_a = paged_decode(*common, cache.block_tables, lens_a, scale=0.125, return_lse=True)
    out_b, lse_b = paged_decode(*common, tables_b, lens_b, scale=0.125, return_lse=True)
    torch.testing.assert_close(merge_by_lse(out_a, lse_a, out_b, lse_b), full, rtol=1e-5, atol=1e-5)


def test_registered_ops():
    query, cache, _ = make_case([3, 20], 2, 2, 32, 8, torch.float32, seed=15)
    want, _, want_lse = oracle(query, cache, 0.5)
    assert_out(run_v1(query, cache, 0.5, op=torch.ops.attnops.paged_attention_v1), want, torch.float32)
    out, lse = torch.ops.attnops.paged_decode(
        query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.5
    )
    assert_out(out, want, torch.float32)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    seq_lens=st.lists(st.integers(0, 70), min_size=1, max_size=4),
    num_kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 4]),
    block_size=st.sampled_from([8, 16, 32]),
    head_size=st.sampled_from([32, 64]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 1000),
)
def test_paged_decode_random(seq_lens, num_kv_heads, group, block_size, head_size, dtype, seed):
    num_heads = num_kv_heads * group
    query, cache, _ = make_case(seq_lens, num_heads, num_kv_heads, head_size, block_size, dtype, seed=seed)
    want, _, want_lse = oracle(query, cache, 0.3)
    out, lse = paged_decode(
        query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, scale=0.3, return_lse=True
    )
    assert_out(out, want, dtype)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-4)


def test_custom_op_registration_passes_opcheck():
    # Schema, fake implementation and tracing with dynamic shapes (what torch.compile relies on).
    query, cache, _ = make_case([5, 600], 4, 2, 32, 8, torch.float16, seed=16)
    out = torch.empty_like(query)
    exp_sum, max_logits = torch.empty(2, 4, 2), torch.empty(2, 4, 2)
    tmp_out = torch.empty(2, 4, 2, 32, dtype=torch.float16)
    tail = (cache.key_cache, cache.value_cache, 2, 0.2, cache.block_tables, cache.seq_lens, 8, 600, None, "auto",
            cache.k_scale, cache.v_scale)  # fmt: skip
    torch.library.opcheck(torch.ops.attnops.paged_attention_v1.default, (out, query, *tail))
    torch.library.opcheck(
        torch.ops.attnops.paged_attention_v2.default, (out, exp_sum, max_logits, tmp_out, query, *tail)
    )
    decode_args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.2, 600)
    torch.library.opcheck(torch.ops.attnops.paged_decode.default, decode_args)

"""sparse_prefill_attention and sparse_tables_to_mask against float64 loop oracles written here."""

from __future__ import annotations

import math

import pytest
import torch

import attnops.sparse as sparse

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def oracle_mask(tables, q_len, kv_len, M, N, causal):
    """[batch, heads, q_len, kv_len] bool, one (b, h, row block) and one table entry at a time."""
    block_count, block_offset, column_count, column_index = tables
    batch, heads = block_count.shape[:2]
    mask = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for m in range(-(-q_len // M)):
                keys = set()
                for e in range(int(block_count[b, h, m])):
                    keys.update(range(int(block_offset[b, h, m, e]), int(block_offset[b, h, m, e]) + N))
                keys.update(int(column_index[b, h, m, e]) for e in range(int(column_count[b, h, m])))
                for i in range(m * M, min(q_len, m * M + M)):
                    for j in keys:
                        if 0 <= j < kv_len and (not causal or j <= i + kv_len - q_len):
                            mask[b, h, i, j] = True
    return mask


def oracle_attention(q, k, v, mask, scale):
    """float64 out and lse, one (b, h, query) at a time; no visible key gives zeros and -inf."""
    batch, heads, q_len, head_size = q.shape
    group = heads // k.shape[1]
    out = torch.zeros(batch, heads, q_len, head_size, dtype=torch.float64)
    lse = torch.full((batch, heads, q_len), -math.inf, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len):
                keys = torch.nonzero(mask[b, h, i]).flatten()
                if keys.numel() == 0:
                    continue
                kk, vv = k[b, h // group, keys].double(), v[b, h // group, keys].double()
                logits = kk @ q[b, h, i].double() * scale
                top = logits.max()
                weights = torch.exp(logits - top)
                out[b, h, i] = weights @ vv / weights.sum()
                lse[b, h, i] = top + torch.log(weights.sum())
    return out, lse


def make_case(batch, heads, kv_heads, q_len, kv_len, head_size, dtype, M, N, causal, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_size, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_size, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_size, generator=g).to(dtype)
    nnz_v, nnz_s = 5, 6
    vertical = torch.sort(torch.randint(0, kv_len, (batch, heads, nnz_v), generator=g), dim=-1).values
    slash = torch.randint(0, q_len, (batch, heads, nnz_s), generator=g)
    slash[..., 0] = 0
    slash = torch.sort(slash, dim=-1, descending=True).values
    if not causal:
        vertical = vertical.clamp(max=kv_len - 1)
    lens = lambda n: torch.full((batch,), n, dtype=torch.int32)
    tables = sparse.convert_vertical_slash_indexes(
        lens(q_len), lens(kv_len), vertical.int(), slash.int(), q_len, M, N, causal
    )
    return q, k, v, tables


GRID = [
    # batch, heads, kv_heads, q_len, kv_len, head_size, M, N, causal
    (1, 2, 2, 70, 70, 64, 16, 16, True),
    (2, 4, 2, 37, 50, 64, 8, 8, True),
    (1, 4, 1, 45, 45, 128, 16, 32, True),
    (2, 2, 1, 30, 41, 32, 8, 8, False),
    (1, 3, 3, 20, 20, 64, 64, 64, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "q_len", "kv_len", "head_size", "M", "N", "causal"), GRID)
def test_matches_oracle(batch, heads, kv_heads, q_len, kv_len, head_size, M, N, causal, dtype):
    q, k, v, tables = make_case(batch, heads, kv_heads, q_len, kv_len, head_size, dtype, M, N, causal, seed=q_len)
    scale = 0.7 / math.sqrt(head_size)
    out, lse = sparse.sparse_prefill_attention(
        q, k, v, *tables, scale=scale, block_size_M=M, block_size_N=N, causal=causal, return_lse=True
    )
    mask = oracle_mask(tables, q_len, kv_len, M, N, causal)
    assert torch.equal(sparse.sparse_tables_to_mask(*tables, q_len, kv_len, M, N, causal), mask)
    expected_out, expected_lse = oracle_attention(q, k, v, mask, scale)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), expected_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-4, rtol=1e-5)


def test_default_scale_and_empty_rows():
    """Rows whose tables select nothing (or only keys past causality/kv_len) give zeros and -inf."""
    q, k, v, tables = make_case(1, 2, 1, 24, 24, 16, torch.float32, 8, 8, True, seed=1)
    block_count, block_offset, column_count, column_index = (t.clone() for t in tables)
    block_count[0, 0, 1] = 0
    column_count[0, 0, 1] = 0
    block_count[0, 1, 0] = 1
    block_offset[0, 1, 0, 0] = 40  # past kv_len: selects nothing
    column_count[0, 1, 0] = 1
    column_index[0, 1, 0, 0] = 20  # causally hidden from queries 0..7
    tables = (block_count, block_offset, column_count, column_index)
    out, lse = sparse.sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8, return_lse=True)
    expected_out, expected_lse = oracle_attention(q, k, v, oracle_mask(tables, 24, 24, 8, 8, True), 0.25)
    assert not out[0, 0, 8:16].any() and torch.isneginf(lse[0, 0, 8:16]).all()
    assert not out[0, 1, :8].any() and torch.isneginf(lse[0, 1, :8]).all()
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-4, rtol=1e-5)
    only_out = sparse.sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8)
    assert torch.equal(only_out, out)


def test_custom_op():
    q, k, v, tables = make_case(1, 2, 1, 20, 20, 16, torch.float32, 8, 8, True, seed=2)
    out, lse = torch.ops.attnops.sparse_prefill_attention(q, k, v, *tables, None, 8, 8, True, None)
    expected = sparse.sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8, return_lse=True)
    assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1])


def test_end_to_end_with_estimate():
    """estimate -> convert -> attention; with every column kept the result is dense causal attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    vertical, slash = sparse.estimate_vertical_slash(q, k, last_q=8, n_vertical=40, n_slash=40)
    lens = torch.tensor([40], dtype=torch.int32)
    tables = sparse.convert_vertical_slash_indexes(lens, lens, vertical, slash, 40, 8, 8)
    out = sparse.sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


def oracle_estimate(q, k, last_q, scale, sink, local):
    """Column and diagonal scores from explicit loops (float64)."""
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    group = heads // k.shape[1]
    column = torch.zeros(batch, heads, kv_len, dtype=torch.float64)
    diagonal = torch.zeros(batch, heads, kv_len, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(q_len - last_q, q_len):
                limit = i + kv_len - q_len
                logits = k[b, h // group, : limit + 1].double() @ q[b, h, i].double() * scale
                probs = torch.softmax(logits, 0)
                for j in range(limit + 1):
                    column[b, h, j] += probs[j]
                    diagonal[b, h, limit - j] += probs[j]
    column[..., :sink] = math.inf
    diagonal[..., :local] = math.inf
    return column, diagonal


@pytest.mark.parametrize(("heads", "kv_heads", "q_len", "kv_len"), [(2, 2, 30, 30), (4, 2, 20, 33)])
def test_estimate_matches_oracle(heads, kv_heads, q_len, kv_len):
    g = torch.Generator().manual_seed(q_len)
    q = torch.randn(1, heads, q_len, 8, generator=g)
    k = torch.randn(1, kv_heads, kv_len, 8, generator=g)
    vertical, slash = sparse.estimate_vertical_slash(
        q, k, last_q=6, n_vertical=9, n_slash=7, sink_columns=2, local_diagonals=3
    )
    assert vertical.dtype == slash.dtype == torch.int32
    assert vertical.shape == (1, heads, 9) and slash.shape == (1, heads, 7)
    assert torch.equal(vertical, vertical.sort(-1).values)
    assert torch.equal(slash, slash.sort(-1, descending=True).values)
    column, diagonal = oracle_estimate(q, k, 6, 8**-0.5, 2, 3)
    for got, score, count in ((vertical, column, 9), (slash, diagonal, 7)):
        picked = score.gather(-1, got.long())
        # The picks are a top-k: no unpicked score beats the smallest picked one.
        unpicked = score.scatter(-1, got.long(), -math.inf)
        assert (unpicked.max(-1).values <= picked.min(-1).values + 1e-6).all()
        assert got.unique().numel() <= got.numel() and got.shape[-1] == count
    assert set(range(2)) <= set(vertical[0, 0].tolist()) and set(range(3)) <= set(slash[0, 0].tolist())


def good_args():
    q, k, v, tables = make_case(1, 4, 2, 20, 24, 16, torch.float32, 8, 8, True, seed=3)
    return {
        "q": q,
        "k": k,
        "v": v,
        "block_count": tables[0],
        "block_offset": tables[1],
        "column_count": tables[2],
        "column_index": tables[3],
        "block_size_M": 8,
        "block_size_N": 8,
    }


def setter(name, value):
    return lambda args: args.__setitem__(name, value(args) if callable(value) else value)


def with_value(name, index, value):
    def edit(args):
        args[name] = args[name].clone()
        args[name][index] = value

    return edit


BAD = [
    (setter("q", lambda a: a["q"].double()), TypeError, "q"),
    (setter("q", lambda a: a["q"][0]), ValueError, "q"),
    (setter("k", lambda a: a["k"].half()), TypeError, "k"),
    (setter("k", lambda a: a["k"][..., :8]), ValueError, "k"),
    (setter("k", lambda a: torch.cat([a["k"], a["k"][:, :1]], 1)), ValueError, "num_kv_heads"),
    (setter("v", lambda a: a["v"][:, :, :10]), ValueError, "v"),
    (setter("block_count", lambda a: a["block_count"].long()), TypeError, "block_count"),
    (setter("block_count", lambda a: a["block_count"][:, :, :2]), ValueError, "row blocks"),
    (setter("block_offset", lambda a: a["block_offset"][:, :2]), ValueError, "block_offset"),
    (setter("column_count", lambda a: a["column_count"][..., :1]), ValueError, "column_count"),
    (setter("column_index", lambda a: a["column_index"].float()), TypeError, "column_index"),
    (setter("scale", math.inf), ValueError, "scale"),
    (setter("scale", "0.1"), TypeError, "scale"),
    (setter("block_size_M", 0), ValueError, "block_size_M"),
    (setter("block_size_N", 8.0), TypeError, "block_size_N"),
    (setter("causal", None), TypeError, "causal"),
    (setter("return_lse", 1), TypeError, "return_lse"),
    (setter("k", lambda a: a["k"].to("meta")), ValueError, "k"),
    (with_value("block_count", (0, 1, 0), 99), ValueError, "block_count"),
    (with_value("column_count", (0, 0, 2), -1), ValueError, "column_count"),
]


@pytest.mark.parametrize(("edit", "error", "match"), BAD)
def test_bad_input(edit, error, match):
    args = good_args()
    sparse.sparse_prefill_attention(**args)
    edit(args)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    with pytest.raises(error, match=match):
        sparse.sparse_prefill_attention(**args)
    for name, value in before.items():
        assert torch.equal(args[name], value)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"last_q": 0}, ValueError, "last_q"),
        ({"n_vertical": 0}, ValueError, "n_vertical"),
        ({"n_slash": 1.5}, TypeError, "n_slash"),
        ({"k": torch.randn(1, 2, 10, 8)}, ValueError, "kv_len"),
        ({"k": torch.randn(1, 3, 20, 8)}, ValueError, "num_kv_heads"),
        ({"q": torch.randn(1, 2, 20, 8).long()}, TypeError, "q"),
    ],
)
def test_estimate_bad_input(kwargs, error, match):
    args = {"q": torch.randn(1, 2, 20, 8), "k": torch.randn(1, 2, 20, 8), **kwargs}
    with pytest.raises(error, match=match):
        sparse.estimate_vertical_slash(**args)

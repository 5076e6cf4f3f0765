"""The Triton conversion and sparse-attention kernels against the PyTorch reference (``backend="torch"``).

On CPU tensors these run under ``TRITON_INTERPRET=1`` (see ``tests/conftest.py``); the ``gpu`` tests
(32K contexts, no host syncs, CUDA-graph capture) need a CUDA device.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnops.sparse as sparse
from attnops.bench.cases import vertical_slash_pattern
from attnops.sparse import api
from helpers.sparse_patterns import random_case

pytestmark = pytest.mark.triton

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# One rounding step of the output dtype (fp32 products on tensor cores are tf32x3 on the GPU).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_case(batch, heads, kv_heads, q_len, kv_len, head_size, dtype, M, N, causal, seed):
    """Random q/k/v and the reference tables of a random pattern with the main diagonal."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_size, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_size, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_size, generator=g).to(dtype)
    vertical = torch.sort(torch.randint(0, kv_len, (batch, heads, 5), generator=g), dim=-1).values
    slash = torch.randint(0, q_len, (batch, heads, 6), generator=g)
    slash[..., 0] = 0
    slash = torch.sort(slash, dim=-1, descending=True).values
    lens = lambda n: torch.full((batch,), n, dtype=torch.int32)
    tables = sparse.convert_vertical_slash_indexes(
        lens(q_len), lens(kv_len), vertical.int(), slash.int(), q_len, M, N, causal, backend="torch"
    )
    return q, k, v, tables


def as_tensors(case, device):
    q, kv, vertical, slash, nv, ns, context, M, N, causal = case
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.int32, device=device)
    return t(q), t(kv), t(vertical), t(slash), t(nv), t(ns), context, M, N, causal


def convert(args, backend):
    q, kv, vertical, slash, nv, ns, context, M, N, causal = args
    if nv is None:
        return sparse.convert_vertical_slash_indexes(q, kv, vertical, slash, context, M, N, causal, backend=backend)
    return sparse.convert_vertical_slash_indexes_mergehead(
        q, kv, vertical, slash, nv, ns, context, M, N, causal, backend=backend
    )


def below_counts(tables):
    """The tables with every entry past the counts set to 0 (the contract covers entries below them)."""
    block_count, block_offset, column_count, column_index = tables
    blocks = torch.arange(block_offset.shape[-1], device=block_offset.device) < block_count[..., None]
    columns = torch.arange(column_index.shape[-1], device=column_index.device) < column_count[..., None]
    return block_count, block_offset * blocks, column_count, column_index * columns


def assert_convert_matches(args):
    """Both backends give identical tables below the counts (the Triton path leaves the rest unwritten)."""
    want = convert(args, "torch")
    got = convert(args, "triton")
    names = ("block_count", "block_offset", "column_count", "column_index")
    for name, a, b in zip(names, below_counts(got), below_counts(want), strict=True):
        assert a.dtype == torch.int32 and a.shape == b.shape, name
        if not torch.equal(a.cpu(), b.cpu()):
            where = torch.nonzero(a.cpu() != b.cpu())[0].tolist()
            pytest.fail(f"{name} differs first at {where}: triton {a[tuple(where)]}, torch {b[tuple(where)]}")
    return got


# --- conversion ---------------------------------------------------------------------------------

BLOCKS = [(64, 64), (16, 16), (8, 24), (3, 5), (1, 1)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mergehead", [False, True])
@pytest.mark.parametrize(("M", "N"), BLOCKS)
def test_convert_random(device, causal, mergehead, M, N):
    """Ragged q/kv lengths, contexts not multiples of M, slashes far and near the diagonal."""
    rng = random.Random(hash((causal, mergehead, M, N, "triton")) % 2**32)
    for _ in range(2):
        case = random_case(rng, causal=causal, mergehead=mergehead, M=M, N=N, context=rng.randint(1, 7 * M + 5))
        assert_convert_matches(as_tensors(case, device))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), causal=st.booleans(), mergehead=st.booleans(), MN=st.sampled_from(BLOCKS[1:]))
def test_convert_hypothesis(seed, causal, mergehead, MN):
    rng = random.Random(seed)
    M, N = MN
    context = rng.randint(1, 5 * M + 3)
    case = random_case(
        rng, causal=causal, mergehead=mergehead, M=M, N=N, context=context, batch=1, heads=2, nnz_s=rng.randint(1, 14)
    )
    assert_convert_matches(as_tensors(case, "cpu" if not torch.cuda.is_available() else "cuda"))


@pytest.mark.parametrize(("causal", "N"), [(True, 16), (False, 48)])
def test_convert_long_band(device, causal, N):
    """A slash list longer than one pre-pass chunk (1024) with a run across the chunk edge, >64 blocks per range."""
    rng = random.Random(N)
    far, value = [], 1230
    while len(far) < 300:  # runs of 20-80 consecutive offsets, 17-60 apart
        run = rng.randint(20, 80)
        far += range(value, value + run)
        value += run + rng.randint(17, 60)
    slash = sorted(far[:300] + list(range(1200)), reverse=True)
    context = 1600
    vertical = sorted(rng.sample(range(context), 150))
    lens = torch.tensor([context], dtype=torch.int32, device=device)
    index = lambda x: torch.tensor([[x]], dtype=torch.int32, device=device)
    tables = assert_convert_matches((lens, lens + 7, index(vertical), index(slash), None, None, context, 16, N, causal))
    assert tables[0].max() > 64 or N > 16


@pytest.mark.parametrize("causal", [True, False])
def test_convert_many_columns(device, causal):
    """More than 64 kept verticals per row (gap scans and copies over several chunks)."""
    rng = random.Random(1)
    context = 700
    vertical = sorted(rng.sample(range(context), 200))
    slash = [5000, 3] if causal else [500, 3]  # causal: most rows see only the short range of slash 3
    lens = torch.tensor([context], dtype=torch.int32, device=device)
    index = lambda x: torch.tensor([[x]], dtype=torch.int32, device=device)
    tables = assert_convert_matches((lens, lens, index(vertical), index(slash), None, None, context, 32, 32, causal))
    assert tables[2].max() > 64


def test_convert_bench_pattern(device):
    """The benchmark's pattern (local band, runs of 64 far slashes, sinks) at 64x64 blocks, two sequences."""
    context = 64 * 10 + 17
    vertical, slash = vertical_slash_pattern(2, 2, context, 80, 300, seed=3, device=device)
    q = torch.tensor([context, 500], dtype=torch.int32, device=device)
    kv = torch.tensor([context, 600], dtype=torch.int32, device=device)
    assert_convert_matches((q, kv, vertical, slash, None, None, context, 64, 64, True))
    nv = torch.tensor([30, 80], dtype=torch.int32, device=device)
    ns = torch.tensor([300, 120], dtype=torch.int32, device=device)
    assert_convert_matches((q, kv, vertical, slash, nv, ns, context, 64, 64, True))


def test_convert_edges(device):
    t = lambda x: torch.tensor(x, dtype=torch.int32, device=device)
    # One slash (search of one step), rows past q_seqlens, an empty sequence, a lone row (no slash reaches it).
    assert_convert_matches(
        (t([5, 0]), t([9, 3]), t([[[1, 2]], [[0, 1]]]), t([[[3]], [[9]]]), None, None, 16, 4, 4, True)
    )
    assert_convert_matches((t([12]), t([12]), t([[[0, 9]]]), t([[[40, 30]]]), None, None, 12, 4, 4, True))
    assert_convert_matches((t([12]), t([20]), t([[[0, 9]]]), t([[[40, 30]]]), None, None, 12, 4, 4, False))
    # The quirk the docs name: a causal row stops with its slashes.
    assert_convert_matches((t([12]), t([12]), t([[[0, 9]]]), t([[[5]]]), None, None, 12, 4, 4, True))
    # No row blocks at all.
    empty = assert_convert_matches((t([0]), t([0]), t([[[0]]]), t([[[0]]]), None, None, 0, 4, 4, True))
    assert empty[0].shape == (1, 1, 0)


def test_convert_strided_inputs(device):
    """Index lists as strided views (every other entry of a wider tensor, heads transposed)."""
    g = torch.Generator().manual_seed(5)
    context = 90
    wide_v = torch.sort(torch.randint(0, context, (1, 12, 3), generator=g), dim=1).values.int()
    wide_s = torch.sort(torch.randint(0, context, (1, 16, 3), generator=g), dim=1, descending=True).values.int()
    vertical = wide_v.to(device).transpose(1, 2)[:, :, ::2]
    slash = wide_s.to(device).transpose(1, 2)[:, :, ::2]
    assert not vertical.is_contiguous()
    lens = torch.tensor([context], dtype=torch.int32, device=device)
    assert_convert_matches((lens, lens, vertical, slash, None, None, context, 8, 8, True))


def test_dispatch():
    from attnops.sparse import triton as kernels

    for dispatcher, kernel in [
        (api._convert_dispatcher, kernels.convert_vertical_slash_indexes),
        (api._mergehead_dispatcher, kernels.convert_vertical_slash_indexes_mergehead),
        (api._attention_dispatcher, kernels.sparse_prefill_attention),
    ]:
        assert dispatcher.select("auto", torch.device("cuda")) is kernel
        assert dispatcher.select("auto", torch.device("cpu")) is dispatcher.impls["torch"]


# --- attention ----------------------------------------------------------------------------------


def attention(q, k, v, tables, backend, **kwargs):
    return sparse.sparse_prefill_attention(q, k, v, *tables, return_lse=True, backend=backend, **kwargs)


def assert_attention_matches(q, k, v, tables, dtype, **kwargs):
    out, lse = attention(q, k, v, tables, "triton", **kwargs)
    want_out, want_lse = attention(q, k, v, tables, "torch", **kwargs)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), want_out.double(), atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-5)
    return out, lse


GRID = [
    # batch, heads, kv_heads, q_len, kv_len, head_size, M, N, causal
    (1, 2, 2, 70, 70, 64, 16, 16, True),
    (2, 4, 2, 37, 50, 128, 8, 8, True),  # GQA, q_len < kv_len, ragged row blocks
    (1, 4, 1, 45, 45, 80, 16, 32, True),  # MQA, head size not a power of two
    (2, 2, 1, 30, 41, 32, 8, 8, False),
    (1, 3, 3, 100, 130, 64, 64, 64, True),
    (1, 2, 1, 150, 150, 16, 64, 128, True),  # two key tiles per block
    (1, 2, 2, 200, 230, 64, 128, 128, False),  # two query (and key) tiles per row block
    (1, 1, 1, 40, 40, 64, 5, 7, True),  # block sizes that are not powers of two
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "q_len", "kv_len", "head_size", "M", "N", "causal"), GRID)
def test_attention_matches_reference(device, batch, heads, kv_heads, q_len, kv_len, head_size, M, N, causal, dtype):
    q, k, v, tables = make_case(batch, heads, kv_heads, q_len, kv_len, head_size, dtype, M, N, causal, seed=q_len)
    q, k, v = q.to(device), k.to(device), v.to(device)
    tables = tuple(t.to(device) for t in tables)
    kwargs = {"scale": 0.7 / math.sqrt(head_size), "block_size_M": M, "block_size_N": N, "causal": causal}
    assert_attention_matches(q, k, v, tables, dtype, **kwargs)


@pytest.mark.parametrize("scale", [0.0, -0.3])
def test_attention_zero_and_negative_scale(device, scale):
    q, k, v, tables = make_case(1, 2, 1, 40, 40, 32, torch.float32, 16, 16, True, seed=7)
    tables = tuple(t.to(device) for t in tables)
    assert_attention_matches(q.to(device), k.to(device), v.to(device), tables, torch.float32, scale=scale,
                             block_size_M=16, block_size_N=16)  # fmt: skip


def dense_masked(q, k, v, mask, scale):
    """fp32 softmax attention under a boolean mask (GQA by repeating KV heads); empty rows give zeros, -inf."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1) for t in (k, v))
    logits = (q.float() @ k.transpose(-1, -2) * scale).masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(logits, -1)
    probs = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    return (probs @ v).to(q.dtype), lse


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_matches_dense_mask(device, dtype):
    """Against plain dense attention under sparse_tables_to_mask, with strided (token-major) q/k/v."""
    batch, heads, kv_heads, q_len, kv_len, head_size, M, N = 1, 4, 2, 90, 120, 64, 32, 32
    q, k, v, tables = make_case(batch, heads, kv_heads, q_len, kv_len, head_size, dtype, M, N, True, seed=11)
    q, k, v = (t.to(device).transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    tables = tuple(t.to(device) for t in tables)
    out, lse = attention(q, k, v, tables, "triton", block_size_M=M, block_size_N=N)
    mask = sparse.sparse_tables_to_mask(*tables, q_len, kv_len, M, N, causal=True)
    want_out, want_lse = dense_masked(q, k, v, mask, head_size**-0.5)
    torch.testing.assert_close(out.double(), want_out.double(), atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-5)


def test_attention_irregular_tables(device):
    """Unsorted, overlapping and out-of-range blocks, repeated columns, columns inside blocks, empty rows."""
    q, k, v, tables = make_case(1, 2, 1, 48, 60, 32, torch.float32, 16, 16, True, seed=4)
    block_count, block_offset, column_count, column_index = (t.clone() for t in tables)
    block_count[0, 0, 0] = 0  # row block 0 of head 0 sees nothing
    column_count[0, 0, 0] = 0
    block_count[0, 0, 1], block_offset[0, 0, 1, :3] = 3, torch.tensor([30, 5, 20])  # unsorted, overlapping
    column_count[0, 0, 1], column_index[0, 0, 1, :4] = 4, torch.tensor([9, 2, 2, 50])  # unsorted, repeated
    block_count[0, 0, 2], block_offset[0, 0, 2, :3] = 3, torch.tensor([-8, 10, 70])  # partly/fully outside
    column_count[0, 0, 2], column_index[0, 0, 2, :5] = 5, torch.tensor([-1, 3, 12, 12, 99])  # sorted, repeated
    block_count[0, 1, 1], block_offset[0, 1, 1, :2] = 2, torch.tensor([8, 16])  # sorted, overlapping
    column_count[0, 1, 1], column_index[0, 1, 1, :3] = 3, torch.tensor([1, 10, 20])  # inside the blocks
    tables = tuple(t.to(device) for t in (block_count, block_offset, column_count, column_index))
    q, k, v = q.to(device), k.to(device), v.to(device)
    out, lse = assert_attention_matches(q, k, v, tables, torch.float32, block_size_M=16, block_size_N=16)
    assert not out[0, 0, :16].any() and torch.isneginf(lse[0, 0, :16]).all()
    mask = sparse.sparse_tables_to_mask(*tables, 48, 60, 16, 16, causal=True)
    want_out, want_lse = dense_masked(q, k, v, mask, 32**-0.5)
    torch.testing.assert_close(out, want_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-5)


def test_attention_pipeline_and_custom_op(device):
    """estimate -> convert -> attention, all columns kept: dense causal attention; also via the custom op."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g).to(device) for _ in range(3))
    vertical, slash = sparse.estimate_vertical_slash(q, k, last_q=8, n_vertical=40, n_slash=40)
    lens = torch.tensor([40], dtype=torch.int32, device=device)
    tables = sparse.convert_vertical_slash_indexes(lens, lens, vertical, slash, 40, 8, 8, backend="triton")
    out = sparse.sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8, backend="triton")
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, dense, atol=2e-5, rtol=2e-5)
    via_op, lse = torch.ops.attnops.sparse_prefill_attention(q, k, v, *tables, None, 8, 8, True, "triton")
    assert torch.equal(via_op, out) and lse.shape == (1, 2, 40)


# --- GPU only -----------------------------------------------------------------------------------


def chunked_dense(q, k, v, tables, M, N, rows_per_chunk=1024):
    """Dense fp32 attention under the tables' mask, a chunk of query rows at a time (fits 32K contexts)."""
    q_len, kv_len = q.shape[2], k.shape[2]
    outs, lses = [], []
    for first in range(0, q_len, rows_per_chunk):
        stop = min(q_len, first + rows_per_chunk)
        part = tuple(t[:, :, first // M : -(-stop // M)] for t in tables)
        # The mask of rows [first, stop) as if they were the last rows of a (stop)-row prefill.
        mask = sparse.sparse_tables_to_mask(*part, stop - first, kv_len, M, N, causal=False)
        key = torch.arange(kv_len, device=q.device)
        mask &= key <= torch.arange(first, stop, device=q.device)[:, None] + (kv_len - q_len)
        out, lse = dense_masked(q[:, :, first:stop], k, v, mask, q.shape[-1] ** -0.5)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


@pytest.mark.gpu
@gpu
def test_32k_pipeline_on_gpu(device):
    """SPEC §3 pattern at 32K: Triton tables equal the reference; attention equals dense masked attention."""
    context, heads, kv_heads, head_size, M = 32768, 8, 2, 128, 64
    vertical, slash = vertical_slash_pattern(1, heads, context, 1000, 6096, seed=0, device=device)
    lens = torch.tensor([context], dtype=torch.int32, device=device)
    tables = assert_convert_matches((lens, lens, vertical, slash, None, None, context, M, M, True))
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, context, head_size, device=device, generator=g, dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, context, head_size, device=device, generator=g, dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, context, head_size, device=device, generator=g, dtype=torch.bfloat16)
    out, lse = attention(q, k, v, tables, "triton")
    want_out, want_lse = chunked_dense(q, k, v, tables, M, M)
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("causal", [True, False])
def test_convert_128k_on_gpu(device, causal):
    context = 131072
    vertical, slash = vertical_slash_pattern(1, 4, context, 1000, 6096, seed=2, device=device)
    q = torch.tensor([context], dtype=torch.int32, device=device)
    kv = q if causal else q + 1000
    assert_convert_matches((q, kv, vertical, slash, None, None, context, 64, 64, causal))


@pytest.mark.gpu
@gpu
def test_pipeline_no_host_sync_and_graph_capture(device):
    """estimate, convert and attention never sync with the host; convert + attention replay in a CUDA graph."""
    context, heads = 4096, 4
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(1, heads, context, 64, device=device, generator=g, dtype=torch.float16) for _ in range(3))
    lens = torch.tensor([context], dtype=torch.int32, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        vertical, slash = sparse.estimate_vertical_slash(q, k, n_vertical=256, n_slash=512)
        tables = sparse.convert_vertical_slash_indexes(lens, lens, vertical, slash, context, 64, 64)
        eager = sparse.sparse_prefill_attention(q, k, v, *tables)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured_tables = sparse.convert_vertical_slash_indexes(lens, lens, vertical, slash, context, 64, 64)
        captured = sparse.sparse_prefill_attention(q, k, v, *captured_tables)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(below_counts(captured_tables), below_counts(tables), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(captured, eager)

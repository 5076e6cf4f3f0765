"""The Triton paged decode kernels against the PyTorch reference (``backend="torch"``) on the same inputs.

Caches come from ``make_paged_kv_cache``, whose spare slots hold NaN: a kernel that lets one
reach a result fails every comparison.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import PARTITION_SIZE, paged_attention_v1, paged_attention_v2, paged_decode

pytestmark = pytest.mark.triton

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LENS = [0, 1, 37, 511, 512, 513]
NO_SPARSE = (0, 0, 64, 0, 0)


def close(actual, expected, dtype, **kwargs):
    torch.testing.assert_close(actual.float(), expected.float(), atol=TOL[dtype], rtol=TOL[dtype], **kwargs)


def setup(device, lens, num_heads, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype="auto", alibi=False):
    """A cache, a query (a strided slice, as from a qkv tensor) and ALiBi slopes (or ``None``)."""
    scales = (0.5, 1.5) if kv_cache_dtype != "auto" else (1.0, 1.0)
    cache = make_paged_kv_cache(
        lens, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype, device=device, extra_blocks=3,
        k_scale=scales[0], v_scale=scales[1],
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    qkv = torch.randn(len(lens), num_heads + 2, head_size, generator=generator).to(dtype).to(device)
    slopes = torch.rand(num_heads, generator=generator).to(device) if alibi else None
    return cache, qkv[:, :num_heads], slopes


def run_v1(backend, cache, query, slopes, sparse=NO_SPARSE):
    out = torch.full_like(query, float("nan"))
    paged_attention_v1(
        out, query, cache.key_cache, cache.value_cache, cache.key_cache.shape[1], query.shape[2] ** -0.5,
        cache.block_tables, cache.seq_lens, cache.block_size, cache.max_seq_len, slopes, cache.kv_cache_dtype,
        cache.k_scale, cache.v_scale, sparse[4], *sparse[:4], backend=backend,
    )  # fmt: skip
    return out


def run_v2(backend, cache, query, slopes, num_partitions, sparse=NO_SPARSE):
    """``(out, exp_sums, max_logits, tmp_out)``, the buffers NaN before the call."""
    num_seqs, num_heads, head_size = query.shape
    stats = torch.full((2, num_seqs, num_heads, num_partitions), float("nan"), device=query.device)
    tmp_out = torch.full((num_seqs, num_heads, num_partitions, head_size), float("nan"), device=query.device)
    tmp_out = tmp_out.to(query.dtype)
    out = torch.full_like(query, float("nan"))
    paged_attention_v2(
        out, stats[0], stats[1], tmp_out, query, cache.key_cache, cache.value_cache, cache.key_cache.shape[1],
        query.shape[2] ** -0.5, cache.block_tables, cache.seq_lens, cache.block_size, cache.max_seq_len, slopes,
        cache.kv_cache_dtype, cache.k_scale, cache.v_scale, sparse[4], *sparse[:4], backend=backend,
    )  # fmt: skip
    return out, stats[0], stats[1], tmp_out


def run_decode(backend, cache, query, slopes):
    return paged_decode(
        query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, alibi_slopes=slopes,
        kv_cache_dtype=cache.kv_cache_dtype, k_scale=cache.k_scale, v_scale=cache.v_scale, return_lse=True,
        backend=backend,
    )  # fmt: skip


# (head_size, block_size, dtype, num_heads, num_kv_heads, kv_cache_dtype, alibi): every head size,
# block size and dtype; MHA, GQA 2:1/4:1/8:1 and MQA; fp8 e4m3/e5m2 with scales 0.5/1.5.
CASES = [
    (32, 8, torch.float32, 4, 4, "auto", False),
    (64, 16, torch.float16, 8, 2, "auto", True),
    (80, 32, torch.bfloat16, 8, 1, "auto", False),
    (96, 16, torch.float32, 4, 1, "auto", True),
    (112, 8, torch.bfloat16, 8, 1, "auto", False),
    (120, 16, torch.float16, 4, 2, "auto", False),
    (128, 32, torch.float32, 2, 2, "auto", True),
    (192, 16, torch.bfloat16, 4, 4, "auto", False),
    (256, 8, torch.float16, 2, 1, "auto", False),
    (256, 16, torch.float32, 8, 2, "auto", False),
    (64, 16, torch.float16, 4, 2, "fp8", False),
    (128, 16, torch.bfloat16, 4, 4, "fp8_e4m3", True),
    (80, 32, torch.float32, 4, 1, "fp8_e5m2", False),
]


@pytest.fixture(autouse=True)
def fresh_plans():
    """Launch plans are kept per input layout: tests that patch launch constants must not leave theirs."""
    from attnops.paged_attention import triton as kernels

    kernels._clear_plans()
    yield
    kernels._clear_plans()


@pytest.fixture(params=["many", "few"])
def programs(request, monkeypatch):
    """Both launch configurations: 32-token tiles for launches of many programs (on the CPU, every
    launch has one per "SM"), and the 64-token tiles of launches with fewer programs than SMs."""
    from attnops.paged_attention import triton as kernels

    if request.param == "few":
        monkeypatch.setattr(kernels, "_many_programs", lambda programs, device: False)
    return request.param


@pytest.mark.parametrize(("head_size", "block_size", "dtype", "num_heads", "num_kv_heads", "kv", "alibi"), CASES)
def test_v1_and_decode_match_torch(device, programs, head_size, block_size, dtype, num_heads, num_kv_heads, kv, alibi):
    cache, query, slopes = setup(device, LENS, num_heads, num_kv_heads, head_size, block_size, dtype, kv, alibi)
    close(run_v1("triton", cache, query, slopes), run_v1("torch", cache, query, slopes), dtype)
    out, lse = run_decode("triton", cache, query, slopes)
    expected_out, expected_lse = run_decode("torch", cache, query, slopes)
    close(out, expected_out, dtype)
    close(lse, expected_lse, dtype)
    assert torch.isneginf(lse[:, 0]).all()
    assert (out[0] == 0).all()


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "dtype"), [(4, 4, torch.float16), (8, 2, torch.bfloat16)])
def test_one_split_writes_directly(device, num_heads, num_kv_heads, dtype):
    # Block tables of at most 512 tokens: one launch writes out (and lse), empty sequences included.
    cache, query, slopes = setup(device, [0, 1, 200, 0, 512], num_heads, num_kv_heads, 96, 32, dtype, alibi=True)
    close(run_v1("triton", cache, query, slopes), run_v1("torch", cache, query, slopes), dtype)
    out, lse = run_decode("triton", cache, query, slopes)
    expected_out, expected_lse = run_decode("torch", cache, query, slopes)
    close(out, expected_out, dtype)
    close(lse, expected_lse, dtype)
    assert (out[[0, 3]] == 0).all()
    assert torch.isneginf(lse[:, [0, 3]]).all()


@pytest.mark.parametrize(("dtype", "alibi"), [(torch.float32, True), (torch.bfloat16, False)])
def test_v2_stats_and_untouched_partitions(device, dtype, alibi):
    lens = [0, 1, 511, 512, 513, 1025]
    cache, query, slopes = setup(device, lens, 4, 2, 64, 16, dtype, alibi=alibi)
    num_partitions = 4  # one more than the longest sequence needs
    got = run_v2("triton", cache, query, slopes, num_partitions)
    expected = run_v2("torch", cache, query, slopes, num_partitions)
    for actual, want in zip(got, expected, strict=True):
        close(actual, want, dtype, equal_nan=True)
    used = torch.arange(num_partitions) < torch.tensor(lens)[:, None].add(PARTITION_SIZE - 1) // PARTITION_SIZE
    untouched = ~used.to(device)[:, None, :].expand_as(got[1])
    for buffer in got[1:]:
        assert buffer[untouched].isnan().all()
        assert not buffer[~untouched].isnan().any()
    close(got[0], run_v1("triton", cache, query, slopes), dtype)


@pytest.mark.parametrize("split", [64, 128, 256])
@pytest.mark.parametrize("sparse", [None, (2, 4, 16, 1, 0)])
def test_v2_partitions_from_sub_splits(device, split, sparse):
    # Small batches split each partition: the reduction folds the sub-splits into vLLM's partition stats.
    from attnops.paged_attention import triton as kernels
    from attnops.paged_attention.reference import BlockSparse

    lens = [0, 1, 64, 65, 511, 512, 513, 1100]
    cache, query, slopes = setup(device, lens, 4, 2, 64, 16, torch.float32, alibi=True)
    expected = run_v2("torch", cache, query, slopes, 4, sparse or NO_SPARSE)
    got = [torch.full_like(t, float("nan")) for t in expected]
    pattern = None if sparse is None else BlockSparse(*sparse)
    kernels.paged_attention_v2(
        got[0], got[1], got[2], got[3], query, cache.key_cache, cache.value_cache, cache.block_tables,
        cache.seq_lens, query.shape[2] ** -0.5, slopes, "auto", cache.k_scale, cache.v_scale, pattern, split=split,
    )  # fmt: skip
    for actual, want in zip(got, expected, strict=True):
        close(actual, want, torch.float32, equal_nan=True)


# (local_blocks, vert_stride, sparse block size, head_sliding_step, tp_rank)
SPARSE = [(2, 4, 16, 1, 0), (1, 3, 32, -1, 1), (1, 8, 64, 2, 0)]


@pytest.mark.parametrize("sparse", SPARSE)
def test_block_sparse(device, sparse):
    lens = [0, 1, 100, 600, 1100]
    cache, query, slopes = setup(device, lens, 4, 2, 32, 16, torch.float32)
    close(run_v1("triton", cache, query, slopes, sparse), run_v1("torch", cache, query, slopes, sparse), torch.float32)
    got = run_v2("triton", cache, query, slopes, 3, sparse)
    expected = run_v2("torch", cache, query, slopes, 3, sparse)
    for actual, want in zip(got, expected, strict=True):
        close(actual, want, torch.float32, equal_nan=True)


def test_plans_follow_the_layout(device):
    # Launch plans are kept per input layout: a call with the same shapes but another query
    # stride, ALiBi or not, or a wider block table must not take an earlier call's plan.
    cache, query, slopes = setup(device, [0, 70, 300], 4, 2, 64, 16, torch.float32, alibi=True)
    wider = dataclasses.replace(cache, block_tables=torch.cat([cache.block_tables, cache.block_tables], dim=1))
    for layout in (cache, wider):
        for q in (query, query.contiguous()):
            for alibi in (slopes, None):
                close(run_v1("triton", layout, q, alibi), run_v1("torch", layout, q, alibi), torch.float32)
                out, lse = run_decode("triton", layout, q, alibi)
                expected_out, expected_lse = run_decode("torch", layout, q, alibi)
                close(out, expected_out, torch.float32)
                close(lse, expected_lse, torch.float32)


def test_split_size_is_a_parameter(device):
    from attnops.paged_attention import triton as kernels

    cache, query, slopes = setup(device, [0, 1, 130, 300], 4, 2, 64, 8, torch.float32, alibi=True)
    args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.125, slopes, "auto")
    out, lse = kernels.paged_decode(*args, cache.k_scale, cache.v_scale, split=64)
    expected_out, expected_lse = run_decode("torch", cache, query.mul(0.125 / 64**-0.5), slopes)
    close(out, expected_out, torch.float32)
    close(lse, expected_lse, torch.float32)


@pytest.mark.parametrize(
    ("pairs", "capacity", "slots", "split"),
    [
        (64, 16384, 1056, 1024),  # 8 x 16384 on 132 SMs x 8: one full wave, not two of 512
        (256, 4096, 1056, 1024),
        (1024, 1024, 1056, 1024),  # one split: no reduction
        (64, 4096, 1056, 256),
        (8, 16384, 1056, 128),
        (1024, 16384, 1056, 2048),  # capped at _MAX_WAVE_SPLIT
        (4, 40, 1056, 64),  # a capacity below the smallest split
    ],
)
def test_wave_split(pairs, capacity, slots, split):
    from attnops.paged_attention import triton as kernels

    assert kernels._wave_split(pairs, capacity, slots) == split


@pytest.mark.parametrize(
    ("num_seqs", "capacity", "split"),
    [
        (1, 16384, 512),  # whole partitions: 32 splits a row, one reduction step
        (1, 4096, 128),  # the device-aware split (64) would take the reduction two steps
        (8, 1024, 64),
        (8, 4096, 256),
        (128, 4096, 512),
    ],
)
def test_v2_split_stays_within_one_reduction_step(monkeypatch, num_seqs, capacity, split):
    from attnops.paged_attention import triton as kernels

    monkeypatch.setattr(kernels, "sm_count", lambda device: 132)
    assert kernels._v2_split(num_seqs, 8, capacity, 128, torch.device("cuda")) == split


@pytest.mark.parametrize(("op", "split"), [("v1", 24), ("decode", 0), ("v2", 48), ("v2", 1024)])
def test_bad_split_is_refused_before_any_write(device, op, split):
    from attnops.paged_attention import triton as kernels

    cache, query, slopes = setup(device, [5, 40], 4, 2, 32, 16, torch.float32)
    args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.125, slopes, "auto")
    out = torch.full_like(query, float("nan"))
    with pytest.raises(ValueError, match="split"):
        if op == "v1":
            kernels.paged_attention_v1(out, *args, cache.k_scale, cache.v_scale, None, split=split)
        elif op == "decode":
            kernels.paged_decode(*args, cache.k_scale, cache.v_scale, split=split)
        else:
            stats = torch.full((2, 2, 4, 1), float("nan"), device=device)
            tmp = torch.full((2, 4, 1, 32), float("nan"), device=device)
            kernels.paged_attention_v2(out, stats[0], stats[1], tmp, *args, cache.k_scale, cache.v_scale, None, split)
    assert out.isnan().all()


@pytest.mark.parametrize("reduce_tile", [2, 4])
def test_reduction_in_several_steps(device, monkeypatch, reduce_tile):
    # Long rows reduce their splits in steps of _REDUCE_TILE with a running max; force several
    # steps, with the largest logits in later splits (ALiBi grows toward the end).
    from attnops.paged_attention import triton as kernels

    monkeypatch.setattr(kernels, "_REDUCE_TILE", reduce_tile)
    monkeypatch.setattr(kernels._reduce_launcher, "compiled", {})
    cache, query, slopes = setup(device, [0, 1, 65, 300, 640], 4, 2, 64, 16, torch.float32, alibi=True)
    args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 64**-0.5, slopes, "auto")
    out, lse = kernels.paged_decode(*args, cache.k_scale, cache.v_scale, split=64)
    expected_out, expected_lse = run_decode("torch", cache, query, slopes)
    close(out, expected_out, torch.float32)
    close(lse, expected_lse, torch.float32)
    # v2 at split 64: 8 sub-splits per partition, one partition per step of the reduction.
    expected = run_v2("torch", cache, query, slopes, 2)
    got = [torch.full_like(t, float("nan")) for t in expected]
    kernels.paged_attention_v2(*got, *args, cache.k_scale, cache.v_scale, None, split=64)
    for actual, want in zip(got, expected, strict=True):
        close(actual, want, torch.float32, equal_nan=True)


@pytest.mark.parametrize("filler", [-7, 2**30])
def test_table_entries_past_the_end_are_never_read(device, filler):
    # vLLM leaves the block-table entries past a sequence's last block undefined; the kernel loads
    # some of them early but must never read the cache through them.
    cache, query, slopes = setup(device, [0, 5, 16, 45, 130], 4, 2, 32, 16, torch.float32)
    used = -(-cache.seq_lens.long() // cache.block_size)
    columns = torch.arange(cache.block_tables.shape[1], device=cache.block_tables.device)
    cache.block_tables.masked_fill_(columns[None, :] >= used[:, None], filler)
    from attnops.paged_attention import triton as kernels

    out = run_v1("torch", cache, query, slopes)
    for split in (16, 32, 64, None):
        got = torch.full_like(out, float("nan"))
        args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 32**-0.5, slopes)
        kernels.paged_attention_v1(got, *args, "auto", cache.k_scale, cache.v_scale, None, split=split)
        close(got, out, torch.float32)


def test_reduction_over_head_chunks(device, monkeypatch):
    # A launch of fewer (sequence, head) pairs than SMs reduces each head in chunks of head dims
    # (4 of 32 dims for head 128 here); the first chunk alone writes the lse and v2's statistics.
    from attnops.paged_attention import triton as kernels

    monkeypatch.setattr(kernels, "sm_count", lambda device: 1024)
    cache, query, slopes = setup(device, [0, 1, 200, 640], 4, 2, 128, 16, torch.float32, alibi=True)
    layout = kernels._layout(query, cache.key_cache, cache.value_cache, cache.block_tables, slopes, "auto", None)
    assert kernels._reduce_chunks(layout) == 4
    args = (query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 128**-0.5, slopes, "auto")
    out, lse = kernels.paged_decode(*args, cache.k_scale, cache.v_scale, split=64)
    expected_out, expected_lse = run_decode("torch", cache, query, slopes)
    close(out, expected_out, torch.float32)
    close(lse, expected_lse, torch.float32)
    for split in (64, 512):
        expected = run_v2("torch", cache, query, slopes, 2)
        got = [torch.full_like(t, float("nan")) for t in expected]
        kernels.paged_attention_v2(*got, *args, cache.k_scale, cache.v_scale, None, split=split)
        for actual, want in zip(got, expected, strict=True):
            close(actual, want, torch.float32, equal_nan=True)


def test_auto_picks_triton_only_for_cuda(device):
    from attnops.paged_attention import api
    from attnops.paged_attention import triton as kernels

    for dispatcher, kernel in [
        (api._v1_dispatcher, kernels.paged_attention_v1),
        (api._v2_dispatcher, kernels.paged_attention_v2),
        (api._decode_dispatcher, kernels.paged_decode),
    ]:
        assert dispatcher.select("auto", torch.device("cuda")) is kernel
        assert dispatcher.select("auto", torch.device("cpu")) is dispatcher.impls["torch"]
        assert dispatcher.select("triton", device) is kernel


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(32, 8), (16, 16)])
def test_long_bf16_on_gpu(device, num_heads, num_kv_heads):
    lens = torch.randint(3000, 4097, (32,), generator=torch.Generator().manual_seed(0))
    lens[0] = 4096
    cache, query, slopes = setup(device, lens, num_heads, num_kv_heads, 128, 16, torch.bfloat16)
    close(run_v1("triton", cache, query, slopes), run_v1("torch", cache, query, slopes), torch.bfloat16)
    out, lse = run_decode("triton", cache, query, slopes)
    expected_out, expected_lse = run_decode("torch", cache, query, slopes)
    close(out, expected_out, torch.bfloat16)
    close(lse, expected_lse, torch.bfloat16)


@pytest.mark.gpu
@gpu
def test_resident_programs_from_the_driver(device):
    from attnops.paged_attention import triton as kernels

    cache, query, _ = setup(device, [4096] * 2, 32, 8, 128, 16, torch.bfloat16)
    layout = kernels._layout(query, cache.key_cache, cache.value_cache, cache.block_tables, None, "auto", None)
    # One-warp programs of ~255 registers a thread: the register file holds 8 (sm_90).
    assert 1 <= kernels._resident_programs(layout) <= 32


@pytest.mark.gpu
@gpu
def test_cuda_graph_replay(device):
    cache, query, slopes = setup(device, [1, 700, 2000, 33], 8, 2, 128, 16, torch.float16, alibi=True)
    eager = run_v1("triton", cache, query, slopes)
    out = torch.empty_like(eager)
    args = (
        query, cache.key_cache, cache.value_cache, 2, 128**-0.5, cache.block_tables, cache.seq_lens, 16,
        cache.max_seq_len, slopes, "auto", cache.k_scale, cache.v_scale,
    )  # fmt: skip
    paged_attention_v1(out, *args, backend="triton")  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out.zero_()
        with torch.cuda.graph(graph, stream=stream):
            paged_attention_v1(out, *args, backend="triton")
    torch.cuda.current_stream().wait_stream(stream)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, atol=0, rtol=0)

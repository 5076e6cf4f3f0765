"""The Triton ``top_k_per_row_prefill`` / ``_decode`` against an exact per-row selection computed here.

Each case runs with the kernel's own constants and with tiny ones (rows of more than 64
columns are "long", chunks of 32 columns, 128 candidate slots, tiles of 16, searches ending at 4
keys between their bounds, prefix sums in groups of 4 lanes), so that on small
rows every path runs: rows no longer than k, rows held in one program, chunk candidates, chunks
searched again over all their columns (more top keys than candidate slots), and the streaming
fallback (rows longer than the chunk programs cover, k above the candidate slots); the tiny
constants run twice, writing results from the keys held in registers and from tiles read again.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnops.topk as topk
from attnops.topk import reference
from attnops.topk.api import _decode_dispatcher, _prefill_dispatcher
from helpers.topk_rows import decode_lengths

kernels = pytest.importorskip("attnops.topk.triton")

pytestmark = pytest.mark.triton

INF = float("inf")
SENTINEL = -7
SMALL = dict(_SHORT_ROW=64, _CHUNK=32, _CANDIDATES=128, _TILE=16, _SLACK_MIN=2, _PAIR_CAP=4)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def fresh_plans():
    """Launch plans are kept per shape: tests that patch the kernel's constants must not leave theirs."""
    kernels._plan.cache_clear()
    yield
    kernels._plan.cache_clear()


def use_small_sizes(monkeypatch, emission):
    """The tiny constants of ``SMALL``; every launch writes its results from tiles read again
    (``emission="tiles"``) or from the keys held in registers (``"registers"``)."""
    for name, value in SMALL.items():
        monkeypatch.setattr(kernels, name, value)
    monkeypatch.setattr(kernels, "_REGISTER_PROGRAMS_PER_SM", 0 if emission == "tiles" else 2**20)
    # Prefix sums over [tile // 4, 4] views (the kernels' groups are wider than the tiny tiles).
    monkeypatch.setattr(kernels, "_scan_group", lambda num_warps, in_registers: 4)


@pytest.fixture(params=["default", "small-tiles", "small-registers"])
def sizes(request, monkeypatch):
    """The kernel's constants, or the tiny ones with either way of writing results."""
    if request.param != "default":
        use_small_sizes(monkeypatch, request.param.removeprefix("small-"))
    return request.param


@pytest.fixture(params=["tiles", "registers"])
def small_sizes(request, monkeypatch):
    """The tiny constants with either way of writing results (returns ``"tiles"`` or ``"registers"``)."""
    use_small_sizes(monkeypatch, request.param)
    return request.param


@pytest.fixture
def spy(monkeypatch, device):
    """``spy(name)``: the calls of kernel helper ``name``, recorded under the interpreter (``None`` on a GPU)."""

    def install(name):
        if device.type == "cuda":
            return None
        calls = []
        original = getattr(kernels, name)

        def counted(*args, **kwargs):
            calls.append(args)
            return original.fn(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
        return calls

    return install


def scalar(value):
    """A scalar argument of a kernel helper recorded by ``spy`` under the interpreter, as an int."""
    return int(value.handle.data.item()) if isinstance(value, kernels.tl.tensor) else int(value)


def i32(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def nan_with_sign(negative):
    return torch.tensor([-0x400000 if negative else 0x7FC00000], dtype=torch.int32).view(torch.float32)[0]


def order_keys(values):
    """int64 keys with the order the selection follows (fp32 bit patterns, NaN by sign); ``-0.0`` is ``+0.0``."""
    bits = values.contiguous().view(torch.int32).long()
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return torch.where(values == 0, 0, keys)


def row_values(logits, stride0, stride1, row, start, length):
    """The fp32 values of one row, addressed from ``data_ptr`` as vLLM does."""
    storage = torch.as_strided(logits, (reference.storage_elements(logits),), (1,), logits.storage_offset())
    return torch.as_strided(storage, (length,), (stride1,), storage.storage_offset() + row * stride0 + start * stride1)


def check(out, before, logits, stride0, stride1, starts, lengths, k):
    """``out[:rows, :k]`` holds an exact top-k of each row; every other entry of ``out`` is untouched."""
    # The logits stay where they are: a view's copy would not keep the storage the strides address.
    out, before = out.cpu(), before.cpu()
    num_rows = len(lengths)
    for r in range(num_rows):
        got, n = out[r, :k], lengths[r]
        if n <= k:
            want = torch.arange(k, dtype=torch.int32)
            assert torch.equal(got, torch.where(want < n, want, -1)), f"row {r}"
            continue
        assert got.unique().numel() == k, f"row {r}: duplicate indices"
        assert int(got.min()) >= 0 and int(got.max()) < n, f"row {r}: index out of range"
        keys = order_keys(row_values(logits, stride0, stride1, r, starts[r], n))
        want = keys.topk(k).values.sort().values
        assert torch.equal(keys[got.long().to(keys.device)].sort().values, want), f"row {r}: not the top {k}"
    untouched = torch.ones_like(out, dtype=torch.bool)
    untouched[:num_rows, :k] = False
    assert torch.equal(out[untouched], before[untouched])


def new_out(shape, device, transposed=False):
    """A sentinel-filled int32 output (optionally a transposed view, so its stride 1 is not 1) and its copy."""
    if transposed:
        out = torch.full(shape[::-1], SENTINEL, dtype=torch.int32, device=device).t()
    else:
        out = torch.full(shape, SENTINEL, dtype=torch.int32, device=device)
    return out, out.clone()


def run_prefill(logits, starts, ends, k, stride0=None, stride1=None, out_shape=None, transposed=False):
    device = logits.device
    stride0 = logits.stride(0) if stride0 is None else stride0
    stride1 = logits.stride(1) if stride1 is None else stride1
    out, before = new_out(out_shape or (len(starts), k), device, transposed)
    topk.top_k_per_row_prefill(
        logits, i32(starts, device), i32(ends, device), out, len(starts), stride0, stride1, k, backend="triton"
    )
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    check(out, before, logits, stride0, stride1, starts, lengths, k)
    return out


def run_decode(logits, next_n, seq_lens, num_rows, k, stride0=None, stride1=None, out_shape=None):
    device = logits.device
    stride0 = logits.stride(0) if stride0 is None else stride0
    stride1 = logits.stride(1) if stride1 is None else stride1
    out, before = new_out(out_shape or (num_rows, k), device)
    topk.top_k_per_row_decode(
        logits, next_n, i32(seq_lens, device), out, num_rows, stride0, stride1, k, backend="triton"
    )
    check(out, before, logits, stride0, stride1, [0] * num_rows, decode_lengths(seq_lens, next_n, num_rows), k)
    return out


def randn(*shape, seed=0, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("k", [1, 7, 40])
def test_prefill_ragged_rows(device, sizes, spy, k):
    fallbacks, repairs = spy("_select_streaming"), spy("_count_repair")
    logits = randn(9, 300, seed=k, device=device)
    starts = [0, 5, 0, 100, 0, 3, 250, 17, 0]
    ends = [300, 200, 10, 300, 64, 290, 250, 17 + k, 65]
    run_prefill(logits, starts, ends, k)
    # Rows in random order: the chunks' candidates hold the top k.
    assert not fallbacks and not repairs


@pytest.mark.parametrize("next_n", [1, 2])
@pytest.mark.parametrize("k", [1, 16])
def test_decode_rows(device, sizes, next_n, k):
    seq_lens = [300, 1, next_n + 40, 129, 0, 257][: 6 // next_n + 1]
    num_rows = min(6, len(seq_lens) * next_n)
    run_decode(randn(num_rows, 300, seed=next_n, device=device), next_n, seq_lens, num_rows, k)


def test_decode_two_dimensional_seq_lens_are_per_row(device, sizes):
    logits = randn(6, 200, seed=3, device=device)
    run_decode(logits, 3, [[200, 5, 0], [70, -2, 199]], 6, 9)
    run_decode(logits, 2, [[120], [65], [9], [3], [200], [1]], 6, 9)


def test_row_length_equal_to_k_and_one_more(device, sizes):
    logits = randn(4, 100, seed=4, device=device)
    run_prefill(logits, [0, 10, 0, 3], [70, 80, 71, 74], 70)


@pytest.mark.parametrize(
    "fill",
    [
        lambda n, g: torch.zeros(n),
        lambda n, g: torch.full((n,), -INF),
        lambda n, g: torch.where(torch.rand(n, generator=g) < 0.9, -INF, torch.randn(n, generator=g)),
        lambda n, g: torch.tensor([0.0, -0.0]).repeat(n // 2),
        lambda n, g: torch.randint(0, 3, (n,), generator=g).float(),
        lambda n, g: torch.tensor([INF, -INF, 3.0, 1.0]).repeat(n // 4),
        lambda n, g: torch.where(torch.rand(n, generator=g) < 0.5, 1.0 + torch.arange(n) * 2**-23, 1.5),
    ],
    ids=["zeros", "neg_inf", "mostly_neg_inf", "signed_zeros", "three_values", "infinities", "near_ties"],
)
@pytest.mark.parametrize("k", [1, 50])
def test_ties_give_distinct_indices(device, sizes, fill, k):
    g = torch.Generator().manual_seed(k)
    n = 200
    logits = torch.stack([fill(n, g) for _ in range(3)]).to(device)
    run_prefill(logits, [0, 3, 0], [n, n, 60], k)
    run_decode(logits, 1, [n, n - 1, 150], 3, k)


def test_more_equal_values_than_candidate_slots(device, spy):
    # At the kernel's own sizes (3 chunks, 1365 slots each). Every chunk cuts its ties; the cut
    # keys equal the k-th candidate, so the candidates hold the top k.
    fallbacks, repairs = spy("_select_streaming"), spy("_count_repair")
    n, k = 20000, 2048
    logits = randn(3, n, seed=5, device=device)
    logits[0, torch.randperm(n, generator=torch.Generator().manual_seed(5))[:15000].to(device)] = 0.0
    logits[1] = 1.5
    logits[2, 1000:19000] = -INF
    run_prefill(logits, [0, 0, 100], [n, n, n], k)
    assert not fallbacks and not repairs


def test_nan_follows_the_bit_pattern_order(device, sizes):
    g = torch.Generator().manual_seed(6)
    n = 300
    logits = torch.randn(3, n, generator=g)
    logits[0, ::7] = nan_with_sign(False)
    logits[1, ::5] = nan_with_sign(True)
    logits[1, 1::5] = -INF
    logits[2, ::3] = nan_with_sign(True)
    logits[2, 1::3] = nan_with_sign(False)
    out = run_prefill(logits.to(device), [0, 0, 1], [n, n, n], 20)
    # Row 0: 43 positive NaNs rank above every number; row 2's positive NaNs (100) above all else.
    assert bool(torch.isnan(logits[0, out[0].cpu().long()]).all())
    assert bool((out[2].cpu() % 3 == 0).all())  # row 2 starts at column 1: columns 1::3 are indices 0::3


def test_strided_logits(device, sizes):
    base = randn(300, 10, seed=7, device=device)
    logits = base.t()  # stride1 = 10
    run_prefill(logits, [0, 7, 0, 1], [300, 290, 50, 100], 12)
    run_decode(logits, 2, [300, 200], 4, 12)
    # Explicit strides address the storage from data_ptr, whatever the view's shape.
    storage = randn(4000, seed=8, device=device)
    view = storage[3:].reshape(1, -1)
    run_prefill(view, [2, 0, 1], [300, 120, 250], 9, stride0=1000, stride1=3)
    run_decode(view, 1, [200, 300, 70], 3, 9, stride0=900, stride1=4)


def test_broadcast_rows_with_zero_stride0(device, sizes):
    logits = randn(300, seed=9, device=device).expand(4, -1)
    out = run_decode(logits, 1, [300, 280, 20, 300], 4, 10)
    assert sorted(out[0].tolist()) == sorted(out[3].tolist())


def test_output_written_only_where_asked(device, sizes):
    logits = randn(5, 200, seed=10, device=device)
    run_prefill(logits, [0, 1, 2], [200, 190, 3], 8, out_shape=(6, 11))
    run_decode(logits, 1, [200, 100, 50], 3, 8, out_shape=(4, 9), stride0=200)
    run_prefill(logits, [0, 30, 0], [200, 100, 6], 8, out_shape=(3, 12), transposed=True)


def test_zero_rows(device, sizes):
    logits = randn(2, 100, device=device)
    run_prefill(logits, [], [], 3, out_shape=(2, 3))
    run_decode(logits, 1, [100], 0, 3, out_shape=(2, 3))


def test_chunks_holding_more_top_keys_than_slots_are_searched_again(device, small_sizes, spy):
    fallbacks, repairs = spy("_select_streaming"), spy("_count_repair")
    # Ascending rows: the top 60 of a 300-column row lie in its last two chunks (32 columns
    # each), which keep at most 12 candidates each (128 slots over 10 chunks).
    logits = (torch.arange(300.0) + randn(300, seed=11) * 0.01).repeat(2, 1).to(device)
    run_prefill(logits, [0, 0], [300, 250], 60)
    # Random rows with k near the 120 slots: several chunks hold more than 12 of the top 100.
    run_prefill(randn(3, 300, seed=12, device=device), [0, 0, 0], [300, 300, 290], 100)
    if repairs is not None:
        assert repairs and not fallbacks


def test_streaming_fallback_for_rows_beyond_the_chunk_programs(device, small_sizes, spy):
    fallbacks = spy("_select_streaming")
    # The view is 64 columns wide (no chunk programs), but the strides reach 500-column rows;
    # and k above the 128 candidate slots.
    storage = randn(1600, seed=12, device=device)
    logits = storage[:64].reshape(1, 64)
    run_decode(logits, 1, [500, 70, 64, 65], 4, 20, stride0=300, stride1=2)
    if fallbacks is not None:
        assert len(fallbacks) == 3
    wide = randn(2, 500, seed=13, device=device)
    run_prefill(wide, [0, 0], [500, 400], 130)
    if fallbacks is not None:
        assert len(fallbacks) == 5


@pytest.mark.parametrize("pair_cap", [0, 8, 64])
def test_few_keys_between_the_bounds_are_ranked_among_themselves(device, small_sizes, monkeypatch, spy, pair_cap):
    monkeypatch.setattr(kernels, "_PAIR_CAP", pair_cap)
    resolved = spy("_resolve_pairs")
    g = torch.Generator().manual_seed(14)
    n = 200
    # 20 large values, 30 copies of 1.0 and smaller ones: the top 35 take 15 of the copies.
    ties = torch.cat([10 + torch.rand(20, generator=g), torch.ones(30), torch.rand(n - 50, generator=g) - 1])
    # Adjacent fp32 values (and a few repeats) around the threshold.
    near = 1.0 + torch.randint(0, 40, (n,), generator=g) * 2**-23
    logits = torch.stack([ties[torch.randperm(n, generator=g)], near, ties.flip(0)]).to(device)
    # Rows of 60 are held in one program; rows of 200 go through chunk candidates.
    run_prefill(logits, [0, 0, 140], [n, n, n], 35)
    run_decode(logits, 1, [60, n, 60], 3, 35)
    if resolved is not None:
        # Keys were ranked as pairs (pair_limit > 0, count_lo > count_hi): only in launches writing
        # from tiles (throughput-bound), and only with pairs on.
        ranked = any(scalar(args[3]) > 0 and scalar(args[2]) > scalar(args[1]) for args in resolved)
        assert ranked == (pair_cap > 0 and small_sizes == "tiles")


FLT_MAX = torch.finfo(torch.float32).max

# Rows whose count of keys above a value is far from a normal fit (the searches' guide) or from a
# straight line between two values, or whose bracket ends have no finite value.
AWKWARD = {
    "clustered": lambda n, g: torch.where(
        torch.rand(n, generator=g) < 0.5, 1.0 + 1e-6 * torch.randn(n, generator=g), 1e6 * torch.randn(n, generator=g)
    ),
    "huge_range": lambda n, g: torch.randn(n, generator=g).sign() * (torch.randn(n, generator=g) * 30).exp(),
    "extremes": lambda n, g: torch.tensor([-FLT_MAX, FLT_MAX, 1e-45, -1e-45, 0.0, 1.0])[
        torch.randint(0, 6, (n,), generator=g)
    ],
    "exponential": lambda n, g: torch.empty(n).exponential_(generator=g),
    "bimodal": lambda n, g: torch.randn(n, generator=g) + 8 * (torch.rand(n, generator=g) < 0.1),
    # A tenth of the row above 5, then 40 % of it at exactly 1.0: the k-th key is shared.
    "ties_at_threshold": lambda n, g: torch.where(
        torch.rand(n, generator=g) < 0.1,
        5 + torch.rand(n, generator=g),
        torch.where(torch.rand(n, generator=g) < 0.45, 1.0, torch.rand(n, generator=g) - 1),
    ),
    "infinities_and_nans": lambda n, g: (
        torch.tensor([INF, -INF, float("nan"), 0.5])[torch.randint(0, 4, (n,), generator=g)]
        + torch.rand(n, generator=g)
    ),
    "constant": lambda n, g: torch.full((n,), 0.75),
}


@pytest.mark.parametrize("kind", AWKWARD)
@pytest.mark.parametrize("k", [1, 50])
def test_rows_of_awkward_distributions(device, sizes, kind, k):
    g = torch.Generator().manual_seed(k)
    n = 300
    logits = torch.stack([AWKWARD[kind](n, g) for _ in range(3)]).to(device)
    logits[2, ::2] = nan_with_sign(True)
    run_prefill(logits, [0, 3, 0], [n, n, 120], k)
    run_decode(logits, 1, [n, n - 1, 150], 3, k)


def test_auto_dispatches_to_triton_only_for_cuda(device, monkeypatch):
    monkeypatch.delenv("ATTNOPS_BACKEND", raising=False)
    for dispatcher, kernel in [
        (_prefill_dispatcher, kernels.top_k_per_row_prefill),
        (_decode_dispatcher, kernels.top_k_per_row_decode),
    ]:
        assert dispatcher.select("auto", torch.device("cuda")) is kernel
        assert dispatcher.select("auto", torch.device("cpu")) is dispatcher.impls["torch"]
        assert dispatcher.select("triton", device) is kernel


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_hypothesis_against_exact_selection(data):
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    num_rows = data.draw(st.integers(1, 4))
    width = data.draw(st.integers(1, 260))
    k = data.draw(st.integers(1, 80))
    extremes = [-FLT_MAX, -1.0, -1e-45, 1e-45, 1.0, 1.0 + 2**-23, FLT_MAX, float("nan")]
    pool = data.draw(st.sampled_from([None, "scaled", [0.0, 1.0], [-INF, 0.5, INF, -0.0, 0.0], extremes]))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if pool is None:
        logits = torch.randn(num_rows, width, generator=g)
    elif pool == "scaled":
        # Magnitudes over most of the fp32 range: far from the normal fit that guides the searches.
        logits = torch.randn(num_rows, width, generator=g) * 10.0 ** torch.randint(
            -30, 30, (num_rows, width), generator=g
        )
    else:
        logits = torch.tensor(pool)[torch.randint(0, len(pool), (num_rows, width), generator=g)]
    starts = [data.draw(st.integers(0, width)) for _ in range(num_rows)]
    ends = [data.draw(st.integers(s, width)) for s in starts]
    pair_cap = data.draw(st.sampled_from([0, 1, 4, 64]))
    scan_group = data.draw(st.sampled_from([0, 2, 4, 16]))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL.items():
            patch.setattr(kernels, name, value)
        patch.setattr(kernels, "_PAIR_CAP", pair_cap)
        patch.setattr(kernels, "_scan_group", lambda num_warps, in_registers: scan_group)
        kernels._plan.cache_clear()
        run_prefill(logits.to(device), starts, ends, k)


def check_large(out, logits, starts, lengths, k):
    """On the device: each row (longer than k) holds k distinct in-range indices of its top-k values."""
    for r in range(out.shape[0]):
        got = out[r, :k].long()
        n = lengths[r]
        assert got.unique().numel() == k and int(got.min()) >= 0 and int(got.max()) < n, f"row {r}"
        keys = order_keys(logits[r, starts[r] : starts[r] + n])
        assert torch.equal(keys[got].sort().values, keys.topk(k).values.sort().values), f"row {r}"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("length", [8192, 32768, 131072])
def test_full_size_decode_on_gpu(device, length):
    k, num_rows = 2048, 4
    logits = torch.randn(num_rows, length, device=device)
    logits[1, : length // 2] = 0.0  # ties across the threshold
    logits[2] = torch.arange(length, device=device).float()  # top values in the last chunk
    logits[3, torch.rand(length, device=device) < 0.97] = -INF  # fewer finite values than k or about k
    out = torch.full((num_rows, k), SENTINEL, dtype=torch.int32, device=device)
    lens = torch.full((num_rows,), length, dtype=torch.int32, device=device)
    topk.top_k_per_row_decode(logits, 1, lens, out, num_rows, length, 1, k, backend="triton")
    check_large(out, logits, [0] * num_rows, [length] * num_rows, k)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("width", [8192, 32768])
def test_full_size_causal_prefill_on_gpu(device, width):
    k, num_rows = 2048, 4096
    logits = torch.randn(num_rows, width, device=device)
    ends = ((torch.arange(num_rows, device=device) + 1) * width // num_rows).to(torch.int32)
    starts = torch.zeros_like(ends)
    out = torch.full((num_rows, k), SENTINEL, dtype=torch.int32, device=device)
    topk.top_k_per_row_prefill(logits, starts, ends, out, num_rows, width, 1, k, backend="triton")
    want = torch.full_like(out, SENTINEL)
    topk.top_k_per_row_prefill(logits, starts, ends, want, num_rows, width, 1, k, backend="torch")
    lengths = ends.tolist()
    short = [r for r in range(num_rows) if lengths[r] <= k]
    assert torch.equal(out[short], want[short])
    long_rows = [r for r in range(num_rows) if lengths[r] > k]
    check_large(out[long_rows], logits[long_rows], [0] * len(long_rows), [lengths[r] for r in long_rows], k)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("k", [1, 300, 2048])
def test_strided_ragged_and_per_row_lengths_on_gpu(device, k):
    # The compiled variants the other GPU tests do not reach: stride1 != 1, nonzero starts,
    # next_n = 2 with one length per request, and one length per row.
    storage = torch.randn(3 * 70000 + 8, device=device)
    logits = storage[1:].as_strided((4, 70000), (1, 3))  # stride1 = 3, rows one element apart
    run_prefill(logits, [0, 5, 40000, 100], [70000, 69000, 50000, 101 + k], k)
    run_decode(logits, 2, [70000, 30000], 4, k)
    run_decode(logits, 1, [[69999, 12], [2 * k, 50000]], 4, k)


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_capture_and_replay(device):
    k, length = 2048, 32768
    logits = torch.randn(8, length, device=device)
    lens = torch.tensor([length, 9000, 100, 8192, 20000, length, 2049, 1], dtype=torch.int32, device=device)
    eager = torch.full((8, k), SENTINEL, dtype=torch.int32, device=device)
    topk.top_k_per_row_decode(logits, 1, lens, eager, 8, length, 1, k, backend="triton")  # compiles outside
    out = torch.full_like(eager, SENTINEL)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        topk.top_k_per_row_decode(logits, 1, lens, out, 8, length, 1, k, backend="triton")
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    for r in range(8):
        assert torch.equal(out[r].sort().values, eager[r].sort().values)


def test_plan_keys_hold_every_constexpr():
    # On the GPU a key's first launch is compiled and reused: a launch is keyed by its scalars and
    # its plan's constexprs and options (the launcher adds the pointers' dtypes and alignment).
    device = torch.device("cpu")
    plan = kernels._plan(4, 20000, False, True, False, device, False)
    assert plan.chunk_key == tuple(plan.chunk_params.items())
    assert plan.finish_key == tuple(plan.finish_params.items())
    assert plan.finish_key != kernels._plan(4, 20000, False, False, False, device, False).finish_key
    assert plan.scratch_elements == 4 * (2 * kernels._CANDIDATES + 2 * plan.chunk_programs + 2 * kernels._PAIR_CAP)
    interpreted = kernels._plan(4, 20000, False, True, False, device, True)
    assert interpreted.chunk_key is None and interpreted.finish_key is None
    short = kernels._plan(4, 100, False, True, False, device, False)
    assert short.chunk_programs == 0 and short.chunk_params is None
    assert short.scratch_elements == 4 * 2 * kernels._PAIR_CAP


@pytest.mark.gpu
@requires_cuda
def test_new_batch_sizes_reuse_the_compiled_kernel(device, monkeypatch):
    # The logits' storage size (a scalar of the finish kernel) changes with every batch size: a new
    # size must hit the same launch (no pass through Triton's JIT), with exact results.
    from attnops.topk import triton as kernels

    monkeypatch.setattr(kernels._finish_launcher, "compiled", {})
    k, length = 2048, 8192
    for num_rows in (3, 5, 17):
        logits = torch.randn(num_rows, length, device=device)
        lens = torch.full((num_rows,), length, dtype=torch.int32, device=device)
        out = torch.full((num_rows, k), SENTINEL, dtype=torch.int32, device=device)
        topk.top_k_per_row_decode(logits, 1, lens, out, num_rows, length, 1, k, backend="triton")
        check_large(out, logits, [0] * num_rows, [length] * num_rows, k)
    assert len(kernels._finish_launcher.compiled) == 1

"""top_k_per_row_prefill / _decode against a per-row Python sort written here."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnops.topk as topk
from helpers.topk_rows import decode_lengths

INF = float("inf")
SENTINEL = -7


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def strided_logits(num_rows, width, stride0=None, stride1=1, offset=0, seed=0, fill=None):
    """A logits view with the given strides over a larger random storage; returns (view, storage)."""
    stride0 = width * stride1 if stride0 is None else stride0
    size = offset + max(0, num_rows - 1) * stride0 + max(0, width - 1) * stride1 + 1 + 5
    g = torch.Generator().manual_seed(seed)
    storage = torch.randn(size, generator=g) if fill is None else torch.full((size,), fill)
    return torch.as_strided(storage, (num_rows, width), (stride0, stride1), offset), storage


def row_values(logits, stride0, stride1, row, start, length):
    """The logits of one row as a Python list, addressed exactly as vLLM does."""
    storage = torch.as_strided(logits, (logits.untyped_storage().nbytes() // 4,), (1,), 0)
    base = logits.storage_offset() + row * stride0 + start * stride1
    return [float(storage[base + c * stride1]) for c in range(length)]


def check_row(out_row, values, k):
    """``out_row`` (k ints) is a valid top-k of ``values`` (the row's logits)."""
    n = len(values)
    if n <= k:
        assert out_row == list(range(n)) + [-1] * (k - n)
        return
    assert len(set(out_row)) == k, "duplicate indices"
    assert all(0 <= i < n for i in out_row), "index out of range"
    want = sorted(values, reverse=True)[:k]
    got = sorted((values[i] for i in out_row), reverse=True)
    assert got == want


def check_all(logits, stride0, stride1, starts, lengths, out, k, before):
    num_rows = len(lengths)
    for r in range(num_rows):
        check_row(out[r, :k].tolist(), row_values(logits, stride0, stride1, r, starts[r], lengths[r]), k)
    untouched = torch.ones_like(out, dtype=torch.bool)
    untouched[:num_rows, :k] = False
    assert torch.equal(out[untouched], before[untouched])


def run_prefill(logits, starts, ends, k, stride0=None, stride1=None, out_shape=None):
    num_rows = len(starts)
    stride0 = logits.stride(0) if stride0 is None else stride0
    stride1 = logits.stride(1) if stride1 is None else stride1
    out = torch.full(out_shape or (num_rows, k), SENTINEL, dtype=torch.int32)
    before = out.clone()
    topk.top_k_per_row_prefill(logits, i32(starts), i32(ends), out, num_rows, stride0, stride1, k)
    lengths = [e - s for s, e in zip(starts, ends, strict=True)]
    check_all(logits, stride0, stride1, starts, lengths, out, k, before)
    return out


def run_decode(logits, next_n, seq_lens, num_rows, k, stride0=None, stride1=None, out_shape=None):
    stride0 = logits.stride(0) if stride0 is None else stride0
    stride1 = logits.stride(1) if stride1 is None else stride1
    out = torch.full(out_shape or (num_rows, k), SENTINEL, dtype=torch.int32)
    before = out.clone()
    topk.top_k_per_row_decode(logits, next_n, i32(seq_lens), out, num_rows, stride0, stride1, k)
    lengths = decode_lengths(seq_lens, next_n, num_rows)
    check_all(logits, stride0, stride1, [0] * num_rows, lengths, out, k, before)
    return out


@pytest.mark.parametrize("k", [1, 3, 8])
def test_prefill_ragged_rows(k):
    logits, _ = strided_logits(7, 30, seed=1)
    starts = [0, 4, 10, 3, 29, 5, 0]
    ends = [30, 12, 10, 3 + k, 30, 5 + k + 1, 1]
    run_prefill(logits, starts, ends, k)


def test_prefill_indices_are_relative_to_row_start():
    logits = torch.arange(40, dtype=torch.float32).reshape(2, 20)
    out = run_prefill(logits, [5, 12], [15, 20], 3)
    assert sorted(out[0].tolist()) == [7, 8, 9] and sorted(out[1].tolist()) == [5, 6, 7]


def test_short_rows_pad_with_minus_one():
    logits, _ = strided_logits(3, 10, seed=2)
    out = run_prefill(logits, [0, 2, 6], [4, 2, 10], 6)
    assert out.tolist() == [[0, 1, 2, 3, -1, -1], [-1] * 6, [0, 1, 2, 3, -1, -1]]


@pytest.mark.parametrize(
    "fill",
    [
        lambda n: [0.0] * n,
        lambda n: [-INF] * n,
        lambda n: [-INF] * (n - 3) + [1.0, -2.0, 0.5],
        lambda n: [0.0, -0.0] * (n // 2),
        lambda n: [1.0 + i * 2**-23 for i in range(n // 2)] * 2,
        lambda n: [INF, -INF, 3.0] * (n // 3),
    ],
    ids=["zeros", "neg_inf", "mostly_neg_inf", "signed_zeros", "near_ties", "infinities"],
)
@pytest.mark.parametrize("k", [1, 5, 16])
def test_ties_give_distinct_indices(fill, k):
    n = 24
    values = torch.tensor(fill(n), dtype=torch.float32)
    logits = values.repeat(3, 1)
    run_prefill(logits, [0, 3, 0], [n, n, n - 2], k)
    run_decode(logits, 1, [n, n - 1, n - 5], 3, k)


def test_more_than_2048_equal_values():
    # vLLM's kernel returns duplicate indices here; the reference must not.
    g = torch.Generator().manual_seed(3)
    n, k = 6000, 2048
    logits = torch.randn(3, n, generator=g)
    logits[0, :4000] = 0.0
    logits[1, 1000:5000] = -INF
    logits[2] = 1.5
    run_prefill(logits, [0, 0, 100], [n, n, n], k)


@pytest.mark.parametrize("next_n", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_decode_rows(next_n, k):
    batch = 4
    seq_lens = [17, 1, next_n + 3, 9][:batch]
    num_rows = batch * next_n
    logits, _ = strided_logits(num_rows, 20, seed=4)
    run_decode(logits, next_n, seq_lens, num_rows, k)


def test_decode_short_sequences_give_empty_rows():
    logits, _ = strided_logits(6, 8, seed=5)
    out = run_decode(logits, 3, [1, 0], 6, 2)
    # Lengths max(0, s - 3 + j + 1): [0, 0, 1] and [0, 0, 0].
    assert out.tolist() == [[-1, -1], [-1, -1], [0, -1], [-1, -1], [-1, -1], [-1, -1]]


def test_decode_two_dimensional_seq_lens_are_per_row():
    logits, _ = strided_logits(6, 12, seed=6)
    run_decode(logits, 3, [[12, 5, 0], [7, -2, 11]], 6, 4)
    run_decode(logits, 2, [[12], [5], [9], [3], [10], [1]], 6, 4)


@pytest.mark.parametrize("stride1", [1, 3])
@pytest.mark.parametrize("extra", [0, 7])
@pytest.mark.parametrize("offset", [0, 5])
def test_strided_and_offset_views(stride1, extra, offset):
    width = 16
    logits, _ = strided_logits(4, width, stride0=width * stride1 + extra, stride1=stride1, offset=offset, seed=7)
    run_prefill(logits, [0, 2, 5, 9], [16, 14, 12, 16], 4)
    run_decode(logits, 2, [16, 11], 4, 4)


def test_strides_given_explicitly_address_the_storage():
    # vLLM addresses from data_ptr with the stride arguments, not the view's strides.
    storage = torch.randn(200, generator=torch.Generator().manual_seed(8))
    logits = storage[3:].reshape(1, -1)
    run_prefill(logits, [2, 0, 1], [30, 12, 25], 5, stride0=40, stride1=2)
    run_decode(logits, 1, [20, 30, 7], 3, 5, stride0=50, stride1=3)


def test_broadcast_rows_with_zero_stride0():
    row = torch.randn(50, generator=torch.Generator().manual_seed(9))
    logits = row.expand(5, -1)
    out = run_decode(logits, 1, [50, 40, 10, 3, 50], 5, 8)
    assert sorted(out[0].tolist()) == sorted(out[4].tolist())


def test_output_larger_than_needed_is_written_only_where_asked():
    logits, _ = strided_logits(5, 20, seed=10)
    run_prefill(logits, [0, 1, 2], [20, 19, 3], 4, out_shape=(6, 9))
    run_decode(logits, 1, [20, 19, 18], 3, 4, out_shape=(4, 5))


def test_zero_rows_write_nothing():
    logits, _ = strided_logits(2, 8)
    run_prefill(logits, [], [], 3, out_shape=(2, 3))
    run_decode(logits, 1, [8], 0, 3, out_shape=(2, 3))


def test_row_chunks_agree(monkeypatch):
    from attnops.topk import reference

    logits, _ = strided_logits(9, 40, seed=11)
    starts, ends = [0, 3, 0, 10, 0, 1, 2, 0, 5], [40, 40, 30, 39, 6, 33, 40, 40, 17]
    whole = run_prefill(logits, starts, ends, 6)
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 50)
    assert torch.equal(run_prefill(logits, starts, ends, 6), whole)


def spy(monkeypatch, name):
    """Count the calls of ``reference.<name>`` (still calling through); returns the list of calls."""
    from attnops.topk import reference

    calls = []
    original = getattr(reference, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, name, counted)
    return calls


def test_rows_inside_the_storage_are_read_through_a_view(monkeypatch):
    viewed, gathered = spy(monkeypatch, "_read_window"), spy(monkeypatch, "_gather_ranges")
    logits, _ = strided_logits(5, 40, stride0=43, stride1=1, offset=2, seed=13)
    run_prefill(logits, [0, 3, 10, 1, 0], [40, 30, 40, 12, 25], 6)
    run_decode(logits, 1, [40, 33, 7, 40, 12], 5, 6)
    assert len(viewed) == 2 and not gathered


def test_far_apart_ranges_are_gathered(monkeypatch):
    viewed, gathered = spy(monkeypatch, "_read_window"), spy(monkeypatch, "_gather_ranges")
    logits, _ = strided_logits(4, 300, seed=14)
    # The common window [0, 300) is far wider than twice the longest range.
    run_prefill(logits, [0, 280, 150, 140], [20, 300, 166, 150], 5)
    assert gathered and not viewed


def test_window_past_the_storage_end_is_gathered(monkeypatch):
    viewed, gathered = spy(monkeypatch, "_read_window"), spy(monkeypatch, "_gather_ranges")
    storage = torch.randn(2 * 30 + 12, generator=torch.Generator().manual_seed(15))
    # The last row is short and the storage ends right after it, so a
    # [3, 30] window would read past the end.
    logits = torch.as_strided(storage, (3, 12), (30, 1))
    run_decode(logits, 1, [30, 25, 12], 3, 8, stride0=30, stride1=1)
    assert gathered and not viewed


@pytest.mark.parametrize("chunk_elements", [1 << 22, 50])
def test_rows_selecting_minus_inf_are_redone_exactly(monkeypatch, chunk_elements):
    from attnops.topk import reference

    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", chunk_elements)
    keyed = spy(monkeypatch, "_ordered_key")
    logits, _ = strided_logits(6, 40, seed=16)
    # Rows 1, 4 and 5 hold fewer finite values than k in their range, next to
    # out-of-range -inf columns that a plain top-k over -inf padding could pick.
    logits[1, :] = -INF
    logits[1, 12:15] = torch.tensor([0.5, -3.0, 2.0])
    logits[4, 5:] = -INF
    logits[4, 20] = 1.0
    logits[5, :] = -INF
    logits[5, 30] = 4.0
    starts, ends = [0, 4, 2, 0, 3, 25], [40, 36, 40, 31, 38, 40]
    run_prefill(logits, starts, ends, 10)
    assert keyed, "the exact fallback did not run"


def nan_tensor(values):
    """fp32 tensor from floats where "+nan" / "-nan" give NaNs with a clear / set sign bit."""
    nans = {"+nan": 0x7FC00000, "-nan": -0x400000}
    bits = torch.tensor([nans.get(v, 0) for v in values], dtype=torch.int32).view(torch.float32)
    plain = torch.tensor([0.0 if v in nans else v for v in values], dtype=torch.float32)
    return torch.where(torch.tensor([v in nans for v in values]), bits, plain)


def test_nan_follows_the_bit_pattern_order():
    # Like vLLM's radix key: positive NaN above +inf, negative NaN below -inf.
    row = nan_tensor([1.0, "+nan", 2.0, "-nan", -INF, 3.0, INF, 0.0, -1.0, "-nan", 5.0, 4.0])
    assert torch.signbit(row[3]) and not torch.signbit(row[1])
    out = torch.full((2, 4), SENTINEL, dtype=torch.int32)
    topk.top_k_per_row_decode(row.repeat(2, 1), 1, i32([12, 11]), out, 2, 12, 1, 4)
    assert sorted(out[0].tolist()) == [1, 6, 10, 11]
    assert sorted(out[1].tolist()) == [1, 5, 6, 10]

    low = nan_tensor(["+nan"] + ["-nan"] * 6 + [-INF] * 6 + [2.0])
    out = torch.full((1, 4), SENTINEL, dtype=torch.int32)
    # Column 0 (+nan) is before the range [1, 14): never picked.
    topk.top_k_per_row_prefill(low.reshape(1, -1), i32([1]), i32([14]), out, 1, 14, 1, 4)
    picked = sorted(out[0].tolist())
    assert picked[-1] == 12 and all(6 <= i < 12 for i in picked[:-1]), picked


def test_custom_op_and_compile():
    logits, _ = strided_logits(4, 20, seed=12)
    starts, ends, seq_lens = i32([0, 2, 4, 6]), i32([20, 18, 10, 7]), i32([20, 15])
    want = torch.empty(4, 5, dtype=torch.int32)
    topk.top_k_per_row_prefill(logits, starts, ends, want, 4, 20, 1, 5)
    got = torch.full_like(want, SENTINEL)
    torch.ops.attnops.top_k_per_row_prefill(logits, starts, ends, got, 4, 20, 1, 5)
    assert torch.equal(got, want)
    want_decode = torch.empty(4, 5, dtype=torch.int32)
    topk.top_k_per_row_decode(logits, 2, seq_lens, want_decode, 4, 20, 1, 5)
    torch.ops.attnops.top_k_per_row_decode(logits, 2, seq_lens, got, 4, 20, 1, 5)
    assert torch.equal(got, want_decode)

    @torch.compile(fullgraph=True, backend="eager")
    def compiled(logits, starts, ends, out):
        topk.top_k_per_row_prefill(logits, starts, ends, out, 4, 20, 1, 5)

    got.fill_(SENTINEL)
    compiled(logits, starts, ends, got)
    assert torch.equal(got, want)


def _prefill_args(**changes):
    logits, _ = strided_logits(3, 10)
    args = dict(
        logits=logits,
        cu_seqlen_ks=i32([0, 2, 4]),
        cu_seqlen_ke=i32([10, 8, 10]),
        raw_topk_indices=torch.full((3, 4), SENTINEL, dtype=torch.int32),
        num_rows=3,
        stride0=10,
        stride1=1,
        topk_tokens=4,
    )
    args.update(changes)
    return args


def _decode_args(**changes):
    logits, _ = strided_logits(4, 10)
    args = dict(
        logits=logits,
        next_n=2,
        seq_lens=i32([10, 6]),
        raw_topk_indices=torch.full((4, 4), SENTINEL, dtype=torch.int32),
        num_rows=4,
        stride0=10,
        stride1=1,
        topk_tokens=4,
    )
    args.update(changes)
    return args


COMMON_BAD = [
    ("logits not a tensor", dict(logits=[1.0]), TypeError, "logits"),
    ("logits dtype", dict(logits=torch.zeros(4, 10, dtype=torch.float16)), TypeError, "logits"),
    ("logits rank", dict(logits=torch.zeros(40)), ValueError, "logits"),
    ("indices dtype", dict(raw_topk_indices=torch.zeros(4, 4, dtype=torch.int64)), TypeError, "raw_topk_indices"),
    ("indices rank", dict(raw_topk_indices=torch.zeros(16, dtype=torch.int32)), ValueError, "raw_topk_indices"),
    ("num_rows negative", dict(num_rows=-1), ValueError, "num_rows"),
    ("num_rows above indices", dict(num_rows=5), ValueError, "num_rows"),
    ("num_rows float", dict(num_rows=3.0), TypeError, "num_rows"),
    ("stride0 negative", dict(stride0=-1), ValueError, "stride0"),
    ("stride1 zero", dict(stride1=0), ValueError, "stride1"),
    ("stride1 bool", dict(stride1=True), TypeError, "stride1"),
    ("topk zero", dict(topk_tokens=0), ValueError, "topk_tokens"),
    ("topk above indices", dict(topk_tokens=5), ValueError, "topk_tokens"),
    (
        "indices on another device",
        dict(raw_topk_indices=torch.zeros(4, 4, dtype=torch.int32, device="meta")),
        ValueError,
        "raw_topk_indices",
    ),
    ("backend name", dict(backend="cuda"), ValueError, "backend"),
    ("backend triton on cpu", dict(backend="triton"), ValueError, "backend"),
]

PREFILL_BAD = [
    *COMMON_BAD,
    ("ks dtype", dict(cu_seqlen_ks=torch.zeros(3, dtype=torch.int64)), TypeError, "cu_seqlen_ks"),
    ("ks rank", dict(cu_seqlen_ks=torch.zeros(3, 1, dtype=torch.int32)), ValueError, "cu_seqlen_ks"),
    ("ks too short", dict(cu_seqlen_ks=i32([0, 0])), ValueError, "cu_seqlen_ks"),
    ("ks negative", dict(cu_seqlen_ks=i32([0, -1, 4])), ValueError, "cu_seqlen_ks"),
    ("ke dtype", dict(cu_seqlen_ke=torch.zeros(3, dtype=torch.float32)), TypeError, "cu_seqlen_ke"),
    ("ke too short", dict(cu_seqlen_ke=i32([10])), ValueError, "cu_seqlen_ke"),
    ("ke before ks", dict(cu_seqlen_ke=i32([10, 1, 10])), ValueError, "cu_seqlen_ke"),
    ("ke past storage", dict(cu_seqlen_ke=i32([10, 8, 16])), ValueError, "cu_seqlen_ke"),
    ("stride0 past storage", dict(stride0=15), ValueError, "stride0=15"),
    ("stride1 past storage", dict(stride1=3), ValueError, "stride1=3"),
    (
        "ks on another device",
        dict(cu_seqlen_ks=torch.zeros(3, dtype=torch.int32, device="meta")),
        ValueError,
        "cu_seqlen_ks",
    ),
]

DECODE_BAD = [
    *COMMON_BAD,
    ("next_n zero", dict(next_n=0), ValueError, "next_n"),
    ("next_n float", dict(next_n=2.0), TypeError, "next_n"),
    ("seq_lens dtype", dict(seq_lens=torch.zeros(2, dtype=torch.int64)), TypeError, "seq_lens"),
    ("seq_lens rank", dict(seq_lens=torch.zeros(2, 1, 1, dtype=torch.int32)), ValueError, "seq_lens"),
    ("seq_lens too short", dict(seq_lens=i32([10])), ValueError, "seq_lens"),
    (
        "seq_lens 2-D too small",
        dict(seq_lens=i32([[10], [9], [8]])),
        ValueError,
        "seq_lens",
    ),
    ("seq_lens past storage", dict(seq_lens=i32([10, 20])), ValueError, "seq_lens"),
    (
        "seq_lens on another device",
        dict(seq_lens=torch.zeros(2, dtype=torch.int32, device="meta")),
        ValueError,
        "seq_lens",
    ),
]


def _assert_raises_untouched(op, args, error, name):
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    with pytest.raises(error, match=name):
        op(**args)
    for key, value in before.items():
        assert torch.equal(args[key], value), key


@pytest.mark.parametrize(("changes", "error", "name"), [c[1:] for c in PREFILL_BAD], ids=[c[0] for c in PREFILL_BAD])
def test_prefill_bad_input(changes, error, name):
    _assert_raises_untouched(topk.top_k_per_row_prefill, _prefill_args(**changes), error, name)


@pytest.mark.parametrize(("changes", "error", "name"), [c[1:] for c in DECODE_BAD], ids=[c[0] for c in DECODE_BAD])
def test_decode_bad_input(changes, error, name):
    _assert_raises_untouched(topk.top_k_per_row_decode, _decode_args(**changes), error, name)


VALUES = st.one_of(
    st.sampled_from([-INF, INF, 0.0, -0.0, 1.0, -1.0, 2.5]),
    st.floats(-(2.0**100), 2.0**100, width=32),
)


@st.composite
def logits_rows(draw, num_rows, width):
    stride1 = draw(st.sampled_from([1, 1, 2]))
    stride0 = width * stride1 + draw(st.integers(0, 3))
    values = draw(st.lists(VALUES, min_size=1, max_size=6))
    pool = torch.tensor(values, dtype=torch.float32)
    size = max(0, num_rows - 1) * stride0 + max(0, width - 1) * stride1 + 1
    picks = draw(st.lists(st.integers(0, len(values) - 1), min_size=size, max_size=size))
    storage = pool[torch.tensor(picks, dtype=torch.long)] if size else torch.zeros(1)
    return torch.as_strided(storage, (num_rows, width), (stride0, stride1)), stride0, stride1


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_hypothesis_prefill(data):
    num_rows = data.draw(st.integers(0, 5))
    width = data.draw(st.integers(1, 30))
    k = data.draw(st.integers(1, 12))
    logits, stride0, stride1 = data.draw(logits_rows(num_rows, width))
    starts = data.draw(st.lists(st.integers(0, width), min_size=num_rows, max_size=num_rows))
    ends = [data.draw(st.integers(s, width)) for s in starts]
    run_prefill(logits, starts, ends, k, stride0=stride0, stride1=stride1)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_hypothesis_decode(data):
    next_n = data.draw(st.integers(1, 3))
    batch = data.draw(st.integers(0, 3))
    width = data.draw(st.integers(1, 30))
    k = data.draw(st.integers(1, 12))
    num_rows = batch * next_n
    logits, stride0, stride1 = data.draw(logits_rows(num_rows, width))
    seq_lens = data.draw(st.lists(st.integers(-1, width), min_size=max(1, batch), max_size=max(1, batch)))
    run_decode(logits, next_n, seq_lens, num_rows, k, stride0=stride0, stride1=stride1)

"""convert_vertical_slash_indexes(_mergehead) against a statement-by-statement port of vLLM's CUDA kernel."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnops.sparse as sparse
from helpers.sparse_patterns import random_case


class NoTermination(Exception):
    """vLLM's loop would not end (or would overrun its tables) for this row block."""


def kernel_row_block(vertical, slash, nv, ns, q_seqlen, kv_seqlen, m, M, N, causal):
    """(block offsets, columns) of row block m, following vertical_slash_index.cu line by line."""
    start_m = m * M
    end_m = start_m + M
    off = (kv_seqlen - q_seqlen) if causal else kv_seqlen
    blocks, columns = [], []

    def save(range_start, range_end):
        if range_start >= kv_seqlen:
            return
        idx = range_start
        while idx < min(range_end, kv_seqlen):
            blocks.append(idx)
            idx += N

    v_idx, v = vertical[0], 1
    s_idx, s = slash[0], 1
    while s_idx >= end_m + off and s < ns:
        s_idx, s = slash[s], s + 1
    has_slash = not (s_idx > end_m + off)
    s_idx = max(off + end_m - s_idx, M)
    range_start, range_end = s_idx - M, s_idx
    if not has_slash:
        range_start = off + end_m if causal else kv_seqlen
        range_end = range_start + N
    slash_finished = False
    for _ in range(4 * (nv + ns) + 16):
        if len(columns) > nv or len(blocks) > ns:
            raise NoTermination
        if v_idx < range_end:
            if v_idx < range_start:
                columns.append(v_idx)
            if v < nv:
                v_idx, v = vertical[v], v + 1
            else:
                v_idx = end_m + N + off
            continue
        if s < ns and (causal or slash[s] >= start_m):
            s_idx, s = max(off + end_m - slash[s], M), s + 1
        elif v == nv or (v_idx > range_start and causal):
            if v == nv and not causal and v_idx < kv_seqlen:
                columns.append(v_idx)
            save(range_start, range_end)
            if len(columns) > nv or len(blocks) > ns:
                raise NoTermination
            return blocks, columns
        else:
            if causal:
                range_start, range_end = off + end_m, off + end_m + N
            else:
                save(range_start, range_end)
                range_start, range_end = kv_seqlen, kv_seqlen + N
            slash_finished = True
        if not slash_finished:
            if s_idx > range_end + M:
                save(range_start, range_end)
                range_start, range_end = s_idx - M, s_idx
            elif s_idx > range_end:
                range_end += M
    raise NoTermination


def kernel_tables(q_seqlens, kv_seqlens, vertical, slash, nv, ns, context_size, M, N, causal):
    """expected[b][h][m] = (blocks, columns); rows with m*M >= q_seqlen are never written."""
    num_rows = (context_size + M - 1) // M
    expected = []
    for b, (q, kv) in enumerate(zip(q_seqlens, kv_seqlens, strict=True)):
        per_head = []
        for h in range(len(vertical[b])):
            rows = [([], [])] * num_rows
            for m in range(num_rows):
                if m * M < q:
                    rows[m] = kernel_row_block(vertical[b][h], slash[b][h], nv[h], ns[h], q, kv, m, M, N, causal)
            per_head.append(rows)
        expected.append(per_head)
    return expected


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


def run_op(case):
    q, kv, vertical, slash, nv, ns, context, M, N, causal = case
    if nv is None:
        return sparse.convert_vertical_slash_indexes(i32(q), i32(kv), i32(vertical), i32(slash), context, M, N, causal)
    return sparse.convert_vertical_slash_indexes_mergehead(
        i32(q), i32(kv), i32(vertical), i32(slash), i32(nv), i32(ns), context, M, N, causal
    )


def assert_matches_kernel(case):
    q, kv, vertical, slash, nv, ns, context, M, N, causal = case
    heads = len(vertical[0])
    full_v, full_s = [len(vertical[0][0])] * heads, [len(slash[0][0])] * heads
    expected = kernel_tables(q, kv, vertical, slash, nv or full_v, ns or full_s, context, M, N, causal)
    block_count, block_offset, column_count, column_index = run_op(case)
    num_rows = (context + M - 1) // M
    assert block_count.shape == column_count.shape == (len(q), heads, num_rows)
    assert block_offset.shape == (len(q), heads, num_rows, len(slash[0][0]))
    assert column_index.shape == (len(q), heads, num_rows, len(vertical[0][0]))
    for t in (block_count, block_offset, column_count, column_index):
        assert t.dtype == torch.int32
    for b, per_head in enumerate(expected):
        for h, rows in enumerate(per_head):
            for m, (blocks, columns) in enumerate(rows):
                where = f"b={b} h={h} m={m}"
                assert block_count[b, h, m] == len(blocks), where
                assert block_offset[b, h, m, : len(blocks)].tolist() == blocks, where
                assert column_count[b, h, m] == len(columns), where
                assert column_index[b, h, m, : len(columns)].tolist() == columns, where
    # Documented: entries past the counts are zeros.
    slots = torch.arange(block_offset.shape[-1])
    assert not block_offset.masked_select(slots >= block_count[..., None]).any()
    slots = torch.arange(column_index.shape[-1])
    assert not column_index.masked_select(slots >= column_count[..., None]).any()


BLOCKS = [(64, 64), (16, 16), (8, 24), (3, 5), (1, 1)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mergehead", [False, True])
@pytest.mark.parametrize(("M", "N"), BLOCKS)
def test_matches_kernel(causal, mergehead, M, N):
    rng = random.Random(hash((causal, mergehead, M, N)) % 2**32)
    for _ in range(6):
        context = rng.randint(1, 7 * M + 5)
        case = random_case(rng, causal=causal, mergehead=mergehead, M=M, N=N, context=context)
        assert_matches_kernel(case)


def test_bench_like_pattern_matches_kernel():
    """64x64 blocks, a dense local band plus scattered far slashes, sinks plus scattered verticals."""
    rng = random.Random(7)
    context = 64 * 12 + 17
    vertical = [[sorted(set(range(8)) | set(rng.sample(range(context), 24)))[:24] for _ in range(2)]]
    slash = [[sorted(set(range(40)) | set(rng.sample(range(context), 40)), reverse=True)[:60] for _ in range(2)]]
    for causal in (True, False):
        kv = context if causal else context + 100
        assert_matches_kernel(([context], [kv], vertical, slash, None, None, context, 64, 64, causal))


def test_quirk_causal_row_stops_with_its_slashes():
    """A vertical right of the last slash range is dropped (vLLM), even though causality allows it."""
    # Row block 2 (queries 8..11) of a 12-token context: slash 5 gives range [3, 7); vertical 9 is
    # visible to queries 9..11 but lies past the range, so it is dropped.
    case = ([12], [12], [[[0, 9]]], [[[5]]], None, None, 12, 4, 4, True)
    assert_matches_kernel(case)
    block_count, block_offset, column_count, column_index = run_op(case)
    assert block_offset[0, 0, 2, : block_count[0, 0, 2]].tolist() == [3]
    assert column_index[0, 0, 2, : column_count[0, 0, 2]].tolist() == [0]


def test_rows_past_q_seqlen_and_padding_are_zero():
    case = ([5, 0], [9, 3], [[[1, 2]], [[0, 1]]], [[[3, 0]], [[2, 1]]], None, None, 16, 4, 4, True)
    assert_matches_kernel(case)
    block_count, block_offset, column_count, column_index = run_op(case)
    assert block_count[0, 0, 2:].eq(0).all() and column_count[0, 0, 2:].eq(0).all()
    assert block_count[1].eq(0).all() and column_count[1].eq(0).all()
    assert not block_offset[0, 0, 2:].any() and not column_index[1].any()


def dense_pattern(vertical, slash, q_len, kv_len):
    """[q_len, kv_len] bool: key j is a vertical or on a slash diagonal of query i, inside causality."""
    mask = torch.zeros(q_len, kv_len, dtype=torch.bool)
    off = kv_len - q_len
    for i in range(q_len):
        for j in range(min(kv_len, i + off + 1)):
            mask[i, j] = j in vertical or (i + off - j) in slash
    return mask


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    MN=st.sampled_from([(4, 4), (8, 8), (3, 5), (16, 16)]),
    q_len=st.integers(1, 70),
    extra_kv=st.integers(0, 20),
)
def test_tables_cover_pattern(data, MN, q_len, extra_kv):
    """Every (row, column) of a causal vertical/slash pattern with the main diagonal is in the tables' mask."""
    M, N = MN
    kv_len = q_len + extra_kv
    vertical = sorted(data.draw(st.lists(st.integers(0, kv_len - 1), min_size=1, max_size=8)))
    slash = sorted({0, *data.draw(st.lists(st.integers(0, kv_len - 1), max_size=10))}, reverse=True)
    case = ([q_len], [kv_len], [[vertical]], [[slash]], None, None, q_len, M, N, True)
    assert_matches_kernel(case)
    tables = run_op(case)
    covered = sparse.sparse_tables_to_mask(*tables, q_len, kv_len, M, N, causal=True)[0, 0]
    pattern = dense_pattern(set(vertical), set(slash), q_len, kv_len)
    assert not (pattern & ~covered).any()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), causal=st.booleans(), mergehead=st.booleans(), MN=st.sampled_from(BLOCKS[1:]))
def test_matches_kernel_hypothesis(seed, causal, mergehead, MN):
    rng = random.Random(seed)
    M, N = MN
    case = random_case(
        rng, causal=causal, mergehead=mergehead, M=M, N=N, context=rng.randint(1, 6 * M + 3), nnz_s=rng.randint(1, 14)
    )
    assert_matches_kernel(case)


def test_custom_op_and_compile():
    case = random_case(random.Random(3), causal=True, mergehead=True, M=4, N=4, context=30)
    q, kv, vertical, slash, nv, ns, context, M, N, causal = case
    args = (i32(q), i32(kv), i32(vertical), i32(slash), i32(nv), i32(ns), context, M, N, causal)
    expected = sparse.convert_vertical_slash_indexes_mergehead(*args)
    via_op = torch.ops.attnops.convert_vertical_slash_indexes_mergehead(*args)
    plain = torch.ops.attnops.convert_vertical_slash_indexes(*args[:4], context, M, N, causal)
    compiled = torch.compile(sparse.convert_vertical_slash_indexes, backend="eager", fullgraph=True)
    for a, b in zip(via_op, expected, strict=True):
        assert torch.equal(a, b)
    ref = sparse.convert_vertical_slash_indexes(*args[:4], context, M, N, causal)
    for a, b, c in zip(plain, compiled(*args[:4], context, M, N, causal), ref, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)


def good_args():
    return {
        "q_seqlens": i32([10, 7]),
        "kv_seqlens": i32([12, 7]),
        "vertical_indexes": i32([[[0, 3, 5]], [[1, 2, 6]]]),
        "slash_indexes": i32([[[6, 2, 0]], [[4, 1, 0]]]),
        "vertical_indices_count": i32([2]),
        "slash_indices_count": i32([3]),
        "context_size": 10,
        "block_size_M": 4,
        "block_size_N": 4,
        "causal": True,
    }


def with_value(name, index, value):
    def edit(args):
        args[name] = args[name].clone()
        args[name][index] = value

    return edit


def setter(name, value):
    return lambda args: args.__setitem__(name, value)


BAD = [
    (setter("q_seqlens", torch.tensor([10, 7])), TypeError, "q_seqlens"),
    (setter("q_seqlens", i32([10])), ValueError, "q_seqlens"),
    (setter("kv_seqlens", i32([[12, 7]])), ValueError, "kv_seqlens"),
    (setter("vertical_indexes", torch.zeros(2, 1, 3)), TypeError, "vertical_indexes"),
    (setter("vertical_indexes", i32([[[0, 3, 5]]])), ValueError, "vertical_indexes"),
    (setter("vertical_indexes", torch.zeros(2, 1, 0, dtype=torch.int32)), ValueError, "vertical_indexes"),
    (setter("slash_indexes", i32([6, 2, 0])), ValueError, "slash_indexes"),
    (setter("slash_indexes", torch.zeros(2, 1, 0, dtype=torch.int32)), ValueError, "slash_indexes"),
    (setter("context_size", -1), ValueError, "context_size"),
    (setter("context_size", 10.0), TypeError, "context_size"),
    (setter("block_size_M", 0), ValueError, "block_size_M"),
    (setter("block_size_N", 0), ValueError, "block_size_N"),
    (setter("block_size_N", 2), ValueError, "block_size_N"),
    (setter("causal", 1), TypeError, "causal"),
    (setter("q_seqlens", torch.zeros(2, dtype=torch.int32, device="meta")), ValueError, "kv_seqlens"),
    (with_value("q_seqlens", 0, 13), ValueError, "q_seqlens"),
    (with_value("q_seqlens", 1, -1), ValueError, "q_seqlens"),
    (with_value("kv_seqlens", 0, -2), ValueError, "kv_seqlens"),
    (with_value("vertical_indexes", (0, 0, 0), -1), ValueError, "vertical_indexes"),
    (with_value("vertical_indexes", (1, 0, 1), 0), ValueError, "ascending"),
    (with_value("slash_indexes", (0, 0, 2), -1), ValueError, "slash_indexes"),
    (with_value("slash_indexes", (1, 0, 0), 0), ValueError, "descending"),
]
BAD_MERGEHEAD = [
    (setter("vertical_indices_count", i32([2, 2])), ValueError, "vertical_indices_count"),
    (setter("slash_indices_count", torch.tensor([3])), TypeError, "slash_indices_count"),
    (with_value("vertical_indices_count", 0, 0), ValueError, "vertical_indices_count"),
    (with_value("slash_indices_count", 0, 4), ValueError, "slash_indices_count"),
]


def call(args, mergehead):
    if mergehead:
        return sparse.convert_vertical_slash_indexes_mergehead(**args)
    args = {k: v for k, v in args.items() if not k.endswith("_count")}
    return sparse.convert_vertical_slash_indexes(**args)


BAD_CASES = [(*bad, False) for bad in BAD] + [(*bad, True) for bad in BAD + BAD_MERGEHEAD]


@pytest.mark.parametrize(("edit", "error", "match", "mergehead"), BAD_CASES)
def test_bad_input(edit, error, match, mergehead):
    args = good_args()
    call(args, mergehead)  # the unedited arguments are fine
    edit(args)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    with pytest.raises(error, match=match):
        call(args, mergehead)
    for name, value in before.items():
        assert torch.equal(args[name], value)


def test_bad_input_mergehead_only_values():
    """Padding past the per-head counts is never validated (nor read); inside it, order is."""
    args = good_args()
    args["vertical_indexes"] = i32([[[0, 3, -7]], [[1, 2, -9]]])  # third vertical is padding (count 2)
    call(args, True)
    with pytest.raises(ValueError, match="vertical_indexes"):
        call(args, False)


def test_non_causal_vertical_past_kv_rejected():
    args = good_args()
    args["causal"] = False
    call(args, False)
    args["vertical_indexes"] = i32([[[0, 3, 12]], [[1, 2, 6]]])
    with pytest.raises(ValueError, match="kv_seqlens"):
        call(args, False)

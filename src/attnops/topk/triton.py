"""Triton ``top_k_per_row_prefill`` / ``top_k_per_row_decode``: exact per-row top-k without sorting.

Values are compared through an int32 key with the order of the fp32 bit patterns (the
reference's ``_ordered_key``: ``-0.0`` just below ``+0.0``, a NaN with a clear sign bit above
``+inf``, one with the sign bit set below ``-inf``). Selection is a threshold search over that
key: a bisection of the int32 range in which each probe counts the keys at or above it (one
compare and one add per key held in registers, then a block reduction; about 20 probes for
random data). It never relies on distinct values: when the k-th key is shared, the keys above
it are taken and then just enough of the equal ones, numbered by a prefix sum, so an index
never repeats. In throughput-bound finish launches the search stops earlier, once at most
``_PAIR_CAP`` keys lie between its bounds: the emission writes those few to a per-row scratch
and :func:`_resolve_pairs` ranks them against each other (ties by slot), so again no index
repeats. Prefix sums of launches that read tiles number the lanes column by column of a
``[rows, lanes of one register row]`` view (:func:`_exclusive_prefix`): most of the scan stays
inside each thread.

Two launches, with grids and scratch sizes from shapes only and no host synchronisation
(CUDA-graph safe):

1. :func:`_chunk_kernel`, launched only when ``logits`` is wider than ``_SHORT_ROW`` columns:
   grid ``(num_rows, cdiv(width, _CHUNK))``; program ``(r, c)`` takes columns
   ``[c * _CHUNK, (c + 1) * _CHUNK)`` of row ``r`` if the row is longer than ``_SHORT_ROW``.
   It searches its keys, in registers, for a threshold keeping at least its fair share of the
   row's top k plus ``_SLACK_SIGMAS`` binomial standard deviations and ``_MIN_FILL`` of its
   ``_CANDIDATES // num_chunks`` slots, at most all of them, and writes those keys and columns
   to its slots of the row's candidate buffer (int32 ``[num_rows, _CANDIDATES]`` each), with how
   many it wrote and the largest key it left out (int32 ``[num_rows, chunk programs, 2]``).
2. :func:`_finish_kernel`, one program per row. A row of ``n <= k`` columns gets
   ``0..n-1, -1...``; a row of at most ``_SHORT_ROW`` columns is searched in registers. A longer
   row is searched among its candidates, in registers. A chunk that left out a key above the
   k-th candidate (more top keys than slots: the top of the row gathered in a few chunks) is
   searched again over all its columns, read from the logits once per probe. A row with more
   chunks than there were programs, or fewer candidates than k (k above ``_CANDIDATES``), is
   searched over all its columns the same way: slow, but exact for any data. Scratch after the
   chunk kernel's outputs: int32 ``[num_rows, 2, PAIR_CAP]`` for the pairs (:func:`_pair_buffer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from attnops._common.backend import sm_count, triton_interpreted
from attnops._common.fastpath import (
    MAX_ENTRIES,
    UNALIGNED,
    UNBOUND,
    UNPLANNED,
    Launcher,
    cdiv,
    current_stream,
    next_power_of_2,
)
from attnops.topk.api import _decode_dispatcher, _prefill_dispatcher
from attnops.topk.reference import storage_elements

# Rows of at most this many columns are selected by one program holding the row in registers.
_SHORT_ROW = 8192
# Columns per program of the chunk kernel (held in registers).
_CHUNK = 8192
# Candidate slots per long row, shared out evenly among its chunks; also the finish kernel's
# register tile for the candidates. The scratch is num_rows * _CANDIDATES * 8 bytes.
_CANDIDATES = 4096
# Keys per step wherever keys are read from memory in tiles: the repair and fallback searches,
# the failing chunks' columns, the 0..n-1, -1 rows.
_TILE = 1024
# A chunk keeps at least share + _SLACK_SIGMAS * sqrt(share) + _SLACK_MIN keys, where
# share = k * chunk length / row length: its expected part of the top k for data in random order.
_SLACK_SIGMAS = 6.0
_SLACK_MIN = 16
# ... and at least this fraction of its slots.
_MIN_FILL = 0.75
# 8 warps hold an 8192-key register tile as 32 keys a thread: about 56 (chunk) and 64 (finish)
# registers a thread on sm_90, so 4 programs fit on an SM and hide each other's reductions.
_CHUNK_WARPS = 8
_FINISH_WARPS = 8
# Latency-bound chunk launches (results from registers) take 16 warps: shorter per-thread work
# before each reduction (H200, graph replay: 1x32768 26.2 -> 22.2 us, 1x131072 28.0 -> 25.3 us);
# throughput-bound ones lost with 16 (128x131072 113 -> 145 us). Throughput-bound finish launches
# take 4 warps (prefill 4096x8192 216.4 -> 206.9 us, 4096x32768 983 -> 964 us); latency-bound
# ones lost with 4 (1x32768 26.2 -> 46.0 us).
_LATENCY_CHUNK_WARPS = 16
_THROUGHPUT_FINISH_WARPS = 4
# Launches of at most this many programs per SM write their results from the keys held in
# registers (one prefix sum over the tile: fastest while programs are latency-bound, at about
# twice the registers); larger launches read the keys again in tiles of _TILE, which keeps more
# programs resident per SM (H200, graph replay: 4096 prefill rows of 8192 took 278 us that way,
# 409 us from registers; one row of 8192 19.4 us from tiles, 16.6 us from registers).
_REGISTER_PROGRAMS_PER_SM = 1
# Decode rows of at most _SHORT_ROW columns load their keys before their length arrives (a decode
# row's address does not depend on it), so the two loads overlap (H200, graph replay: one row of
# 8192 16.7 -> 14.8 us, 128 rows 19.0 -> 17.5 us). Early loads in the chunk kernel lost on the
# launches of many programs (128x131072 141.0 -> 144.5 us) and gained nothing on the others.
_EARLY_DECODE_LOADS = True
# CUDA's limit on the second grid dimension.
_MAX_GRID_Y = 65535
# Searches over rows and chunks first probe the values' mean + z * std +- _GUIDE_WIDTH * std, z
# the normal quantile of the share of keys wanted: for data in a bell shape that brackets the
# threshold in ~2^21 of the 2^32 keys, ~10 fewer probes (block reductions, ~0.34 us each). Other
# data costs at most those two probes and the moments' reduction more; 0 turns the guidance off.
# H200, graph replay, normal logits, off -> 0.0625: one row of 8192 14.8 -> 12.4 us, 128 rows
# 17.4 -> 15.1 us, 128x131072 142.2 -> 113.1 us, prefill 258.8 -> 216.6 and 1148 -> 982 us
# (0.04 within 2 %; 0.125 and 0.25 slower); exponential and bimodal rows of 8192 within 0.4 us
# of unguided, bimodal rows of 131072 1.9 us slower (docs/performance.md, version 6).
_GUIDE_WIDTH = tl.constexpr(0.0625)
# Throughput-bound finish launches (those writing from tiles) stop their searches once at most
# _PAIR_CAP keys lie between the bounds (the normal-fit bracket holds ~4 % of a row, halved by
# each probe: ~5 probes fewer) and rank those few against each other (_PAIR_CAP^2 comparisons
# after a round trip through scratch); 0 bisects to one key value. H100, graph replay, base ->
# pairs (prefix sums in lane order): prefill 4096x8192 207.2 -> 196.5 us; with the grouped prefix
# sums below, pairs of 16 / 32 / 64: 180.1 / 175.1 / 178.3 us (4096x32768 973.5 / 970.7 / 980.5).
# Latency-bound launches lost with pairs (one row of 8192 13.6 -> 15.2 us, of 32768 29.5 -> 37.3,
# 128x131072 119.2 -> 128.8: the round trip and the extra per-key selects), so they keep none.
_PAIR_CAP = 32
# Keys a thread holds side by side in a register row (16-byte loads of fp32): prefix sums of
# launches writing from tiles number the lanes of a [rows, _SCAN_VECTOR * 32 * warps] view column
# by column (_exclusive_prefix; sm_90 SASS of an 8192-lane scan at 4 warps: 2912 -> 1024
# instructions, 320 -> 20 shuffles); 0 numbers them in lane order. H100, graph replay, pairs off:
# prefill 4096x8192 207.6 -> 196.4 us, 4096x32768 988.4 -> 978.6 (1024-lane tiles of 8-warp
# chunk programs are one register row: unchanged). Launches writing from registers keep lane
# order (not measured apart from the other changes there).
_SCAN_VECTOR = 4
# Keys span the whole int32 range; lanes outside the data hold _KEY_MIN, which no probe counts.
_KEY_MIN = tl.constexpr(-(2**31))
_KEY_MAX = tl.constexpr(2**31 - 1)


@triton.jit
def _row_span(
    row,
    starts_ptr,
    ends_ptr,
    lens_ptr,
    bounds_stride,
    next_n,
    stride0,
    stride1,
    DECODE: tl.constexpr,
    PER_ROW_LENS: tl.constexpr,
):
    """``(offset, n)``: int64 element offset of row ``row``'s first column from ``logits``, int32 length.

    Prefill rows cover ``[starts[r], ends[r])``; decode rows start at column 0 and are
    ``lens[r]`` long (``PER_ROW_LENS``) or ``lens[r // next_n] - next_n + r % next_n + 1``,
    at least 0.
    """
    offset = row.to(tl.int64) * stride0
    if DECODE:
        if PER_ROW_LENS:
            n = tl.load(lens_ptr + row * bounds_stride)
        else:
            n = tl.load(lens_ptr + (row // next_n) * bounds_stride) - next_n + row % next_n + 1
        n = tl.maximum(n, 0)
    else:
        start = tl.load(starts_ptr + row * bounds_stride)
        n = tl.load(ends_ptr + row * bounds_stride) - start
        offset += start.to(tl.int64) * stride1
    return offset, n


@triton.jit
def _load_keys(row_ptr, cols, valid, stride1, WIDE: tl.constexpr):
    """int32 order keys of the fp32 values at ``row_ptr + cols * stride1``; ``_KEY_MIN`` where not ``valid``.

    ``WIDE`` computes the column offsets in int64 (storages of 2^31 elements or more).
    """
    offsets = cols.to(tl.int64) * stride1 if WIDE else cols * stride1
    bits = tl.load(row_ptr + offsets, mask=valid, other=0.0).to(tl.int32, bitcast=True)
    # A negative float grows in magnitude with its bit pattern: flip its magnitude bits.
    keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return tl.where(valid, keys, _KEY_MIN)


@triton.jit
def _early_keys(logits_ptr, row, stride0, stride1, available, COUNT: tl.constexpr, WIDE: tl.constexpr):
    """Keys of decode row ``row``'s first ``COUNT`` columns, loaded before the row's length.

    A decode row starts at element ``row * stride0``, so its loads need not wait for its length:
    columns inside the logits storage (``available`` elements) are read, ``_KEY_MIN`` past it. The
    caller masks the columns past the length once it is known.
    """
    row_offset = row.to(tl.int64) * stride0
    cols = tl.arange(0, COUNT)
    inside = cols.to(tl.int64) * stride1 < available - row_offset
    return _load_keys(logits_ptr + row_offset, cols, inside, stride1, WIDE)


@triton.jit
def _search_start(total, need_hi):
    """Initial ``(lo, hi, count_hi, count_lo)`` of a search over ``total`` keys (see :func:`_search`)."""
    lo = total.to(tl.int64) * 0 + _KEY_MIN
    # With at most need_hi keys, all are taken (the probe below every key).
    take_all = total <= need_hi
    hi = tl.where(take_all, lo, -lo)
    count_hi = tl.where(take_all, total, 0)
    return lo, hi, count_hi, total + 0


@triton.jit
def _narrow(lo, hi, count_hi, count_lo, mid, count, need_lo, need_hi):
    """One bisection step: ``count`` keys are ``>= mid``; returns the new ``(lo, hi, count_hi, count_lo)``."""
    above = count > need_hi
    moves_lo = above | (count >= need_lo)
    lo = tl.where(moves_lo, mid, lo)
    count_lo = tl.where(moves_lo, count, count_lo)
    # An acceptable count ends the search with lo == hi == mid.
    hi = tl.where(above, hi, mid)
    count_hi = tl.where(above, count_hi, count)
    return lo, hi, count_hi, count_lo


@triton.jit
def _add_pairs(a, a2, b, b2):
    return a + b, a2 + b2


@triton.jit
def _upper_normal_quantile(q):
    """``z`` with ``P(N(0, 1) > z) = q`` for ``0 < q < 1`` (Abramowitz & Stegun 26.2.23, error < 5e-4)."""
    tail = tl.minimum(q, 1.0 - q)
    t = tl.sqrt(-2.0 * tl.log(tail))
    z = t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308)))
    return tl.where(q <= 0.5, z, -z)


@triton.jit
def _key_of(value):
    """The int32 order key of an fp32 value (as :func:`_load_keys`)."""
    bits = value.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _probe(keys, lo, hi, count_hi, count_lo, mid, use, need_lo, need_hi):
    """One probe at ``mid`` when ``use`` and ``lo < mid < hi``; otherwise the state is kept."""
    inside = use & (mid > lo) & (mid < hi)
    count = tl.sum((keys >= mid.to(tl.int32)).to(tl.int32), axis=0)
    new_lo, new_hi, new_count_hi, new_count_lo = _narrow(lo, hi, count_hi, count_lo, mid, count, need_lo, need_hi)
    return (
        tl.where(inside, new_lo, lo), tl.where(inside, new_hi, hi), tl.where(inside, new_count_hi, count_hi),
        tl.where(inside, new_count_lo, count_lo),
    )  # fmt: skip


@triton.jit
def _guide(keys, total, need_lo, need_hi, lo, hi, count_hi, count_lo):
    """Two probes around the threshold a normal fit of the keys' values predicts (see ``_GUIDE_WIDTH``)."""
    # Key _KEY_MIN (padding lanes; also the bits of one NaN) carries no value.
    bits = keys ^ ((keys >> 31) & 0x7FFFFFFF)
    values = tl.where(keys > _KEY_MIN, bits.to(tl.float32, bitcast=True), 0.0)
    total_sum, total_sq = tl.reduce((values, values * values), 0, _add_pairs)
    mean = total_sum / total
    std = tl.sqrt(tl.maximum(total_sq / total - mean * mean, 0.0))
    # need_lo and need_hi may be constexprs (Triton specialises an integer argument of 1).
    wanted = (need_lo + need_hi) * 0.5
    guess = mean + _upper_normal_quantile(wanted / total) * std
    width = _GUIDE_WIDTH * std
    # Infinite or NaN values (or a row of one value) leave the plain bisection.
    use = (width > 0) & (guess - width > -float("inf")) & (guess + width < float("inf"))
    lo, hi, count_hi, count_lo = _probe(
        keys, lo, hi, count_hi, count_lo, _key_of(guess - width).to(tl.int64), use, need_lo, need_hi
    )
    lo, hi, count_hi, count_lo = _probe(
        keys, lo, hi, count_hi, count_lo, _key_of(guess + width).to(tl.int64), use, need_lo, need_hi
    )
    return lo, hi, count_hi, count_lo


@triton.jit
def _bisect(keys, lo, hi, count_hi, count_lo, need_lo, need_hi, PAIR_CAP: tl.constexpr):
    """Bisect ``(lo, hi)`` until it holds one key value, or (``PAIR_CAP > 0``) at most ``PAIR_CAP`` keys.

    The state is :func:`_search`'s; returns it narrowed (``count_lo`` only with ``PAIR_CAP > 0``:
    without pairs the loop carries one value less, as before pairs existed).
    """
    if PAIR_CAP > 0:
        while (hi - lo > 1) & (count_lo - count_hi > PAIR_CAP):
            mid = (lo + hi) >> 1
            count = tl.sum((keys >= mid.to(tl.int32)).to(tl.int32), axis=0)
            lo, hi, count_hi, count_lo = _narrow(lo, hi, count_hi, count_lo, mid, count, need_lo, need_hi)
    else:
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            count = tl.sum((keys >= mid.to(tl.int32)).to(tl.int32), axis=0)
            lo, hi, count_hi, _ = _narrow(lo, hi, count_hi, count_lo, mid, count, need_lo, need_hi)
    return lo, hi, count_hi, count_lo


@triton.jit
def _search(keys, total, need_lo, need_hi, GUIDED: tl.constexpr, PAIR_CAP: tl.constexpr):
    """Bisect the int32 key range for a threshold taking between ``need_lo`` and ``need_hi`` keys.

    ``keys``: int32 tile whose lanes outside the data hold ``_KEY_MIN``; ``total``: the number
    of data keys, ``1 <= need_lo <= min(need_hi, total)``. Returns int64 ``lo``, ``hi`` and
    int32 ``count_hi``, ``count_lo``: the numbers of keys ``>= hi`` and ``>= lo``. Either
    ``lo == hi`` and the keys ``>= hi`` are the answer, or fewer than ``need_lo`` keys are
    ``>= hi`` and more than ``need_hi`` are ``>= lo``, and the answer is the keys ``>= hi`` and
    the ``need_hi - count_hi`` largest keys of ``[lo, hi)``. That range holds one key value
    (``hi == lo + 1``: any of them will do, see :func:`_rank`) or, with ``PAIR_CAP > 0``, at
    most ``PAIR_CAP`` keys (ranked among themselves, see :func:`_resolve_pairs`).
    """
    lo, hi, count_hi, count_lo = _search_start(total, need_hi)
    if GUIDED and _GUIDE_WIDTH > 0:
        lo, hi, count_hi, count_lo = _guide(keys, total, need_lo, need_hi, lo, hi, count_hi, count_lo)
    return _bisect(keys, lo, hi, count_hi, count_lo, need_lo, need_hi, PAIR_CAP)


@triton.jit
def _pair_limit(count_hi, count_lo, PAIR_CAP: tl.constexpr):
    """int32 ``PAIR_CAP`` when a search result's keys in ``[lo, hi)`` are few enough to be
    ranked among themselves (:func:`_resolve_pairs`), else 0 (then they are all equal)."""
    return tl.where(count_lo - count_hi <= PAIR_CAP, PAIR_CAP, 0).to(tl.int32)


@triton.jit
def _exclusive_prefix(flags, GROUP: tl.constexpr):
    """int32 ``[N]``: for each lane, the sum of ``flags`` over the lanes numbered before it.

    With ``0 < GROUP < N`` the lanes are numbered as ``[N // GROUP, GROUP]`` in column order
    (lane ``r * GROUP + c`` after all of columns ``< c``): with ``GROUP`` the lanes of one
    register row of the launch's layout, the scan along a column stays in each thread and one
    ``GROUP``-wide scan remains, instead of a block-wide scan per register row. Any order
    numbers the taken keys: a row's output order is free. ``GROUP == 0``: lane order.
    """
    N: tl.constexpr = flags.shape[0]
    if GROUP == 0 or N <= GROUP:
        before = tl.cumsum(flags, axis=0) - flags
    else:
        grid = tl.reshape(flags, [N // GROUP, GROUP])
        totals = tl.sum(grid, axis=0)
        columns_before = tl.cumsum(totals, axis=0) - totals
        before = tl.reshape(tl.cumsum(grid, axis=0) - grid + columns_before[None, :], [N])
    return before


@triton.jit
def _rank(
    keys, valid, lo, hi, count_hi, quota, pair_limit, taken_above, taken_equal, GROUP: tl.constexpr,
    PAIR_CAP: tl.constexpr,
):  # fmt: skip
    """``(take, pair, position, taken_above, taken_equal)`` for a tile of keys and a search result (:func:`_search`).

    Keys ``>= hi`` are taken, at position ``taken_above + (their rank among such keys in the
    tile)``. Keys in ``[lo, hi)`` are numbered ``taken_equal + (their rank among them in the
    tile)``: with ``pair_limit > 0`` (see :func:`_pair_limit`) each is a ``pair`` with its number
    as position (a slot of :func:`_resolve_pairs`); otherwise (all equal) the first ``quota`` are
    taken at ``count_hi`` + their number. ``taken_above``/``taken_equal`` count the keys of the
    row's earlier tiles and are returned updated. Tiles hold fewer than 2^16 lanes; ``GROUP``:
    see :func:`_exclusive_prefix`. With ``PAIR_CAP == 0`` there are no pairs (``pair_limit`` is
    0) and the per-key selects of pairs are not compiled (~3 % of the emission's instructions).
    """
    above = valid & (keys >= hi)
    equal = valid & (keys >= lo) & (keys < hi)
    # One prefix sum numbers both kinds: above in the low 16 bits, equal in the high ones.
    flags = above.to(tl.int32) + (equal.to(tl.int32) << 16)
    before = _exclusive_prefix(flags, GROUP)
    rank_equal = taken_equal + (before >> 16)
    if PAIR_CAP > 0:
        pair = equal & (rank_equal < pair_limit)
        take = above | (equal & (rank_equal < tl.where(pair_limit > 0, 0, quota)))
        position = tl.where(above, taken_above + (before & 0xFFFF), tl.where(pair, rank_equal, count_hi + rank_equal))
    else:
        pair = tl.zeros_like(above)
        take = above | (equal & (rank_equal < quota))
        position = tl.where(above, taken_above + (before & 0xFFFF), count_hi + rank_equal)
    tile = tl.sum(flags, axis=0)
    return take, pair, position, taken_above + (tile & 0xFFFF), taken_equal + (tile >> 16)


@triton.jit
def _store_pairs(pairs_row, pair, position, keys, cols, PAIR_CAP: tl.constexpr):
    """Write the ``pair`` lanes' keys and columns to their slots: keys at ``pairs_row[position]``,
    columns at ``pairs_row[PAIR_CAP + position]`` (int32 ``[2, PAIR_CAP]`` a row)."""
    if PAIR_CAP > 0:
        tl.store(pairs_row + position, keys, mask=pair)
        tl.store(pairs_row + PAIR_CAP + position, cols, mask=pair)


@triton.jit
def _resolve_pairs(pairs_row, count_hi, count_lo, pair_limit, quota, out_row, out_stride1, PAIR_CAP: tl.constexpr):
    """Take the ``quota`` largest of the ``count_lo - count_hi`` keys the emission wrote to
    ``pairs_row`` (:func:`_store_pairs`; only when ``pair_limit > 0``) at ``out`` positions
    ``count_hi + rank``.

    A key's rank is the number of keys above it plus the number of equal ones in lower slots:
    a bijection onto ``0..count - 1``, so equal keys never share a position. ``PAIR_CAP^2``
    comparisons, no prefix sum.
    """
    count = count_lo - count_hi
    if PAIR_CAP > 0:  # noqa: SIM102 - a constexpr guard: arange(0, 0) must not be compiled
        if (pair_limit > 0) & (count > 0):
            # The slots were written by other threads of this program.
            tl.debug_barrier()
            slots = tl.arange(0, PAIR_CAP)
            present = slots < count
            keys = tl.load(pairs_row + slots, mask=present, other=_KEY_MIN)
            cols = tl.load(pairs_row + PAIR_CAP + slots, mask=present)
            mine, other = keys[:, None], keys[None, :]
            beaten = (other > mine) | ((other == mine) & (slots[None, :] < slots[:, None]))
            rank = tl.sum((beaten & present[None, :]).to(tl.int32), axis=1)
            take = present & (rank < quota)
            tl.store(out_row + (count_hi + rank).to(tl.int64) * out_stride1, cols, mask=take)


@triton.jit
def _emit_tiles(
    row_ptr, start, stop, stride1, lo, hi, count_hi, quota, pair_limit, taken_above, taken_equal, out_cols, out_keys,
    out_stride, pairs_row, TILE: tl.constexpr, WIDE: tl.constexpr, WRITE_KEYS: tl.constexpr, PAIR_CAP: tl.constexpr,
    GROUP: tl.constexpr,
):  # fmt: skip
    """Write the columns in ``[start, stop)`` that a search result takes, reading them in tiles of ``TILE``.

    See :func:`_rank` for ``quota``, ``pair_limit`` and the running counts
    ``taken_above``/``taken_equal`` (returned updated). A column taken at position ``p`` goes to
    ``out_cols[p * out_stride]``, with ``WRITE_KEYS`` its key to ``out_keys[p * out_stride]``;
    pairs go to ``pairs_row`` (:func:`_store_pairs`).
    """
    for first in range(start, stop, TILE):
        cols = tl.max_contiguous(first + tl.arange(0, TILE), 1)
        valid = cols < stop
        keys = _load_keys(row_ptr, cols, valid, stride1, WIDE)
        take, pair, position, taken_above, taken_equal = _rank(
            keys, valid, lo, hi, count_hi, quota, pair_limit, taken_above, taken_equal, GROUP, PAIR_CAP
        )
        offsets = position.to(tl.int64) * out_stride
        tl.store(out_cols + offsets, cols, mask=take)
        if WRITE_KEYS:
            tl.store(out_keys + offsets, keys, mask=take)
        _store_pairs(pairs_row, pair, position, keys, cols, PAIR_CAP)
    return taken_above, taken_equal


@triton.jit
def _select_streaming(
    row_ptr, n, stride1, k, out_row, out_stride1, TILE: tl.constexpr, WIDE: tl.constexpr, GROUP: tl.constexpr
):
    """Exact top-``k`` of a row of ``n > k`` columns, read from global memory once per bisection step."""
    lo, hi, count_hi, count_lo = _search_start(n, k)
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        probe = mid.to(tl.int32)
        # Per-lane counts, reduced once per step.
        counts = tl.zeros((TILE,), tl.int32)
        for first in range(0, n, TILE):
            cols = tl.max_contiguous(first + tl.arange(0, TILE), 1)
            keys = _load_keys(row_ptr, cols, cols < n, stride1, WIDE)
            counts += (keys >= probe).to(tl.int32)
        lo, hi, count_hi, count_lo = _narrow(lo, hi, count_hi, count_lo, mid, tl.sum(counts, axis=0), k, k)
    _emit_tiles(
        row_ptr, 0, n, stride1, lo, hi, count_hi, k - count_hi, n * 0, n * 0, n * 0, out_row, out_row, out_stride1,
        out_row, TILE, WIDE, False, 0, GROUP,
    )  # fmt: skip


@triton.jit
def _candidate_slots(info_row, slots, per_chunk, num_chunks):
    """``(written, left_out)`` for a long row's candidate ``slots``: whether a slot holds a candidate,
    and the largest key its chunk left out.

    Chunk ``c`` wrote the first of its slots ``[c * per_chunk, (c + 1) * per_chunk)``.
    """
    # slots // per_chunk through an fp32 reciprocal and one correction each way: an integer
    # division by a runtime value costs a long sequence and many registers per lane.
    chunk = (slots.to(tl.float32) * (1.0 / per_chunk)).to(tl.int32)
    chunk = tl.where(chunk * per_chunk > slots, chunk - 1, chunk)
    chunk = tl.where((chunk + 1) * per_chunk <= slots, chunk + 1, chunk)
    in_chunk = chunk < num_chunks
    written = tl.load(info_row + chunk * 2, mask=in_chunk, other=0)
    left_out = tl.load(info_row + chunk * 2 + 1, mask=in_chunk, other=_KEY_MIN)
    return in_chunk & (slots - chunk * per_chunk < written), left_out


@triton.jit
def _count_repair(
    row_ptr,
    stride1,
    n,
    probe,
    cand_keys_row,
    info_row,
    per_chunk,
    num_chunks,
    kth,
    CHUNK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    TILE: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Keys ``>= probe`` of a long row whose chunks' candidates cannot prove its selection.

    Counts the candidates of the chunks that left out no key above ``kth`` and all the columns
    of the other chunks, both read from memory (see :func:`_select_candidates`).
    """
    counts = tl.zeros((TILE,), tl.int32)
    for first in range(0, CANDIDATES, TILE):
        slots = tl.max_contiguous(first + tl.arange(0, TILE), 1)
        written, left_out = _candidate_slots(info_row, slots, per_chunk, num_chunks)
        valid = written & (left_out <= kth)
        keys = tl.load(cand_keys_row + slots, mask=valid, other=_KEY_MIN)
        counts += (keys >= probe).to(tl.int32)
    for chunk in range(0, num_chunks):
        if tl.load(info_row + chunk * 2 + 1) > kth:
            for first in range(chunk * CHUNK, tl.minimum(n, chunk * CHUNK + CHUNK), TILE):
                cols = tl.max_contiguous(first + tl.arange(0, TILE), 1)
                keys = _load_keys(row_ptr, cols, cols < n, stride1, WIDE)
                counts += (keys >= probe).to(tl.int32)
    return tl.sum(counts, axis=0)


@triton.jit
def _select_candidates(
    row_ptr,
    stride1,
    cand_keys_ptr,
    cand_cols_ptr,
    chunk_info_ptr,
    num_chunk_programs,
    row,
    n,
    k,
    out_row,
    out_stride1,
    pairs_row,
    CHUNK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    CHUNK_SLOTS: tl.constexpr,
    IN_REGISTERS: tl.constexpr,
    TILE: tl.constexpr,
    WIDE: tl.constexpr,
    PAIR_CAP: tl.constexpr,
    GROUP: tl.constexpr,
):
    """Top-``k`` of a long row from its chunks' candidates; int32 1 if written, 0 if there are too few.

    Returns 0, writing nothing, when the candidates are fewer than ``k`` or when the row has
    more chunks than the chunk kernel had programs. Otherwise the result is exact: let ``kth``
    be the k-th largest candidate. A chunk whose left-out keys are all ``<= kth`` holds no
    key above the row's k-th largest beyond its candidates (the row's k-th largest is at least
    ``kth``; left-out keys equal to it are ties). The chunks that left out larger keys (the top
    keys gathered in a few chunks, as in a sorted row) are searched again over all their
    columns, read from the logits once per bisection step, within ``[kth, largest left-out]``.
    When no chunk left out a key above the search's ``lo`` (a lower bound of ``kth``), the
    search may stop at ``PAIR_CAP`` keys in ``[lo, hi)`` (see :func:`_search`).
    """
    num_chunks = tl.cdiv(n, CHUNK)
    fits = num_chunks <= num_chunk_programs
    chunks = tl.arange(0, CHUNK_SLOTS)
    info_row = chunk_info_ptr + row.to(tl.int64) * num_chunk_programs * 2
    # A comparison with a bound, not an & with the scalar flag (the interpreter's & of a
    # tensor and a scalar mask is not a mask).
    present = chunks < tl.where(fits, num_chunks, 0)
    total = tl.sum(tl.load(info_row + chunks * 2, mask=present, other=0), axis=0)
    done = (fits & (total >= k)).to(tl.int32)
    if done != 0:
        per_chunk = CANDIDATES // num_chunks
        cand_row = row.to(tl.int64) * CANDIDATES
        slots = tl.arange(0, CANDIDATES)
        valid, slot_left_out = _candidate_slots(info_row, slots, per_chunk, num_chunks)
        keys = tl.load(cand_keys_ptr + cand_row + slots, mask=valid, other=_KEY_MIN)
        # Candidates are the top of their chunks, a tail no normal fit predicts.
        lo, hi, count_hi, count_lo = _search(keys, total, k, k, False, PAIR_CAP)
        pair_limit = _pair_limit(count_hi, count_lo, PAIR_CAP)
        left_out = tl.max(tl.load(info_row + chunks * 2 + 1, mask=present, other=_KEY_MIN), axis=0)
        # The k-th largest candidate is at least lo: chunks that left out no key above lo pass.
        kth = lo.to(tl.int32)
        if left_out > lo:
            lo, hi, count_hi, count_lo = _bisect(keys, lo, hi, count_hi, count_lo, k, k, 0)
            pair_limit = pair_limit * 0
            # The k-th largest candidate: lo, unless the search ended on a probe taking exactly k.
            kth = tl.where(lo == hi, tl.min(tl.where(valid & (keys >= hi), keys, _KEY_MAX), axis=0), lo).to(tl.int32)
            if left_out > kth:
                # The row's k-th largest lies in [kth, left_out]; every key above left_out is a candidate.
                count_hi = tl.sum((valid & (keys > left_out)).to(tl.int32), axis=0)
                lo = kth.to(tl.int64)
                hi = left_out.to(tl.int64) + 1
                while hi - lo > 1:
                    mid = (lo + hi) >> 1
                    count = _count_repair(
                        row_ptr, stride1, n, mid.to(tl.int32), cand_keys_ptr + cand_row, info_row, per_chunk,
                        num_chunks, kth, CHUNK, CANDIDATES, TILE, WIDE,
                    )  # fmt: skip
                    lo, hi, count_hi, count_lo = _narrow(lo, hi, count_hi, count_lo, mid, count, k, k)
        # Write the taken candidates of the chunks that passed, then the failing chunks' columns.
        taken_above = n * 0
        taken_equal = n * 0
        if IN_REGISTERS:
            passed = valid & (slot_left_out <= kth)
            take, pair, position, taken_above, taken_equal = _rank(
                keys, passed, lo, hi, count_hi, k - count_hi, pair_limit, 0, 0, GROUP, PAIR_CAP
            )
            cols = tl.load(cand_cols_ptr + cand_row + slots, mask=take | pair)
            tl.store(out_row + position.to(tl.int64) * out_stride1, cols, mask=take)
            _store_pairs(pairs_row, pair, position, keys, cols, PAIR_CAP)
        else:
            for first in range(0, CANDIDATES, TILE):
                tile_slots = tl.max_contiguous(first + tl.arange(0, TILE), 1)
                tile_written, tile_left_out = _candidate_slots(info_row, tile_slots, per_chunk, num_chunks)
                tile_valid = tile_written & (tile_left_out <= kth)
                tile_keys = tl.load(cand_keys_ptr + cand_row + tile_slots, mask=tile_valid, other=_KEY_MIN)
                tile_take, tile_pair, tile_position, taken_above, taken_equal = _rank(
                    tile_keys,
                    tile_valid,
                    lo,
                    hi,
                    count_hi,
                    k - count_hi,
                    pair_limit,
                    taken_above,
                    taken_equal,
                    GROUP,
                    PAIR_CAP,
                )
                cols = tl.load(cand_cols_ptr + cand_row + tile_slots, mask=tile_take | tile_pair)
                tl.store(out_row + tile_position.to(tl.int64) * out_stride1, cols, mask=tile_take)
                _store_pairs(pairs_row, tile_pair, tile_position, tile_keys, cols, PAIR_CAP)
        for chunk in range(0, num_chunks):
            if tl.load(info_row + chunk * 2 + 1) > kth:
                # Only after the full bisection above (pair_limit 0).
                taken_above, taken_equal = _emit_tiles(
                    row_ptr, chunk * CHUNK, tl.minimum(n, chunk * CHUNK + CHUNK), stride1, lo, hi, count_hi,
                    k - count_hi, pair_limit, taken_above, taken_equal, out_row, out_row, out_stride1, pairs_row,
                    TILE, WIDE, False, 0, GROUP,
                )  # fmt: skip
        _resolve_pairs(pairs_row, count_hi, count_lo, pair_limit, k - count_hi, out_row, out_stride1, PAIR_CAP)
    return done


@triton.jit
def _candidate_buffers(scratch_ptr, CANDIDATES: tl.constexpr):
    """The chunk kernel's outputs, carved from one int32 scratch buffer (one allocation a call):
    candidate keys and columns ``[num_rows, CANDIDATES]`` each, then the chunk info; ``num_rows``
    is the launch's first grid dimension."""
    size = tl.num_programs(0).to(tl.int64) * CANDIDATES
    return scratch_ptr, scratch_ptr + size, scratch_ptr + 2 * size


@triton.jit
def _pair_buffer(
    scratch_ptr, num_chunk_programs, HAS_CANDIDATES: tl.constexpr, CANDIDATES: tl.constexpr, PAIR_CAP: tl.constexpr
):
    """Row ``program_id(0)``'s int32 ``[2, PAIR_CAP]`` slots of :func:`_store_pairs`, carved from the
    scratch after the chunk kernel's outputs (see :func:`_candidate_buffers`)."""
    rows = tl.num_programs(0).to(tl.int64)
    first = rows * (2 * CANDIDATES + 2 * num_chunk_programs) if HAS_CANDIDATES else rows * 0
    return scratch_ptr + first + tl.program_id(0).to(tl.int64) * (2 * PAIR_CAP)


@triton.jit
def _chunk_kernel(
    logits_ptr,
    starts_ptr,
    ends_ptr,
    lens_ptr,
    scratch_ptr,
    bounds_stride,
    next_n,
    stride0,
    stride1,
    k,
    DECODE: tl.constexpr,
    PER_ROW_LENS: tl.constexpr,
    WIDE: tl.constexpr,
    SHORT_ROW: tl.constexpr,
    CHUNK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    SLACK_SIGMAS: tl.constexpr,
    SLACK_MIN: tl.constexpr,
    MIN_FILL: tl.constexpr,
    IN_REGISTERS: tl.constexpr,
    TILE: tl.constexpr,
    SCAN_GROUP: tl.constexpr,
):
    """Candidates of one ``CHUNK``-column chunk of a row longer than ``SHORT_ROW``.

    Writes ``cand_keys``/``cand_cols`` (int32 ``[num_rows, CANDIDATES]`` in ``scratch``, see
    :func:`_candidate_buffers`) at the chunk's slots
    ``[c * per_chunk, c * per_chunk + written)``, ``per_chunk = CANDIDATES // num_chunks``, and
    ``chunk_info[r, c] = (written, bound)`` (int32 ``[num_rows, G, 2]``): no key left out is above
    ``bound`` (``_KEY_MIN`` when none is left out).
    """
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cand_keys_ptr, cand_cols_ptr, chunk_info_ptr = _candidate_buffers(scratch_ptr, CANDIDATES)
    offset, n = _row_span(
        row, starts_ptr, ends_ptr, lens_ptr, bounds_stride, next_n, stride0, stride1, DECODE, PER_ROW_LENS
    )
    num_chunks = tl.cdiv(n, CHUNK)
    if (n > SHORT_ROW) & (chunk < num_chunks) & (num_chunks <= tl.num_programs(1)):
        cols = chunk * CHUNK + tl.arange(0, CHUNK)
        valid = cols < n
        keys = _load_keys(logits_ptr + offset, cols, valid, stride1, WIDE)
        length = tl.minimum(n - chunk * CHUNK, CHUNK)
        per_chunk = CANDIDATES // num_chunks
        share = length.to(tl.float32) * k / n
        need_lo = (share + SLACK_SIGMAS * tl.sqrt(share)).to(tl.int32) + 1 + SLACK_MIN
        # Filling most slots costs the search about one more step and keeps the candidates
        # exact for more skewed rows (such as most keys -inf and the rest gathered in one chunk).
        need_lo = tl.maximum(need_lo, (per_chunk * MIN_FILL).to(tl.int32))
        need_lo = tl.minimum(tl.minimum(need_lo, per_chunk), length)
        lo, hi, count_hi, _ = _search(keys, length, need_lo, per_chunk, True, 0)
        chunk_slots = row.to(tl.int64) * CANDIDATES + chunk * per_chunk
        if IN_REGISTERS:
            take, _, position, _, _ = _rank(
                keys, valid, lo, hi, count_hi, per_chunk - count_hi, n * 0, 0, 0, SCAN_GROUP, 0
            )
            tl.store(cand_keys_ptr + chunk_slots + position, keys, mask=take)
            tl.store(cand_cols_ptr + chunk_slots + position, cols, mask=take)
        else:
            _emit_tiles(
                logits_ptr + offset, chunk * CHUNK, chunk * CHUNK + length, stride1, lo, hi, count_hi,
                per_chunk - count_hi, n * 0, n * 0, n * 0, cand_cols_ptr + chunk_slots, cand_keys_ptr + chunk_slots, 1,
                cand_keys_ptr, TILE, WIDE, True, 0, SCAN_GROUP,
            )  # fmt: skip
        accepted = lo == hi
        info = chunk_info_ptr + (row.to(tl.int64) * tl.num_programs(1) + chunk) * 2
        tl.store(info, tl.where(accepted, count_hi, per_chunk))
        # An accepted threshold left out only keys below it; a cut leaves out keys equal to lo.
        left_out = tl.where(accepted, tl.maximum(lo - 1, _KEY_MIN), lo)
        tl.store(info + 1, left_out.to(tl.int32))


# The logits storage's size changes with every batch of rows: not specialised on, so that a new
# batch size reuses the compiled kernel (its integer width is the plan's WIDE).
@triton.jit(do_not_specialize=["available"])
def _finish_kernel(
    logits_ptr,
    starts_ptr,
    ends_ptr,
    lens_ptr,
    out_ptr,
    scratch_ptr,
    bounds_stride,
    next_n,
    stride0,
    stride1,
    k,
    available,
    out_stride0,
    out_stride1,
    num_chunk_programs,
    DECODE: tl.constexpr,
    PER_ROW_LENS: tl.constexpr,
    WIDE: tl.constexpr,
    EARLY: tl.constexpr,
    SHORT_ROW: tl.constexpr,
    CHUNK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    CHUNK_SLOTS: tl.constexpr,
    HAS_CANDIDATES: tl.constexpr,
    IN_REGISTERS: tl.constexpr,
    TILE: tl.constexpr,
    PAIR_CAP: tl.constexpr,
    SCAN_GROUP: tl.constexpr,
):
    """Writes ``out[r, :k]`` (int32, strides ``out_stride0/1``) for row ``r = program_id(0)``."""
    row = tl.program_id(0)
    pairs_row = _pair_buffer(scratch_ptr, num_chunk_programs, HAS_CANDIDATES, CANDIDATES, PAIR_CAP)
    if EARLY:
        early = _early_keys(logits_ptr, row, stride0, stride1, available, SHORT_ROW, WIDE)
    offset, n = _row_span(
        row, starts_ptr, ends_ptr, lens_ptr, bounds_stride, next_n, stride0, stride1, DECODE, PER_ROW_LENS
    )
    row_ptr = logits_ptr + offset
    out_row = out_ptr + row.to(tl.int64) * out_stride0
    if n <= k:
        for first in range(0, k, TILE):
            slots = tl.max_contiguous(first + tl.arange(0, TILE), 1)
            tl.store(out_row + slots.to(tl.int64) * out_stride1, tl.where(slots < n, slots, -1), mask=slots < k)
    elif n <= SHORT_ROW:
        cols = tl.arange(0, SHORT_ROW)
        valid = cols < n
        if EARLY:  # noqa: SIM108 - a constexpr branch: `early` exists only when EARLY
            keys = tl.where(valid, early, _KEY_MIN)
        else:
            keys = _load_keys(row_ptr, cols, valid, stride1, WIDE)
        lo, hi, count_hi, count_lo = _search(keys, n, k, k, True, PAIR_CAP)
        pair_limit = _pair_limit(count_hi, count_lo, PAIR_CAP)
        if IN_REGISTERS:
            take, pair, position, _, _ = _rank(
                keys, valid, lo, hi, count_hi, k - count_hi, pair_limit, 0, 0, SCAN_GROUP, PAIR_CAP
            )
            tl.store(out_row + position.to(tl.int64) * out_stride1, cols, mask=take)
            _store_pairs(pairs_row, pair, position, keys, cols, PAIR_CAP)
        else:
            _emit_tiles(
                row_ptr, 0, n, stride1, lo, hi, count_hi, k - count_hi, pair_limit, n * 0, n * 0, out_row, out_row,
                out_stride1, pairs_row, TILE, WIDE, False, PAIR_CAP, SCAN_GROUP,
            )  # fmt: skip
        _resolve_pairs(pairs_row, count_hi, count_lo, pair_limit, k - count_hi, out_row, out_stride1, PAIR_CAP)
    else:
        done = (n < 0).to(tl.int32)
        if HAS_CANDIDATES:
            cand_keys_ptr, cand_cols_ptr, chunk_info_ptr = _candidate_buffers(scratch_ptr, CANDIDATES)
            done = _select_candidates(
                row_ptr, stride1, cand_keys_ptr, cand_cols_ptr, chunk_info_ptr, num_chunk_programs, row, n, k,
                out_row, out_stride1, pairs_row, CHUNK, CANDIDATES, CHUNK_SLOTS, IN_REGISTERS, TILE, WIDE, PAIR_CAP,
                SCAN_GROUP,
            )  # fmt: skip
        if done == 0:
            _select_streaming(row_ptr, n, stride1, k, out_row, out_stride1, TILE, WIDE, SCAN_GROUP)


_chunk_launcher = Launcher(_chunk_kernel)
_finish_launcher = Launcher(_finish_kernel)


def _in_registers(programs: int, device: torch.device) -> bool:
    """Whether a launch of ``programs`` programs writes its results from registers (``_REGISTER_PROGRAMS_PER_SM``)."""
    return programs <= _REGISTER_PROGRAMS_PER_SM * sm_count(device)


def _scan_group(num_warps: int, in_registers: bool) -> int:
    """``SCAN_GROUP`` of a launch of ``num_warps`` warps: the lanes of one register row (see
    :func:`_exclusive_prefix`); 0 for launches writing from registers or when ``_SCAN_VECTOR`` is 0."""
    return 0 if in_registers else _SCAN_VECTOR * 32 * num_warps


class _Plan(NamedTuple):
    """What a launch of some shape takes besides its tensors: kept per shape (:func:`_plan`)."""

    chunk_programs: int
    scratch_elements: int
    chunk_params: dict[str, object] | None
    finish_params: dict[str, object]
    # Launch keys of the constexprs and options (None under the interpreter).
    chunk_key: tuple | None
    finish_key: tuple | None


@functools.lru_cache(maxsize=MAX_ENTRIES)
def _plan(
    num_rows: int, width: int, wide: bool, decode: bool, per_row_lens: bool, device: torch.device, interpreted: bool
) -> _Plan:
    """The launch parameters of ``num_rows`` rows of a ``width``-column logits tensor."""
    # vLLM's logits are [rows, longest row]: wider ones get chunk programs for their long rows.
    # Rows the chunk programs do not cover are still exact (the streaming fallback).
    chunk_programs = min(cdiv(width, _CHUNK), _CANDIDATES, _MAX_GRID_Y) if width > _SHORT_ROW else 0
    flags = dict(
        DECODE=decode, PER_ROW_LENS=per_row_lens, WIDE=wide, SHORT_ROW=_SHORT_ROW, CHUNK=_CHUNK,
        CANDIDATES=_CANDIDATES,
    )  # fmt: skip
    chunk_params = None
    if chunk_programs:
        chunk_in_registers = _in_registers(num_rows * chunk_programs, device)
        chunk_warps = _LATENCY_CHUNK_WARPS if chunk_in_registers else _CHUNK_WARPS
        chunk_params = dict(
            **flags, SLACK_SIGMAS=_SLACK_SIGMAS, SLACK_MIN=_SLACK_MIN, MIN_FILL=_MIN_FILL,
            IN_REGISTERS=chunk_in_registers, TILE=_TILE, SCAN_GROUP=_scan_group(chunk_warps, chunk_in_registers),
            num_warps=chunk_warps,
        )  # fmt: skip
    finish_in_registers = _in_registers(num_rows, device)
    finish_warps = _FINISH_WARPS if finish_in_registers else _THROUGHPUT_FINISH_WARPS
    pair_cap = 0 if finish_in_registers else _PAIR_CAP
    finish_params = dict(
        **flags, EARLY=decode and _EARLY_DECODE_LOADS, CHUNK_SLOTS=next_power_of_2(max(chunk_programs, 1)),
        HAS_CANDIDATES=chunk_programs > 0, IN_REGISTERS=finish_in_registers, TILE=_TILE, PAIR_CAP=pair_cap,
        SCAN_GROUP=_scan_group(finish_warps, finish_in_registers), num_warps=finish_warps,
    )  # fmt: skip
    # Candidate keys and columns, then the chunk info (see _candidate_buffers), then the pairs.
    scratch = num_rows * (2 * _CANDIDATES + 2 * chunk_programs) if chunk_programs else 0
    scratch += num_rows * 2 * pair_cap

    def key(params: dict[str, object] | None) -> tuple | None:
        return None if interpreted or params is None else tuple(params.items())

    return _Plan(chunk_programs, scratch, chunk_params, finish_params, key(chunk_params), key(finish_params))


def _launch_of(
    logits: torch.Tensor,
    starts: torch.Tensor,
    next_n: int,
    decode: bool,
    per_row_lens: bool,
    out: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    k: int,
) -> tuple[_Plan, bool, int, tuple, tuple]:
    """A call's plan and its launches' scalars: ``(plan, wide, available, bounds, tail)``.

    ``wide``: the logits' storage holds 2**31 elements or more from their first (int64 offsets);
    ``available``: those elements; ``bounds``: every launch's leading scalars (starts' stride,
    next_n, the logits' strides, k); ``tail``: the finish launch's last ones (the output's strides,
    the chunk programs per row). A plain tuple: a named one cost the general path ~0.4 µs.
    """
    available = storage_elements(logits)
    wide = available >= 2**31
    plan = _plan(num_rows, logits.shape[1], wide, decode, per_row_lens, logits.device, triton_interpreted())
    bounds = (starts.stride(0), next_n, stride0, stride1, k)
    return plan, wide, available, bounds, (out.stride(0), out.stride(1), plan.chunk_programs)


def _launch(
    logits: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    lens: torch.Tensor,
    next_n: int,
    decode: bool,
    per_row_lens: bool,
    out: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    k: int,
) -> None:
    """Run the kernels for ``num_rows`` rows; the row-bound tensors are 1-D int32 with one common stride.

    A launch is keyed (see :class:`Launcher`) by its scalars, but the logits' storage size, and
    its plan's constexprs.
    """
    if num_rows == 0:
        return
    device = logits.device
    plan, _, available, bounds, tail = _launch_of(
        logits, starts, next_n, decode, per_row_lens, out, num_rows, stride0, stride1, k
    )
    rows = (logits, starts, ends, lens)
    # The finish kernel's scratch is never touched without chunk programs or pairs.
    scratch = torch.empty(plan.scratch_elements, dtype=torch.int32, device=device) if plan.scratch_elements else out
    if plan.chunk_programs:
        _chunk_launcher.launch(
            None if plan.chunk_key is None else (bounds, plan.chunk_key), (num_rows, plan.chunk_programs),
            (*rows, scratch), bounds, lambda: plan.chunk_params, device,
        )  # fmt: skip
    _finish_launcher.launch(
        None if plan.finish_key is None else (bounds, tail, plan.finish_key), (num_rows,), (*rows, out, scratch),
        (*bounds, available, *tail), lambda: plan.finish_params, device,
    )  # fmt: skip


class _Handles(NamedTuple):
    """A bound call's direct launches (see :class:`attnops._common.fastpath.Bound`) and what else they need."""

    index: int
    wide: bool
    scratch: int
    bounds: tuple
    chunk: Callable[..., None] | None
    finish: Callable[..., None]


def _capture(
    logits: torch.Tensor,
    starts: torch.Tensor,
    next_n: int,
    decode: bool,
    per_row_lens: bool,
    out: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    k: int,
) -> _Handles | None:
    """The handles of :func:`_launch`'s launches for a call's signature (the row-bound tensors all of
    ``starts``' dtype), with every pointer 16-byte aligned, once compiled."""
    if num_rows == 0:
        return None
    plan, wide, _, bounds, tail = _launch_of(
        logits, starts, next_n, decode, per_row_lens, out, num_rows, stride0, stride1, k
    )
    device = logits.device
    rows = (logits.dtype, starts.dtype, starts.dtype, starts.dtype)
    chunk = None
    if plan.chunk_programs:
        key = None if plan.chunk_key is None else (bounds, plan.chunk_key)
        grid = (num_rows, plan.chunk_programs)
        chunk = _chunk_launcher.direct(key, grid, (*rows, torch.int32), bounds, device)
        if chunk is None:
            return None
    key = None if plan.finish_key is None else (bounds, tail, plan.finish_key)
    scratch = torch.int32 if plan.scratch_elements else out.dtype
    finish = _finish_launcher.direct(key, (num_rows,), (*rows, out.dtype, scratch), tail, device)
    if finish is None:
        return None
    return _Handles(device.index, wide, plan.scratch_elements, bounds, chunk, finish)


def _direct(
    handles: _Handles | None, logits: torch.Tensor, starts: int, ends: int, lens: int, out: torch.Tensor
) -> object:
    """One call through captured ``handles`` (row-bound tensors as their addresses, already checked aligned)."""
    logits_address, out_address = logits.data_ptr(), out.data_ptr()
    if (logits_address | out_address) & 15:
        return UNALIGNED
    if handles is None:
        return UNBOUND
    available = storage_elements(logits)
    if (available >= 2**31) != handles.wide:
        return UNPLANNED
    rows = (logits_address, starts, ends, lens)
    stream = current_stream(handles.index)
    if not handles.scratch:
        handles.finish(stream, *rows, out_address, out_address, *handles.bounds, available)
        return None
    scratch = out.new_empty(handles.scratch).data_ptr()
    if scratch & 15:
        return UNALIGNED
    if handles.chunk is not None:
        handles.chunk(stream, *rows, scratch)
    handles.finish(stream, *rows, out_address, scratch, *handles.bounds, available)
    return None


def _prefill_direct(
    handles: _Handles | None,
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> object:
    """:func:`top_k_per_row_prefill` through captured ``handles``."""
    starts, ends = cu_seqlen_ks.data_ptr(), cu_seqlen_ke.data_ptr()
    if (starts | ends) & 15:
        return UNALIGNED
    return _direct(handles, logits, starts, ends, starts, raw_topk_indices)


def _prefill_capture(
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> _Handles | None:
    """The handles of :func:`top_k_per_row_prefill`'s launches; none where its bound tensors' strides
    differ (the general path copies them)."""
    if cu_seqlen_ks.stride(0) != cu_seqlen_ke.stride(0):
        return None
    return _capture(logits, cu_seqlen_ks, 1, False, False, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)


def _decode_direct(
    handles: _Handles | None,
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> object:
    """:func:`top_k_per_row_decode` through captured ``handles``."""
    lens = seq_lens.data_ptr()
    if lens & 15:
        return UNALIGNED
    return _direct(handles, logits, lens, lens, lens, raw_topk_indices)


def _decode_capture(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> _Handles | None:
    """The handles of :func:`top_k_per_row_decode`'s launches; none for per-row lengths that are not
    contiguous (the general path's flattening copies them)."""
    per_row = seq_lens.dim() == 2
    if per_row and not seq_lens.is_contiguous():
        return None
    lens = seq_lens.reshape(-1) if per_row else seq_lens
    return _capture(logits, lens, next_n, True, per_row, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)


@_prefill_dispatcher.register("triton", direct=_prefill_direct, capture=_prefill_capture)
def top_k_per_row_prefill(
    logits: torch.Tensor,
    cu_seqlen_ks: torch.Tensor,
    cu_seqlen_ke: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Triton version of :func:`attnops.topk.reference.top_k_per_row_prefill` (inputs are validated).

    logits fp32 (addressed from ``data_ptr`` with ``stride0``/``stride1``), bounds int32
    ``[>= num_rows]``, ``raw_topk_indices`` int32 ``[>= num_rows, >= topk_tokens]``.
    """
    # One stride for both bound tensors; they are tiny, so a copy is cheap when they differ.
    if cu_seqlen_ks.stride(0) != cu_seqlen_ke.stride(0):
        cu_seqlen_ks, cu_seqlen_ke = cu_seqlen_ks.contiguous(), cu_seqlen_ke.contiguous()
    _launch(
        logits, cu_seqlen_ks, cu_seqlen_ke, cu_seqlen_ks, 1, False, False, raw_topk_indices, num_rows, stride0,
        stride1, topk_tokens,
    )  # fmt: skip


@_decode_dispatcher.register("triton", direct=_decode_direct, capture=_decode_capture)
def top_k_per_row_decode(
    logits: torch.Tensor,
    next_n: int,
    seq_lens: torch.Tensor,
    raw_topk_indices: torch.Tensor,
    num_rows: int,
    stride0: int,
    stride1: int,
    topk_tokens: int,
) -> None:
    """Triton version of :func:`attnops.topk.reference.top_k_per_row_decode` (inputs are validated).

    logits fp32 (addressed from ``data_ptr`` with ``stride0``/``stride1``), ``seq_lens`` int32
    1-D (one length per request) or 2-D (one per row), ``raw_topk_indices`` int32
    ``[>= num_rows, >= topk_tokens]``.
    """
    per_row = seq_lens.dim() == 2
    lens = seq_lens.reshape(-1) if per_row else seq_lens
    _launch(logits, lens, lens, lens, next_n, True, per_row, raw_topk_indices, num_rows, stride0, stride1, topk_tokens)

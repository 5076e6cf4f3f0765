"""The problems ``attnops check`` runs, one builder per op family, with their float64 oracles.

Every oracle is written independently of the op's reference implementation:
paged decode is checked against the dense gathered cache and a float64
softmax, merge against its explicit formula, top-k against ``torch.topk`` by
selected values, the vertical/slash tables against the pattern they encode,
sparse prefill against dense masked attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnops.bench.cases import vertical_slash_pattern
from attnops.bench.checks import OUTPUT_TOL, CheckCase, Outputs, Verdict, agree_all, close

PARTITION = 512


def _to(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.to(device) for t in tensors]


def _cpu(**tensors: torch.Tensor) -> Outputs:
    return {name: t.cpu() for name, t in tensors.items()}


def _randn(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen).to(dtype)


# --- reshape_and_cache ---------------------------------------------------------------------------------------------


def _cache_case(dtype: torch.dtype, kv_cache_dtype: str, head_size: int, block_size: int) -> CheckCase:
    from attnops._common.dtypes import FP8_KV_DTYPES, cache_storage_dtype, x_for
    from attnops.cache import reshape_and_cache

    gen = torch.Generator().manual_seed(1)
    num_tokens, heads, num_blocks = 40, 2, 6
    key, value = (_randn((num_tokens, heads, head_size), dtype, gen) for _ in range(2))
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[::7] = -1  # padding tokens are skipped
    storage = cache_storage_dtype(kv_cache_dtype, dtype)
    x = x_for(storage)
    scale = torch.tensor(0.5)

    def run(backend: str, device: torch.device) -> Outputs:
        key_cache = torch.zeros((num_blocks, heads, head_size // x, block_size, x), dtype=storage, device=device)
        value_cache = torch.zeros((num_blocks, heads, head_size, block_size), dtype=storage, device=device)
        k, v, s, sc = _to(device, key, value, slots, scale)
        reshape_and_cache(k, v, key_cache, value_cache, s, kv_cache_dtype, sc, sc, backend=backend)
        return _cpu(key_cache=key_cache, value_cache=value_cache)

    def stored(t: torch.Tensor) -> torch.Tensor:
        """What one token's values must look like in the cache: as is, or saturated fp8 bytes of value / scale."""
        if kv_cache_dtype == "auto":
            return t
        fp8 = FP8_KV_DTYPES[kv_cache_dtype]
        limit = torch.finfo(fp8).max
        return (t.double() / 0.5).clamp(-limit, limit).to(fp8).view(torch.uint8)

    def verify(out: Outputs) -> list[Verdict]:
        expected_k = torch.zeros_like(out["key_cache"])
        expected_v = torch.zeros_like(out["value_cache"])
        live = slots >= 0
        block, offset = slots[live] // block_size, slots[live] % block_size
        d = torch.arange(head_size)
        # key_cache[block, head, d // x, offset, d % x] and value_cache[block, head, d, offset], written per index.
        b_, h_, d_ = block[:, None, None], torch.arange(heads)[None, :, None], d[None, None, :]
        expected_k[b_, h_, d_ // x, offset[:, None, None], d_ % x] = stored(key[live])
        expected_v[b_, h_, d_, offset[:, None, None]] = stored(value[live])
        mismatches = (out["key_cache"] != expected_k).sum() + (out["value_cache"] != expected_v).sum()
        return [Verdict("vs explicit slot indexing (mismatches)", float(mismatches), 0.0)]

    label = f"{str(dtype).removeprefix('torch.')} {kv_cache_dtype} head={head_size} block={block_size}"
    return CheckCase("cache", "reshape_and_cache", label, run, verify, agree_all({"key_cache": 0, "value_cache": 0}))


# --- merge_attn_states -----------------------------------------------------------------------------------------------


def _merge_oracle(
    prefix: torch.Tensor, p_lse: torch.Tensor, suffix: torch.Tensor, s_lse: torch.Tensor, with_context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged output ``[T, H, D]`` and lse ``[H, T]`` in float64, spelled out."""
    p = p_lse.double().T.masked_fill(torch.isposinf(p_lse.T), -math.inf)
    s = s_lse.double().T.masked_fill(torch.isposinf(s_lse.T), -math.inf)
    m = torch.maximum(p, s)
    empty = m == -math.inf
    m_safe = torch.where(empty, 0.0, m)
    wp, ws = torch.exp(p - m_safe), torch.exp(s - m_safe)
    total = (wp + ws).unsqueeze(-1)
    out = (wp.unsqueeze(-1) * prefix.double() + ws.unsqueeze(-1) * suffix.double()) / torch.where(total > 0, total, 1)
    out = torch.where(empty.unsqueeze(-1), prefix.double(), out)
    lse = torch.where(empty, -math.inf, torch.log(wp + ws) + m_safe)
    out[with_context:] = suffix[with_context:].double()
    lse[with_context:] = s_lse.T[with_context:].double()
    return out, lse.T


def _merge_case(dtype: torch.dtype, num_tokens: int, with_context: int | None, fp8_out: bool = False) -> CheckCase:
    from attnops.merge import merge_attn_states

    gen = torch.Generator().manual_seed(2)
    heads, head_size = 4, 64
    prefix, suffix = (_randn((num_tokens, heads, head_size), dtype, gen) for _ in range(2))
    p_lse, s_lse = (torch.randn((heads, num_tokens), generator=gen) * 3 for _ in range(2))
    # Empty parts: +inf counts as -inf; token 2 has both parts empty.
    p_lse[0, 0], s_lse[1, 1], p_lse[:, 2], s_lse[:, 2] = math.inf, -math.inf, -math.inf, math.inf
    out_dtype = torch.float8_e4m3fn if fp8_out else dtype
    scale = torch.tensor([0.05]) if fp8_out else None

    def run(backend: str, device: torch.device) -> Outputs:
        p, pl, s, sl, sc = _to(device, prefix, p_lse, suffix, s_lse, scale)
        out = torch.full((num_tokens, heads, head_size), math.nan, device=device).to(out_dtype)
        out_lse = torch.full((heads, num_tokens), math.nan, device=device)
        merge_attn_states(out, p, pl, s, sl, out_lse, with_context, sc, backend=backend)
        return _cpu(output=out.float(), output_lse=out_lse)

    def verify(out: Outputs) -> list[Verdict]:
        context = num_tokens if with_context is None else with_context
        expected, lse = _merge_oracle(prefix, p_lse, suffix, s_lse, context)
        lse_verdict = close("lse vs float64 formula", out["output_lse"], lse, 1e-5)
        if not fp8_out:
            return [close("vs float64 formula", out["output"], expected, OUTPUT_TOL[dtype]), lse_verdict]
        # fp8 e4m3 keeps 3 mantissa bits: half an ulp is 1/16 of the value (2^-10 absolute for subnormals).
        target = (expected / 0.05).clamp(-448, 448)
        relative = (out["output"].double() - target).abs() / (target.abs() + 2**-6)
        return [Verdict("fp8 vs float64 formula (rel)", float(relative.max()), 0.07), lse_verdict]

    # The reference and a kernel may round an fp8 tie differently: allow one fp8 step of the largest value.
    tol = {"output": 32.0 if fp8_out else OUTPUT_TOL[dtype], "output_lse": 1e-5}
    label = (
        f"{str(dtype).removeprefix('torch.')} tokens={num_tokens}"
        + (f" with_context={with_context}" if with_context is not None else "")
        + (" fp8 out" if fp8_out else "")
    )
    return CheckCase("merge", "merge_attn_states", label, run, verify, agree_all(tol))


# --- top-k ---------------------------------------------------------------------------------------------------------


def _topk_rows_verdict(
    logits: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, indices: torch.Tensor, k: int
) -> Verdict:
    """Count rows whose selection is not an exact top-k of ``logits[r, start:start+len]`` (by values)."""
    bad = 0
    for r in range(indices.shape[0]):
        row = logits[r, int(starts[r]) : int(starts[r]) + int(lengths[r])]
        n = min(k, row.numel())
        picked, padding = indices[r, :n].long(), indices[r, n:]
        if row.numel() <= k:
            bad += not (torch.equal(picked, torch.arange(n)) and bool((padding == -1).all()))
            continue
        valid = bool(((picked >= 0) & (picked < row.numel())).all()) and picked.unique().numel() == n
        if not valid:
            bad += 1
            continue
        want = torch.topk(row.double(), n).values
        got = row.double()[picked].sort(descending=True).values
        bad += not torch.equal(got, want)
    return Verdict("vs torch.topk by values (bad rows)", float(bad), 0.0)


def _selected_values(out: Outputs, r: int) -> torch.Tensor | None:
    """Row r's selected logits, sorted; ``None`` when the selection has duplicates, strays or a wrong size."""
    start, length = int(out["starts"][r]), int(out["lengths"][r])
    row = out["logits"][r, start : start + length]
    picked = out["indices"][r][out["indices"][r] >= 0].long()
    wanted = min(length, out["indices"].shape[1])
    if picked.numel() != wanted or picked.unique().numel() != wanted or bool((picked >= length).any()):
        return None
    return row[picked].sort().values


def _topk_agree(outputs: Outputs, reference: Outputs) -> Verdict:
    # Ties may be broken either way: compare the selected values, row by row.
    bad = 0
    for r in range(reference["indices"].shape[0]):
        mine, theirs = _selected_values(outputs, r), _selected_values(reference, r)
        bad += mine is None or theirs is None or not torch.equal(mine, theirs)
    return Verdict("vs cpu torch by values (bad rows)", float(bad), 0.0)


def _topk_logits(num_rows: int, width: int, ties: bool, gen: torch.Generator) -> torch.Tensor:
    if ties:
        # Mostly zeros and -inf with a few ones: far more than k equal values.
        choice = torch.randint(0, 10, (num_rows, width), generator=gen)
        values = torch.where(choice < 5, 0.0, -math.inf)
        return torch.where(choice == 9, 1.0, values)
    return torch.randn((num_rows, width), generator=gen)


def _topk_decode_case(batch: int, next_n: int, seq_lens: list[int], k: int, ties: bool = False) -> CheckCase:
    from attnops.topk import top_k_per_row_decode

    gen = torch.Generator().manual_seed(3)
    num_rows, width = batch * next_n, max(seq_lens) + 5
    # A padded row pitch: row r starts at r * stride0 with stride0 > width.
    storage = _topk_logits(num_rows, width + 3, ties, gen)
    logits = storage[:, :width]
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    rows = torch.arange(num_rows)
    lengths = (lens[rows // next_n] - next_n + rows % next_n + 1).clamp_min(0)

    def run(backend: str, device: torch.device) -> Outputs:
        lg, sl = _to(device, logits, lens)
        indices = torch.full((num_rows, k), -7, dtype=torch.int32, device=device)
        top_k_per_row_decode(lg, next_n, sl, indices, num_rows, lg.stride(0), lg.stride(1), k, backend=backend)
        return {"indices": indices.cpu(), "logits": logits, "starts": torch.zeros_like(lengths), "lengths": lengths}

    def verify(out: Outputs) -> list[Verdict]:
        return [_topk_rows_verdict(logits, torch.zeros_like(lengths), lengths, out["indices"], k)]

    label = f"rows={num_rows} next_n={next_n} max_len={max(seq_lens)} k={k}" + (" ties" if ties else "")
    return CheckCase("topk", "top_k_per_row_decode", label, run, verify, _topk_agree)


def _topk_prefill_case(num_rows: int, width: int, k: int, ties: bool = False) -> CheckCase:
    from attnops.topk import top_k_per_row_prefill

    gen = torch.Generator().manual_seed(4)
    logits = _topk_logits(num_rows, width, ties, gen)
    starts = torch.randint(0, width // 4, (num_rows,), generator=gen, dtype=torch.int32)
    ends = torch.randint(width // 2, width + 1, (num_rows,), generator=gen, dtype=torch.int32)
    ends[0] = starts[0] + min(k // 2, width - int(starts[0]))  # one row shorter than k
    lengths = ends - starts

    def run(backend: str, device: torch.device) -> Outputs:
        lg, ks, ke = _to(device, logits, starts, ends)
        indices = torch.full((num_rows, k), -7, dtype=torch.int32, device=device)
        top_k_per_row_prefill(lg, ks, ke, indices, num_rows, lg.stride(0), lg.stride(1), k, backend=backend)
        return {"indices": indices.cpu(), "logits": logits, "starts": starts, "lengths": lengths}

    def verify(out: Outputs) -> list[Verdict]:
        return [_topk_rows_verdict(logits, starts, lengths, out["indices"], k)]

    label = f"rows={num_rows} width={width} k={k}" + (" ties" if ties else "")
    return CheckCase("topk", "top_k_per_row_prefill", label, run, verify, _topk_agree)


# --- vertical/slash index conversion ---------------------------------------------------------------------------------


def _table_hits(
    counts: torch.Tensor, offsets: torch.Tensor, col_counts: torch.Tensor, cols: torch.Tensor, kv: int, block_n: int
) -> torch.Tensor:
    """int ``[rows, kv]``: how many table entries of each row block cover each key column."""
    rows = counts.shape[0]
    hits = torch.zeros((rows, kv), dtype=torch.int64)
    block_cols = offsets.long()[..., None] + torch.arange(block_n)
    in_block = (torch.arange(offsets.shape[1]) < counts[:, None])[..., None] & (block_cols >= 0) & (block_cols < kv)
    row_of = torch.arange(rows)[:, None, None].expand_as(block_cols)
    hits.index_put_((row_of[in_block], block_cols[in_block]), torch.ones(()).long().expand(int(in_block.sum())), True)
    single = (torch.arange(cols.shape[1]) < col_counts[:, None]) & (cols >= 0) & (cols < kv)
    row_of = torch.arange(rows)[:, None].expand_as(cols)
    hits.index_put_((row_of[single], cols.long()[single]), torch.ones(()).long().expand(int(single.sum())), True)
    return hits


def _unsorted(entries: torch.Tensor, counts: torch.Tensor) -> int:
    """Pairs of consecutive valid entries (the first ``counts[r]`` of row r) that do not strictly increase."""
    pairs = torch.arange(1, entries.shape[-1]) < counts[:, None]
    return int(((entries.diff(dim=-1) <= 0) & pairs).sum())


def _tables_verdicts(
    tables: Outputs,
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    vertical: torch.Tensor,
    slash: torch.Tensor,
    v_counts: Sequence[int],
    s_counts: Sequence[int],
    block_m: int,
    block_n: int,
) -> list[Verdict]:
    """Do the tables cover every entry of the causal vertical/slash mask, each key once, in order?"""
    missing = malformed = 0
    batch, heads = vertical.shape[:2]
    for b in range(batch):
        q, kv = int(q_seqlens[b]), int(kv_seqlens[b])
        rows = -(-q // block_m)
        positions = torch.arange(q)[:, None] + (kv - q)  # absolute position of each query row
        diagonal = positions - torch.arange(kv)[None, :]
        for h in range(heads):
            is_vertical = torch.zeros(kv, dtype=torch.bool)
            is_vertical[vertical[b, h, : v_counts[h]].long()] = True
            is_slash = torch.zeros(kv, dtype=torch.bool)
            is_slash[slash[b, h, : s_counts[h]].long()] = True
            pattern = (diagonal >= 0) & (is_vertical[None, :] | is_slash[diagonal.clamp(0, kv - 1)])
            count, offset = tables["block_count"][b, h], tables["block_offset"][b, h]
            col_count, cols = tables["column_count"][b, h], tables["column_index"][b, h]
            hits = _table_hits(count[:rows], offset[:rows], col_count[:rows], cols[:rows], kv, block_n)
            missing += int((pattern & (hits[torch.arange(q) // block_m] == 0)).sum())
            in_rows = torch.arange(cols.shape[1]) < col_count[:rows, None]
            malformed += int((hits > 1).sum())  # a key counted twice
            malformed += int((~is_vertical[cols[:rows][in_rows].long().clamp(0, kv - 1)]).sum())
            malformed += int((count[rows:] != 0).sum() + (col_count[rows:] != 0).sum())
            malformed += _unsorted(offset[:rows], count[:rows]) + _unsorted(cols[:rows], col_count[:rows])
    return [
        Verdict("tables cover the causal v/s mask (missing)", float(missing), 0.0),
        Verdict("tables well-formed (overlaps, strays, order)", float(malformed), 0.0),
    ]


def _below_counts(tables: Outputs) -> Outputs:
    """The tables with every entry at or past its row's count zeroed (those entries are unspecified)."""
    offsets = tables["block_offset"].clone()
    offsets[torch.arange(offsets.shape[-1]) >= tables["block_count"][..., None]] = 0
    cols = tables["column_index"].clone()
    cols[torch.arange(cols.shape[-1]) >= tables["column_count"][..., None]] = 0
    return {**tables, "block_offset": offsets, "column_index": cols}


def _tables_agree(outputs: Outputs, reference: Outputs) -> Verdict:
    a, b = _below_counts(outputs), _below_counts(reference)
    mismatches = sum(int((a[name] != b[name]).sum()) for name in a)
    return Verdict("vs cpu torch (mismatched entries)", float(mismatches), 0.0)


_TABLE_NAMES = ("block_count", "block_offset", "column_count", "column_index")


def _vs_inputs(
    q_lens: list[int], kv_lens: list[int], heads: int, nnz_v: int, nnz_s: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    vertical, slash = vertical_slash_pattern(
        len(q_lens), heads, min(kv_lens), nnz_v, nnz_s, seed=5, device=torch.device("cpu")
    )
    return torch.tensor(q_lens, dtype=torch.int32), torch.tensor(kv_lens, dtype=torch.int32), vertical, slash


def _vertical_slash_case(q_lens: list[int], kv_lens: list[int], heads: int, nnz_v: int, nnz_s: int, block: int):
    from attnops.sparse import convert_vertical_slash_indexes

    q_seqlens, kv_seqlens, vertical, slash = _vs_inputs(q_lens, kv_lens, heads, nnz_v, nnz_s)
    context = max(q_lens)

    def run(backend: str, device: torch.device) -> Outputs:
        qs, ks, v, s = _to(device, q_seqlens, kv_seqlens, vertical, slash)
        tables = convert_vertical_slash_indexes(qs, ks, v, s, context, block, block, True, backend=backend)
        return _cpu(**dict(zip(_TABLE_NAMES, tables, strict=True)))

    def verify(out: Outputs) -> list[Verdict]:
        counts_v, counts_s = [nnz_v] * heads, [nnz_s] * heads
        return _tables_verdicts(out, q_seqlens, kv_seqlens, vertical, slash, counts_v, counts_s, block, block)

    label = f"q={q_lens} kv={kv_lens} heads={heads} v={nnz_v} s={nnz_s} block={block}"
    return CheckCase("sparse", "convert_vertical_slash_indexes", label, run, verify, _tables_agree)


def _vertical_slash_mergehead_case(q_len: int, heads: int, nnz_v: int, nnz_s: int, block: int) -> CheckCase:
    from attnops.sparse import convert_vertical_slash_indexes, convert_vertical_slash_indexes_mergehead

    q_seqlens, kv_seqlens, vertical, slash = _vs_inputs([q_len], [q_len], heads, nnz_v, nnz_s)
    # Per-head counts of valid indexes; the slash lists keep offset 0 (the band comes first in descending order).
    counts_v = [max(1, nnz_v - 7 * h) for h in range(heads)]
    counts_s = [max(1, nnz_s - 5 * h) for h in range(heads)]
    for h in range(heads):
        slash[:, h, : counts_s[h]] = slash[:, h, -counts_s[h] :].clone()

    def run(backend: str, device: torch.device) -> Outputs:
        qs, ks, v, s, cv, cs = _to(
            device,
            q_seqlens,
            kv_seqlens,
            vertical,
            slash,
            torch.tensor(counts_v, dtype=torch.int32),
            torch.tensor(counts_s, dtype=torch.int32),
        )
        tables = convert_vertical_slash_indexes_mergehead(
            qs, ks, v, s, cv, cs, q_len, block, block, True, backend=backend
        )
        return _cpu(**dict(zip(_TABLE_NAMES, tables, strict=True)))

    def verify(out: Outputs) -> list[Verdict]:
        verdicts = _tables_verdicts(out, q_seqlens, kv_seqlens, vertical, slash, counts_v, counts_s, block, block)
        per_head = []
        for h in range(heads):
            v, s = vertical[:, h : h + 1, : counts_v[h]], slash[:, h : h + 1, : counts_s[h]]
            tables = convert_vertical_slash_indexes(q_seqlens, kv_seqlens, v, s, q_len, block, block, True)
            per_head.append(dict(zip(_TABLE_NAMES, tables, strict=True)))
        mismatches = 0
        for h, tables in enumerate(per_head):
            mine = _below_counts({n: out[n][:, h : h + 1] for n in _TABLE_NAMES})
            theirs = _below_counts(tables)
            for name in _TABLE_NAMES:
                width = theirs[name].shape[-1] if name in ("block_offset", "column_index") else None
                ours = mine[name][..., :width] if width is not None else mine[name]
                mismatches += int((ours != theirs[name]).sum())
        verdicts.append(Verdict("vs per-head convert_vertical_slash_indexes", float(mismatches), 0.0))
        return verdicts

    label = f"q={q_len} heads={heads} v<={nnz_v} s<={nnz_s} block={block}"
    return CheckCase("sparse", "convert_vertical_slash_indexes_mergehead", label, run, verify, _tables_agree)


def _sparse_prefill_case(q_len: int, kv_len: int, heads: int, kv_heads: int, dtype: torch.dtype) -> CheckCase:
    from attnops.sparse import convert_vertical_slash_indexes, sparse_prefill_attention

    block, head_size = 64, 64
    q_seqlens, kv_seqlens, vertical, slash = _vs_inputs([q_len], [kv_len], heads, 24, 40)
    tables = dict(
        zip(
            _TABLE_NAMES,
            convert_vertical_slash_indexes(q_seqlens, kv_seqlens, vertical, slash, q_len, block, block),
            strict=True,
        )
    )
    gen = torch.Generator().manual_seed(8)
    q = _randn((1, heads, q_len, head_size), dtype, gen)
    k, v = (_randn((1, kv_heads, kv_len, head_size), dtype, gen) for _ in range(2))
    scale = head_size**-0.5

    def run(backend: str, device: torch.device) -> Outputs:
        qd, kd, vd, *td = _to(device, q, k, v, *tables.values())
        result = sparse_prefill_attention(
            qd, kd, vd, *td, scale=scale, block_size_M=block, block_size_N=block, causal=True, backend=backend
        )
        out = result[0] if isinstance(result, tuple) else result
        return _cpu(out=out)

    def verify(out: Outputs) -> list[Verdict]:
        rows = -(-q_len // block)
        position = torch.arange(q_len)[:, None] + (kv_len - q_len)
        causal = torch.arange(kv_len)[None, :] <= position
        group = heads // kv_heads
        expected = torch.empty((1, heads, q_len, head_size), dtype=torch.float64)
        for h in range(heads):
            t = {name: tables[name][0, h, :rows] for name in _TABLE_NAMES}
            hits = _table_hits(t["block_count"], t["block_offset"], t["column_count"], t["column_index"], kv_len, block)
            mask = (hits[torch.arange(q_len) // block] > 0) & causal
            logits = (q[0, h].double() @ k[0, h // group].double().T) * scale
            probs = torch.softmax(logits.masked_fill(~mask, -math.inf), dim=-1)
            expected[0, h] = torch.nan_to_num(probs) @ v[0, h // group].double()
        return [close("vs dense masked float64 attention", out["out"], expected, OUTPUT_TOL[dtype])]

    label = f"{str(dtype).removeprefix('torch.')} q={q_len} kv={kv_len} heads={heads}/{kv_heads}"
    return CheckCase("sparse", "sparse_prefill_attention", label, run, verify, agree_all({"out": OUTPUT_TOL[dtype]}))


# --- paged decode ----------------------------------------------------------------------------------------------------


def _decode_oracle(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    alibi: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Dense float64 decode attention over gathered ``[S, KVH, L, D]`` keys/values, with v2's partition stats."""
    num_seqs, num_heads, _ = query.shape
    group = num_heads // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    length = k.shape[2]
    logits = torch.einsum("shd,shld->shl", query.double(), k) * scale
    position = torch.arange(length)
    if alibi is not None:
        logits = logits + alibi.double()[None, :, None] * (position - seq_lens[:, None, None] + 1)
    logits = logits.masked_fill(position >= seq_lens[:, None, None], -math.inf)
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.einsum("shl,shld->shd", torch.nan_to_num(torch.softmax(logits, dim=-1)), v)
    parts = -(-max(length, 1) // PARTITION)
    padded = torch.nn.functional.pad(logits, (0, parts * PARTITION - length), value=-math.inf)
    padded = padded.reshape(num_seqs, num_heads, parts, PARTITION)
    v_parts = torch.nn.functional.pad(v, (0, 0, 0, parts * PARTITION - length)).reshape(
        num_seqs, num_heads, parts, PARTITION, -1
    )
    max_logits = padded.max(dim=-1).values
    weights = torch.exp(padded - max_logits.unsqueeze(-1))
    exp_sum = weights.sum(-1)
    tmp_out = torch.einsum("shpt,shptd->shpd", weights, v_parts) / exp_sum.unsqueeze(-1)
    return {
        "out": out,
        "lse": lse.T,
        "max_logits": max_logits,
        "exp_sum": exp_sum,
        "tmp_out": tmp_out,
        "valid_partitions": (torch.arange(parts) < (-(-seq_lens // PARTITION))[:, None, None]).expand(
            num_seqs, num_heads, parts
        ),
    }


def _decode_cases(
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_size: int,
    block_size: int,
    seq_lens: list[int],
    kv_cache_dtype: str = "auto",
    alibi: bool = False,
) -> list[CheckCase]:
    """v1, v2 and ``paged_decode`` (with its LSE) on one cache."""
    from attnops.cache import gather_paged_kv, make_paged_kv_cache
    from attnops.paged_attention import paged_attention_v1, paged_attention_v2, paged_decode

    fp8 = kv_cache_dtype != "auto"
    cache = make_paged_kv_cache(
        seq_lens,
        kv_heads,
        head_size,
        block_size,
        dtype,
        kv_cache_dtype,
        seed=6,
        extra_blocks=3,
        k_scale=0.5 if fp8 else 1.0,
        v_scale=0.25 if fp8 else 1.0,
    )
    gen = torch.Generator().manual_seed(7)
    query = _randn((len(seq_lens), heads, head_size), dtype, gen)
    slopes = torch.rand(heads, generator=gen) * -0.2 if alibi else None
    scale = head_size**-0.5
    max_len = cache.max_seq_len
    keys, values = gather_paged_kv(
        cache.key_cache,
        cache.value_cache,
        cache.block_tables,
        cache.seq_lens,
        max_len,
        kv_cache_dtype,
        cache.k_scale,
        cache.v_scale,
        dtype=dtype,
    )
    expected = _decode_oracle(query, keys, values, cache.seq_lens.long(), scale, slopes)
    tol = OUTPUT_TOL[dtype]
    parts = -(-max_len // PARTITION)

    def tensors(device: torch.device) -> list:
        return _to(
            device,
            query,
            cache.key_cache,
            cache.value_cache,
            cache.block_tables,
            cache.seq_lens,
            slopes,
            cache.k_scale,
            cache.v_scale,
        )

    def nan_like(t: torch.Tensor, shape: Sequence[int] | None = None, dtype_: torch.dtype | None = None):
        return torch.full(tuple(shape or t.shape), math.nan, dtype=dtype_ or t.dtype, device=t.device)

    def run_v1(backend: str, device: torch.device) -> Outputs:
        q, kc, vc, bt, sl, al, ks, vs = tensors(device)
        out = nan_like(q)
        paged_attention_v1(
            out, q, kc, vc, kv_heads, scale, bt, sl, block_size, max_len, al, kv_cache_dtype, ks, vs, backend=backend
        )
        return _cpu(out=out)

    def run_v2(backend: str, device: torch.device) -> Outputs:
        q, kc, vc, bt, sl, al, ks, vs = tensors(device)
        stats = (len(seq_lens), heads, parts)
        out, exp_sum, max_logits = nan_like(q), nan_like(q, stats, torch.float32), nan_like(q, stats, torch.float32)
        tmp_out = nan_like(q, (*stats, head_size))
        paged_attention_v2(
            out,
            exp_sum,
            max_logits,
            tmp_out,
            q,
            kc,
            vc,
            kv_heads,
            scale,
            bt,
            sl,
            block_size,
            max_len,
            al,
            kv_cache_dtype,
            ks,
            vs,
            backend=backend,
        )
        v1 = run_v1(backend, device)["out"]
        return _cpu(out=out, exp_sum=exp_sum, max_logits=max_logits, tmp_out=tmp_out, v1_out=v1)

    def run_lse(backend: str, device: torch.device) -> Outputs:
        q, kc, vc, bt, sl, al, ks, vs = tensors(device)
        out, lse = paged_decode(
            q,
            kc,
            vc,
            bt,
            sl,
            scale=scale,
            max_seq_len=max_len,
            alibi_slopes=al,
            kv_cache_dtype=kv_cache_dtype,
            k_scale=ks,
            v_scale=vs,
            return_lse=True,
            backend=backend,
        )
        return _cpu(out=out, lse=lse)

    def verify_out(out: Outputs) -> list[Verdict]:
        return [close("vs gather + float64 softmax", out["out"], expected["out"], tol)]

    def verify_v2(out: Outputs) -> list[Verdict]:
        valid = expected["valid_partitions"]
        # Relative exp_sum error: each partition sums up to 512 terms of size <= 1.
        rel_exp_sum = (out["exp_sum"][valid].double() / expected["exp_sum"][valid] - 1).abs()
        return [
            *verify_out(out),
            close("vs v1 (same backend)", out["out"], out["v1_out"], tol),
            close("max_logits vs float64", out["max_logits"][valid], expected["max_logits"][valid], 1e-3),
            Verdict("exp_sum vs float64 (rel)", float(rel_exp_sum.max()) if rel_exp_sum.numel() else 0.0, 1e-3),
            close("tmp_out vs float64", out["tmp_out"][valid], expected["tmp_out"][valid], tol),
        ]

    def verify_lse(out: Outputs) -> list[Verdict]:
        return [*verify_out(out), close("lse vs float64 logsumexp", out["lse"], expected["lse"], 1e-3)]

    def agree_v2(outputs: Outputs, reference: Outputs) -> Verdict:
        valid = expected["valid_partitions"]
        masked = lambda o: {**o, "tmp_out": o["tmp_out"][valid], "max_logits": o["max_logits"][valid]}
        check = agree_all({"out": tol, "tmp_out": tol, "max_logits": 1e-3})
        return check(masked(outputs), masked(reference))

    label = (
        f"{str(dtype).removeprefix('torch.')} h={heads}/{kv_heads} d={head_size} block={block_size} "
        f"lens={seq_lens}" + (f" {kv_cache_dtype}" if fp8 else "") + (" alibi" if alibi else "")
    )
    out_agree = agree_all({"out": tol})
    return [
        CheckCase("paged_attention", "paged_attention_v1", label, run_v1, verify_out, out_agree),
        CheckCase("paged_attention", "paged_attention_v2", label, run_v2, verify_v2, agree_v2),
        CheckCase("paged_attention", "paged_decode", label, run_lse, verify_lse, agree_all({"out": tol, "lse": 1e-3})),
    ]


# --- the grid --------------------------------------------------------------------------------------------------------


def all_cases(*, quick: bool = False) -> list[CheckCase]:
    """Every check problem; ``quick`` keeps one or two per op."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases: list[CheckCase] = [
        _cache_case(bf16, "auto", 128, 16),
        _cache_case(f16, "fp8_e4m3", 64, 16),
        _merge_case(bf16, 33, None),
        _merge_case(f32, 33, 20),
        _topk_decode_case(3, 1, [5, 300, 1000], 64),
        _topk_prefill_case(6, 700, 64, ties=True),
        _vertical_slash_case([1000], [1000], 2, 40, 60, 64),
    ]
    cases += _decode_cases(bf16, 8, 2, 128, 16, [0, 1, 37, 700])
    cases += [_vertical_slash_mergehead_case(700, 2, 30, 50, 64), _sparse_prefill_case(300, 300, 2, 2, bf16)]
    if quick:
        return cases
    cases += [
        _cache_case(f32, "auto", 80, 8),
        _cache_case(bf16, "fp8_e5m2", 256, 32),
        _merge_case(f16, 100, 0),
        _merge_case(bf16, 16, None, fp8_out=True),
        _topk_decode_case(2, 3, [40, 2500], 64, ties=True),
        _topk_decode_case(4, 1, [8192] * 4, 2048),
        _topk_prefill_case(8, 3000, 512),
        _vertical_slash_case([1024, 768], [1024, 1024], 3, 100, 300, 64),
        _vertical_slash_case([777], [777], 2, 30, 50, 32),
        _vertical_slash_mergehead_case(1500, 3, 60, 90, 64),
        _sparse_prefill_case(700, 1000, 4, 2, f32),
        _sparse_prefill_case(513, 513, 2, 1, f16),
    ]
    cases += _decode_cases(f32, 4, 4, 64, 8, [3, 600, 1100], alibi=True)
    cases += _decode_cases(f16, 8, 1, 96, 32, [17, 513, 1024])
    cases += _decode_cases(bf16, 4, 2, 256, 16, [100, 900], kv_cache_dtype="fp8")
    cases += _decode_cases(f16, 4, 4, 128, 16, [64, 700], kv_cache_dtype="fp8_e5m2", alibi=True)
    return cases

"""merge_attn_states against a float64 oracle written here, loop by loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnops.merge as merge

INF = float("inf")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def oracle(prefix_output, prefix_lse, suffix_output, suffix_lse, with_context=None):
    """Merged output and lse in float64, one (token, head) at a time."""
    num_tokens, num_heads, head_size = prefix_output.shape
    with_context = num_tokens if with_context is None else with_context
    out = torch.empty(num_tokens, num_heads, head_size, dtype=torch.float64)
    lse = torch.empty(num_heads, num_tokens, dtype=torch.float64)
    for t in range(num_tokens):
        for h in range(num_heads):
            p_out = prefix_output[t, h].double()
            s_out = suffix_output[t, h].double()
            p, s = float(prefix_lse[h, t]), float(suffix_lse[h, t])
            if t >= with_context:
                out[t, h], lse[h, t] = s_out, s
                continue
            p = -INF if math.isinf(p) else p
            s = -INF if math.isinf(s) else s
            if p == -INF and s == -INF:
                out[t, h], lse[h, t] = p_out, -INF
                continue
            m = max(p, s)
            wp, ws = math.exp(p - m), math.exp(s - m)
            out[t, h] = (wp * p_out + ws * s_out) / (wp + ws)
            lse[h, t] = m + math.log(wp + ws)
    return out, lse


def make_inputs(num_tokens, num_heads, head_size, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    prefix_output = torch.randn(num_tokens, num_heads, head_size, generator=g).to(dtype)
    suffix_output = torch.randn(num_tokens, num_heads, head_size, generator=g).to(dtype)
    prefix_lse = torch.randn(num_heads, num_tokens, generator=g) * 3
    suffix_lse = torch.randn(num_heads, num_tokens, generator=g) * 3
    return prefix_output, prefix_lse, suffix_output, suffix_lse


def run(prefix_output, prefix_lse, suffix_output, suffix_lse, with_context=None, output_scale=None, out_dtype=None):
    num_tokens, num_heads, _ = prefix_output.shape
    output = torch.full_like(prefix_output, 7, dtype=out_dtype or prefix_output.dtype)
    output_lse = torch.full((num_heads, num_tokens), 7.0)
    merge.merge_attn_states(
        output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, with_context, output_scale
    )
    return output, output_lse


def assert_matches(output, output_lse, want_out, want_lse, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(output.double(), want_out, rtol=tol, atol=tol)
    torch.testing.assert_close(output_lse.double(), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 8), (5, 3, 16), (9, 4, 80), (4, 2, 5)])
@pytest.mark.parametrize("with_context", [None, 0, "half", "all"])
def test_random_matches_oracle(dtype, shape, with_context):
    inputs = make_inputs(*shape, dtype)
    ctx = {"half": shape[0] // 2, "all": shape[0]}.get(with_context, with_context)
    output, output_lse = run(*inputs, with_context=ctx)
    assert_matches(output, output_lse, *oracle(*inputs, ctx), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_lse_patterns(dtype):
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(6, 2, 8, dtype, seed=1)
    cases = [(-INF, 0.5), (INF, 0.5), (0.5, -INF), (0.5, INF), (-INF, -INF), (INF, INF)]
    for t, (p, s) in enumerate(cases):
        prefix_lse[0, t], suffix_lse[0, t] = p, s
    output, output_lse = run(prefix_output, prefix_lse, suffix_output, suffix_lse)
    assert_matches(output, output_lse, *oracle(prefix_output, prefix_lse, suffix_output, suffix_lse), dtype)
    # An empty side contributes nothing: the other side comes through exactly.
    for t in (0, 1):
        assert torch.equal(output[t, 0], suffix_output[t, 0])
    for t in (2, 3):
        assert torch.equal(output[t, 0], prefix_output[t, 0])
    assert not torch.isnan(output.float()).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_empty_copies_prefix(dtype):
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(3, 2, 8, dtype, seed=2)
    prefix_lse[:, 1] = torch.tensor([-INF, INF])
    suffix_lse[:, 1] = torch.tensor([INF, -INF])
    output, output_lse = run(prefix_output, prefix_lse, suffix_output, suffix_lse)
    assert torch.equal(output[1], prefix_output[1])
    assert torch.equal(output_lse[:, 1], torch.tensor([-INF, -INF]))


def test_output_lse_optional():
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(4, 3, 8, torch.float32, seed=3)
    with_lse, _ = run(prefix_output, prefix_lse, suffix_output, suffix_lse)
    output = torch.empty_like(prefix_output)
    merge.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse)
    assert torch.equal(output, with_lse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tokens_without_context_copy_suffix(dtype):
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(7, 2, 8, dtype, seed=4)
    suffix_lse[1, 5] = INF
    prefix_lse[0, 6] = float("nan")
    output, output_lse = run(prefix_output, prefix_lse, suffix_output, suffix_lse, with_context=3)
    assert torch.equal(output[3:], suffix_output[3:])
    # The suffix lse is copied as given: +inf stays +inf there.
    assert torch.equal(output_lse[:, 3:], suffix_lse[:, 3:])
    want_out, want_lse = oracle(prefix_output, prefix_lse, suffix_output, suffix_lse, 3)
    assert_matches(output[:3], output_lse[:, :3], want_out[:3], want_lse[:, :3], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e4m3fnuz])
@pytest.mark.parametrize("with_context", [None, 2])
def test_output_scale_quantises_to_fp8(dtype, fp8, with_context):
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(5, 3, 16, dtype, seed=5)
    prefix_output[0, 0, :4] = torch.tensor([1000.0, -1000.0, 0.0, 1e-6])
    prefix_lse[0, 0], suffix_lse[0, 0] = 0.0, -INF
    prefix_lse[1, 1] = suffix_lse[1, 1] = -INF
    scale = torch.tensor([0.25])
    output, output_lse = run(
        prefix_output, prefix_lse, suffix_output, suffix_lse, with_context, output_scale=scale, out_dtype=fp8
    )
    assert output.dtype == fp8
    want_out, want_lse = oracle(prefix_output, prefix_lse, suffix_output, suffix_lse, with_context)
    limit = torch.finfo(fp8).max
    want = (want_out / 0.25).clamp(-limit, limit)
    got = output.double()
    # Within one fp8 rounding step (3 mantissa bits) of the exact quotient.
    torch.testing.assert_close(got, want, rtol=2**-3, atol=2**-9 + 2 * TOL[dtype] / 0.25)
    assert got[0, 0, 0] == limit and got[0, 0, 1] == -limit
    torch.testing.assert_close(output_lse.double(), want_lse, rtol=1e-5, atol=1e-5)


def test_output_scale_matches_fp32_rounding_exactly():
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(6, 2, 32, torch.float32, seed=6)
    scale = torch.tensor([0.37])
    output, _ = run(
        prefix_output, prefix_lse, suffix_output, suffix_lse, output_scale=scale, out_dtype=torch.float8_e4m3fn
    )
    merged, _ = run(prefix_output, prefix_lse, suffix_output, suffix_lse)
    want = (merged * (1 / scale)).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(output.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_views(dtype):
    num_tokens, num_heads, head_size = 5, 3, 8
    g = torch.Generator().manual_seed(7)
    prefix_store = torch.randn(num_tokens, num_heads, head_size + 8, generator=g).to(dtype)
    suffix_store = torch.randn(num_tokens, num_heads, head_size + 8, generator=g).to(dtype)
    prefix_output, suffix_output = prefix_store[..., :head_size], suffix_store[..., :head_size]
    prefix_lse = torch.randn(num_tokens, num_heads, generator=g).T
    suffix_lse = torch.randn(num_tokens, num_heads, generator=g).T
    out_store = torch.full((num_tokens, num_heads + 1, head_size + 4), 9.0).to(dtype)
    output = out_store[:, 1:, 2 : 2 + head_size]
    lse_store = torch.full((num_tokens, num_heads), 9.0)
    output_lse = lse_store.T
    merge.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse)
    want_out, want_lse = oracle(prefix_output, prefix_lse, suffix_output, suffix_lse)
    assert_matches(output, output_lse, want_out, want_lse, dtype)
    untouched = torch.ones_like(out_store, dtype=torch.bool)
    untouched[:, 1:, 2 : 2 + head_size] = False
    assert (out_store[untouched] == 9).all()


def test_in_place_into_prefix():
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(4, 2, 8, torch.float32, seed=8)
    want_out, want_lse = oracle(prefix_output, prefix_lse, suffix_output, suffix_lse)
    merge.merge_attn_states(prefix_output, prefix_output, prefix_lse, suffix_output, suffix_lse, prefix_lse)
    assert_matches(prefix_output, prefix_lse, want_out, want_lse, torch.float32)


def test_zero_tokens():
    inputs = make_inputs(0, 2, 8, torch.float16)
    output, output_lse = run(*inputs)
    assert output.shape == (0, 2, 8) and output_lse.shape == (2, 0)


def attention(q, k, v):
    """Softmax attention of each query over keys ``k``: output ``[T, H, D]`` and lse ``[H, T]``, float64."""
    logits = torch.einsum("thd,nhd->thn", q, k)
    lse = torch.logsumexp(logits, dim=-1)
    return torch.einsum("thn,nhd->thd", torch.softmax(logits, dim=-1), v), lse.T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [0, 1, 7, 12])
def test_split_attention_merges_to_full_attention(dtype, split):
    g = torch.Generator().manual_seed(9)
    num_tokens, num_heads, head_size, num_keys = 6, 3, 16, 12
    q = torch.randn(num_tokens, num_heads, head_size, generator=g, dtype=torch.float64) / 2
    k = torch.randn(num_keys, num_heads, head_size, generator=g, dtype=torch.float64)
    v = torch.randn(num_keys, num_heads, head_size, generator=g, dtype=torch.float64)
    full, full_lse = attention(q, k, v)
    parts = []
    for lo, hi in ((0, split), (split, num_keys)):
        if lo == hi:
            # An empty key set: zero output, lse -inf (as attention backends report it).
            parts.append((torch.zeros_like(full), torch.full_like(full_lse, -INF)))
        else:
            parts.append(attention(q, k[lo:hi], v[lo:hi]))
    (p_out, p_lse), (s_out, s_lse) = parts
    output = torch.empty(num_tokens, num_heads, head_size, dtype=dtype)
    output_lse = torch.empty(num_heads, num_tokens)
    merge.merge_attn_states(
        output, p_out.to(dtype), p_lse.float(), s_out.to(dtype), s_lse.float(), output_lse=output_lse
    )
    tol = 2 * TOL[dtype]
    torch.testing.assert_close(output.double(), full, rtol=tol, atol=tol)
    torch.testing.assert_close(output_lse.double(), full_lse, rtol=1e-5, atol=1e-5)


def test_custom_op_and_compile():
    inputs = make_inputs(4, 2, 8, torch.bfloat16, seed=10)
    want, want_lse = run(*inputs, with_context=3)
    output, output_lse = torch.empty_like(want), torch.empty_like(want_lse)
    torch.ops.attnops.merge_attn_states(output, *inputs[:4], output_lse, 3, None)
    assert torch.equal(output, want) and torch.equal(output_lse, want_lse)

    @torch.compile(fullgraph=True, backend="eager")
    def compiled(output, output_lse, p, pl, s, sl):
        merge.merge_attn_states(output, p, pl, s, sl, output_lse, 3)

    output.zero_()
    compiled(output, output_lse, *inputs)
    assert torch.equal(output, want)


def _good_args(dtype=torch.float32, num_tokens=4, num_heads=3, head_size=8):
    prefix_output, prefix_lse, suffix_output, suffix_lse = make_inputs(num_tokens, num_heads, head_size, dtype)
    return dict(
        output=torch.full_like(prefix_output, 5),
        prefix_output=prefix_output,
        prefix_lse=prefix_lse,
        suffix_output=suffix_output,
        suffix_lse=suffix_lse,
        output_lse=torch.full((num_heads, num_tokens), 5.0),
        prefill_tokens_with_context=None,
        output_scale=None,
    )


def _fp8_args(**changes):
    args = _good_args()
    args["output"] = torch.zeros(4, 3, 8, dtype=torch.float8_e4m3fn)
    args["output_scale"] = torch.tensor([0.5])
    args.update(changes)
    return args


def _strided(t):
    """A view of ``t`` with the same shape whose last dimension has stride 2."""
    return torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2]


BAD_INPUTS = [
    ("output not a tensor", dict(output=[1.0]), TypeError, "output"),
    ("output dtype", dict(output=torch.zeros(4, 3, 8, dtype=torch.float16)), TypeError, "output"),
    ("output shape", dict(output=torch.zeros(4, 3, 9)), ValueError, "output"),
    ("output rank", dict(output=torch.zeros(4, 24)), ValueError, "output"),
    ("output strided", dict(output=_strided(torch.zeros(4, 3, 8))), ValueError, "output"),
    ("prefix dtype", dict(prefix_output=torch.zeros(4, 3, 8, dtype=torch.int32)), TypeError, "prefix_output"),
    ("prefix rank", dict(prefix_output=torch.zeros(4, 24)), ValueError, "prefix_output"),
    ("prefix strided", dict(prefix_output=_strided(torch.zeros(4, 3, 8))), ValueError, "prefix_output"),
    ("suffix dtype", dict(suffix_output=torch.zeros(4, 3, 8, dtype=torch.bfloat16)), TypeError, "suffix_output"),
    ("suffix shape", dict(suffix_output=torch.zeros(4, 2, 8)), ValueError, "suffix_output"),
    ("suffix strided", dict(suffix_output=_strided(torch.zeros(4, 3, 8))), ValueError, "suffix_output"),
    ("prefix_lse dtype", dict(prefix_lse=torch.zeros(3, 4, dtype=torch.float64)), TypeError, "prefix_lse"),
    ("prefix_lse token-major", dict(prefix_lse=torch.zeros(4, 3)), ValueError, "prefix_lse"),
    ("suffix_lse shape", dict(suffix_lse=torch.zeros(3, 5)), ValueError, "suffix_lse"),
    ("suffix_lse not a tensor", dict(suffix_lse=0.0), TypeError, "suffix_lse"),
    ("output_lse dtype", dict(output_lse=torch.zeros(3, 4, dtype=torch.float16)), TypeError, "output_lse"),
    ("output_lse shape", dict(output_lse=torch.zeros(4, 3)), ValueError, "output_lse"),
    ("context negative", dict(prefill_tokens_with_context=-1), ValueError, "prefill_tokens_with_context"),
    ("context too large", dict(prefill_tokens_with_context=5), ValueError, "prefill_tokens_with_context"),
    ("context float", dict(prefill_tokens_with_context=1.0), TypeError, "prefill_tokens_with_context"),
    ("context bool", dict(prefill_tokens_with_context=True), TypeError, "prefill_tokens_with_context"),
    ("fp8 output without scale", dict(output=torch.zeros(4, 3, 8, dtype=torch.float8_e4m3fn)), TypeError, "output"),
    ("scale with fp32 output", dict(output_scale=torch.tensor([0.5])), TypeError, "output"),
    ("scale with e5m2 output", _fp8_args(output=torch.zeros(4, 3, 8, dtype=torch.float8_e5m2)), TypeError, "output"),
    ("scale dtype", _fp8_args(output_scale=torch.tensor([0.5], dtype=torch.float16)), TypeError, "output_scale"),
    ("scale numel", _fp8_args(output_scale=torch.tensor([0.5, 0.5])), ValueError, "output_scale"),
    ("scale zero", _fp8_args(output_scale=torch.tensor([0.0])), ValueError, "output_scale"),
    ("scale negative", _fp8_args(output_scale=torch.tensor([-1.0])), ValueError, "output_scale"),
    ("scale inf", _fp8_args(output_scale=torch.tensor([INF])), ValueError, "output_scale"),
    ("scale nan", _fp8_args(output_scale=torch.tensor([float("nan")])), ValueError, "output_scale"),
    ("device", dict(output_lse=torch.zeros(3, 4, device="meta")), ValueError, "output_lse"),
    ("backend name", dict(backend="cuda"), ValueError, "backend"),
    ("backend triton on cpu", dict(backend="triton"), ValueError, "backend"),
]


@pytest.mark.parametrize(("changes", "error", "name"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_and_writes_nothing(changes, error, name):
    args = {**_good_args(), **changes}
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    with pytest.raises(error, match=name):
        merge.merge_attn_states(**args)
    for key, value in before.items():
        assert torch.equal(args[key].contiguous().view(torch.uint8), value.contiguous().view(torch.uint8)), key


LSE_VALUES = st.one_of(st.floats(-30, 30, allow_nan=False), st.sampled_from([INF, -INF]))


@st.composite
def merge_cases(draw):
    num_tokens = draw(st.integers(0, 5))
    num_heads = draw(st.integers(1, 3))
    head_size = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    lse = st.lists(LSE_VALUES, min_size=num_heads * num_tokens, max_size=num_heads * num_tokens)
    prefix_lse = torch.tensor(draw(lse), dtype=torch.float32).reshape(num_heads, num_tokens)
    suffix_lse = torch.tensor(draw(lse), dtype=torch.float32).reshape(num_heads, num_tokens)
    with_context = draw(st.one_of(st.none(), st.integers(0, num_tokens)))
    seed = draw(st.integers(0, 2**16))
    prefix_output, _, suffix_output, _ = make_inputs(num_tokens, num_heads, head_size, dtype, seed)
    return (prefix_output, prefix_lse, suffix_output, suffix_lse), with_context, dtype


@settings(max_examples=80, deadline=None)
@given(merge_cases())
def test_hypothesis_matches_oracle(case):
    inputs, with_context, dtype = case
    output, output_lse = run(*inputs, with_context=with_context)
    assert_matches(output, output_lse, *oracle(*inputs, with_context), dtype)


@pytest.mark.parametrize("with_context", [None, 0, 4, 7])
def test_token_chunks_agree(monkeypatch, with_context):
    from attnops.merge import reference

    inputs = make_inputs(9, 2, 8, torch.float16, seed=11)
    whole, whole_lse = run(*inputs, with_context=with_context)
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 3 * 2 * 8)
    chunked, chunked_lse = run(*inputs, with_context=with_context)
    assert torch.equal(chunked, whole) and torch.equal(chunked_lse, whole_lse)
    assert_matches(chunked, chunked_lse, *oracle(*inputs, with_context), torch.float16)

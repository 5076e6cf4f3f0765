"""The Triton ``merge_attn_states`` against the PyTorch reference (``backend="torch"``) on the same inputs."""

from __future__ import annotations

import pytest
import torch

import attnops.merge as merge
from attnops.merge import reference
from attnops.merge.api import _dispatcher

pytestmark = pytest.mark.triton

INF = float("inf")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# One rounding step of the output dtype (the two backends' fp32 exp/div may differ by an ulp).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
FP8_DTYPES = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]
SENTINEL = 7.0
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_inputs(num_tokens, num_heads, head_size, dtype, device, seed=0):
    """Random partial outputs ``[T, H, D]`` in ``dtype`` and fp32 lse ``[H, T]`` on ``device``."""
    g = torch.Generator().manual_seed(seed)
    prefix_output = torch.randn(num_tokens, num_heads, head_size, generator=g).to(device, dtype)
    suffix_output = torch.randn(num_tokens, num_heads, head_size, generator=g).to(device, dtype)
    prefix_lse = (torch.randn(num_heads, num_tokens, generator=g) * 3).to(device)
    suffix_lse = (torch.randn(num_heads, num_tokens, generator=g) * 3).to(device)
    return prefix_output, prefix_lse, suffix_output, suffix_lse


def run(backend, inputs, with_context=None, output_scale=None, out_dtype=None, with_lse=True):
    """``(output, output_lse or None)`` of one backend, written over sentinel-filled tensors."""
    prefix_output, prefix_lse = inputs[0], inputs[1]
    output = torch.full_like(prefix_output, SENTINEL, dtype=out_dtype or prefix_output.dtype)
    output_lse = torch.full_like(prefix_lse, SENTINEL) if with_lse else None
    merge.merge_attn_states(output, *inputs, output_lse, with_context, output_scale, backend=backend)
    return output, output_lse


def assert_backends_agree(inputs, dtype, **kwargs):
    """Triton and torch give the same output (within one rounding step) and lse."""
    want, want_lse = run("torch", inputs, **kwargs)
    got, got_lse = run("triton", inputs, **kwargs)
    torch.testing.assert_close(got.double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])
    if want_lse is not None:
        torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)
    return got, got_lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size", [64, 80, 128, 256, 5])
def test_random_matches_torch(device, dtype, head_size):
    inputs = make_inputs(5, 3, head_size, dtype, device, seed=head_size)
    assert_backends_agree(inputs, dtype)


@pytest.mark.parametrize("tile_bytes", [256, 512])
def test_programs_take_blocks_of_heads(device, monkeypatch, tile_bytes):
    # Programs take BLOCK_H heads of one token, in memory order: with 3 heads and 2 or 4 heads a
    # program (fp16, head 64), a token's heads span two programs or one partial one.
    from attnops.merge import triton as kernels

    monkeypatch.setattr(kernels, "_TILE_BYTES", tile_bytes)
    inputs = make_inputs(11, 3, 64, torch.float16, device, seed=3)
    assert_backends_agree(inputs, torch.float16, with_context=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_context", [0, 3, 7])
@pytest.mark.parametrize("with_lse", [True, False])
def test_prefill_tokens_with_context(device, dtype, with_context, with_lse):
    inputs = make_inputs(7, 3, 80, dtype, device, seed=1)
    if with_context < 7:
        inputs[1][0, 6] = float("nan")  # a prefix lse past the context is never read
    inputs[3][1, 5] = INF
    got, got_lse = assert_backends_agree(inputs, dtype, with_context=with_context, with_lse=with_lse)
    # Tokens without context copy the suffix exactly, its lse as given (+inf included).
    assert torch.equal(got[with_context:], inputs[2][with_context:])
    if with_lse:
        assert torch.equal(got_lse[:, with_context:], inputs[3][:, with_context:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_lse_patterns(device, dtype):
    inputs = make_inputs(8, 2, 64, dtype, device, seed=2)
    prefix_output, prefix_lse, suffix_output, suffix_lse = inputs
    cases = [(-INF, 0.5), (INF, 0.5), (0.5, -INF), (0.5, INF), (-INF, -INF), (INF, INF), (-INF, INF), (80.0, -80.0)]
    for t, (p, s) in enumerate(cases):
        prefix_lse[0, t], suffix_lse[0, t] = p, s
    got, got_lse = assert_backends_agree(inputs, dtype)
    # An empty side contributes nothing: the other side comes through exactly.
    for t in (0, 1):
        assert torch.equal(got[t, 0], suffix_output[t, 0])
    for t in (2, 3):
        assert torch.equal(got[t, 0], prefix_output[t, 0])
    # Both empty: an exact copy of the prefix and a merged lse of -inf.
    for t in (4, 5, 6):
        assert torch.equal(got[t, 0], prefix_output[t, 0])
        assert got_lse[0, t] == -INF
    assert not torch.isnan(got.float()).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fp8", FP8_DTYPES)
@pytest.mark.parametrize("with_context", [None, 2])
def test_output_scale_fp8(device, dtype, fp8, with_context):
    inputs = make_inputs(5, 3, 80, dtype, device, seed=3)
    prefix_output, prefix_lse, _, suffix_lse = inputs
    prefix_output[0, 0, :4] = torch.tensor([1000.0, -1000.0, 0.0, 1e-6])
    prefix_lse[0, 0], suffix_lse[0, 0] = 0.0, -INF
    prefix_lse[1, 1] = suffix_lse[1, 1] = -INF
    scale = torch.tensor([0.25], device=device)
    kwargs = dict(with_context=with_context, output_scale=scale, out_dtype=fp8)
    want, want_lse = run("torch", inputs, **kwargs)
    got, got_lse = run("triton", inputs, **kwargs)
    assert got.dtype == fp8
    # Within one fp8 rounding step: the fp32 merges may differ in their last bit.
    torch.testing.assert_close(got.double(), want.double(), rtol=2**-3, atol=2**-9)
    limit = torch.finfo(fp8).max
    assert got[0, 0, 0].item() == limit and got[0, 0, 1].item() == -limit
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fp8", FP8_DTYPES)
def test_fp8_rounding_is_bit_exact(device, fp8):
    # prefix lse 0, suffix empty: the merge is the fp32 prefix exactly, so the
    # bytes show the kernel's fp8 rounding alone. Values cover ties to even,
    # subnormals, signed zeros, the largest finite value and saturation.
    step = torch.arange(-64, 64, dtype=torch.float32)
    values = torch.cat(
        [
            (1 + step / 16) * 2.0 ** (step % 7 - 3),  # halfway between fp8 neighbours
            step * 2.0**-11,  # subnormal multiples and their midpoints
            torch.tensor([0.0, -0.0, 240.0, 248.0, 448.0, 464.0, -1e9, 1e9, 1e-30, -1e-30]),
            torch.randn(118, generator=torch.Generator().manual_seed(4)) * 50,
        ]
    )
    prefix_output = values.reshape(-1, 2, 32).to(device)
    num_tokens = prefix_output.shape[0]
    prefix_lse = torch.zeros(2, num_tokens, device=device)
    suffix_lse = torch.full_like(prefix_lse, -INF)
    inputs = (prefix_output, prefix_lse, torch.ones_like(prefix_output), suffix_lse)
    scale = torch.tensor([1.0], device=device)
    want, _ = run("torch", inputs, output_scale=scale, out_dtype=fp8)
    got, _ = run("triton", inputs, output_scale=scale, out_dtype=fp8)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_views_leave_surroundings_untouched(device, dtype):
    num_tokens, num_heads, head_size = 5, 3, 80
    g = torch.Generator().manual_seed(5)
    prefix_store = torch.randn(num_tokens, num_heads, head_size + 16, generator=g).to(device, dtype)
    suffix_store = torch.randn(num_tokens, num_heads + 2, head_size, generator=g).to(device, dtype)
    inputs = (
        prefix_store[..., 16:],
        torch.randn(num_tokens, num_heads, generator=g).to(device).T,
        suffix_store[:, 1:-1],
        (torch.randn(num_heads, 2 * num_tokens, generator=g) * 3).to(device)[:, ::2],
    )
    stores = {}
    for backend in ("torch", "triton"):
        out_store = torch.full((num_tokens, num_heads + 1, head_size + 8), SENTINEL, dtype=dtype, device=device)
        lse_store = torch.full((num_tokens + 1, num_heads + 2), SENTINEL, device=device)
        output, output_lse = out_store[:, 1:, 4 : 4 + head_size], lse_store[1:, 1:-1].T
        merge.merge_attn_states(output, *inputs, output_lse, 3, None, backend=backend)
        stores[backend] = out_store, lse_store
    torch.testing.assert_close(stores["triton"][0].double(), stores["torch"][0].double(), rtol=TOL[dtype], atol=0)
    torch.testing.assert_close(stores["triton"][1], stores["torch"][1], rtol=1e-5, atol=1e-5)
    out_store, lse_store = stores["triton"]
    assert (out_store[:, 0] == SENTINEL).all() and (out_store[..., :4] == SENTINEL).all()
    assert (out_store[..., 4 + head_size :] == SENTINEL).all()
    assert (lse_store[0] == SENTINEL).all() and (lse_store[:, [0, -1]] == SENTINEL).all()


def test_in_place_into_prefix(device):
    inputs = make_inputs(4, 3, 64, torch.float16, device, seed=6)
    want, want_lse = run("torch", inputs)
    prefix_output, prefix_lse = inputs[0].clone(), inputs[1].clone()
    merge.merge_attn_states(
        prefix_output, prefix_output, prefix_lse, inputs[2], inputs[3], prefix_lse, backend="triton"
    )
    torch.testing.assert_close(prefix_output, want, rtol=TOL[torch.float16], atol=TOL[torch.float16])
    torch.testing.assert_close(prefix_lse, want_lse, rtol=1e-5, atol=1e-5)


def test_zero_tokens(device):
    inputs = make_inputs(0, 2, 64, torch.bfloat16, device)
    output, output_lse = run("triton", inputs, with_context=0)
    assert output.shape == (0, 2, 64) and output_lse.shape == (2, 0)


def test_auto_dispatches_to_triton_only_for_cuda(device, monkeypatch):
    monkeypatch.delenv("ATTNOPS_BACKEND", raising=False)
    triton_impl = _dispatcher.impls["triton"]
    assert triton_impl is not reference.merge_attn_states
    assert _dispatcher.select("auto", torch.device("cuda")) is triton_impl
    assert _dispatcher.select(None, torch.device("cuda")) is triton_impl
    assert _dispatcher.select("auto", torch.device("cpu")) is reference.merge_attn_states
    assert _dispatcher.select("triton", device) is triton_impl


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("with_context", [None, 20000])
def test_large_bf16_matches_torch(device, with_context):
    inputs = make_inputs(32768, 32, 128, torch.bfloat16, device, seed=7)
    inputs[1][:, ::97] = -INF
    inputs[3][:, ::89] = INF
    assert_backends_agree(inputs, torch.bfloat16, with_context=with_context)


@pytest.mark.gpu
@requires_cuda
def test_large_fp8_output_matches_torch(device):
    inputs = make_inputs(4096, 32, 128, torch.bfloat16, device, seed=8)
    scale = torch.tensor([0.05], device=device)
    want, _ = run("torch", inputs, output_scale=scale, out_dtype=torch.float8_e4m3fn)
    got, _ = run("triton", inputs, output_scale=scale, out_dtype=torch.float8_e4m3fn)
    torch.testing.assert_close(got.double(), want.double(), rtol=2**-3, atol=2**-9)
    # Only values within an fp32 ulp of an fp8 rounding boundary may differ.
    assert (got.view(torch.uint8) != want.view(torch.uint8)).float().mean() < 1e-4


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_capture_and_replay(device):
    inputs = make_inputs(1024, 32, 128, torch.bfloat16, device, seed=9)
    output = torch.empty_like(inputs[0])
    output_lse = torch.empty_like(inputs[1])
    scale = torch.tensor([0.5], device=device)
    fp8_output = torch.empty_like(inputs[0], dtype=torch.float8_e4m3fn)

    def step():
        merge.merge_attn_states(output, *inputs, output_lse, 700, backend="triton")
        merge.merge_attn_states(fp8_output, *inputs, None, None, scale, backend="triton")

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    fresh = make_inputs(1024, 32, 128, torch.bfloat16, device, seed=10)
    for target, source in zip(inputs, fresh, strict=True):
        target.copy_(source)
    scale.fill_(0.25)
    graph.replay()
    torch.cuda.synchronize()
    want, want_lse = run("torch", inputs, with_context=700)
    want_fp8, _ = run("torch", inputs, output_scale=scale, out_dtype=torch.float8_e4m3fn, with_lse=False)
    torch.testing.assert_close(output, want, rtol=TOL[torch.bfloat16], atol=TOL[torch.bfloat16])
    torch.testing.assert_close(output_lse, want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fp8_output.double(), want_fp8.double(), rtol=2**-3, atol=2**-9)


@pytest.mark.gpu
@requires_cuda
def test_new_token_counts_reuse_the_compiled_kernel(device, monkeypatch):
    # The lse head stride is the token count: a new count must hit the same launch (no pass
    # through Triton's JIT), with a result as exact as the first count's.
    from attnops.merge import triton as kernels

    monkeypatch.setattr(kernels._launcher, "compiled", {})
    for num_tokens in (512, 513, 1000, 16 * 77):
        inputs = make_inputs(num_tokens, 32, 128, torch.bfloat16, device, seed=num_tokens)
        assert_backends_agree(inputs, torch.bfloat16)
    assert len(kernels._launcher.compiled) == 1

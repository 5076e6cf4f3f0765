"""The Triton ``reshape_and_cache`` against the PyTorch reference (``backend="torch"``): bit-exact caches."""

from __future__ import annotations

import pytest
import torch

import attnops.cache as cache
from attnops.cache.api import _dispatcher

pytestmark = pytest.mark.triton

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def caches(num_blocks, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype, device):
    """A key/value cache pair filled with a sentinel (NaN, or byte 0x5A for fp8) so stray writes show."""
    storage = dtype if kv_cache_dtype == "auto" else torch.uint8
    x = 16 // storage.itemsize
    fill = float("nan") if storage != torch.uint8 else 0x5A
    key_cache = torch.full((num_blocks, num_kv_heads, head_size // x, block_size, x), fill, dtype=storage)
    value_cache = torch.full((num_blocks, num_kv_heads, head_size, block_size), fill, dtype=storage)
    return key_cache.to(device), value_cache.to(device)


def write_both(key, value, slots, kv_cache_dtype, scales, num_blocks, block_size):
    """The caches each backend writes from the same inputs: ``(triton, torch)`` pairs."""
    num_kv_heads, head_size = key.shape[1:]
    written = []
    for backend in ("triton", "torch"):
        pair = caches(num_blocks, num_kv_heads, head_size, block_size, key.dtype, kv_cache_dtype, key.device)
        cache.reshape_and_cache(key, value, *pair, slots, kv_cache_dtype, *scales, backend=backend)
        written.append(pair)
    return written


def assert_same_bits(got, want):
    for actual, expected in zip(got, want, strict=True):
        assert torch.equal(actual.view(torch.uint8), expected.view(torch.uint8))


# (head_size, block_size, num_kv_heads, dtype): every head and block size, MHA/GQA head counts, all dtypes.
CASES = [
    (32, 8, 1, torch.float32),
    (64, 16, 2, torch.float16),
    (80, 32, 3, torch.bfloat16),
    (96, 16, 4, torch.float32),
    (112, 8, 2, torch.bfloat16),
    (120, 16, 1, torch.float16),
    (128, 32, 8, torch.bfloat16),
    (192, 16, 2, torch.float16),
    (256, 8, 5, torch.float32),
]


@pytest.mark.parametrize(("head_size", "block_size", "num_kv_heads", "dtype"), CASES)
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_matches_torch_bit_for_bit(device, head_size, block_size, num_kv_heads, dtype, kv_cache_dtype, slot_dtype):
    if kv_cache_dtype != "auto" and head_size % 16:
        pytest.skip("an fp8 key cache holds 16-element pieces of a head")
    num_blocks = 5
    generator = torch.Generator().manual_seed(head_size + block_size)
    # key and value are slices of a fused qkv tensor (strided tokens), value also transposed per head.
    qkv = (torch.randn(9, 3, num_kv_heads, head_size, generator=generator) * 40).to(dtype)
    key = qkv[:, 1].to(device)
    value = qkv[:, 2].to(device).transpose(1, 2).contiguous().transpose(1, 2)
    # Padding tokens (negative slots), the first and last slot, a block boundary.
    last = num_blocks * block_size - 1
    slots = [0, -1, block_size - 1, block_size, 3 * block_size + 2, -5, last, block_size + 1, 2 * block_size]
    slots = torch.tensor(slots, dtype=slot_dtype, device=device)
    scales = (torch.tensor([0.37], device=device), torch.tensor([2.5], device=device))
    got, want = write_both(key, value, slots, kv_cache_dtype, scales, num_blocks, block_size)
    assert_same_bits(got, want)


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2"])
def test_fp8_rounding_saturation_and_specials(device, kv_cache_dtype):
    # fp32 values around every fp8 exponent, exact ties between neighbouring codes, subnormals,
    # values past the largest finite code, infinities and NaN of both signs: bytes as PyTorch's.
    exponents = torch.arange(-24, 20, dtype=torch.float32)
    mantissas = torch.tensor([1.0, 1.0625, 1.125, 1.1875, 1.25, 1.3125, 1.375, 1.5, 1.625, 1.75, 1.875, 1.96875])
    grid = (mantissas[None, :] * torch.exp2(exponents)[:, None]).flatten()
    specials = torch.tensor([0.0, -0.0, 448.0, 464.0, 480.0, 57344.0, 61440.0, 1e30, float("inf"), float("nan")])
    values = torch.cat([grid, -grid, specials, -specials])
    values = torch.cat([values, torch.zeros(-values.numel() % 64)]).reshape(-1, 1, 64)
    slots = torch.arange(values.shape[0], device=device)
    scales = (torch.tensor([1.0], device=device), torch.tensor([0.75], device=device))
    values = values.to(device)
    got, want = write_both(values, values, slots, kv_cache_dtype, scales, -(-values.shape[0] // 16), 16)
    assert_same_bits(got, want)


def test_padding_tokens_and_zero_tokens_write_nothing(device):
    key = torch.randn(4, 2, 64, device=device)
    for slots in (torch.full((4,), -1, device=device), None):
        pair = caches(3, 2, 64, 16, torch.float32, "auto", device)
        if slots is None:
            key, slots = key[:0], torch.empty(0, dtype=torch.int64, device=device)
        scale = torch.ones(1, device=device)
        cache.reshape_and_cache(key, key, *pair, slots, "auto", scale, scale, backend="triton")
        assert all(t.isnan().all() for t in pair)


def test_auto_dispatches_to_triton_only_for_cuda(device):
    from attnops.cache import triton as kernels

    assert _dispatcher.select("auto", torch.device("cuda")) is kernels.reshape_and_cache
    assert _dispatcher.select("auto", torch.device("cpu")) is _dispatcher.impls["torch"]
    assert _dispatcher.select("triton", device) is kernels.reshape_and_cache


@pytest.mark.gpu
@requires_cuda
def test_decode_step_in_a_cuda_graph(device):
    # A decode step's cache write captured once, replayed with new tokens and new slots.
    key_cache, value_cache = caches(64, 8, 128, 16, torch.bfloat16, "auto", device)
    key = torch.randn(32, 8, 128, dtype=torch.bfloat16, device=device)
    value = torch.randn_like(key)
    slots = torch.randperm(64 * 16, device=device)[:32]
    scales = (torch.ones(1, device=device), torch.ones(1, device=device))
    cache.reshape_and_cache(key, value, key_cache, value_cache, slots, "auto", *scales)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cache.reshape_and_cache(key, value, key_cache, value_cache, slots, "auto", *scales)
    key.normal_()
    value.normal_()
    slots.copy_(torch.randperm(64 * 16, device=device)[:32])
    graph.replay()
    want = caches(64, 8, 128, 16, torch.bfloat16, "auto", device)
    want[0].copy_(key_cache)
    want[1].copy_(value_cache)
    cache.reshape_and_cache(key, value, *want, slots, "auto", *scales, backend="torch")
    assert_same_bits((key_cache, value_cache), want)

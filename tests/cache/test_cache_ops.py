"""reshape_and_cache and the cache helpers against element-by-element reads of vLLM's layout."""

from __future__ import annotations

import pytest
import torch

import attnops.cache as cache

FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def read_slot(key_cache, value_cache, slot, kv_head, kv_cache_dtype="auto", k_scale=1.0, v_scale=1.0):
    """Key and value vectors (float64) stored at flat ``slot`` for ``kv_head``, one element at a time."""
    block_size, x = key_cache.shape[3], key_cache.shape[4]
    head_size = value_cache.shape[2]
    block, offset = divmod(slot, block_size)
    key, value = [], []
    for d in range(head_size):
        k = key_cache[block, kv_head, d // x, offset, d % x]
        v = value_cache[block, kv_head, d, offset]
        if kv_cache_dtype != "auto":
            k = k.view(FP8[kv_cache_dtype]).double() * k_scale
            v = v.view(FP8[kv_cache_dtype]).double() * v_scale
        key.append(float(k))
        value.append(float(v))
    return torch.tensor(key, dtype=torch.float64), torch.tensor(value, dtype=torch.float64)


def empty_caches(num_blocks, num_kv_heads, head_size, block_size, storage):
    x = 16 // torch.empty((), dtype=storage).element_size()
    fill = 0x7F if storage == torch.uint8 else float("nan")
    key_cache = torch.full((num_blocks, num_kv_heads, head_size // x, block_size, x), fill, dtype=storage)
    value_cache = torch.full((num_blocks, num_kv_heads, head_size, block_size), fill, dtype=storage)
    return key_cache, value_cache


def scales(k=1.0, v=1.0):
    return torch.tensor(k), torch.tensor([v])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_round_trip_with_padding_and_strided_inputs(dtype, block_size, slot_dtype):
    num_tokens, num_kv_heads, head_size, num_blocks = 7, 2, 32, 4
    g = torch.Generator().manual_seed(1)
    # key and value are slices of a fused qkv tensor: strided along the token dimension.
    qkv = torch.randn(num_tokens, 3, num_kv_heads, head_size, generator=g).to(dtype)
    key, value = qkv[:, 1], qkv[:, 2]
    slots = torch.tensor([5, -1, 3 * block_size + 1, 0, -7, block_size, 2 * block_size + block_size - 1])
    key_cache, value_cache = empty_caches(num_blocks, num_kv_heads, head_size, block_size, dtype)
    before_k, before_v = key_cache.clone(), value_cache.clone()
    cache.reshape_and_cache(key, value, key_cache, value_cache, slots.to(slot_dtype), "auto", *scales())
    written = set()
    for i, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        written.add(slot)
        for h in range(num_kv_heads):
            k, v = read_slot(key_cache, value_cache, slot, h)
            torch.testing.assert_close(k, key[i, h].double(), rtol=0, atol=0)
            torch.testing.assert_close(v, value[i, h].double(), rtol=0, atol=0)
    # Every other slot is untouched.
    for slot in set(range(num_blocks * block_size)) - written:
        block, offset = divmod(slot, block_size)
        torch.testing.assert_close(
            key_cache[block, :, :, offset], before_k[block, :, :, offset], rtol=0, atol=0, equal_nan=True
        )
        torch.testing.assert_close(
            value_cache[block, :, :, offset], before_v[block, :, :, offset], rtol=0, atol=0, equal_nan=True
        )


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fp8_quantises_with_scale_and_saturates(kv_cache_dtype, dtype):
    num_tokens, num_kv_heads, head_size, block_size = 5, 1, 64, 8
    g = torch.Generator().manual_seed(2)
    key = (torch.randn(num_tokens, num_kv_heads, head_size, generator=g) * 3).to(dtype)
    value = (torch.randn(num_tokens, num_kv_heads, head_size, generator=g) * 3).to(dtype)
    key[0, 0, 0] = 1e5  # beyond every fp8 range after scaling: saturates, never inf/NaN
    value[0, 0, 1] = -1e5
    k_scale, v_scale = 0.5, 2.0
    key_cache, value_cache = empty_caches(2, num_kv_heads, head_size, block_size, torch.uint8)
    slots = torch.arange(num_tokens) + 3
    cache.reshape_and_cache(key, value, key_cache, value_cache, slots, kv_cache_dtype, *scales(k_scale, v_scale))
    fp8 = FP8[kv_cache_dtype]
    fp8_max = torch.finfo(fp8).max
    for i in range(num_tokens):
        k, v = read_slot(key_cache, value_cache, int(slots[i]), 0, kv_cache_dtype, k_scale, v_scale)
        want_k = (key[i, 0].double() / k_scale).clamp(-fp8_max, fp8_max).to(fp8).double() * k_scale
        want_v = (value[i, 0].double() / v_scale).clamp(-fp8_max, fp8_max).to(fp8).double() * v_scale
        torch.testing.assert_close(k, want_k, rtol=0, atol=0)
        torch.testing.assert_close(v, want_v, rtol=0, atol=0)
    assert k_scale * fp8_max == read_slot(key_cache, value_cache, int(slots[0]), 0, kv_cache_dtype, k_scale)[0][0]


def test_registered_op():
    key = torch.randn(2, 1, 32)
    key_cache, value_cache = empty_caches(1, 1, 32, 8, torch.float32)
    torch.ops.attnops.reshape_and_cache(key, -key, key_cache, value_cache, torch.tensor([3, 6]), "auto", *scales())
    k, v = read_slot(key_cache, value_cache, 6, 0)
    torch.testing.assert_close(k, key[1, 0].double())
    torch.testing.assert_close(v, -key[1, 0].double())


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3", "fp8_e5m2"])
def test_make_and_gather_paged_kv(kv_cache_dtype):
    seq_lens = [0, 1, 9, 16, 23]
    num_kv_heads, head_size, block_size, dtype = 2, 32, 8, torch.bfloat16
    k_scale, v_scale = (0.5, 1.5) if kv_cache_dtype != "auto" else (1.0, 1.0)
    kv = cache.make_paged_kv_cache(
        seq_lens, num_kv_heads, head_size, block_size, dtype, kv_cache_dtype, seed=3, extra_blocks=2,
        k_scale=k_scale, v_scale=v_scale,
    )  # fmt: skip
    assert kv.seq_lens.dtype == torch.int32 and kv.seq_lens.tolist() == seq_lens
    assert kv.block_tables.dtype == torch.int32 and kv.max_seq_len == 23 and kv.block_size == block_size
    used = [b for s, n in enumerate(seq_lens) for b in kv.block_tables[s, : -(-n // block_size)].tolist()]
    assert len(set(used)) == len(used) == 8 and kv.key_cache.shape[0] == 10
    max_len = 25
    keys, values = cache.gather_paged_kv(
        kv.key_cache, kv.value_cache, kv.block_tables, kv.seq_lens, max_len, kv_cache_dtype, kv.k_scale, kv.v_scale,
        dtype=dtype,
    )  # fmt: skip
    assert keys.shape == values.shape == (len(seq_lens), num_kv_heads, max_len, head_size)
    assert keys.dtype == values.dtype == dtype
    for s, n in enumerate(seq_lens):
        for t in range(max_len):
            for h in range(num_kv_heads):
                if t >= n:
                    assert not keys[s, h, t].any() and not values[s, h, t].any()
                    continue
                slot = int(kv.block_tables[s, t // block_size]) * block_size + t % block_size
                k, v = read_slot(kv.key_cache, kv.value_cache, slot, h, kv_cache_dtype, k_scale, v_scale)
                # Dequantised values are rounded to the compute dtype, as in vLLM's kernels.
                torch.testing.assert_close(keys[s, h, t].double(), k.to(dtype).double(), rtol=0, atol=0)
                torch.testing.assert_close(values[s, h, t].double(), v.to(dtype).double(), rtol=0, atol=0)
    # Slots holding no token are poisoned with NaN.
    last = int(kv.block_tables[4, 2]) * block_size + 7
    assert read_slot(kv.key_cache, kv.value_cache, last, 0, kv_cache_dtype)[0].isnan().all()


def test_gather_needs_dtype_for_fp8():
    kv = cache.make_paged_kv_cache([3], 1, 32, 8, torch.float16, "fp8")
    with pytest.raises(ValueError, match="dtype"):
        cache.gather_paged_kv(kv.key_cache, kv.value_cache, kv.block_tables, kv.seq_lens, 3, "fp8", kv.k_scale)


def _good_args():
    key = torch.randn(3, 2, 32, dtype=torch.float16)
    key_cache, value_cache = empty_caches(2, 2, 32, 8, torch.float16)
    return {
        "key": key,
        "value": key.clone(),
        "key_cache": key_cache,
        "value_cache": value_cache,
        "slot_mapping": torch.tensor([0, -1, 15]),
        "kv_cache_dtype": "auto",
        "k_scale": torch.tensor(1.0),
        "v_scale": torch.tensor(1.0),
    }


BAD_INPUTS = [
    ("key", torch.randn(3, 2, 32, dtype=torch.float64), TypeError),
    ("key", torch.randn(3, 64, dtype=torch.float16), ValueError),
    ("key", torch.randn(3, 1, 32, dtype=torch.float16), ValueError),
    ("value", torch.randn(3, 2, 32, dtype=torch.bfloat16), TypeError),
    ("value", torch.randn(4, 2, 32, dtype=torch.float16), ValueError),
    ("key_cache", torch.zeros(2, 2, 4, 8, 8, dtype=torch.bfloat16), TypeError),
    ("key_cache", torch.zeros(2, 2, 8, 8, 4, dtype=torch.float16), ValueError),
    ("key_cache", torch.zeros(2, 2, 32, 8, dtype=torch.float16), ValueError),
    ("key_cache", torch.zeros(2, 2, 6, 8, 8, dtype=torch.float16), ValueError),
    ("key_cache", torch.zeros(2, 2, 4, 12, 8, dtype=torch.float16), ValueError),
    ("key_cache", torch.zeros(2, 2, 4, 8, 16, dtype=torch.float16)[..., ::2], ValueError),
    ("value_cache", torch.zeros(2, 2, 32, 16, dtype=torch.float16), ValueError),
    ("value_cache", torch.zeros(3, 2, 32, 8, dtype=torch.float16), ValueError),
    ("value_cache", torch.zeros(2, 2, 32, 8, dtype=torch.float32), TypeError),
    ("slot_mapping", torch.tensor([0.0, 1.0, 2.0]), TypeError),
    ("slot_mapping", torch.tensor([0, 1]), ValueError),
    ("slot_mapping", torch.tensor([0, 1, 16]), ValueError),
    ("slot_mapping", torch.tensor([[0, 1, 2]]), ValueError),
    ("kv_cache_dtype", "fp4", ValueError),
    ("kv_cache_dtype", "fp8", TypeError),
    ("k_scale", torch.tensor(1.0, dtype=torch.float16), TypeError),
    ("v_scale", torch.ones(2), ValueError),
    ("v_scale", 1.0, TypeError),
    ("slot_mapping", torch.tensor([0, 1, 2], device="meta"), ValueError),
]


@pytest.mark.parametrize(("name", "bad", "error"), BAD_INPUTS)
def test_bad_input_raises_before_writing(name, bad, error):
    args = _good_args()
    args[name] = bad
    before_k, before_v = args["key_cache"].clone(), args["value_cache"].clone()
    match = "key_cache" if name == "kv_cache_dtype" and bad == "fp8" else name
    with pytest.raises(error, match=match):
        cache.reshape_and_cache(**args)
    torch.testing.assert_close(args["key_cache"], before_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(args["value_cache"], before_v, rtol=0, atol=0, equal_nan=True)


def test_custom_op_registration_passes_opcheck():
    key = torch.randn(3, 2, 32, dtype=torch.bfloat16)
    key_cache, value_cache = empty_caches(2, 2, 32, 8, torch.uint8)
    args = (key, key, key_cache, value_cache, torch.tensor([0, -1, 9]), "fp8", *scales(0.5, 2.0))
    torch.library.opcheck(torch.ops.attnops.reshape_and_cache.default, args)

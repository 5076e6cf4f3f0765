"""Bad input to paged_attention_v1/v2 and paged_decode: the right error, naming the argument, nothing written."""

from __future__ import annotations

import pytest
import torch

from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import paged_attention_v1, paged_attention_v2, paged_decode

NUM_SEQS, NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 2, 4, 2, 32, 8


def good_v1_args():
    cache = make_paged_kv_cache([5, 12], NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE, torch.float16)
    query = torch.randn(NUM_SEQS, NUM_HEADS, HEAD_SIZE, dtype=torch.float16)
    return {
        "out": torch.full_like(query, 7),
        "query": query,
        "key_cache": cache.key_cache,
        "value_cache": cache.value_cache,
        "num_kv_heads": NUM_KV_HEADS,
        "scale": 0.2,
        "block_tables": cache.block_tables,
        "seq_lens": cache.seq_lens,
        "block_size": BLOCK_SIZE,
        "max_seq_len": 12,
        "alibi_slopes": None,
        "kv_cache_dtype": "auto",
        "k_scale": cache.k_scale,
        "v_scale": cache.v_scale,
    }


def good_v2_args():
    args = good_v1_args()
    args["exp_sum"] = torch.full((NUM_SEQS, NUM_HEADS, 1), 7.0)
    args["max_logits"] = torch.full((NUM_SEQS, NUM_HEADS, 1), 7.0)
    args["tmp_out"] = torch.full((NUM_SEQS, NUM_HEADS, 1, HEAD_SIZE), 7.0, dtype=torch.float16)
    return args


def f16(*shape):
    return torch.zeros(shape, dtype=torch.float16)


def i32(*values):
    return torch.tensor(values, dtype=torch.int32)


# (argument, bad value, error, text the message must contain)
COMMON_BAD = [
    ("query", torch.randn(2, 4, 32, dtype=torch.float64), TypeError, "query"),
    ("query", f16(2, 128), ValueError, "query"),
    ("query", f16(2, 32, 4).transpose(1, 2), ValueError, "query"),
    ("query", f16(2, 3, 32), ValueError, "num_kv_heads"),
    ("query", f16(2, 4, 64), ValueError, "query"),
    ("key_cache", torch.zeros(3, 2, 4, 8, 8, dtype=torch.bfloat16), TypeError, "key_cache"),
    ("key_cache", f16(3, 2, 32, 8), ValueError, "key_cache"),
    ("key_cache", f16(3, 2, 8, 8, 4), ValueError, "key_cache"),
    ("key_cache", f16(3, 2, 6, 8, 8), ValueError, "head size"),
    ("key_cache", f16(3, 2, 4, 64, 8), ValueError, "block size"),
    ("key_cache", f16(3, 2, 4, 8, 16)[..., ::2], ValueError, "key_cache"),
    ("value_cache", f16(3, 2, 32, 16), ValueError, "value_cache"),
    ("value_cache", torch.zeros(3, 2, 32, 8), TypeError, "value_cache"),
    ("value_cache", f16(3, 2, 8, 32).transpose(2, 3), ValueError, "value_cache"),
    ("kv_cache_dtype", "fp4", ValueError, "kv_cache_dtype"),
    ("kv_cache_dtype", "fp8_e5m2", TypeError, "key_cache"),
    ("block_tables", torch.zeros(2, 2, dtype=torch.int64), TypeError, "block_tables"),
    ("block_tables", torch.zeros(3, 2, dtype=torch.int32), ValueError, "block_tables"),
    ("block_tables", torch.zeros(2, 4, dtype=torch.int32)[:, ::2], ValueError, "block_tables"),
    ("block_tables", torch.zeros(2, 1, dtype=torch.int32), ValueError, "block_tables"),
    ("block_tables", torch.tensor([[0, 0], [1, 3]], dtype=torch.int32), ValueError, "block_tables"),
    ("block_tables", torch.tensor([[-1, 0], [1, 2]], dtype=torch.int32), ValueError, "block_tables"),
    ("seq_lens", torch.tensor([5, 12]), TypeError, "seq_lens"),
    ("seq_lens", i32(5, 12, 1), ValueError, "seq_lens"),
    ("seq_lens", i32(5, 13), ValueError, "seq_lens"),
    ("seq_lens", i32(-1, 12), ValueError, "seq_lens"),
    ("alibi_slopes", torch.zeros(4, dtype=torch.float16), TypeError, "alibi_slopes"),
    ("alibi_slopes", torch.zeros(2), ValueError, "alibi_slopes"),
    ("alibi_slopes", torch.zeros(4, device="meta"), ValueError, "alibi_slopes"),
    ("k_scale", torch.tensor(1.0, dtype=torch.float64), TypeError, "k_scale"),
    ("k_scale", torch.ones(2), ValueError, "k_scale"),
    ("v_scale", 1.0, TypeError, "v_scale"),
    ("max_seq_len", 11, ValueError, "seq_lens"),
]

V1_BAD = [
    *COMMON_BAD,
    ("out", torch.zeros(2, 4, 32), TypeError, "out"),
    ("out", f16(2, 4, 31), ValueError, "out"),
    ("out", f16(4, 2, 32).transpose(0, 1), ValueError, "out"),
    ("out", torch.zeros(2, 4, 32, dtype=torch.float16, device="meta"), ValueError, "out"),
    ("num_kv_heads", 1, ValueError, "num_kv_heads"),
    ("num_kv_heads", 2.0, TypeError, "num_kv_heads"),
    ("scale", "0.2", TypeError, "scale"),
    ("block_size", 16, ValueError, "block_size"),
    ("block_size", 12, ValueError, "block_size"),
    ("max_seq_len", -1, ValueError, "max_seq_len"),
    ("tp_rank", -1, ValueError, "tp_rank"),
    ("blocksparse_vert_stride", 2.5, TypeError, "blocksparse_vert_stride"),
    ("blocksparse_local_blocks", None, TypeError, "blocksparse_local_blocks"),
]


def assert_unchanged(args, before):
    for name, value in before.items():
        torch.testing.assert_close(args[name], value, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(("name", "bad", "error", "match"), V1_BAD)
def test_v1_bad_input(name, bad, error, match):
    args = good_v1_args()
    paged_attention_v1(**args)  # the good arguments work
    args["out"].fill_(7)
    args[name] = bad
    before = {"out": args["out"].clone()} if name != "out" else {}
    with pytest.raises(error, match=match):
        paged_attention_v1(**args)
    assert_unchanged(args, before)


def test_v1_bad_blocksparse_block_size():
    args = good_v1_args()
    before = {"out": args["out"].clone()}
    with pytest.raises(ValueError, match="blocksparse_block_size"):
        paged_attention_v1(**args, blocksparse_vert_stride=2, blocksparse_block_size=0)
    assert_unchanged(args, before)


V2_BAD = [
    *V1_BAD,
    ("exp_sum", torch.zeros(2, 4, 1, dtype=torch.float16), TypeError, "exp_sum"),
    ("exp_sum", torch.zeros(2, 4), ValueError, "exp_sum"),
    ("exp_sum", torch.zeros(2, 4, 0), ValueError, "exp_sum"),
    ("exp_sum", torch.zeros(4, 2, 1).transpose(0, 1), ValueError, "exp_sum"),
    ("max_logits", torch.zeros(2, 4, 2), ValueError, "max_logits"),
    ("max_logits", torch.zeros(2, 4, 1, dtype=torch.bfloat16), TypeError, "max_logits"),
    ("tmp_out", torch.zeros(2, 4, 1, 32), TypeError, "tmp_out"),
    ("tmp_out", f16(2, 4, 2, 32), ValueError, "tmp_out"),
    ("tmp_out", f16(4, 2, 1, 32).transpose(0, 1), ValueError, "tmp_out"),
]


@pytest.mark.parametrize(("name", "bad", "error", "match"), V2_BAD)
def test_v2_bad_input(name, bad, error, match):
    args = good_v2_args()
    paged_attention_v2(**args)
    args[name] = bad
    outputs = ("out", "exp_sum", "max_logits", "tmp_out")
    for output in outputs:
        if output != name:
            args[output].fill_(7)
    before = {o: args[o].clone() for o in outputs if o != name}
    with pytest.raises(error, match=match):
        paged_attention_v2(**args)
    assert_unchanged(args, before)


def test_v2_too_few_partitions_for_max_seq_len():
    args = good_v2_args()
    args["max_seq_len"] = 513
    with pytest.raises(ValueError, match="exp_sum"):
        paged_attention_v2(**args)


DECODE_DROPPED = {"out", "num_kv_heads", "block_size"}


@pytest.mark.parametrize(
    ("name", "bad", "error", "match"),
    [
        *COMMON_BAD,
        ("scale", "0.2", TypeError, "scale"),
        ("k_scale", None, None, None),
        ("max_seq_len", None, None, None),
        ("max_seq_len", -1, ValueError, "max_seq_len"),
    ],
)
def test_paged_decode_bad_input(name, bad, error, match):
    args = {k: v for k, v in good_v1_args().items() if k not in DECODE_DROPPED}
    args[name] = bad
    positional = [args.pop(k) for k in ("query", "key_cache", "value_cache", "block_tables", "seq_lens")]
    if error is None:  # optional arguments
        paged_decode(*positional, **args)
        return
    with pytest.raises(error, match=match):
        paged_decode(*positional, **args)

"""Context-parallel decode over gloo equals single-device decode."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnops.distributed import merge_partials

WORKER = Path(__file__).with_name("cp_worker.py")


@pytest.mark.parametrize(
    ("world", "split", "dtype", "kv_cache_dtype"),
    [
        (2, "chunks", "float32", "auto"),
        (3, "blocks", "bfloat16", "auto"),
        (2, "blocks", "float16", "fp8_e4m3"),
    ],
)
def test_context_parallel_matches_single_device(tmp_path, world, split, dtype, kv_cache_dtype):
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(world), str(store), split, dtype, kv_cache_dtype],
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results


def test_merge_partials_matches_full_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 12, generator=gen, dtype=torch.float64)  # [tokens, heads, keys]
    values = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    full = torch.softmax(logits, -1) @ values
    parts, lses = [], []
    for keys in (slice(0, 5), slice(5, 5), slice(5, 12)):
        part = logits[..., keys]
        lse = torch.logsumexp(part, -1)
        out = torch.softmax(part, -1) @ values[keys] if part.shape[-1] else torch.zeros(3, 2, 8, dtype=torch.float64)
        parts.append(out.float())
        lses.append(lse.T.contiguous().float())
    merged, merged_lse = merge_partials(parts, lses)
    torch.testing.assert_close(merged.double(), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_lse.double(), torch.logsumexp(logits, -1).T, atol=1e-5, rtol=1e-5)


def test_merge_partials_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="outputs/lses"):
        merge_partials([torch.zeros(1, 1, 8)], [])

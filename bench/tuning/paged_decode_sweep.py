"""Launch-parameter sweep of the Triton paged-decode kernel (run on a GPU machine).

PYTHONPATH=src python bench/tuning/paged_decode_sweep.py
Times paged_attention_v1 (bf16, 32 q / 8 kv heads, head 128, block 16) with
do_bench (L2 flushed, median) over TILE × num_warps × num_stages × split and
prints µs and % of the measured copy bandwidth, best first per shape.
"""

import functools
import itertools

import torch
import triton.testing

from attnops.bench.bandwidth import measure_peak_bandwidth
from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import triton as kernels
from attnops.paged_attention.api import _v1_dispatcher

SHAPES = [(1, 16384), (8, 4096), (32, 4096), (128, 4096)]
TILES, WARPS, STAGES, SPLITS = (32, 64, 128), (4, 8), (1, 2, 3, 4), (128, 512)
base_config = kernels._config


def sweep_shape(impl, num_seqs: int, context: int, peak: float) -> list[tuple]:
    """(µs, TILE, num_warps, num_stages, split, % of peak) of every configuration at one shape."""
    cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cuda")
    query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    args = (out, query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 128**-0.5, None,
            "auto", cache.k_scale, cache.v_scale, None)  # fmt: skip
    nbytes = num_seqs * context * 8 * 128 * 2 * 2
    rows = []
    for tile, warps, stages, split in itertools.product(TILES, WARPS, STAGES, SPLITS):
        overrides = {"TILE": tile, "num_warps": warps, "num_stages": stages}
        kernels._config = lambda *a, overrides=overrides: {**base_config(*a), **overrides}
        try:
            call = functools.partial(impl, *args, split)
            us = triton.testing.do_bench(call, warmup=10, rep=40, return_mode="median") * 1e3
        except Exception as error:  # a configuration out of registers or shared memory
            rows.append((float("inf"), tile, warps, stages, split, type(error).__name__))
            continue
        finally:
            kernels._config = base_config
        rows.append((us, tile, warps, stages, split, f"{nbytes / us / 1e3 / peak * 100:.1f}%"))
    return sorted(rows)


def main() -> None:
    peak = measure_peak_bandwidth(torch.device("cuda"), nbytes=1 << 30, budget_ms=100).gbps
    impl = _v1_dispatcher.impls["triton"]
    for num_seqs, context in SHAPES:
        print(f"seqs={num_seqs} ctx={context} peak={peak:.0f} GB/s")
        for us, tile, warps, stages, split, note in sweep_shape(impl, num_seqs, context, peak)[:6]:
            print(f"  us={us:.1f} TILE={tile} warps={warps} stages={stages} split={split} {note}")


if __name__ == "__main__":
    main()

"""Split-size sweep of the Triton paged decode (run on a GPU machine): the wave-tail hypothesis.

PYTHONPATH=src python bench/tuning/paged_split_sweep.py
Times paged_attention_v1 (bf16, 32 q / 8 kv heads, head 128, block 16) by CUDA-graph replay (L2
flushed) at the default split (printed with the split it chose), then with explicit splits — any
multiple of the tile, not only powers of two — under two tile/stage configurations, on the SPEC
§3 cells, and prints each time with the launch's programs and its waves over the resident programs
the driver's occupancy calculator gives for the compiled kernel. v2 is timed at whole partitions
and at sub-splits of 256 and 128 tokens. The explicit splits cover the largest cells, with
``--all`` all of them; ``--defaults`` times the defaults only.
"""

import functools
import sys

import torch
from workloads import decode_calls

from attnops._common.backend import sm_count
from attnops._common.fastpath import _resident_blocks
from attnops.bench.bandwidth import measure_peak_bandwidth
from attnops.bench.timing import time_cuda_graph
from attnops.paged_attention import triton as kernels

CELLS = ((8, 16384), (32, 4096), (128, 1024), (8, 4096), (32, 1024), (8, 1024), (1, 16384), (1, 4096))
LARGE_CELLS = ((128, 4096), (32, 16384), (128, 16384))
GRID = [(s, c) for s in (1, 8, 32, 128) for c in (1024, 4096, 16384)]
SPLITS = (128, 192, 256, 320, 384, 448, 512, 576, 640, 768, 1024)
LARGE_SPLITS = (512, 1024, 2048, 4096)
CONFIGS = ((32, 1), (64, 2))


# The module's own launch constants, which the sweep overrides.
TUNED = ("_TILE_TOKENS", "_NUM_STAGES", "_MANY_TILE_TOKENS", "_MANY_STAGES")
DEFAULTS = {name: getattr(kernels, name) for name in TUNED}


def _set(tile: int, stages: int) -> None:
    """Both tile configurations (few and many programs) at ``tile`` tokens and ``stages`` stages."""
    _apply(dict(_TILE_TOKENS=tile, _MANY_TILE_TOKENS=tile, _NUM_STAGES=stages, _MANY_STAGES=stages))


def _apply(values: dict) -> None:
    for name, value in values.items():
        setattr(kernels, name, value)
    kernels._config.cache_clear()
    kernels._partition_launcher.compiled.clear()
    kernels._clear_plans()
    kernels._reduce_launcher.compiled.clear()


def _us(call) -> float:
    try:
        return time_cuda_graph(call, budget_ms=25).median_us
    except Exception as error:  # out of shared memory or registers
        print(f"    failed: {type(error).__name__}")
        return float("inf")


def _resident() -> int:
    compiled = list(kernels._partition_launcher.compiled.values())[-1][0]
    return _resident_blocks(compiled)


def _default_split(v1) -> int:
    """The split of the v1 call ``v1`` (a partial of the Triton entry point) at the default launch plan."""
    _, query, key_cache, value_cache, block_tables, _, _, alibi_slopes, kv_cache_dtype, *_ = v1.args
    layout = kernels._layout(query, key_cache, value_cache, block_tables, alibi_slopes, kv_cache_dtype, None)
    return kernels._v1_plan(layout, None, False).split


def defaults(peak: float) -> None:
    _apply(DEFAULTS)
    for num_seqs, context in GRID:
        v1, v2, nbytes = decode_calls(num_seqs, context)
        t1 = _us(v1)
        split = _default_split(v1)
        t2 = _us(v2)
        print(f"  defaults seqs={num_seqs:3d} ctx={context:5d}: v1 {t1:7.1f} us {nbytes / t1 / 1e3 / peak:6.1%} "
              f"(split {split})  v2 {t2:7.1f} us {nbytes / t2 / 1e3 / peak:6.1%}", flush=True)  # fmt: skip


def main() -> None:
    sms = sm_count(torch.device("cuda"))
    peak = measure_peak_bandwidth(torch.device("cuda"), nbytes=1 << 30, budget_ms=100).gbps
    print(f"{torch.cuda.get_device_name()} {sms} SMs, copy peak {peak:.0f} GB/s")
    defaults(peak)
    if "--defaults" in sys.argv[1:]:
        return
    cells = [(cell, LARGE_SPLITS) for cell in LARGE_CELLS]
    if "--all" in sys.argv[1:]:
        cells = [(cell, SPLITS) for cell in CELLS] + cells
    for (num_seqs, context), splits in cells:
        v1, v2, nbytes = decode_calls(num_seqs, context)
        print(f"seqs={num_seqs} ctx={context} floor bytes {nbytes / 1e6:.1f} MB", flush=True)
        for tile, stages in CONFIGS:
            _set(tile, stages)
            rows = []
            for split in splits:
                us = _us(functools.partial(v1, split=split))
                programs = num_seqs * 8 * -(-context // split)
                resident = _resident() if us != float("inf") else 0
                waves = programs / max(resident * sms, 1)
                rows.append((us, split, programs, resident, waves))
            best = min(rows)
            for us, split, programs, resident, waves in rows:
                mark = " <" if (us, split) == best[:2] else ""
                print(
                    f"  tile {tile} st {stages} split {split:5d}: {us:8.1f} us {nbytes / us / 1e3:6.0f} GB/s "
                    f"programs {programs:5d} resident/SM {resident:2d} waves {waves:5.2f}{mark}",
                    flush=True,
                )
            for split in (512, 256, 128):
                us = _us(functools.partial(v2, split=split))
                print(
                    f"  tile {tile} st {stages} v2 sub {split:4d}: {us:8.1f} us {nbytes / us / 1e3:6.0f} GB/s",
                    flush=True,
                )
    _apply(DEFAULTS)


if __name__ == "__main__":
    main()

"""Launch-parameter sweep of the Triton paged-decode kernels (run on a GPU machine).

PYTHONPATH=src python bench/tuning/paged_decode_sweep.py [--quick | --small]
Times paged_attention_v1 and v2 (bf16, 32 q / 8 kv heads, head 128, block 16) with do_bench
(L2 flushed, median) over the module constants of attnops.paged_attention.triton (tile tokens,
warps, stages, programs per SM for the device-aware split) and prints µs and % of the measured
copy bandwidth, best first per shape; then the SPEC §3 grid at the current defaults.
The first sweep's shapes split by whole partitions. ``--small`` sweeps the small-batch cells
instead (splits below a partition, with their own tile and stage constants), v1 only, timed by
CUDA-graph replay (their eager calls cost more host time than GPU time, which do_bench would
measure).
"""

import itertools
import sys

import torch
import triton.testing
from workloads import decode_calls

from attnops.bench.bandwidth import measure_peak_bandwidth
from attnops.bench.timing import time_cuda_graph
from attnops.paged_attention import triton as kernels

SWEEP_SHAPES = [(8, 16384), (32, 4096), (128, 4096)]
GRID = [(s, c) for s in (1, 8, 32, 128) for c in (1024, 4096, 16384)]
SPACE = {
    "_TILE_TOKENS": (32, 64, 128),
    "_NUM_WARPS": (1, 2, 4),
    "_NUM_STAGES": (1, 2, 3),
    "_PROGRAMS_PER_SM": (4, 8),
    "_MAX_SPLIT": (256, 512),
}
SMALL_SHAPES = [(1, 4096), (1, 16384), (8, 1024), (8, 4096), (32, 1024)]
SMALL_SPACE = {
    "_MANY_TILE_TOKENS": (32, 64),
    "_NUM_WARPS": (1, 2, 4),
    "_MANY_STAGES": (1, 2, 3),
    "_PROGRAMS_PER_SM": (4, 8, 16),
}
QUICK_SPACE = {"_TILE_TOKENS": (64,), "_NUM_WARPS": (1,), "_NUM_STAGES": (2,),
               "_PROGRAMS_PER_SM": (4,), "_MAX_SPLIT": (512,)}  # fmt: skip


def _set(values: dict) -> None:
    for name, value in values.items():
        setattr(kernels, name, value)
    kernels._config.cache_clear()
    kernels._clear_plans()
    # Launch keys hold shapes, not these module constants: drop the compiled handles too.
    kernels._partition_launcher.compiled.clear()
    kernels._reduce_launcher.compiled.clear()


def _time(call) -> float:
    try:
        return triton.testing.do_bench(call, warmup=10, rep=40, return_mode="median") * 1e3
    except Exception:  # a configuration out of registers or shared memory
        return float("inf")


def _graph_time(call) -> float:
    try:
        return time_cuda_graph(call, budget_ms=30).median_us
    except Exception:  # a configuration out of registers or shared memory
        return float("inf")


def small_cells() -> None:
    defaults = {name: getattr(kernels, name) for name in SMALL_SPACE}
    for num_seqs, context in SMALL_SHAPES:
        v1, _, nbytes = decode_calls(num_seqs, context)
        rows = []
        for values in itertools.product(*SMALL_SPACE.values()):
            _set(dict(zip(SMALL_SPACE, values, strict=True)))
            rows.append((_graph_time(v1), values))
        _set(defaults)
        now = _graph_time(v1)
        print(f"seqs={num_seqs} ctx={context} v1 graph replay, defaults {now:.1f} us  ({', '.join(SMALL_SPACE)})")
        for t1, values in sorted(rows)[:6]:
            print(f"  {t1:8.1f} us {nbytes / t1 / 1e3:6.0f} GB/s  {values}", flush=True)


def main() -> None:
    if "--small" in sys.argv[1:]:
        small_cells()
        return
    quick = "--quick" in sys.argv[1:]
    peak = measure_peak_bandwidth(torch.device("cuda"), nbytes=1 << 30, budget_ms=100).gbps
    print(f"{torch.cuda.get_device_name()} copy peak {peak:.0f} GB/s")
    defaults = {name: getattr(kernels, name) for name in SPACE}
    space = QUICK_SPACE if quick else SPACE
    for num_seqs, context in SWEEP_SHAPES:
        v1, v2, nbytes = decode_calls(num_seqs, context)
        rows = []
        for values in itertools.product(*space.values()):
            _set(dict(zip(space, values, strict=True)))
            rows.append((_time(v1), _time(v2), values))
        _set(defaults)
        print(f"seqs={num_seqs} ctx={context}  ({', '.join(space)})")
        for t1, t2, values in sorted(rows)[:5]:
            print(f"  v1 {t1:8.1f} us {nbytes / t1 / 1e3 / peak:6.1%}  v2 {t2:8.1f} us  {values}")
    print(f"grid at defaults {defaults}")
    _set(defaults)
    for num_seqs, context in GRID:
        v1, v2, nbytes = decode_calls(num_seqs, context)
        t1, t2 = _time(v1), _time(v2)
        print(
            f"  seqs={num_seqs:3d} ctx={context:5d}  v1 {t1:8.1f} us {nbytes / t1 / 1e3:6.0f} GB/s "
            f"{nbytes / t1 / 1e3 / peak:6.1%}   v2 {t2:8.1f} us {nbytes / t2 / 1e3 / peak:6.1%}"
        )
    for compiled, *_ in list(kernels._partition_launcher.compiled.values())[-2:]:
        print(f"  partition kernel: {compiled.n_regs} registers, {compiled.n_spills} spills, "
              f"{compiled.metadata.shared} B shared memory")  # fmt: skip


if __name__ == "__main__":
    main()

"""Host overhead of one decode call: eager launch vs. CUDA-graph replay.

``python -m attnops.bench.overhead`` times ``paged_attention_v1`` at 1×1024
(bf16, 32 q / 8 kv heads, head 128, block 16) on the current CUDA device
three ways: GPU time alone (:func:`attnops.bench.timing.time_cuda`), back-to-back eager calls
(wall time per call, so host work that is not hidden behind the GPU shows; the fastest of
``REPEATS`` loops of ``CALLS``), and replays of a captured CUDA graph (timed the same way). Prints
one JSON line, with ``beyond_gpu_us`` = eager − GPU time (issue 3's bar: ≤ 20 µs); with
``--profile`` also the host functions that cost the most in eager calls (cProfile).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time

import torch

CALLS = 1000
# Loops of CALLS calls timed; the fastest counts (one loop of 200 calls read 38 to 68 µs per call
# for the same code on one machine: a short loop catches the host's clock ramp and interruptions).
REPEATS = 5


def _wall_us_per_call(fn, calls: int = CALLS, repeats: int = REPEATS) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def _decode_call(num_seqs: int, context: int):
    """A zero-argument eager ``paged_attention_v1`` call on a random bf16 cache (SPEC §3 geometry)."""
    from attnops.cache import make_paged_kv_cache
    from attnops.paged_attention import paged_attention_v1

    cache = make_paged_kv_cache([context] * num_seqs, 8, 128, 16, torch.bfloat16, device="cuda")
    query = torch.randn(num_seqs, 32, 128, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    args = (out, query, cache.key_cache, cache.value_cache, 8, 128**-0.5, cache.block_tables, cache.seq_lens, 16)
    tail = (cache.max_seq_len, None, "auto", cache.k_scale, cache.v_scale)

    def call() -> None:
        paged_attention_v1(*args, *tail)

    return call


def measure(num_seqs: int = 1, context: int = 1024) -> dict[str, float]:
    """GPU µs, eager wall µs per call and graph-replay wall µs per call."""
    from attnops.bench.timing import time_cuda

    call = _decode_call(num_seqs, context)
    gpu_us = time_cuda(call, budget_ms=100).median_us
    eager_us = _wall_us_per_call(call)
    graph = torch.cuda.CUDAGraph()
    call()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        call()
    graph_us = _wall_us_per_call(graph.replay)
    return {
        "num_seqs": num_seqs,
        "context": context,
        "gpu_us": gpu_us,
        "eager_us": eager_us,
        "beyond_gpu_us": eager_us - gpu_us,
        "graph_us": graph_us,
    }


def profile(num_seqs: int = 1, context: int = 1024, top: int = 25) -> None:
    """Print the host functions with the most own time over ``CALLS`` eager calls."""
    call = _decode_call(num_seqs, context)
    call()
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(CALLS):
        call()
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    print(json.dumps({"device": torch.cuda.get_device_name(), **measure()}))
    if "--profile" in sys.argv[1:]:
        profile()

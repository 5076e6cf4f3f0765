"""Timing of one zero-argument callable on the CPU or on a CUDA device.

CPU: a warm-up, then ``time.perf_counter`` around single calls until the
time budget is spent (at least ``min_runs`` calls); the median is reported.
CUDA: ``triton.testing.do_bench`` (which flushes the L2 cache before every
run); without Triton, CUDA events around each call with an explicit L2 flush.
CUDA graphs (:func:`time_cuda_graph`): the call captured once and replayed,
which times the kernels without the host's launch work (the time an eager
call takes when its host work outlasts its GPU work).
CUDA and Triton are imported only when a CUDA timing is asked for.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Per-call time in microseconds; ``runs`` measured calls (``None``: not reported by ``do_bench``)."""

    median_us: float
    min_us: float
    runs: int | None


def time_cpu(fn: Callable[[], Any], *, budget_ms: float = 200.0, warmup: int = 1, min_runs: int = 3) -> Timing:
    """Median wall time of ``fn()`` on the CPU."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_ms / 1e3
    while len(samples) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples) * 1e6, min(samples) * 1e6, len(samples))


def time_cuda(fn: Callable[[], Any], *, budget_ms: float = 100.0) -> Timing:
    """Median GPU time of ``fn()``, L2 flushed before each run."""
    from attnops._common.backend import triton_available

    if triton_available():
        import triton.testing

        median_ms, min_ms = triton.testing.do_bench(fn, warmup=25, rep=budget_ms, quantiles=[0.5, 0.0])
        return Timing(median_ms * 1e3, min_ms * 1e3, None)
    return _time_cuda_events(fn, budget_ms=budget_ms)


def time_fn(fn: Callable[[], Any], device: torch.device, *, budget_ms: float) -> Timing:
    """Time ``fn`` with the method suited to ``device``."""
    if device.type == "cuda":
        return time_cuda(fn, budget_ms=budget_ms)
    return time_cpu(fn, budget_ms=budget_ms)


def time_cuda_graph(fn: Callable[[], Any], *, budget_ms: float = 100.0) -> Timing:
    """Median GPU time of one CUDA-graph replay of ``fn()``, L2 flushed before each.

    ``fn`` must be capturable (no host synchronisation); capture errors propagate.
    """
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    return _time_cuda_events(graph.replay, budget_ms=budget_ms)


def _time_cuda_events(fn: Callable[[], Any], *, budget_ms: float, min_runs: int = 10) -> Timing:
    # 256 MiB is larger than the L2 cache of every current NVIDIA GPU.
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    fn()
    torch.cuda.synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_ms / 1e3
    while len(samples) < min_runs or time.perf_counter() < deadline:
        flush.zero_()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
    return Timing(statistics.median(samples), min(samples), len(samples))

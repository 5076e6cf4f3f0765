"""Timing of one zero-argument callable on the CPU or on a CUDA device.

CPU: a warm-up, then ``time.perf_counter`` around single calls until the
time budget is spent (at least ``min_runs`` calls); the median is reported.
CUDA (:func:`time_cuda`): CUDA events around each call, the L2 cache flushed
before each as ``triton.testing.do_bench`` does (``zero_()`` of 256 MiB), then
the buffer read back, so that the flush's dirty lines are written back before
the timed call rather than inside it (~10 % of a 100 MB op's time on an H200:
docs/performance.md, version 8) and the L2 holds clean lines only. As with
``do_bench``, runs are queued back to back and synchronised once, so host work
that fits in the flush's GPU time is hidden.
CUDA graphs (:func:`time_cuda_graph`): the call captured once and replayed,
which times the kernels without the host's launch work (the time an eager
call takes when its host work outlasts its GPU work).
CUDA is used only when a CUDA timing is asked for.
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
    """Per-call time in microseconds over ``runs`` measured calls."""

    median_us: float
    min_us: float
    runs: int


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
    """Median GPU time of ``fn()``, L2 flushed (clean) before each run."""
    return _time_cuda_events(fn, budget_ms=budget_ms)


def time_fn(fn: Callable[[], Any], device: torch.device, *, budget_ms: float) -> Timing:
    """Time ``fn`` with the method suited to ``device``."""
    if device.type == "cuda":
        return time_cuda(fn, budget_ms=budget_ms)
    return time_cpu(fn, budget_ms=budget_ms)


def time_cuda_graph(
    fn: Callable[[], Any], *, budget_ms: float = 100.0, flush: Callable[[], Any] | None = None
) -> Timing:
    """Median GPU time of one CUDA-graph replay of ``fn()``, L2 flushed before each (by ``flush``,
    default :func:`l2_flush`'s).

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
    return _time_cuda_events(graph.replay, budget_ms=budget_ms, flush=flush)


# 256 MiB is larger than the L2 cache of every current NVIDIA GPU.
_FLUSH_BYTES = 256 * 2**20


def l2_flush() -> Callable[[], None]:
    """A zero-argument call that flushes the current CUDA device's L2 and leaves it clean.

    ``zero_()`` of a 256 MiB buffer as ``triton.testing.do_bench`` does, then a read of it: reading
    every line writes the dirty ones back, so the L2 ends up holding clean lines only.
    """
    buffer = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")

    def flush() -> None:
        buffer.zero_()
        buffer.amax()

    return flush


def _time_cuda_events(
    fn: Callable[[], Any],
    *,
    budget_ms: float,
    flush: Callable[[], Any] | None = None,
    min_runs: int = 10,
    warmup: int = 3,
) -> Timing:
    flush = flush or l2_flush()

    def runs(count: int) -> list[float]:
        events = []
        for _ in range(count):
            flush()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in events]

    runs(warmup)
    begin = time.perf_counter()
    first = runs(min_runs)
    per_run_ms = (time.perf_counter() - begin) * 1e3 / min_runs
    samples = first + runs(max(0, int(budget_ms / per_run_ms) - min_runs))
    return Timing(statistics.median(samples), min(samples), len(samples))

"""``attnops bench``: time every op of the grid beside its baseline and write the reports."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnops.bench import report
from attnops.bench.backends import runnable_backends
from attnops.bench.bandwidth import BandwidthProbe, gbps, measure_peak_bandwidth, measure_read_bandwidth
from attnops.bench.cases import BenchCase, build_case
from attnops.bench.environment import device_info, device_slug, git_commit, steady_cpu_allocator, versions
from attnops.bench.shapes import Shape, grid, shape_params
from attnops.bench.timing import Timing, time_cuda_graph, time_fn

SCHEMA_VERSION = 2
# Backends whose calls never synchronise with the host, so a CUDA graph can capture them.
CAPTURABLE_BACKENDS = ("triton",)


@dataclass(frozen=True)
class BenchConfig:
    ops: tuple[str, ...]
    device: torch.device
    quick: bool = False
    backends: tuple[str, ...] | None = None
    budget_ms: float | None = None
    out_dir: Path = Path("bench/results")
    probe_bytes: int | None = None
    command: str = "attnops bench"

    @property
    def per_call_budget_ms(self) -> float:
        """Time spent measuring each call: a default per device unless given."""
        if self.budget_ms is not None:
            return self.budget_ms
        return 100.0 if self.device.type == "cuda" else 300.0


@dataclass(frozen=True)
class BenchResult:
    payload: dict[str, Any]
    json_path: Path
    plot_path: Path


def run_bench(config: BenchConfig, console: Console | None = None) -> BenchResult:
    """Measure the peak bandwidth, time every case, print the table, write JSON and plot."""
    console = console or Console()
    started = datetime.now(timezone.utc)
    allocator = steady_cpu_allocator() if config.device.type == "cpu" else None
    budget = config.per_call_budget_ms
    probe = measure_peak_bandwidth(config.device, nbytes=config.probe_bytes, budget_ms=budget)
    read = measure_read_bandwidth(config.device, nbytes=config.probe_bytes, budget_ms=budget)
    console.print(f"peak bandwidth on {config.device}: copy {probe.gbps:.1f} GB/s, read {read.gbps:.1f} GB/s")
    work = [(op, shape) for op in config.ops for shape in grid(op, quick=config.quick)]
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(work))
        for op, shape in work:
            progress.update(task, description=f"{op} {shape.label}")
            rows.extend(_bench_one(op, shape, config, probe, read))
            progress.advance(task)
    payload = _payload(config, probe, read, rows, started, allocator)
    table = report.bench_table(rows, probe.gbps, read.gbps, ascii_only=not console.is_terminal)
    report.print_table(table, console)
    stem = report.result_stem(config.ops, device_slug(config.device), started)
    json_path = report.write_json(config.out_dir / f"{stem}.json", payload)
    title = f"attnops bench on {payload['device']['name']}\n{', '.join(config.ops)}"
    plot_path = report.write_plot(config.out_dir / f"{stem}.png", rows, probe.gbps, title)
    console.print(f"wrote {json_path} and {plot_path}")
    return BenchResult(payload, json_path, plot_path)


def _bench_one(
    op: str, shape: Shape, config: BenchConfig, probe: BandwidthProbe, read: BandwidthProbe
) -> list[dict[str, Any]]:
    case = build_case(op, shape, config.device)
    budget = config.per_call_budget_ms
    baseline = _baseline(case, shape, config.device, budget)
    rows = []
    for kernel in case.kernels:
        for backend in runnable_backends(kernel.family, kernel.name, config.device):
            if config.backends is not None and backend not in config.backends:
                continue
            call = kernel.make(backend)
            timing = time_fn(call, config.device, budget_ms=budget)
            row = _row(op, kernel.name, backend, shape, timing, probe, read, baseline)
            if config.device.type == "cuda" and backend in CAPTURABLE_BACKENDS:
                row["graph_us"] = time_cuda_graph(call, budget_ms=budget).median_us
            rows.append(row)
    del case
    _release_memory(config.device)
    return rows


def _baseline(case: BenchCase, shape: Shape, device: torch.device, budget: float) -> dict[str, Any] | None:
    if case.baseline is None:
        return None
    timing = time_fn(case.baseline, device, budget_ms=budget)
    return {
        "name": case.baseline_name,
        "median_us": timing.median_us,
        "gbps": gbps(shape.bytes_moved(), timing.median_us),
    }


def _row(
    op: str,
    kernel: str,
    backend: str,
    shape: Shape,
    timing: Timing,
    probe: BandwidthProbe,
    read: BandwidthProbe,
    baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    nbytes = shape.bytes_moved()
    achieved = gbps(nbytes, timing.median_us)
    return {
        "op": op,
        "kernel": kernel,
        "backend": backend,
        "shape": shape.label,
        "params": shape_params(shape),
        "bytes": nbytes,
        "median_us": timing.median_us,
        "min_us": timing.min_us,
        "runs": timing.runs,
        "gbps": achieved,
        "pct_peak": 100.0 * achieved / probe.gbps,
        "pct_read_peak": 100.0 * achieved / read.gbps,
        "baseline": baseline,
        "speedup_vs_baseline": baseline["median_us"] / timing.median_us if baseline else None,
        "graph_us": None,
    }


def _payload(
    config: BenchConfig,
    probe: BandwidthProbe,
    read: BandwidthProbe,
    rows: Sequence[dict[str, Any]],
    started: datetime,
    allocator: str | None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "created_utc": started.isoformat(),
        "command": config.command,
        "device": device_info(config.device),
        "versions": versions(),
        "git_commit": git_commit(),
        "cpu_allocator": allocator,
        "quick": config.quick,
        "backends": None if config.backends is None else list(config.backends),
        "budget_ms": config.per_call_budget_ms,
        "ops": list(config.ops),
        "peak_bandwidth": {"gbps": probe.gbps, "bytes_per_copy": probe.bytes_moved, "median_us": probe.median_us},
        "read_bandwidth": {"gbps": read.gbps, "bytes_per_sum": read.bytes_moved, "median_us": read.median_us},
        "rows": list(rows),
    }


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

"""Reporting of benchmark results: a table, a JSON file and a bandwidth plot.

A result row is a plain dict (JSON-ready) with the keys of :data:`ROW_KEYS`;
``baseline`` is ``None`` or a dict with ``name``, ``median_us`` and ``gbps``;
``graph_us`` is the call's time as a CUDA-graph replay (kernels without host
launch work) where it was measured, else ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

ROW_KEYS = (
    "op",
    "kernel",
    "backend",
    "shape",
    "params",
    "bytes",
    "median_us",
    "min_us",
    "runs",
    "gbps",
    "pct_peak",
    "pct_read_peak",
    "baseline",
    "speedup_vs_baseline",
    "graph_us",
)

PAYLOAD_KEYS = (
    "schema",
    "created_utc",
    "command",
    "device",
    "versions",
    "git_commit",
    "cpu_allocator",
    "quick",
    "backends",
    "budget_ms",
    "ops",
    "peak_bandwidth",
    "read_bandwidth",
    "rows",
)


def result_stem(ops: Sequence[str], slug: str, when: datetime) -> str:
    """``<op-or-all>-<device-slug>-<UTC timestamp>``: the file name of one run's results."""
    what = ops[0] if len(ops) == 1 else "all"
    return f"{what}-{slug}-{when.strftime('%Y%m%dT%H%M%SZ')}"


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def bench_table(
    rows: Sequence[dict[str, Any]], peak_gbps: float, read_gbps: float, *, ascii_only: bool = False
) -> Table:
    """One line per op, shape and backend, with the same-run baseline beside it; "% peak" is of the copy
    bandwidth, "% read" of the read bandwidth (the ceiling of read-only ops such as paged decode)."""
    table = Table(
        title=f"attnops bench (peak bandwidth: copy {peak_gbps:.1f} GB/s, read {read_gbps:.1f} GB/s)",
        box=box.ASCII if ascii_only else box.SIMPLE_HEAD,
    )
    for name in ("op", "shape", "kernel", "backend"):
        table.add_column(name)
    for name in ("µs", "GB/s", "% peak", "% read", "graph µs", "baseline", "base µs", "base GB/s", "speedup"):
        table.add_column(name, justify="left" if name == "baseline" else "right")
    for row in rows:
        base = row["baseline"]
        table.add_row(
            row["op"],
            row["shape"],
            row["kernel"],
            row["backend"],
            f"{row['median_us']:.1f}",
            f"{row['gbps']:.2f}",
            f"{row['pct_peak']:.1f}",
            f"{row['pct_read_peak']:.1f}",
            f"{row['graph_us']:.1f}" if row["graph_us"] is not None else "-",
            base["name"] if base else "-",
            f"{base['median_us']:.1f}" if base else "-",
            f"{base['gbps']:.2f}" if base else "-",
            f"{row['speedup_vs_baseline']:.2f}x" if row["speedup_vs_baseline"] is not None else "-",
        )
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    (console or Console()).print(table)


def write_plot(path: Path, rows: Sequence[dict[str, Any]], peak_gbps: float, title: str) -> Path:
    """A horizontal bar chart of achieved GB/s (op and baseline) against the measured peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kernel']} [{r['backend']}] {r['shape']}" for r in rows]
    achieved = [r["gbps"] for r in rows]
    with_base = [(p, r["baseline"]["gbps"]) for p, r in enumerate(rows) if r["baseline"]]
    positions = range(len(rows))
    height = 0.4
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.35 * max(len(rows), 1)))
    ax.barh([p - height / 2 for p in positions], achieved, height, label="attnops")
    ax.barh(
        [p + height / 2 for p, _ in with_base],
        [g for _, g in with_base],
        height,
        label="baseline (same run)",
        color="tab:gray",
    )
    ax.axvline(peak_gbps, color="tab:red", linestyle="--", label=f"peak copy bandwidth {peak_gbps:.1f} GB/s")
    ax.set_yticks(list(positions), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("achieved bandwidth (GB/s, log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

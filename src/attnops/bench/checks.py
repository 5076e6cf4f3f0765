"""``attnops check``: every op, on every device and backend, against an independent formulation.

Each :class:`CheckCase` runs one op on one small problem and judges the
outputs two ways: against an independent formulation written in float64
(``verify``; on a CPU-only machine the torch backend *is* the reference, so
it must not be its own oracle), and, on CUDA, against the CPU reference
(``agree``). Backends come from the ops' dispatchers, so Triton kernels are
covered as soon as they register.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from attnops.bench.backends import runnable_backends

Outputs = dict[str, torch.Tensor]

# Max abs error allowed for attention-like outputs of magnitude ~1, by output dtype.
OUTPUT_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


@dataclass(frozen=True)
class Verdict:
    """One comparison: its name, the error measured and the largest error allowed."""

    check: str
    error: float
    tol: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tol  # False for NaN


@dataclass(frozen=True)
class CheckCase:
    """One op on one problem.

    ``run(backend, device)`` returns the outputs as CPU tensors; ``verify``
    judges them against an independent formulation; ``agree(outputs,
    reference)`` compares them with the CPU torch backend's outputs.
    """

    family: str
    op: str
    label: str
    run: Callable[[str, torch.device], Outputs]
    verify: Callable[[Outputs], list[Verdict]]
    agree: Callable[[Outputs, Outputs], Verdict]


@dataclass(frozen=True)
class CheckRow:
    case: CheckCase
    device: str
    backend: str
    verdict: Verdict


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest ``|actual - expected|`` in float64; equal infinities count as 0, NaN as +inf."""
    if actual.numel() == 0:
        return 0.0
    a, e = actual.double(), expected.double()
    diff = torch.where(a == e, 0.0, (a - e).abs())
    return float(torch.nan_to_num(diff, nan=math.inf, posinf=math.inf).max())


def close(check: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> Verdict:
    return Verdict(check, max_abs_error(actual, expected), tol)


def agree_all(tol_by_name: dict[str, float]) -> Callable[[Outputs, Outputs], Verdict]:
    """``agree`` for outputs that must match the reference elementwise: the first failure, else the closest call."""

    def agree(outputs: Outputs, reference: Outputs) -> Verdict:
        verdicts = [
            close(f"vs cpu torch ({name})", outputs[name], reference[name], tol) for name, tol in tol_by_name.items()
        ]
        failed = [v for v in verdicts if not v.passed]
        return failed[0] if failed else max(verdicts, key=lambda v: v.error / v.tol if v.tol else 0.0)

    return agree


def run_checks(devices: Sequence[torch.device], *, quick: bool, console: Console | None = None) -> bool:
    """Run every case on ``devices``, print the table; True when every check passed."""
    from attnops.bench.check_cases import all_cases

    console = console or Console()
    cases = all_cases(quick=quick)
    rows: list[CheckRow] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("check", total=len(cases))
        for case in cases:
            progress.update(task, description=f"{case.op} {case.label}")
            rows.extend(_check_case(case, devices))
            progress.advance(task)
    console.print(check_table(rows, ascii_only=not console.is_terminal))
    failed = sum(not row.verdict.passed for row in rows)
    console.print(f"{len(rows)} checks, {failed} failed" + ("" if failed else ": all passed"))
    return failed == 0


def _check_case(case: CheckCase, devices: Sequence[torch.device]) -> list[CheckRow]:
    rows = []
    reference: Outputs | None = None
    for device in devices:
        for backend in runnable_backends(case.family, case.op, device):
            try:
                outputs = case.run(backend, device)
                verdicts = case.verify(outputs)
                if device.type != "cpu":
                    reference = reference or case.run("torch", torch.device("cpu"))
                    verdicts.append(case.agree(outputs, reference))
            except Exception as exc:  # a crash is a failed check: report it and go on with the others
                verdicts = [Verdict(f"raised {type(exc).__name__}: {exc}", math.inf, 0.0)]
            rows.extend(CheckRow(case, str(device), backend, v) for v in verdicts)
    return rows


def check_table(rows: Sequence[CheckRow], *, ascii_only: bool = False) -> Table:
    """The pass/fail table: one line per comparison."""
    table = Table(title="attnops check", box=box.ASCII if ascii_only else box.SIMPLE_HEAD)
    for name in ("op", "case", "device", "backend", "check"):
        table.add_column(name)
    for name in ("max err", "tol", "result"):
        table.add_column(name, justify="right")
    for row in rows:
        v = row.verdict
        status = "PASS" if v.passed else "[bold red]FAIL[/]"
        table.add_row(
            row.case.op, row.case.label, row.device, row.backend, v.check, f"{v.error:.3g}", f"{v.tol:.3g}", status
        )
    return table

"""The ``attnops`` command: ``demo``, ``check`` and ``bench``.

``attnops demo`` walks through the ops on a small example, ``attnops check``
verifies every op on every available device and backend against an
independent formulation (and, on CUDA, against the CPU reference), and
``attnops bench`` times the SPEC §3 grid beside same-run baselines and writes
JSON and a bandwidth plot. Run ``attnops <command> --help`` for the options.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

from attnops.bench.shapes import OPS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnops",
        description="vLLM's attention-stage ops in Triton and portable PyTorch: demo, self-check and benchmarks.",
        epilog="examples: attnops demo | attnops check --quick | attnops bench --device cpu --quick --ops merge topk",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,check,bench}")

    commands.add_parser(
        "demo",
        help="walk through the ops on a small example",
        description="Build a paged KV cache, decode with v1 and v2, merge two halves of the context and show the "
        "result equals full attention, then run top-k and the vertical/slash index conversion.",
    )

    check = commands.add_parser(
        "check",
        help="verify every op on this machine",
        description="Run every op on every available device and backend over a grid of shapes, compare with an "
        "independent formulation (and on CUDA with the CPU reference) and print a pass/fail table. "
        "Exits with status 1 if any check fails.",
    )
    check.add_argument("--quick", action="store_true", help="a smaller grid of shapes")
    check.add_argument(
        "--device",
        choices=("all", "cpu", "cuda"),
        default="all",
        help="device to check (default: all available, i.e. cpu and cuda if present)",
    )

    bench = commands.add_parser(
        "bench",
        help="benchmark the ops (SPEC §3 grid)",
        description="Time every op beside a plain-PyTorch baseline measured in the same run, report µs, GB/s and "
        "% of the device's measured peak copy and read bandwidths, write JSON and a PNG plot.",
    )
    bench.add_argument(
        "--ops",
        nargs="+",
        choices=OPS,
        default=list(OPS),
        metavar="OP",
        help=f"ops to run (default: all): {', '.join(OPS)}",
    )
    bench.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="device to run on (default: cuda if available)"
    )
    bench.add_argument("--quick", action="store_true", help="a CPU-sized subset of the grid")
    bench.add_argument(
        "--backends",
        nargs="+",
        choices=("torch", "triton"),
        default=None,
        metavar="BACKEND",
        help="attnops backends to time (default: every one that runs on the device); the baselines always run",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="folder for the JSON and PNG (default: bench/results)"
    )
    bench.add_argument(
        "--budget-ms",
        type=float,
        default=None,
        help="measuring time per timed call in ms (default: 300 on cpu, 100 on cuda)",
    )
    bench.add_argument(
        "--probe-mib",
        type=int,
        default=None,
        help="size of the copy and the sum measuring peak bandwidth in MiB (default: 256 on cpu, 1024 on cuda)",
    )
    return parser


def _cuda_missing(console: Console) -> int:
    console.print("attnops: error: --device cuda: CUDA is not available in this PyTorch build or on this machine")
    return 2


def _bench(args: argparse.Namespace, argv: Sequence[str], console: Console) -> int:
    from attnops.bench.runner import BenchConfig, run_bench

    if args.device == "cuda" and not torch.cuda.is_available():
        return _cuda_missing(console)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = BenchConfig(
        ops=tuple(dict.fromkeys(args.ops)),
        device=device,
        quick=args.quick,
        backends=tuple(args.backends) if args.backends else None,
        budget_ms=args.budget_ms,
        out_dir=args.out,
        probe_bytes=args.probe_mib * 2**20 if args.probe_mib else None,
        command=shlex.join(["attnops", *argv]),
    )
    run_bench(config, console)
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    from attnops.bench.checks import run_checks

    if args.device == "cuda" and not torch.cuda.is_available():
        return _cuda_missing(console)
    if args.device == "all":
        devices = [torch.device("cpu"), *([torch.device("cuda")] if torch.cuda.is_available() else [])]
    else:
        devices = [torch.device(args.device)]
    return 0 if run_checks(devices, quick=args.quick, console=console) else 1


def _demo(console: Console) -> int:
    from attnops.bench.demo import run_demo

    run_demo(console)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``attnops`` command line; returns the exit status."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal:
        # Pipes and log files get the full table rather than one squeezed to 80 columns.
        console = Console(highlight=False, width=max(console.width, 400), soft_wrap=True)
    if args.command == "bench":
        return _bench(args, argv, console)
    if args.command == "check":
        return _check(args, console)
    return _demo(console)

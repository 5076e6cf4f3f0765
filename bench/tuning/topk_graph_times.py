"""Kernel time of the Triton top-k on the SPEC §3 cells by CUDA-graph replay (run on a GPU machine).

PYTHONPATH=src python bench/tuning/topk_graph_times.py LABEL [NAME=VALUE ...]
Each call (k = 2048, fp32 normal logits; then a few cells of other distributions) is checked
against torch.topk (same set of values) and timed by CUDA-graph replay with the L2 flushed
(:func:`attnops.bench.timing.time_cuda_graph`); ``NAME=VALUE`` sets a numeric constant of
``attnops.topk.triton`` first (e.g. ``_GUIDE_WIDTH=0.0`` or ``_FINISH_WARPS=4``), for A/B runs in
one process each.
"""

import sys

import torch
import triton.language as tl

from attnops.bench.timing import time_cuda_graph
from attnops.topk import top_k_per_row_decode, top_k_per_row_prefill
from attnops.topk import triton as kernels

DECODE_CELLS = ((1, 8192), (1, 32768), (1, 131072), (32, 32768), (32, 131072), (128, 8192), (128, 32768),
                (128, 131072))  # fmt: skip
PREFILL_WIDTHS = (8192, 32768)
K = 2048


# Other value distributions than the normal logits of the SPEC cells, for data-dependent searches.
DISTRIBUTIONS = {
    "exponential": lambda shape: torch.empty(shape, device="cuda").exponential_(),
    "bimodal": lambda shape: torch.randn(shape, device="cuda") + 8 * (torch.rand(shape, device="cuda") < 0.1),
    "ties": lambda shape: torch.randint(0, 100, shape, device="cuda").float(),
}


def decode_cell(label: str, rows: int, length: int, values=None, name: str = "") -> None:
    logits = values((rows, length)) if values else torch.randn(rows, length, device="cuda")
    lens = torch.full((rows,), length, dtype=torch.int32, device="cuda")
    out = torch.empty(rows, K, dtype=torch.int32, device="cuda")

    def call():
        top_k_per_row_decode(logits, 1, lens, out, rows, length, 1, K)

    call()
    expected = torch.topk(logits, K, dim=1).values.sort(dim=1).values
    exact = torch.equal(logits.gather(1, out.long()).sort(dim=1).values, expected)
    us = time_cuda_graph(call, budget_ms=100).median_us
    print(f"{label} decode {rows}x{length}{name}: {us:.1f} us exact={exact}", flush=True)


def prefill_cell(label: str, width: int, rows: int = 4096) -> None:
    """Causal rows: row r covers the first width - rows + r + 1 columns."""
    logits = torch.randn(rows, width, device="cuda")
    starts = torch.zeros(rows, dtype=torch.int32, device="cuda")
    ends = (torch.arange(rows, device="cuda") + width - rows + 1).to(torch.int32)
    out = torch.empty(rows, K, dtype=torch.int32, device="cuda")

    def call():
        top_k_per_row_prefill(logits, starts, ends, out, rows, width, 1, K)

    call()
    masked = logits.masked_fill(torch.arange(width, device="cuda") >= ends[:, None], -float("inf"))
    expected = torch.topk(masked, K, dim=1).values.sort(dim=1).values
    exact = torch.equal(logits.gather(1, out.long()).sort(dim=1).values, expected)
    us = time_cuda_graph(call, budget_ms=100).median_us
    print(f"{label} prefill {rows}x{width}: {us:.1f} us exact={exact}", flush=True)


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "current"
    for item in sys.argv[2:]:
        name, value = item.split("=")
        number = float(value) if "." in value else int(value)
        # Globals that kernels read directly are constexprs.
        setattr(kernels, name, tl.constexpr(number) if isinstance(getattr(kernels, name), tl.constexpr) else number)
    torch.manual_seed(0)
    for rows, length in DECODE_CELLS:
        decode_cell(label, rows, length)
    for width in PREFILL_WIDTHS:
        prefill_cell(label, width)
    for name, values in DISTRIBUTIONS.items():
        for rows, length in ((1, 8192), (1, 131072)):
            decode_cell(label, rows, length, values, f" {name}")


if __name__ == "__main__":
    main()

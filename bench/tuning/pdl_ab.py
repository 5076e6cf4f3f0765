"""Programmatic dependent launch off vs. on, by CUDA-graph replay (run on a Hopper GPU machine).

PYTHONPATH=src python bench/tuning/pdl_ab.py
Times the two-launch calls (paged decode v1/v2 on the small-batch cells: partition + reduction;
top-k decode on rows wider than one program: chunk + finish) with the second launch ordinary and
with it launched programmatically (it starts during the first kernel's tail), alternating the two
settings over several rounds on the same buffers; prints the median of each.
"""

import statistics

import torch
from graph_times import DECODE_CELLS, graph_us
from workloads import decode_calls

from attnops.paged_attention import triton as paged_kernels
from attnops.topk import top_k_per_row_decode
from attnops.topk import triton as topk_kernels

ROUNDS = 3
TOPK_CELLS = ((1, 32768), (1, 131072), (32, 32768), (32, 131072), (128, 32768), (128, 131072))


def _set_pdl(enabled: bool) -> None:
    for module in (paged_kernels, topk_kernels):
        module.programmatic_launch = (lambda device: device.type == "cuda") if enabled else (lambda device: False)


def topk_call(rows: int, length: int):
    logits = torch.randn(rows, length, device="cuda")
    lens = torch.full((rows,), length, dtype=torch.int32, device="cuda")
    out = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")

    def call():
        top_k_per_row_decode(logits, 1, lens, out, rows, length, 1, 2048)

    def exact() -> bool:
        call()
        expected = torch.topk(logits, 2048, dim=1).values.sort(dim=1).values
        return torch.equal(logits.gather(1, out.long()).sort(dim=1).values, expected)

    return call, exact


def ab(label: str, call, exact=None) -> None:
    times = {False: [], True: []}
    checks = []
    for _ in range(ROUNDS):
        for enabled in (False, True):
            _set_pdl(enabled)
            times[enabled].append(graph_us(call))
            if exact is not None:
                checks.append(exact())
    off, on = (statistics.median(times[e]) for e in (False, True))
    tail = "" if exact is None else f" exact={all(checks)}"
    print(f"{label}: off {off:.1f} us, on {on:.1f} us ({off - on:+.1f}){tail}", flush=True)


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    for num_seqs, context in DECODE_CELLS + ((8, 16384), (32, 4096)):
        v1, v2, nbytes = decode_calls(num_seqs, context)
        ab(f"paged v1 {num_seqs}x{context}", v1)
        ab(f"paged v2 {num_seqs}x{context}", v2)
    for rows, length in TOPK_CELLS:
        ab(f"topk decode {rows}x{length}", *topk_call(rows, length))


if __name__ == "__main__":
    main()

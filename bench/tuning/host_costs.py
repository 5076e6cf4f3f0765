"""Host time of eager calls, against the host's own cost of a trivial PyTorch op (run on a GPU machine).

PYTHONPATH=src python bench/tuning/host_costs.py
Back-to-back calls (wall µs per call, the GPU kept ahead of the host) of: ``torch.add`` on a
tiny tensor and ``torch.empty`` (what this host charges any eager op), the Triton v1
implementation without validation, the public v1 / v2 / top-k / merge calls, and a CUDA-graph
replay of the v1 call. Hosts of these machines differ in speed by ~1.5x: compare within a run.
"""

import functools

import torch
from workloads import decode_calls, merge_call

from attnops.bench.overhead import _decode_call, _wall_us_per_call
from attnops.topk import top_k_per_row_decode

per_call_us = functools.partial(_wall_us_per_call, calls=2000)


def _topk_call(rows: int, length: int):
    logits = torch.randn(rows, length, device="cuda")
    lens = torch.full((rows,), length, dtype=torch.int32, device="cuda")
    out = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")
    return lambda: top_k_per_row_decode(logits, 1, lens, out, rows, length, 1, 2048)


def main() -> None:
    a, b, c = (torch.ones(16, device="cuda") for _ in range(3))
    rows = {
        "torch.add(out=) tiny": lambda: torch.add(a, b, out=c),
        "torch.empty": lambda: torch.empty(4096, device="cuda"),
        "triton v1 impl 1x1024 (no validation)": decode_calls(1, 1024)[0],
        "public v1 1x1024": _decode_call(1, 1024),
        "public top-k decode 1x8192": _topk_call(1, 8192),
        "public top-k decode 1x32768": _topk_call(1, 32768),
        "public merge 512": merge_call(512)[0],
    }
    for name, call in rows.items():
        print(f"{name}: {per_call_us(call):.1f} us per call", flush=True)
    call = _decode_call(1, 1024)
    graph = torch.cuda.CUDAGraph()
    call()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        call()
    print(f"graph replay v1 1x1024: {per_call_us(graph.replay):.1f} us per call", flush=True)


if __name__ == "__main__":
    main()

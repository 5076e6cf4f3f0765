"""Does the L2 flush's write-back land in the timed merge? (run on a GPU machine)

PYTHONPATH=src python bench/tuning/merge_flush.py
The bench flushes the L2 with ``zero_()`` of 256 MiB, which leaves dirty lines that the timed
kernel's own traffic must write back. Times merge_attn_states (CUDA-graph replay) after that
flush and after a read-only flush (a reduction over the same buffer, leaving clean lines), and
the same for a pure copy of the merge's bytes, at the SPEC §3 token counts.
"""

import functools
import statistics

import torch
from workloads import merge_call


def _replay_us(fn, flush, runs: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    samples = []
    for _ in range(runs):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
    return statistics.median(samples)


def main() -> None:
    buffer = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    words = buffer.view(torch.int32)
    flushes = {"zero_": buffer.zero_, "read": lambda: words.amax()}
    for tokens in (512, 4096, 32768):
        call, nbytes = merge_call(tokens)
        copy = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        copy_target = torch.empty_like(copy)
        for name, flush in flushes.items():
            merge_us = _replay_us(call, flush)
            copy_us = _replay_us(functools.partial(copy_target.copy_, copy), flush)
            print(
                f"merge {tokens} flush={name}: {merge_us:.1f} us {nbytes / merge_us / 1e3:.0f} GB/s; "
                f"copy of the same bytes {copy_us:.1f} us {nbytes / copy_us / 1e3:.0f} GB/s",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""How the L2 flush before a timed call changes it (run on a GPU machine).

PYTHONPATH=src python bench/tuning/flush_methods.py
``triton.testing.do_bench`` flushes the L2 with ``zero_()`` of 256 MiB, which leaves dirty lines
that the timed call's own traffic must write back; the bench (``attnops.bench.timing``) flushes by
reading the buffer instead, leaving clean lines. Times CUDA-graph replays of merge_attn_states at
the SPEC §3 token counts, of a copy of the same bytes, and of paged decode v1 on some cells, after
each flush.
"""

import functools
import statistics

import torch
from workloads import decode_calls, merge_call

DECODE_CELLS = ((1, 16384), (8, 1024), (8, 4096), (32, 1024), (8, 16384), (128, 4096))


def _replay_us(fn, flush, runs: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    events = []
    for _ in range(runs):
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) * 1e3 for start, end in events)


def main() -> None:
    buffer = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    words = buffer.view(torch.int32)
    flushes = {"zero_": buffer.zero_, "read": words.amax}
    print(torch.cuda.get_device_name(), flush=True)
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
    for num_seqs, context in DECODE_CELLS:
        v1, _, nbytes = decode_calls(num_seqs, context)
        times = {name: _replay_us(v1, flush) for name, flush in flushes.items()}
        print(f"paged v1 {num_seqs}x{context}: " + ", ".join(
            f"flush={name} {us:.1f} us {nbytes / us / 1e3:.0f} GB/s" for name, us in times.items()
        ), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

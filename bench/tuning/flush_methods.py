"""How the L2 flush before a timed call changes it (run on a GPU machine).

PYTHONPATH=src python bench/tuning/flush_methods.py
``triton.testing.do_bench`` flushes the L2 with ``zero_()`` of 256 MiB, which leaves dirty lines
that the timed call's own traffic must write back; the bench (``attnops.bench.timing``) flushes by
``zero_()`` then reading the buffer back, leaving clean lines. Times CUDA-graph replays of
merge_attn_states at the SPEC §3 token counts, of a copy of the same bytes, of paged decode v1 and
of top-k decode on some cells, after each flush.
"""

import functools

import torch
from workloads import decode_calls, merge_call

from attnops.bench.timing import l2_flush, time_cuda_graph
from attnops.topk import top_k_per_row_decode

DECODE_CELLS = ((1, 16384), (8, 1024), (8, 4096), (32, 1024), (8, 16384), (128, 4096))
TOPK_CELLS = ((1, 8192), (1, 32768), (1, 131072), (128, 32768), (128, 131072))


def _topk_call(rows: int, length: int):
    logits = torch.randn(rows, length, device="cuda")
    lens = torch.full((rows,), length, dtype=torch.int32, device="cuda")
    out = torch.empty(rows, 2048, dtype=torch.int32, device="cuda")
    return functools.partial(top_k_per_row_decode, logits, 1, lens, out, rows, length, 1, 2048)


def _replay_us(fn, flush) -> float:
    return time_cuda_graph(fn, budget_ms=100, flush=flush).median_us


def main() -> None:
    buffer = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    words = buffer.view(torch.int32)
    flushes = {"zero_": buffer.zero_, "read": words.amax, "zero_+read (the bench's)": l2_flush()}
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
    for rows, length in TOPK_CELLS:
        call = _topk_call(rows, length)
        times = {name: _replay_us(call, flush) for name, flush in flushes.items()}
        print(f"top-k decode {rows}x{length}: " + ", ".join(
            f"flush={name} {us:.1f} us" for name, us in times.items()
        ), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""GPU time of each paged-decode kernel (partition, reduce) on the small cells (run on a GPU machine).

PYTHONPATH=src python bench/tuning/paged_breakdown.py
Ten v1 calls per cell (bf16, 32 q / 8 kv heads, head 128, block 16), L2 flushed before each,
under torch.profiler: the mean device time of each kernel, beside the CUDA-graph replay time of
the whole call (kernels plus the gaps between them).
"""

from workloads import decode_calls, kernel_times

from attnops.bench.timing import time_cuda_graph

CELLS = ((1, 1024), (1, 4096), (1, 16384), (8, 1024), (8, 4096), (32, 1024), (8, 16384))


def main() -> None:
    for num_seqs, context in CELLS:
        v1, _, nbytes = decode_calls(num_seqs, context)
        kernels = kernel_times(v1)
        graph = time_cuda_graph(v1, budget_ms=50).median_us
        print(f"paged {num_seqs}x{context} ({nbytes / 1e6:.1f} MB): graph {graph:.1f} us; {kernels}", flush=True)


if __name__ == "__main__":
    main()

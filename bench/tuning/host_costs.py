"""Host-time costs of the pieces of an eager decode call (run on a GPU machine).

PYTHONPATH=src python bench/tuning/host_costs.py
Prints µs per call of: tensor attribute reads, torch.empty, a partition-kernel launch through the
compiled handle and through Triton's JIT, the Triton v1 implementation and the public v1 call.
"""

import functools

import torch

from attnops.bench.overhead import _decode_call, _wall_us_per_call
from attnops.cache import make_paged_kv_cache
from attnops.paged_attention import triton as kernels

per_call_us = functools.partial(_wall_us_per_call, calls=2000)


def main() -> None:
    cache = make_paged_kv_cache([1024], 8, 128, 16, torch.bfloat16, device="cuda")
    query = torch.randn(1, 32, 128, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(query)
    tensors = [query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, out,
               cache.k_scale, cache.v_scale, query, out]  # fmt: skip
    print("t.shape x10", per_call_us(lambda: [t.shape for t in tensors]))
    print("t.data_ptr() x10", per_call_us(lambda: [t.data_ptr() for t in tensors]))
    print("torch.empty", per_call_us(lambda: torch.empty(4096, device="cuda")))
    inputs = kernels._Inputs(query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.1,
                             None, "auto", cache.k_scale, cache.v_scale, None)  # fmt: skip
    args = (out, None, None, None, inputs, 1024, 1, False)
    print("partition launch, compiled handle", per_call_us(lambda: kernels._partition(*args)))
    launch_key = kernels._launch_key
    kernels._launch_key = lambda *a: None
    print("partition launch, Triton JIT", per_call_us(lambda: kernels._partition(*args)))
    kernels._launch_key = launch_key
    v1 = (out, query, cache.key_cache, cache.value_cache, cache.block_tables, cache.seq_lens, 0.1, None, "auto",
          cache.k_scale, cache.v_scale, None)  # fmt: skip
    print("triton v1 impl (no validation)", per_call_us(lambda: kernels.paged_attention_v1(*v1)))
    print("public v1 call", per_call_us(_decode_call(1, 1024)))


if __name__ == "__main__":
    main()

"""Unit tests of the benchmark harness: grid, bytes formulas, timing, bandwidth probe, reports."""

from __future__ import annotations

import io
import itertools
import json
from datetime import datetime, timezone

import pytest
import torch
from rich.console import Console

from attnops._common.backend import triton_available
from attnops.bench import bandwidth, report, shapes, timing


def test_decode_grid_matches_spec():
    full = shapes.grid("paged_attention")
    assert {(s.num_seqs, s.context) for s in full} == set(itertools.product((1, 8, 32, 128), (1024, 4096, 16384)))
    assert len(full) == 12
    for s in full:
        assert (s.dtype, s.head_size, s.block_size, s.num_heads, s.num_kv_heads) == ("bfloat16", 128, 16, 32, 8)


def test_merge_grid_matches_spec():
    full = shapes.grid("merge")
    assert [s.num_tokens for s in full] == [512, 4096, 32768]
    assert all((s.num_heads, s.head_size, s.dtype) == (32, 128, "bfloat16") for s in full)


def test_topk_grid_matches_spec():
    full = shapes.grid("topk")
    decode = {(s.num_rows, s.length) for s in full if s.mode == "decode"}
    prefill = {(s.num_rows, s.length) for s in full if s.mode == "prefill"}
    assert decode == set(itertools.product((1, 32, 128), (8192, 32768, 131072)))
    assert prefill == {(4096, 8192), (4096, 32768)}
    assert len(full) == 11 and all(s.k == 2048 for s in full)


def test_vertical_slash_grid_matches_spec():
    full = shapes.grid("vertical_slash")
    assert [s.context for s in full] == [32768, 131072]
    for s in full:
        fields = (s.batch, s.num_heads, s.block_size_m, s.block_size_n, s.nnz_vertical, s.nnz_slash)
        assert fields == (1, 32, 64, 64, 1000, 6096)


def test_quick_grid_is_the_cpu_subset():
    assert {(s.num_seqs, s.context) for s in shapes.grid("paged_attention", quick=True)} == set(
        itertools.product((1, 8), (1024, 4096))
    )
    assert [s.num_tokens for s in shapes.grid("merge", quick=True)] == [512, 4096]
    topk = {(s.mode, s.num_rows, s.length) for s in shapes.grid("topk", quick=True)}
    assert topk == {("decode", r, n) for r in (1, 32) for n in (8192, 32768)} | {("prefill", 1024, 8192)}
    assert [s.context for s in shapes.grid("vertical_slash", quick=True)] == [8192, 32768]
    for op in shapes.OPS:
        assert shapes.grid(op, quick=True)


def test_grid_rejects_unknown_op():
    with pytest.raises(ValueError, match="op: expected one of"):
        shapes.grid("softmax")


def test_decode_bytes():
    # K and V: 8 seqs * 4096 tokens * 8 kv heads * 128 * 2 bytes each; q and out: 8 * 32 heads * 128 * 2 bytes each.
    assert shapes.DecodeShape(8, 4096).bytes_moved() == 2 * 8 * 4096 * 8 * 128 * 2 + 2 * 8 * 32 * 128 * 2
    fp32 = shapes.DecodeShape(1, 16, num_heads=4, num_kv_heads=4, head_size=64, dtype="float32")
    assert fp32.bytes_moved() == 2 * 16 * 4 * 64 * 4 + 2 * 4 * 64 * 4


def test_merge_bytes():
    out = 512 * 32 * 128 * 2
    lse = 512 * 32 * 4
    assert shapes.MergeShape(512).bytes_moved() == 3 * out + 2 * lse
    assert shapes.MergeShape(512, with_output_lse=True).bytes_moved() == 3 * out + 3 * lse


def test_topk_bytes_count_valid_columns_only():
    assert shapes.TopKShape("decode", 32, 8192).bytes_moved() == 32 * 8192 * 4
    prefill = shapes.TopKShape("prefill", 4, 10)
    assert prefill.row_lengths() == [7, 8, 9, 10]
    assert prefill.bytes_moved() == (7 + 8 + 9 + 10) * 4


def test_vertical_slash_bytes():
    s = shapes.VerticalSlashShape(4096, num_heads=2, nnz_vertical=10, nnz_slash=20)
    rows = 4096 // 64
    assert s.num_row_blocks == rows
    assert s.bytes_moved() == 2 * (10 + 20) * 4 + 2 * rows * (1 + 20 + 1 + 10) * 4
    assert shapes.VerticalSlashShape(100, block_size_m=64).num_row_blocks == 2


def test_sparse_prefill_bytes():
    s = shapes.SparsePrefillShape(2048, num_heads=8)
    assert s.bytes_moved() == 4 * 8 * 2048 * 128 * 2
    assert s.index_shape().context == 2048 and s.index_shape().num_heads == 8


def test_shape_params_are_json_ready():
    params = shapes.shape_params(shapes.DecodeShape(1, 1024))
    assert json.loads(json.dumps(params))["context"] == 1024


def test_time_cpu_runs_warmup_then_at_least_min_runs():
    calls = []
    result = timing.time_cpu(lambda: calls.append(1), budget_ms=0.0, warmup=2, min_runs=5)
    assert result.runs == 5 and len(calls) == 7
    assert 0.0 <= result.min_us <= result.median_us


def test_time_cpu_measures_the_call():
    import time

    result = timing.time_cpu(lambda: time.sleep(0.002), budget_ms=0.0, warmup=0, min_runs=3)
    assert result.min_us >= 2000.0


def test_bandwidth_probe_counts_read_and_write():
    probe = bandwidth.measure_peak_bandwidth(torch.device("cpu"), nbytes=1 << 20, budget_ms=1.0)
    assert probe.bytes_moved == 2 * (1 << 20)
    assert probe.gbps == pytest.approx(probe.bytes_moved / (probe.median_us * 1e3))
    assert bandwidth.gbps(2_000_000, 1000.0) == pytest.approx(2.0)


def test_read_probe_counts_the_bytes_read():
    probe = bandwidth.measure_read_bandwidth(torch.device("cpu"), nbytes=1 << 20, budget_ms=1.0)
    assert probe.bytes_moved == 1 << 20
    assert probe.gbps == pytest.approx(probe.bytes_moved / (probe.median_us * 1e3))


def _row(**overrides):
    row = {
        "op": "merge",
        "kernel": "merge_attn_states",
        "backend": "torch",
        "shape": "tokens=512",
        "params": {"num_tokens": 512},
        "bytes": 1000,
        "median_us": 10.0,
        "min_us": 9.0,
        "runs": 3,
        "gbps": 0.1,
        "pct_peak": 1.0,
        "pct_read_peak": 0.5,
        "baseline": {"name": "eager formula", "median_us": 20.0, "gbps": 0.05},
        "speedup_vs_baseline": 2.0,
        "graph_us": None,
    }
    return row | overrides


def test_result_stem():
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert report.result_stem(["merge"], "cpu-x", when) == "merge-cpu-x-20250102T030405Z"
    assert report.result_stem(["merge", "topk"], "cpu-x", when) == "all-cpu-x-20250102T030405Z"


def test_table_shows_every_row_and_its_baseline():
    table = report.bench_table([_row(), _row(baseline=None, speedup_vs_baseline=None, kernel="other")], 10.0, 20.0)
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(table)
    text = buffer.getvalue()
    assert "merge_attn_states" in text and "other" in text
    assert "eager formula" in text and "2.00x" in text
    assert "10.0 GB/s" in text


def test_table_shows_graph_replay_time_where_measured():
    table = report.bench_table([_row(graph_us=4.25, backend="triton"), _row(kernel="other")], 10.0, 20.0)
    buffer = io.StringIO()
    Console(file=buffer, width=220).print(table)
    lines = buffer.getvalue().splitlines()
    assert "graph µs" in buffer.getvalue()
    assert any("triton" in line and "4.2" in line for line in lines)
    assert any("other" in line and " - " in line for line in lines)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_cuda_graph_times_the_kernels():
    x = torch.ones(1 << 24, device="cuda")
    replay = timing.time_cuda_graph(lambda: x.mul_(1.0), budget_ms=20)
    assert replay.runs >= 10 and 0 < replay.min_us <= replay.median_us


def test_ascii_table_has_no_box_drawing_characters():
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(report.bench_table([_row()], 10.0, 20.0, ascii_only=True))
    assert all(ord(c) < 128 or c == "µ" for c in buffer.getvalue())


def test_write_json_round_trips(tmp_path):
    path = report.write_json(tmp_path / "sub" / "r.json", {"rows": [_row()]})
    assert json.loads(path.read_text()) == {"rows": [_row()]}


def test_write_plot_writes_a_png(tmp_path):
    rows = [_row(), _row(baseline=None, speedup_vs_baseline=None)]
    path = report.write_plot(tmp_path / "r.png", rows, 10.0, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- backend discovery and the check machinery ---------------------------------------------------------------------


def test_backends_come_from_the_dispatchers(monkeypatch):
    from attnops.bench.backends import dispatchers, runnable_backends
    from attnops.merge import api

    assert dispatchers("merge") == {"merge_attn_states": api._dispatcher}
    cpu = torch.device("cpu")
    assert runnable_backends("merge", "merge_attn_states", cpu) == ["torch"]
    # A Triton kernel registering itself is picked up; on CPU tensors it runs only under the interpreter.
    monkeypatch.setitem(api._dispatcher.impls, "triton", api._dispatcher.impls["torch"])
    assert runnable_backends("merge", "merge_attn_states", cpu) == ["torch"]
    if triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert runnable_backends("merge", "merge_attn_states", cpu) == ["torch", "triton"]


@pytest.mark.skipif(
    not triton_available(), reason="Triton kernels run on CPU tensors only through Triton's interpreter"
)
def test_bench_and_check_cover_a_newly_registered_backend(monkeypatch):
    from attnops.bench.bandwidth import BandwidthProbe
    from attnops.bench.check_cases import all_cases
    from attnops.bench.checks import _check_case
    from attnops.bench.runner import BenchConfig, _bench_one
    from attnops.merge import api

    monkeypatch.setitem(api._dispatcher.impls, "triton", api._dispatcher.impls["torch"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    config = BenchConfig(("merge",), torch.device("cpu"), budget_ms=0.0)
    rows = _bench_one("merge", shapes.MergeShape(64), config, BandwidthProbe(1, 1.0, 1.0), BandwidthProbe(1, 1.0, 1.0))
    assert [r["backend"] for r in rows] == ["torch", "triton"]
    assert all(r["baseline"]["name"] == "eager formula" for r in rows)
    merge_case = next(c for c in all_cases(quick=True) if c.op == "merge_attn_states")
    checked = _check_case(merge_case, [torch.device("cpu")])
    assert {r.backend for r in checked} == {"torch", "triton"} and all(r.verdict.passed for r in checked)


def test_max_abs_error_treats_matching_infinities_as_equal_and_nan_as_failure():
    from attnops.bench.checks import max_abs_error

    inf = float("inf")
    assert max_abs_error(torch.tensor([-inf, 1.0]), torch.tensor([-inf, 1.5])) == 0.5
    assert max_abs_error(torch.tensor([inf]), torch.tensor([-inf])) == inf
    assert max_abs_error(torch.tensor([float("nan")]), torch.tensor([0.0])) == inf
    assert max_abs_error(torch.empty(0), torch.empty(0)) == 0.0


def test_gpu_runs_are_also_compared_with_the_cpu_reference():
    from attnops.bench.checks import CheckCase, Verdict, _check_case, agree_all

    runs = []

    def run(backend, device):
        runs.append(device.type)
        # Stands in for a GPU result that differs from the CPU reference.
        return {"out": torch.ones(3) * (2.0 if device.type == "meta" else 1.0)}

    case = CheckCase(
        "merge", "merge_attn_states", "fake", run, lambda out: [Verdict("own", 0.0, 0.0)], agree_all({"out": 0.1})
    )
    rows = _check_case(case, [torch.device("cpu"), torch.device("meta")])
    assert runs == ["cpu", "meta", "cpu"]
    assert [(r.device, r.verdict.check, r.verdict.passed) for r in rows] == [
        ("cpu", "own", True),
        ("meta", "own", True),
        ("meta", "vs cpu torch (out)", False),
    ]


def test_every_quick_case_agrees_with_itself_and_catches_a_perturbation():
    from attnops.bench.check_cases import all_cases

    cpu = torch.device("cpu")
    for case in all_cases(quick=True):
        outputs = case.run("torch", cpu)
        assert case.agree(outputs, outputs).passed, case.op
        assert all(v.passed for v in case.verify(outputs)), case.op
        broken = dict(outputs)
        name = next(n for n in ("output", "out", "indices", "block_count", "key_cache") if n in outputs)
        broken[name] = outputs[name].clone()
        if name == "indices":
            row = broken[name][-1]
            row[0] = row[1]  # a duplicate index loses a top-k value
        elif name in ("block_count", "key_cache"):
            broken[name].view(-1)[broken[name].view(-1).argmax()] -= 1
        else:
            broken[name] += 1.0
        assert not case.agree(broken, outputs).passed, case.op
        assert not all(v.passed for v in case.verify(broken)), case.op

"""The ``attnops`` command line, run in-process: demo, check, bench and their errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from attnops.bench.report import PAYLOAD_KEYS, ROW_KEYS
from attnops.cli import main


def test_demo_runs_every_step(capsys):
    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    for step in ("reshape_and_cache", "paged_attention_v1", "merge_attn_states", "top_k_per_row_decode"):
        assert step in text
    assert "convert_vertical_slash_indexes" in text
    assert "selected values equal torch.topk's in every row: True" in text
    merged = re.search(r"max \|merged - full attention\| = ([0-9.e+-]+)", text)
    assert merged and float(merged.group(1)) < 5e-2


def test_check_quick_passes_and_prints_a_table(capsys):
    assert main(["check", "--quick", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "attnops check" in text and "all passed" in text
    for op in (
        "reshape_and_cache",
        "paged_attention_v1",
        "paged_attention_v2",
        "paged_decode",
        "merge_attn_states",
        "top_k_per_row_decode",
        "top_k_per_row_prefill",
        "convert_vertical_slash_indexes",
        "convert_vertical_slash_indexes_mergehead",
        "sparse_prefill_attention",
    ):
        assert op in text, op
    assert "FAIL" not in text


def test_check_fails_when_an_op_is_wrong(monkeypatch, capsys):
    from attnops.merge import api

    def broken(output, *args):
        output.zero_()

    monkeypatch.setitem(api._dispatcher.impls, "torch", broken)
    assert main(["check", "--quick", "--device", "cpu"]) == 1
    text = capsys.readouterr().out
    assert re.search(r"merge_attn_states .* FAIL", text)


def test_check_reports_a_crashing_op(monkeypatch, capsys):
    from attnops.topk import api

    def crash(*args):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(api._decode_dispatcher.impls, "torch", crash)
    assert main(["check", "--quick", "--device", "cpu"]) == 1
    assert "kernel exploded" in capsys.readouterr().out


def test_bench_times_only_the_backends_asked_for(tmp_path, monkeypatch):
    from attnops.bench import runner

    timed = []
    monkeypatch.setattr(runner, "runnable_backends", lambda family, op, device: ["torch", "triton"])
    monkeypatch.setattr(runner, "_row", lambda op, kernel, backend, *rest: timed.append(backend) or {})
    monkeypatch.setattr(runner, "time_fn", lambda *args, **kwargs: None)
    monkeypatch.setattr(runner, "_baseline", lambda *args: None)
    config = runner.BenchConfig(ops=("merge",), device=torch.device("cpu"), quick=True, backends=("triton",))
    shape = runner.grid("merge", quick=True)[0]
    runner._bench_one("merge", shape, config, probe=None, read=None)
    assert timed == ["triton"]


def test_bench_writes_json_and_png(tmp_path, capsys):
    argv = ["bench", "--device", "cpu", "--quick", "--ops", "merge", "--out", str(tmp_path)]
    assert main([*argv, "--budget-ms", "1", "--probe-mib", "4"]) == 0
    (json_path,) = tmp_path.glob("merge-cpu-*.json")
    (png_path,) = tmp_path.glob("merge-cpu-*.png")
    assert json_path.stem == png_path.stem
    assert re.fullmatch(r"merge-cpu-[a-z0-9-]+-\d{8}T\d{6}Z", json_path.stem)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads(json_path.read_text())
    assert tuple(payload) == PAYLOAD_KEYS
    assert payload["device"]["type"] == "cpu" and payload["device"]["name"]
    assert payload["versions"]["torch"] == torch.__version__
    assert payload["ops"] == ["merge"] and payload["quick"] is True and payload["backends"] is None
    assert payload["peak_bandwidth"]["gbps"] > 0
    assert payload["peak_bandwidth"]["bytes_per_copy"] == 2 * 4 * 2**20
    assert payload["read_bandwidth"]["gbps"] > 0 and payload["read_bandwidth"]["bytes_per_sum"] == 4 * 2**20
    assert payload["command"].startswith("attnops bench")
    rows = payload["rows"]
    assert [r["params"]["num_tokens"] for r in rows] == [512, 4096]
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert (row["op"], row["kernel"], row["backend"]) == ("merge", "merge_attn_states", "torch")
        assert row["baseline"]["name"] == "eager formula" and row["baseline"]["median_us"] > 0
        assert row["gbps"] == pytest.approx(row["bytes"] / (row["median_us"] * 1e3))
        assert row["pct_peak"] == pytest.approx(100 * row["gbps"] / payload["peak_bandwidth"]["gbps"])
        assert row["pct_read_peak"] == pytest.approx(100 * row["gbps"] / payload["read_bandwidth"]["gbps"])
    text = capsys.readouterr().out
    assert "merge_attn_states" in text and "eager formula" in text and str(json_path) in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["bench", "--device", "cuda", "--quick"], ["check", "--device", "cuda"]])
def test_cuda_without_cuda_is_a_clear_error(command, tmp_path, capsys):
    assert main([*command, *(["--out", str(tmp_path)] if command[0] == "bench" else [])]) == 2
    assert "CUDA is not available" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_unknown_op_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--ops", "softmax"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'softmax'" in capsys.readouterr().err


def test_python_dash_m_attnops_shows_help():
    result = subprocess.run([sys.executable, "-m", "attnops", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "{demo,check,bench}" in result.stdout

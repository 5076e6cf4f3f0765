"""Shared machinery: backend selection, value-check gating, chunk budgets, fp8 helpers."""

import pytest
import torch

from attnops._common import backend as backend_mod
from attnops._common.backend import Dispatcher, requested_backend
from attnops._common.chunking import chunk_budget
from attnops._common.dtypes import fp8_dequantize, fp8_quantize, x_for
from attnops._common.validate import check_tensor, values_checked

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def reference():
    return "torch"


def kernel():
    return "triton"


def validate():
    pass


def test_requested_backend_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv("ATTNOPS_BACKEND", raising=False)
    assert requested_backend(None) == "auto"
    monkeypatch.setenv("ATTNOPS_BACKEND", "torch")
    assert requested_backend(None) == "torch"
    assert requested_backend("triton") == "triton"
    monkeypatch.setenv("ATTNOPS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ATTNOPS_BACKEND"):
        requested_backend(None)
    with pytest.raises(ValueError, match="backend: expected one of"):
        requested_backend("fast")


def test_dispatcher_without_kernel_always_runs_the_reference(monkeypatch):
    monkeypatch.delenv("ATTNOPS_BACKEND", raising=False)
    dispatcher = Dispatcher("op", reference, validate)
    assert dispatcher.select(None, CPU) is reference
    assert dispatcher.select("auto", CUDA) is reference
    with pytest.raises(ValueError, match="has no Triton implementation"):
        dispatcher.select("triton", CUDA)


def test_dispatcher_picks_the_kernel_for_cuda_tensors(monkeypatch):
    monkeypatch.delenv("ATTNOPS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backend_mod, "triton_available", lambda: True)
    dispatcher = Dispatcher("op", reference, validate)
    dispatcher.register("triton")(kernel)
    assert dispatcher.select(None, CUDA) is kernel
    assert dispatcher.select(None, CPU) is reference
    assert dispatcher.select("torch", CUDA) is reference
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        dispatcher.select("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatcher.select("triton", CPU) is kernel
    assert dispatcher.select("auto", CPU) is reference


def test_values_checked_gating(monkeypatch):
    monkeypatch.delenv("ATTNOPS_CHECK", raising=False)
    assert values_checked(torch.zeros(2), None)
    assert not values_checked(torch.zeros(2, device="meta"))
    with torch._subclasses.fake_tensor.FakeTensorMode():
        assert not values_checked(torch.zeros(2))


def test_check_tensor_messages():
    t = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"x: expected dtype torch.int32, got torch.float32"):
        check_tensor("x", t, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"x: expected shape \(2, 4\), got \(2, 3\)"):
        check_tensor("x", t, shape=(2, 4))
    with pytest.raises(ValueError, match="x: expected a 3-D tensor"):
        check_tensor("x", t, ndim=3)
    with pytest.raises(ValueError, match="x: expected a contiguous tensor"):
        check_tensor("x", t.T, contiguous=True)
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor, got list"):
        check_tensor("x", [1.0])


def test_chunk_budget_grows_on_gpus():
    assert chunk_budget(CPU, 1000) == 1000
    assert chunk_budget(CUDA, 1000) > 1000


@pytest.mark.parametrize(("kind", "limit"), [("fp8", 448.0), ("fp8_e4m3", 448.0), ("fp8_e5m2", 57344.0)])
def test_fp8_round_trip_saturates(kind, limit):
    scale = torch.tensor([0.5])
    values = torch.tensor([0.0, 1.0, -3.0, 1e9, -1e9])
    raw = fp8_quantize(values, kind, scale)
    assert raw.dtype == torch.uint8
    back = fp8_dequantize(raw, kind, scale, torch.float32)
    torch.testing.assert_close(back, torch.tensor([0.0, 1.0, -3.0, limit * 0.5, -limit * 0.5]))


def test_x_is_16_bytes_of_elements():
    assert [x_for(d) for d in (torch.float32, torch.bfloat16, torch.uint8)] == [4, 8, 16]


def test_sm_count_is_one_off_cuda():
    assert backend_mod.sm_count(torch.device("cpu")) == 1

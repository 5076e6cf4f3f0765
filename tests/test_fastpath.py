"""Memoised validation and compiled-handle launches (the eager host fast path)."""

from __future__ import annotations

import pytest
import torch

from attnops._common.fastpath import aligned, memoize_validation

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def counting_validator():
    calls = []

    @memoize_validation
    def validate(x: torch.Tensor, n: int) -> int:
        calls.append(n)
        if n < 0:
            raise ValueError("n: expected a value >= 0")
        return x.shape[0] + n

    return validate, calls


def test_cpu_tensors_are_validated_every_call():
    validate, calls = counting_validator()
    x = torch.zeros(3)
    assert validate(x, 1) == validate(x, 1) == 4
    assert len(calls) == 2


def test_fake_tensors_are_validated_every_call():
    from torch._subclasses.fake_tensor import FakeTensorMode

    validate, calls = counting_validator()
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(3))
        validate(x, 1)
        validate(x, 1)
    assert len(calls) == 2


def test_aligned():
    x = torch.zeros(8)
    assert aligned(x, None, x[4:]) == (True, True, True)
    assert aligned(x[1:]) == (False,)


@pytest.mark.gpu
@gpu
def test_cuda_verdicts_are_memoised_per_signature(monkeypatch):
    validate, calls = counting_validator()
    x = torch.zeros(3, device="cuda")
    assert validate(x, 1) == validate(torch.ones(3, device="cuda"), 1) == 4
    assert len(calls) == 1
    assert validate(torch.zeros(5, device="cuda"), 1) == 6  # another shape: validated
    assert len(calls) == 2
    for _ in range(2):  # failures are never memoised
        with pytest.raises(ValueError, match="n: expected"):
            validate(x, -1)
    assert len(calls) == 4
    monkeypatch.setenv("ATTNOPS_CHECK", "1")
    validate(x, 1)
    assert len(calls) == 5

"""Shared test configuration: where Triton kernels can run.

Tests marked ``triton`` run Triton kernels: on a CUDA device when there is
one, else on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``
must be set before Triton is imported, so CI runs them in a separate pytest
process: ``make test``). Without either they are skipped.
"""

import os

import pytest
import torch


def kernel_device() -> torch.device | None:
    """The device Triton kernels run on in this process, or ``None``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return torch.device("cpu")
    return None


def pytest_collection_modifyitems(config, items):
    if kernel_device() is not None:
        return
    skip = pytest.mark.skip(reason="needs CUDA or TRITON_INTERPRET=1 (see `make test`)")
    for item in items:
        if "triton" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """The device for Triton-kernel tests (skips when kernels cannot run here)."""
    found = kernel_device()
    if found is None:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    return found

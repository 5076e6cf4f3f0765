"""Argument validation shared by every op.

Every check raises before any output is written, names the argument and
states what was expected and what was given. Metadata checks (dtype, rank,
shape, device, layout) are free and always run, also on fake tensors under
``torch.compile``. Checks that read tensor *values* cost a device sync on the
GPU, so they run on CPU tensors always and on GPU tensors only when the
environment sets ``ATTNOPS_CHECK=1`` (see :func:`values_checked`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch._subclasses.fake_tensor import is_fake

from attnops._common.env import getenv

DTypes = torch.dtype | Sequence[torch.dtype]


def _dtype_names(dtypes: DTypes) -> str:
    if isinstance(dtypes, torch.dtype):
        return str(dtypes)
    return " or ".join(str(d) for d in dtypes)


def check_tensor(
    name: str,
    t: object,
    *,
    dtype: DTypes | None = None,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    device: torch.device | None = None,
    contiguous: bool = False,
    last_dim_contiguous: bool = False,
) -> torch.Tensor:
    """Check one tensor argument; ``None`` entries in ``shape`` match any size.

    Raises ``TypeError`` for a non-tensor or a wrong dtype and ``ValueError``
    for a wrong rank, shape, device or memory layout.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            raise TypeError(f"{name}: expected dtype {_dtype_names(dtype)}, got {t.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")
    if shape is not None:
        for dim, (want, got) in enumerate(zip(shape, t.shape, strict=True)):
            if want is not None and want != got:
                want_str = tuple("*" if s is None else s for s in shape)
                raise ValueError(
                    f"{name}: expected shape {want_str}, got {tuple(t.shape)} (dim {dim}: expected {want}, got {got})"
                )
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()} for shape {tuple(t.shape)}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected the last dimension to have stride 1, got strides {t.stride()}")
    return t


def check_optional_tensor(name: str, t: object, **kwargs) -> torch.Tensor | None:
    """Like :func:`check_tensor`, but ``None`` is accepted."""
    if t is None:
        return None
    return check_tensor(name, t, **kwargs)


def check_same_device(reference: str, tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All non-``None`` tensors must live on the device of ``tensors[reference]``."""
    device = tensors[reference].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (where {reference} is), got one on {t.device}")
    return device


def check_int(
    name: str,
    value: object,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    choices: Iterable[int] | None = None,
) -> int:
    """Check a Python integer argument (``bool`` is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if choices is not None:
        allowed = tuple(choices)
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, got {value}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name}: expected a value >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name}: expected a value <= {max_value}, got {value}")
    return value


def check_float(name: str, value: object) -> float:
    """Check a Python real-number argument (int or float, not bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    return float(value)


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Check a string argument against a fixed set of values."""
    allowed = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


def check_divisible(name: str, value: int, divisor: int, divisor_name: str) -> None:
    """``value`` must be a multiple of ``divisor``."""
    if value % divisor != 0:
        raise ValueError(f"{name}: expected a multiple of {divisor_name} ({divisor}), got {value}")


def values_checked(*tensors: torch.Tensor | None) -> bool:
    """Whether checks that read tensor values should run for these tensors.

    True for real CPU tensors; for GPU tensors only under ``ATTNOPS_CHECK=1``
    (reading values forces a device sync and breaks CUDA-graph capture);
    never for fake or meta tensors, which have no values.
    """
    present = [t for t in tensors if t is not None]
    if any(is_fake(t) or t.device.type == "meta" for t in present):
        return False
    if all(t.device.type == "cpu" for t in present):
        return True
    return checks_requested()


def checks_requested() -> bool:
    """Whether the environment asks for value checks on GPU tensors (``ATTNOPS_CHECK=1``), read per call."""
    return getenv("ATTNOPS_CHECK", "0") == "1"


def check_values_in_range(name: str, t: torch.Tensor, low: int, high: int) -> None:
    """Every element of the integer tensor ``t`` must lie in ``[low, high)``.

    Call only where :func:`values_checked` holds.
    """
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < low or hi >= high:
        bad = lo if lo < low else hi
        raise ValueError(f"{name}: expected values in [{low}, {high}), got {bad}")

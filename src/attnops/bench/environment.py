"""What a benchmark ran on: device name, library versions, git commit."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """A human-readable name of ``device`` (the GPU model, or the CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def device_slug(device: torch.device) -> str:
    """``device``'s type and name as a lowercase, file-name-safe string."""
    name = device_name(device).lower()
    if not name.startswith(device.type):
        name = f"{device.type}-{name}"
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:60].rstrip("-")


def device_info(device: torch.device) -> dict[str, object]:
    """Device facts recorded with every benchmark result."""
    info: dict[str, object] = {"type": device.type, "name": device_name(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory}
    else:
        info |= {"torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    return info


def versions() -> dict[str, str | None]:
    """Versions of Python, torch, Triton (``None`` when missing) and attnops."""
    from attnops import __version__

    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.version.cuda
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": cuda,
        "attnops": __version__,
    }


def git_commit(cwd: Path | None = None) -> str | None:
    """``git rev-parse --short HEAD`` of the checkout holding this package, if there is one.

    ``ATTNOPS_GIT_COMMIT`` overrides it, for copies of the tree without ``.git`` (the GPU machine).
    """
    if os.environ.get("ATTNOPS_GIT_COMMIT"):
        return os.environ["ATTNOPS_GIT_COMMIT"]
    where = cwd or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 512 << 20


def steady_cpu_allocator() -> str | None:
    """Keep freed CPU tensors' memory in the process (glibc only); returns what was set, or ``None``.

    With glibc's defaults, a process that allocates and frees a few MiB of temporaries per call
    may hand the memory back to the kernel after each call and page-fault it in again on the next
    (about 2 µs per 4 KiB page), depending on what else the heap holds: the same decode call was
    seen at 1.9 ms or 4.6 ms by import order alone. A long-running engine sits in the steady state;
    the bench pins it for the op and its baseline alike so that runs are comparable.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)):
        return None
    return f"glibc mallopt: mmap threshold {_MMAP_THRESHOLD >> 20} MiB, trim threshold {_TRIM_THRESHOLD >> 20} MiB"

"""Where the numbers are computed ("cpu", "cuda" or "cuda:N", checked before any work),
and in which precision a backbone runs there by default.

`default_precision(device)` is "bfloat16" on a CPU that multiplies bfloat16 natively
(AVX512-BF16 or AMX-BF16) and "float32" elsewhere: on a CPU with only AVX2, bfloat16
autocast falls back to slow kernels, and on a GPU it measured slower than float32 for
Whisper base's small matrices (benchmarks/SPEED.md). The environment variable `SUBSPACES_PRECISION` (float32 or
bfloat16) overrides the choice, e.g. to reproduce float32 numbers on a bfloat16 machine.

>>> check_device("cpu")
device(type='cpu')
>>> check_device("tpu")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
DeviceError: device 'tpu': expected cpu, cuda or cuda:N
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .errors import SubspacesError

__all__ = ["DEVICE_PATTERN", "PRECISIONS", "DeviceError", "check_device", "cpu_flags", "default_precision",
           "resolve_precision"]

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
PRECISIONS = ("float32", "bfloat16")
# CPU feature flags (as /proc/cpuinfo names them) of native bfloat16 matrix arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISION_VARIABLE = "SUBSPACES_PRECISION"


class DeviceError(SubspacesError, ValueError):
    """A device this machine does not have, or a name that is not one."""


def check_device(device: str | torch.device, where: str = "device") -> torch.device:
    """The torch device for `device`, refusing (with `where` named: an option or a
    recipe key) a malformed name, or a CUDA device this machine does not have."""
    text = str(device)
    if not DEVICE_PATTERN.fullmatch(text):
        raise DeviceError(f"{where} {text!r}: expected cpu, cuda or cuda:N")
    resolved = torch.device(text)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{where} {text!r}, but torch finds no usable CUDA GPU here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}); use cpu or run on a machine with a GPU"
        )
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"{where} {text!r}, but this machine has {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return resolved


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no such file).

    >>> "avx2" in cpu_flags() or True
    True
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def default_precision(device: str | torch.device = "cpu", flags: set[str] | None = None) -> str:
    """The precision a backbone runs in when none is asked for: `SUBSPACES_PRECISION` if
    set; else "bfloat16" on a CPU whose `flags` (default: `cpu_flags()`) include
    AVX512-BF16 or AMX-BF16; else (other CPUs, GPUs) "float32".

    >>> default_precision("cpu", flags={"avx2"}) if "SUBSPACES_PRECISION" not in os.environ else "float32"
    'float32'
    """
    forced = os.environ.get(PRECISION_VARIABLE, "").strip()
    if forced:
        if forced not in PRECISIONS:
            raise DeviceError(f"{PRECISION_VARIABLE}={forced!r}: expected one of {', '.join(PRECISIONS)} (or unset it)")
        return forced
    device = torch.device(device)
    if device.type == "cuda":
        # Measured on an H200 (benchmarks/gpu_check.py, SPEED.md): Whisper base's small
        # matrices leave the GPU waiting on the CPU, and autocast's casts made extraction
        # slower in bfloat16 than in float32.
        return "float32"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "float32"


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """`precision` itself, or for "auto" the machine's `default_precision(device)`;
    anything else is refused naming the choices.

    >>> resolve_precision("float32")
    'float32'
    """
    if precision == "auto":
        return default_precision(device)
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision

"""Where the numbers are computed: "cpu", "cuda" or "cuda:N", checked before any work.

>>> check_device("cpu")
device(type='cpu')
>>> check_device("tpu")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
DeviceError: device 'tpu': expected cpu, cuda or cuda:N
"""

from __future__ import annotations

import re

import torch

from .errors import SubspacesError

__all__ = ["DEVICE_PATTERN", "DeviceError", "check_device"]

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


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

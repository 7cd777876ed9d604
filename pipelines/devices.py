"""Device and dtype choice: CUDA fp16 when available, else MPS, else CPU fp32; overridable."""
from __future__ import annotations

from dataclasses import dataclass

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DeviceSpec:
    device: str  # "cpu", "cuda" or "mps" (torch device string)
    dtype_name: str  # "float32" or "float16"

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def resolve_device(choice: str = "auto", dtype: str | None = None) -> DeviceSpec:
    """Turn a user's ``--device`` choice into a concrete device and dtype.

    ``auto`` picks CUDA (fp16), then Apple MPS (fp16), then CPU (fp32). Asking for a device
    that is not there is an error, never a silent fallback.
    """
    import torch

    if choice not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    elif choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device auto or cpu.")
    elif choice == "mps" and not has_mps:
        raise ValueError("--device mps was asked for, but this torch has no MPS backend; use --device auto or cpu.")
    if dtype is None:
        dtype = "float32" if choice == "cpu" else "float16"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"Unknown dtype {dtype!r}; choose float32, float16 or bfloat16.")
    return DeviceSpec(device=choice, dtype_name=dtype)

"""Device, dtype and compile choice: CUDA fp16 when available, else MPS, else CPU fp32; overridable, and an optional
``torch.compile`` of each loaded model's denoiser (``--compile``)."""
from __future__ import annotations

from dataclasses import dataclass

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune")  # "off" or a torch.compile mode


@dataclass(frozen=True)
class DeviceSpec:
    device: str  # "cpu", "cuda" or "mps" (torch device string)
    dtype_name: str  # "float32", "float16" or "bfloat16"
    compile_mode: str | None = None  # a torch.compile mode for each loaded model's denoiser; None: eager

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def resolve_device(choice: str = "auto", dtype: str | None = None, compile_mode: str | None = None) -> DeviceSpec:
    """Turn a user's ``--device`` (and ``--dtype``, ``--compile``) choice into a concrete device and dtype.

    ``auto`` picks CUDA (fp16), then Apple MPS (fp16), then CPU (fp32). Asking for a device
    that is not there is an error, never a silent fallback; so is float16 on the CPU (slow, and some
    operations have no CPU float16 kernel: bfloat16 is the CPU's half precision).
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
    if dtype is None or dtype == "auto":
        dtype = "float32" if choice == "cpu" else "float16"
    if dtype not in DTYPE_CHOICES[1:]:
        raise ValueError(f"Unknown dtype {dtype!r}; choose float32, float16 or bfloat16.")
    if dtype == "float16" and choice == "cpu":
        raise ValueError("float16 on the CPU is slow and some operations have no CPU kernel for it; "
                         "use --dtype bfloat16 (or float32, the CPU's default).")
    if compile_mode not in (None, *COMPILE_CHOICES):
        raise ValueError(f"Unknown compile mode {compile_mode!r}; choose one of {', '.join(COMPILE_CHOICES)}.")
    return DeviceSpec(device=choice, dtype_name=dtype, compile_mode=None if compile_mode == "off" else compile_mode)


def compile_denoiser(model, device: DeviceSpec) -> bool:
    """``torch.compile`` a loaded model's denoiser (its UNet or transformer) in place with ``device.compile_mode``;
    True when it did. In place (``nn.Module.compile``), so the module keeps its class, config and attention
    processors; the first call of each input shape compiles (minutes on a CPU, so the warm-up load pays it)."""
    denoiser = getattr(model, "denoiser", None) if device.compile_mode else None
    if denoiser is None:
        return False
    denoiser.compile(mode=device.compile_mode)
    return True

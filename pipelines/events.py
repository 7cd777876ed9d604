"""Per-step observation and cancellation shared by every sampling loop.

Pipelines call ``on_step(event)`` after each finished denoising step (k-diffusion's
``callback`` convention) and check a :class:`CancelFlag` between steps.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class StepEvent:
    """What the sampler knows after finishing one step. Read-only; tensors are detached."""

    step: int  # 0-based index of the finished step
    num_steps: int  # total number of steps of this run
    timestep: float  # scheduler timestep, sigma or flow time of the finished step
    latents: "torch.Tensor"  # x_t after this step, (B, C, H, W)
    pred_x0: Optional["torch.Tensor"]  # the model's estimate of the clean sample at this step


StepCallback = Callable[[StepEvent], None]


class GenerationCancelled(Exception):
    """Raised inside a sampling loop when its :class:`CancelFlag` was set."""

    def __init__(self, completed_steps: int):
        super().__init__(f"cancelled after {completed_steps} step(s)")
        self.completed_steps = completed_steps


class CancelFlag:
    """A thread-safe flag that a UI (or any caller) sets to stop a run between two steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self, completed_steps: int) -> None:
        if self._event.is_set():
            raise GenerationCancelled(completed_steps)

"""Compare families: one prompt and seed through several models at a matched number of network evaluations.

The budget is network evaluations (NFE), the cost the seeds compare families by: a diffusion or flow
model gets ``nfe`` sampler steps (one denoiser call per step for the first-order and multistep
samplers the models default to; a guided step batches its conditional and unconditional halves into
that one call, as diffusers does); a token model writes one codebook id per evaluation, so its
count is its grid size whatever the budget (the table says so). NFE are *counted*, with a forward
hook on each model's network, not inferred. Each model runs at its own ``default_settings.json``
(guidance, scheduler, temperature, top-k): the comparison is of families at their best-known
settings, not of one guidance scale that suits none of them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from .default_settings import read_default_settings
from .families import TOKEN_FAMILIES
from .requests import ImageRequest

if TYPE_CHECKING:  # torch and the metrics load where a comparison runs, so importing this module stays cheap
    import torch

MAX_NFE = 200


@dataclass
class FamilyRun:
    """One model's run of a comparison."""

    index: int
    model_id: str
    family: str
    request: ImageRequest
    result: Any  # ImageResult
    seconds: float
    network_evaluations: int  # counted denoiser / prior calls
    adherence: Optional[float]
    fidelity: Optional[float]
    frames: list[Any] = field(default_factory=list, repr=False)  # decoded x0 estimates along the run

    @property
    def image(self) -> Any:
        return self.result.images[0]

    def metrics(self) -> dict[str, Any]:
        return {"index": self.index, "model_id": self.model_id, "family": self.family,
                "steps": self.request.num_inference_steps, "network_evaluations": self.network_evaluations,
                "guidance_scale": self.request.guidance_scale, "scheduler": self.result.scheduler,
                "adherence": self.adherence, "fidelity": self.fidelity, "seconds": self.seconds}


def parse_nfe(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"Network evaluations must be a whole number (got {value!r}).") from None
    if isinstance(value, float) and value != n or not 1 <= n <= MAX_NFE:
        raise ValueError(f"Network evaluations must be a whole number from 1 to {MAX_NFE} (got {value!r}).")
    return n


def network_of(model: Any) -> torch.nn.Module:
    """The network whose calls are counted: a token model's prior, a diffusion model's denoiser."""
    import torch

    prior = getattr(model, "prior", None)
    return prior if isinstance(prior, torch.nn.Module) else model.denoiser


def matched_request(model: Any, folder: Path, prompt: str, seed: int, nfe: int, negative_prompt: str = "") -> ImageRequest:
    """The request that gives ``model`` a budget of ``nfe`` evaluations at its own default settings."""
    d = read_default_settings(folder)
    if getattr(model, "family", None) in TOKEN_FAMILIES:
        checkpoints = min(nfe, model.prior.num_tokens)  # trajectory frames; the id count is fixed
        return ImageRequest(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=checkpoints,
                            guidance_scale=d["guidance_scale"], seed=seed, temperature=d["temperature"],
                            top_k=d["top_k"])
    return ImageRequest(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=nfe,
                        guidance_scale=d["guidance_scale"], seed=seed, scheduler=d["scheduler"])


class CallCounter:
    """Counts a module's forward calls while open (a forward hook); use as a context manager."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def __enter__(self) -> "CallCounter":
        return self

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()


def run_comparison(models: Sequence[tuple[str, Any, Path]], prompt: str, seed: int, nfe: int, *,
                   negative_prompt: str = "", frames: int = 6, cancel: Any = None,
                   on_step: Optional[Callable[[int, Any], None]] = None) -> Iterator[FamilyRun]:
    """Run each ``(model_id, loaded model, folder)`` in turn; yield its :class:`FamilyRun` when done.

    ``frames`` x0 estimates, evenly spaced over the run, are decoded for the side-by-side trajectories.
    """
    from .metrics import shapes_adherence, shapes_fidelity

    for index, (model_id, model, folder) in enumerate(models):
        req = matched_request(model, folder, prompt, seed, nfe, negative_prompt)
        callback = (lambda event, i=index: on_step(i, event)) if on_step is not None else None
        with CallCounter(network_of(model)) as counter:
            start = time.perf_counter()
            result = model.generate(req, on_step=callback, cancel=cancel)
            seconds = time.perf_counter() - start
        image = result.images[0]
        yield FamilyRun(index=index, model_id=model_id, family=result.family, request=req, result=result,
                        seconds=seconds, network_evaluations=counter.calls, adherence=shapes_adherence(image, prompt),
                        fidelity=shapes_fidelity(image, prompt), frames=trajectory_frames(model, result, frames))


def trajectory_frames(model: Any, result: Any, count: int) -> list[Any]:
    """Decoded x0 estimates at ``count`` evenly spaced points of the run (the last is the final estimate)."""
    traj = result.trajectory
    if traj is None or count < 1:
        return []
    n = traj.num_steps
    picks = sorted({round((k + 1) * n / count) - 1 for k in range(count)})
    return model.preview.decode(traj.pred_x0[picks, 0])

"""Per-step classifier-free guidance decomposition of one latent-diffusion run (issue 5 groundwork).

Classifier-free guidance (Ho & Salimans 2022) mixes two predictions of the same network at every
step: ``eps = eps_u + w * (eps_c - eps_u)``. :func:`decompose` runs one ordinary request through
the model's own ``generate`` and records, at each step, the unconditional and conditional
predictions (from the UNet's batched output, uncond first as diffusers orders it), the guided
prediction the scheduler actually received, the sample x_t it was applied to, and the x0
estimates under each prediction (:func:`pipelines.x0.predict_x0`), plus the norm of
``eps_c - eps_u`` (how much the prompt pulls at that step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipelines.requests import ImageRequest, guided_steps
from pipelines.x0 import predict_x0


@dataclass
class CFGStep:
    """One denoising step of image 0 of the batch (tensors (C, h, w), float32, CPU)."""

    step: int
    timestep: float
    scale: float  # the w applied at this step (1 outside a guidance interval: eps_c alone)
    sample: torch.Tensor  # x_t the step started from
    eps_uncond: torch.Tensor
    eps_cond: torch.Tensor
    eps_guided: torch.Tensor  # what the scheduler received
    x0_uncond: torch.Tensor
    x0_cond: torch.Tensor
    x0_guided: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        """``eps_c - eps_u``: the direction the prompt adds."""
        return self.eps_cond - self.eps_uncond

    @property
    def delta_norm(self) -> float:
        """RMS of ``eps_c - eps_u`` over the latent (comparable across latent sizes)."""
        return float(self.delta.pow(2).mean().sqrt())


def decompose(model: Any, req: ImageRequest) -> tuple[Any, list[CFGStep]]:
    """Run ``req`` (image 0 decomposed) and return ``(ImageResult, steps)``.

    Raises ``ValueError`` when guidance is off (scale <= 1: there is no unconditional branch) or the
    model predicts no noise (a token model: its ``denoiser`` property says why).
    """
    if not req.guidance_scale > 1:
        raise ValueError(f"Guidance scale {req.guidance_scale:g} runs the conditional branch alone: "
                         "there is nothing to decompose. Use a scale above 1.")
    denoiser = model.denoiser
    pipe = model.pipe
    unet_outputs: list[torch.Tensor] = []
    scheduler_calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []

    def on_unet(_module, _args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        unet_outputs.append(sample.detach().float().cpu())

    original = model.scheduler_for

    def scheduler_for(name):
        scheduler = original(name)
        step = scheduler.step

        def recording_step(model_output, timestep, sample, *args, **kwargs):
            scheduler_calls.append((model_output.detach().float().cpu(), float(timestep), sample.detach().float().cpu()))
            return step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = recording_step
        return scheduler

    handle = denoiser.register_forward_hook(on_unet)
    model.scheduler_for = scheduler_for  # this run only (an instance attribute shadows the method)
    try:
        result = model.generate(req)
    finally:
        handle.remove()
        del model.scheduler_for
    if len(unet_outputs) != len(scheduler_calls):
        raise RuntimeError(f"{len(unet_outputs)} UNet calls for {len(scheduler_calls)} scheduler steps: "
                           "this sampler evaluates the model more than once a step; not supported yet.")
    scheduler = pipe.scheduler
    n = req.num_images
    first, end = guided_steps(req.guidance_interval, req.num_inference_steps)
    steps = []
    for i, (out, (guided, timestep, sample)) in enumerate(zip(unet_outputs, scheduler_calls)):
        out = out[:, :sample.shape[1]]  # a learned-variance model's variance half is not guided
        uncond, cond = out[:n], out[n:]
        # x0 maths needs the scheduler's state at this step: flow/VE sigmas come from the timestep
        x0 = [predict_x0(scheduler, e[:1], timestep, sample[:1])[0] for e in (uncond, cond, guided)]
        w = req.guidance_scale if first <= i < end else 1.0
        steps.append(CFGStep(step=i, timestep=timestep, scale=w, sample=sample[0], eps_uncond=uncond[0],
                             eps_cond=cond[0], eps_guided=guided[0], x0_uncond=x0[0], x0_cond=x0[1], x0_guided=x0[2]))
    return result, steps

"""The model's estimate of the clean sample, computed with the scheduler's own maths.

Every scheduler family stores its noise level differently, and models predict different
targets, so there is exactly one function here, :func:`predict_x0`, tested against the
schedulers' own ``pred_original_sample``.

Notation (Ho et al. 2020; Salimans & Ho 2022 for v): a variance-preserving (VP) sample is
``x_t = alpha_t * x0 + sigma_t * eps`` with ``alpha_t**2 + sigma_t**2 = 1``. Then

- epsilon prediction: ``x0 = (x_t - sigma_t * eps) / alpha_t``
- v prediction (``v = alpha_t * eps - sigma_t * x0``): ``x0 = alpha_t * x_t - sigma_t * v``
- sample prediction: ``x0 = model_output``

k-diffusion style schedulers (Euler, LMS, ...; Karras et al. 2022) keep the sample in the
variance-exploding form ``x = x0 + s * eps``; it is the VP sample divided by ``alpha_t``
with ``s = sigma_t / alpha_t``. Flow matching (Lipman et al. 2023; Liu et al. 2023,
rectified flow) uses ``x_t = (1 - s) * x0 + s * eps`` and predicts ``v = eps - x0``, so
``x0 = x_t - s * v``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Samples live at noise scale s (x = x0 + s * eps): k-diffusion's convention.
VE_SIGMA_SCHEDULERS = frozenset(
    {
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "LMSDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverSDEScheduler",
    }
)
# VP samples; the noise level is kept as s = sigma_t / alpha_t in ``scheduler.sigmas``.
VP_SIGMA_SCHEDULERS = frozenset(
    {
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "SASolverScheduler",
    }
)
# VP samples; the noise level is read from ``alphas_cumprod[t]``.
VP_ALPHA_SCHEDULERS = frozenset(
    {"DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler", "TCDScheduler"}
)
# Flow matching: x_t = (1 - s) x0 + s eps, the model predicts the velocity eps - x0.
FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})


@dataclass(frozen=True)
class NoiseLevel:
    """Where a sample sits on the noise schedule at one timestep."""

    kind: str  # "vp", "ve" or "flow"
    alpha: float  # VP signal coefficient alpha_t (1 - s for flow)
    sigma: float  # VP noise coefficient sigma_t (s for ve and flow)


def supports_x0(scheduler: Any) -> bool:
    """Whether :func:`predict_x0` knows this scheduler's parameterisation."""
    name = type(scheduler).__name__
    return name in VE_SIGMA_SCHEDULERS | VP_SIGMA_SCHEDULERS | VP_ALPHA_SCHEDULERS | FLOW_SCHEDULERS


def _sigma_at(scheduler: Any, timestep: Any) -> float:
    t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
    index = scheduler.index_for_timestep(t.to(scheduler.timesteps.device))
    return float(scheduler.sigmas[index])


def noise_level(scheduler: Any, timestep: Any) -> NoiseLevel:
    """The noise coefficients the scheduler uses at ``timestep`` (a value of ``scheduler.timesteps``)."""
    name = type(scheduler).__name__
    if name in VP_ALPHA_SCHEDULERS:
        acp = float(scheduler.alphas_cumprod[int(timestep)])
        return NoiseLevel("vp", acp**0.5, (1.0 - acp) ** 0.5)
    if name in VP_SIGMA_SCHEDULERS:
        s = _sigma_at(scheduler, timestep)
        alpha = 1.0 / (s * s + 1.0) ** 0.5
        return NoiseLevel("vp", alpha, s * alpha)
    if name in VE_SIGMA_SCHEDULERS:
        s = _sigma_at(scheduler, timestep)
        return NoiseLevel("ve", 1.0 / (s * s + 1.0) ** 0.5, s)
    if name in FLOW_SCHEDULERS:
        s = _sigma_at(scheduler, timestep)
        return NoiseLevel("flow", 1.0 - s, s)
    raise ValueError(f"No x0 estimate is known for scheduler {name}; pick one of the listed schedulers.")


def predict_x0(scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """Estimate the clean sample x0 from the model's output at ``timestep`` for ``sample`` (x_t).

    ``model_output`` is what the scheduler's ``step`` receives (after classifier-free
    guidance). Returns a float32 tensor shaped like ``sample``.
    """
    level = noise_level(scheduler, timestep)
    out = model_output.float()
    x = sample.float()
    if level.kind == "flow":
        return x - level.sigma * out
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if level.kind == "ve":  # x = x0 + s*eps is the VP sample divided by alpha
        x = x * level.alpha
        alpha, sigma = level.alpha, level.alpha * level.sigma
    else:
        alpha, sigma = level.alpha, level.sigma
    if prediction_type == "epsilon":
        x0 = (x - sigma * out) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x - sigma * out
    elif prediction_type == "sample":
        x0 = out
    else:
        raise ValueError(f"Unknown prediction_type {prediction_type!r} in the scheduler config.")
    if level.kind == "vp" and scheduler.config.get("clip_sample", False):
        limit = scheduler.config.get("clip_sample_range", 1.0)
        x0 = x0.clamp(-limit, limit)
    return x0


def unit_scale_after_step(scheduler: Any) -> float:
    """Factor that brings the sample a scheduler just produced to unit scale for display.

    VE samples (Euler, LMS, ...) are ``sqrt(1 + s**2)`` times larger than VP ones; after a
    step the scheduler's ``step_index`` points at the noise level of the new sample.
    """
    if type(scheduler).__name__ not in VE_SIGMA_SCHEDULERS or scheduler.step_index is None:
        return 1.0
    s = float(scheduler.sigmas[min(scheduler.step_index, len(scheduler.sigmas) - 1)])
    return 1.0 / (1.0 + s * s) ** 0.5

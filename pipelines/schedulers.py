"""The fixed list of samplers a user can pick, swapped onto a pipeline with ``from_config``.

Each entry names a diffusers scheduler class and the config overrides that make it the
sampler people know by that name (the k-diffusion / A1111 names in brackets):

- ``ddpm``: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (ancestral).
- ``ddim``: Song et al. 2021, "Denoising Diffusion Implicit Models" (eta = 0, deterministic).
- ``euler``: Karras et al. 2022, "Elucidating the Design Space..." Euler ODE step [Euler].
- ``euler_a``: the ancestral variant of the Euler step [Euler a].
- ``dpmpp_2m``: Lu et al. 2022, "DPM-Solver++", second-order multistep [DPM++ 2M].
- ``unipc``: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework".
- ``pndm``: Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models" [PLMS].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_SCHEDULER = "dpmpp_2m"


@dataclass(frozen=True)
class SchedulerChoice:
    name: str  # the id users pick (stable, stored in the gallery)
    label: str  # what the UI shows
    class_name: str  # diffusers scheduler class
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys forced on from_config


SCHEDULERS: dict[str, SchedulerChoice] = {
    c.name: c
    for c in (
        SchedulerChoice("ddpm", "DDPM", "DDPMScheduler"),
        SchedulerChoice("ddim", "DDIM", "DDIMScheduler"),
        SchedulerChoice("euler", "Euler", "EulerDiscreteScheduler"),
        SchedulerChoice("euler_a", "Euler ancestral", "EulerAncestralDiscreteScheduler"),
        SchedulerChoice(
            "dpmpp_2m",
            "DPM-Solver++ 2M",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        SchedulerChoice("unipc", "UniPC", "UniPCMultistepScheduler"),
        SchedulerChoice("pndm", "PNDM / PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    )
}


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def make_scheduler(name: str, config: Any):
    """Build the scheduler called ``name`` from another scheduler's ``config``.

    Model-specific settings (betas, prediction_type, timestep spacing) come from the model's
    own scheduler config, as diffusers recommends; only the sampler changes. One exception: a config
    that does not say ``clip_sample`` (DPM-Solver, Euler and PNDM configs have no such key) gets
    ``clip_sample=False``, not DDIM/DDPM's class default ``True``, which clips x0 to [-1, 1] and is for
    pixel-space models only; every latent model's own DDIM/DDPM config sets it False (measured: the
    shapes-ldm with a clipping DDIM draws washed-out blobs, judge accuracy 0% at 8 steps).
    """
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    choice = SCHEDULERS[name]
    cls = getattr(diffusers, choice.class_name)
    extra = {}
    if _accepts(cls, "clip_sample") and "clip_sample" not in dict(config):
        extra["clip_sample"] = False
    return cls.from_config(config, **{**extra, **choice.overrides})


def _accepts(cls: Any, key: str) -> bool:
    import inspect

    return key in inspect.signature(cls.__init__).parameters


def scheduler_name_of(scheduler: Any) -> str:
    """The list name of a scheduler instance, or its class name when it is not in the list."""
    cls_name = type(scheduler).__name__
    for choice in SCHEDULERS.values():
        if choice.class_name == cls_name:
            return choice.name
    return cls_name

"""The forward (noising) process of diffusion and flow models, computed through diffusers' own schedulers.

Variance-preserving diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"):
``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps`` with ``abar_t = prod_{s<=t} (1 - beta_s)``; the schedules
are the betas: linear 1e-4..0.02 (Ho et al. 2020), scaled-linear 0.00085..0.012 (Rombach et al. 2022, Stable
Diffusion) and cosine (Nichol & Dhariwal 2021, "Improved DDPM", diffusers' ``squaredcos_cap_v2``).
Flow matching / rectified flow (Lipman et al. 2022, "Flow Matching for Generative Modeling"; Liu et al. 2022,
"Flow Straight and Fast"): ``x_t = (1 - s) * x0 + s * eps`` on the straight line from data to noise.

Every sample is ``a * x0 + b * eps``; its signal-to-noise ratio is ``SNR = a**2 / b**2`` (Kingma et al. 2021,
"Variational Diffusion Models") and its abar-equivalent is ``a**2 / (a**2 + b**2)`` (the abar of the VP sample
``x_t / sqrt(a**2 + b**2)``, which has the same SNR).

The step index t runs over 0..999 for every schedule. For the DDPM schedules it is the scheduler's training
timestep. diffusers' ``FlowMatchEulerDiscreteScheduler`` trains on timesteps 1000, 999, ..., 1 with
``s = timestep / 1000`` (shift 1), so index t uses timestep t + 1: ``s = (t + 1) / 1000`` and t = 999 is pure
noise, like DDPM's last step.

:func:`one_step_x0` runs a model once on a noised latent and turns its output into an x0 estimate with
:func:`pipelines.x0.predict_x0`; a noise level of another schedule is mapped to the model's own training
timestep with the same SNR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from .x0 import predict_x0

NUM_STEPS = 1000  # training timesteps of every schedule here
MAX_VIEW_SIDE = 256  # the pixel-space view shrinks larger pictures to this long side (keeps the slider fast)
SUPPORTED_FAMILIES = ("latent_diffusion", "dit", "flow_matching")
NULL_CLASS = 1000  # DiT's unconditional class id (DiTPipeline's)


@dataclass(frozen=True)
class Schedule:
    name: str  # the name shown in the UI
    kind: str  # "vp": DDPMScheduler.add_noise; "flow": FlowMatchEulerDiscreteScheduler.scale_noise
    options: Mapping[str, Any]  # the scheduler's constructor arguments
    source: str  # where the schedule comes from


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (
    Schedule("linear", "vp", {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
             "Ho et al. 2020 (DDPM)"),
    Schedule("scaled-linear", "vp", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
             "Rombach et al. 2022 (Stable Diffusion)"),
    Schedule("cosine", "vp", {"beta_schedule": "squaredcos_cap_v2"}, "Nichol & Dhariwal 2021"),
    Schedule("flow matching", "flow", {"shift": 1.0}, "Lipman et al. 2022; Liu et al. 2022"),
)}


def get_schedule(name: Any) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}.")
    return SCHEDULES[name]


def check_t(t: Any) -> int:
    """The step index as an int in 0..999; ValueError otherwise."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)) \
            or not math.isfinite(t) or int(t) != t or not 0 <= t < NUM_STEPS:
        raise ValueError(f"t must be a whole number from 0 to {NUM_STEPS - 1} (got {t!r}).")
    return int(t)


def make_scheduler(name: str):
    """A new training-time scheduler of schedule ``name`` (a real diffusers object)."""
    schedule = get_schedule(name)
    if schedule.kind == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_STEPS, **schedule.options)
    return DDPMScheduler(num_train_timesteps=NUM_STEPS, clip_sample=False, **schedule.options)


@lru_cache(maxsize=None)
def _scheduler(name: str):
    return make_scheduler(name)  # shared and read-only: used on CPU tensors only


def scheduler_timestep(name: str, t: Any) -> torch.Tensor:
    """The scheduler's timestep for step index t, shape (1,): t itself, or for flow matching the scheduler's
    own value of t + 1 (``sigma * 1000`` in float32, which is not always a whole number)."""
    step = check_t(t)
    if get_schedule(name).kind == "flow":
        ascending = _scheduler(name).timesteps.flip(0)  # (1000,) ~1 .. 1000
        return ascending[step : step + 1].clone()
    return torch.tensor([step])


def noisy(x0: torch.Tensor, noise: torch.Tensor, schedule: str, t: Any) -> torch.Tensor:
    """x_t of clean ``x0`` with noise ``eps`` (same shape, e.g. (3, H, W) or (B, C, h, w)) at step index t,
    computed by the scheduler (``add_noise`` / ``scale_noise``), float32 on the CPU."""
    sched = _scheduler(get_schedule(schedule).name)
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and the noise {tuple(noise.shape)} must have the same shape.")
    timestep = scheduler_timestep(schedule, t)  # (1,)
    x0, noise = x0.detach().float().cpu(), noise.detach().float().cpu()
    if get_schedule(schedule).kind == "flow":
        return sched.scale_noise(x0, timestep, noise)  # s * eps + (1 - s) * x0
    return sched.add_noise(x0, noise, timestep)  # sqrt(abar) * x0 + sqrt(1 - abar) * eps


@lru_cache(maxsize=None)
def _coefficients(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (1000,) over the step index t, read from the scheduler's own arrays."""
    sched = _scheduler(name)
    if get_schedule(name).kind == "flow":
        sigma = sched.sigmas[: len(sched.timesteps)].flip(0).double().numpy()  # (1000,) ascending, as timesteps
        return 1.0 - sigma, sigma
    abar = sched.alphas_cumprod.double().numpy()  # (1000,)
    return np.sqrt(abar), np.sqrt(1.0 - abar)


@dataclass(frozen=True)
class SignalNoise:
    """x_t = a * x0 + b * eps at one step of one schedule."""

    schedule: str
    t: int  # step index 0..999
    a: float  # signal coefficient (sqrt(abar_t), or 1 - s for flow)
    b: float  # noise coefficient (sqrt(1 - abar_t), or s for flow)

    @property
    def snr(self) -> float:
        return self.a**2 / self.b**2 if self.b > 0 else math.inf

    @property
    def log_snr(self) -> float:
        if self.a == 0:
            return -math.inf
        return 2 * math.log(self.a) - 2 * math.log(self.b) if self.b > 0 else math.inf

    @property
    def alpha_bar(self) -> float:
        """abar-equivalent: the abar of the VP sample with this SNR."""
        return self.a**2 / (self.a**2 + self.b**2)


def signal_noise(schedule: str, t: Any) -> SignalNoise:
    step = check_t(t)
    a, b = _coefficients(get_schedule(schedule).name)
    return SignalNoise(schedule, step, float(a[step]), float(b[step]))


@dataclass(frozen=True)
class Curve:
    t: np.ndarray  # (1000,) step index
    alpha_bar: np.ndarray  # (1000,) abar_t, or the abar-equivalent for flow
    noise: np.ndarray  # (1000,) b_t: sqrt(1 - abar_t), or s for flow
    log_snr: np.ndarray  # (1000,) log(a**2 / b**2); -inf where a = 0


def curves(schedules) -> dict[str, Curve]:
    """The schedules' curves over t, for plots (ValueError for an unknown name)."""
    found = {}
    for name in schedules:
        a, b = _coefficients(get_schedule(name).name)
        with np.errstate(divide="ignore"):
            log_snr = 2 * np.log(a) - 2 * np.log(b)
        found[name] = Curve(np.arange(NUM_STEPS), a**2 / (a**2 + b**2), b, log_snr)
    return found


# -- images -------------------------------------------------------------------------------------------------

def view_tensor(image: Image.Image, max_side: int = MAX_VIEW_SIDE) -> torch.Tensor:
    """The picture as x0 in [-1, 1], (3, H, W), shrunk so that its long side is at most ``max_side``."""
    image = image.convert("RGB")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    return pixels.permute(2, 0, 1).contiguous()  # (3, H, W)


def square_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """The centre square of the picture resized to ``size``, in [-1, 1], (1, 3, size, size)."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return view_tensor(image, size).unsqueeze(0)


def to_image(x: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, 3, H, W) tensor in [-1, 1] as a picture; values outside are clipped (display only)."""
    x = x.detach().float().cpu().reshape(-1, *x.shape[-2:])[:3]  # (3, H, W)
    array = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def draw_noise(shape: tuple[int, ...], seed: Any) -> torch.Tensor:
    """Standard normal noise eps of ``shape`` drawn on the CPU from ``seed`` (the same on every device)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"The noise seed must be a whole number from 0 to 2**63 - 1 (got {seed!r}).")
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)))


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two pictures in [-1, 1] (peak-to-peak 2)."""
    mse = float(((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


# -- the model's own schedule --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelGrid:
    """The model's training schedule: x = a_m * x0 + b_m * eps at timestep m."""

    scheduler: Any  # DDPMScheduler or FlowMatchEulerDiscreteScheduler from the model's scheduler config
    timesteps: torch.Tensor  # (N,) the values the network is conditioned on
    a: torch.Tensor  # (N,) signal coefficients
    b: torch.Tensor  # (N,) noise coefficients


def model_grid(scheduler_config: Mapping[str, Any], flow: bool) -> ModelGrid:
    """The training grid of a model's scheduler config (its betas, prediction type, flow shift)."""
    if flow:
        sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        sigma = sched.sigmas[: len(sched.timesteps)].double()  # (N,)
        return ModelGrid(sched, sched.timesteps.clone(), 1.0 - sigma, sigma)
    # predict_x0 would clip a DDPM x0 when clip_sample is set: latents are not in [-1, 1]
    sched = DDPMScheduler.from_config(scheduler_config, clip_sample=False, thresholding=False)
    abar = sched.alphas_cumprod.double()  # (N,)
    return ModelGrid(sched, torch.arange(len(abar)), abar.sqrt(), (1.0 - abar).sqrt())


@dataclass(frozen=True)
class MatchedStep:
    index: int  # position in the model's grid
    timestep: torch.Tensor  # scalar: the model's timestep with the closest abar
    alpha_bar: float  # the model's abar (-equivalent) there
    scale: float  # multiply the chosen schedule's x_t by this to get the model's sample


def match_timestep(grid: ModelGrid, level: SignalNoise) -> MatchedStep:
    """The model's timestep whose abar(-equivalent) is closest to ``level``'s, and the rescaling
    ``sqrt((a_m**2 + b_m**2) / (a**2 + b**2))`` that turns ``a x0 + b eps`` into the model's kind of sample
    (1 / sqrt(a**2 + b**2) for a VP model; 1 / (a + b) for a flow model at the same SNR)."""
    abar = grid.a**2 / (grid.a**2 + grid.b**2)  # (N,)
    i = int(torch.argmin((abar - level.alpha_bar).abs()))
    a_m, b_m = float(grid.a[i]), float(grid.b[i])
    scale = math.sqrt((a_m**2 + b_m**2) / (level.a**2 + level.b**2))
    return MatchedStep(i, grid.timesteps[i], float(abar[i]), scale)


# -- one step of the model ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OneStepResult:
    """The model's x0 estimate from one x_t, next to the true x0."""

    x0_estimate: Image.Image  # decoded x0_hat
    x0_true: Image.Image  # VAE reconstruction of the input: the decoded true latent x0
    input_image: Image.Image  # the input at the model's size
    level: SignalNoise  # the chosen schedule's noise level
    model_timestep: float  # the timestep the network saw (SNR-matched on its own schedule)
    model_alpha_bar: float  # the model's abar(-equivalent) at that timestep
    latent_mse: float  # mean (x0_hat - x0)**2 over the latent
    psnr_input: float  # dB, decoded x0_hat vs the input pixels
    psnr_reconstruction: float  # dB, decoded x0_hat vs the VAE reconstruction
    condition: str  # what conditioned the network (prompt, class label, guidance)


def _vae_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, S, S) pixels in [-1, 1] -> the model's latent x0 (1, C, h, w), float32 on the CPU."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latent = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return (latent.float().cpu() - shift) * vae.config.scaling_factor


def _vae_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) latent -> (1, 3, S, S) pixels, float32 on the CPU."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode((z / vae.config.scaling_factor + shift).to(vae.device, vae.dtype)).sample.float().cpu()


def _mix(out: torch.Tensor, guided: bool, w: float) -> torch.Tensor:
    """Classifier-free guidance u + w (c - u) of a stacked (uncond, cond) batch (Ho & Salimans 2022)."""
    if not guided:
        return out
    u, c = out.chunk(2)
    return u + w * (c - u)


def _unet_output(model, x, timestep, prompt: str, w: float) -> tuple[torch.Tensor, str]:
    pipe = model.pipe
    unet, device = pipe.unet, pipe.device
    guided = w != 1 and model.supports_guidance
    cond, uncond = pipe.encode_prompt(prompt, device, 1, guided, negative_prompt=None)
    embeds = torch.cat([uncond, cond]) if guided else cond  # (n, 77, D)
    extra = {}
    if unet.config.time_cond_proj_dim is not None:  # guidance-distilled (LCM): the scale is an input
        scale = torch.tensor([w - 1.0]).repeat(len(embeds))
        extra["timestep_cond"] = pipe.get_guidance_scale_embedding(
            scale, embedding_dim=unet.config.time_cond_proj_dim).to(device, unet.dtype)
    x_in = x.to(device, unet.dtype).repeat(len(embeds), 1, 1, 1)  # (n, C, h, w)
    out = unet(x_in, timestep.to(device), encoder_hidden_states=embeds, **extra).sample.float().cpu()
    return _mix(out, guided, w), f"prompt “{prompt}”"


def _dit_output(model, x, timestep, prompt: str, w: float) -> tuple[torch.Tensor, str]:
    pipe = model.pipe
    transformer, device = pipe.transformer, pipe.device
    if prompt.strip():
        class_id, label, _ = model.matcher.match(prompt)
    else:
        class_id, label = NULL_CLASS, "none (the unconditional class)"
    guided = w != 1 and class_id != NULL_CLASS
    labels = torch.tensor([NULL_CLASS, class_id] if guided else [class_id], device=device)
    x_in = x.to(device, transformer.dtype).repeat(len(labels), 1, 1, 1)  # (n, C, h, w)
    t_in = timestep.to(device).reshape(1).expand(len(labels))
    out = transformer(x_in, timestep=t_in, class_labels=labels).sample[:, : x.shape[1]]  # drop learned variance
    return _mix(out.float().cpu(), guided, w), f"class label “{label}”"


def _flow_output(model, x, timestep, prompt: str, w: float) -> tuple[torch.Tensor, str]:
    pipe = model.pipe
    transformer, device = pipe.transformer, pipe.device
    guided = w != 1
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, None, device=device,
                                                         num_images_per_prompt=1, do_classifier_free_guidance=guided,
                                                         max_sequence_length=model.max_sequence_length)
    if guided:
        embeds, pooled = torch.cat([neg, embeds]), torch.cat([neg_pooled, pooled])
    x_in = x.to(device, transformer.dtype).repeat(len(embeds), 1, 1, 1)  # (n, C, h, w)
    t_in = timestep.to(device).reshape(1).expand(len(embeds))
    out = transformer(hidden_states=x_in, timestep=t_in, encoder_hidden_states=embeds,
                      pooled_projections=pooled).sample  # the velocity eps - x0
    return _mix(out.float().cpu(), guided, w), f"prompt “{prompt}”"


_OUTPUTS = {"latent_diffusion": _unet_output, "dit": _dit_output, "flow_matching": _flow_output}


def _check_options(prompt: Any, guidance_scale: Any) -> float:
    if not isinstance(prompt, str):
        raise ValueError("The prompt must be text (leave it empty for no prompt).")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or not 0 <= guidance_scale <= 30:
        raise ValueError(f"The guidance scale must be a number from 0 to 30; 1 means no guidance "
                         f"(got {guidance_scale!r}).")
    return float(guidance_scale)


@torch.no_grad()
def one_step_x0(model: Any, image: Image.Image, schedule: str, t: Any, seed: Any, prompt: str = "",
                guidance_scale: float = 1.0) -> OneStepResult:
    """Noise the picture's latent to step t of ``schedule`` and let the model estimate x0 in one step.

    The latent x0 is the VAE encoding (mean, times the scaling factor) of the picture's centre square at
    the model's size; the noise is drawn from ``seed``. The model was trained on its own schedule, so the
    noise level is mapped to the model's timestep with the closest abar and x_t is rescaled to that kind
    of sample (:func:`match_timestep`); the x0 estimate comes from :func:`pipelines.x0.predict_x0`.
    Raises ``ValueError`` for bad input or a family without a one-step estimate here.
    """
    family = getattr(model, "family", None)
    if family not in _OUTPUTS:
        raise ValueError(f"The one-step x0 estimate works for latent-diffusion, DiT and flow-matching models; "
                         f"{getattr(model, 'model_id', 'this model')} is a {family} model. Pick another model.")
    level = signal_noise(schedule, t)
    w = _check_options(prompt, guidance_scale)
    vae = model.pipe.vae
    pixels = square_tensor(image, model.native_size)  # (1, 3, S, S)
    z0 = _vae_encode(vae, pixels)  # (1, C, h, w)
    eps = draw_noise(tuple(z0.shape), seed)  # (1, C, h, w)
    grid = model_grid(model.pipe.scheduler.config, flow=family == "flow_matching")
    match = match_timestep(grid, level)
    x_model = noisy(z0, eps, schedule, level.t) * match.scale  # (1, C, h, w), the model's kind of sample
    out, condition = _OUTPUTS[family](model, x_model, match.timestep, prompt, w)
    x0_hat = predict_x0(grid.scheduler, out, match.timestep, x_model)  # (1, C, h, w)
    estimate, recon = _vae_decode(vae, x0_hat), _vae_decode(vae, z0)  # (1, 3, S, S)
    if w != 1:
        condition += f", guidance scale {w:g}"
    return OneStepResult(
        x0_estimate=to_image(estimate), x0_true=to_image(recon), input_image=to_image(pixels), level=level,
        model_timestep=float(match.timestep), model_alpha_bar=match.alpha_bar,
        latent_mse=float(((x0_hat - z0) ** 2).mean()), psnr_input=psnr(estimate, pixels),
        psnr_reconstruction=psnr(estimate, recon), condition=condition)

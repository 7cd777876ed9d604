"""Typed requests and results shared by the image families."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from .attention_maps import AttentionMaps
    from PIL import Image

MAX_STEPS = 1000
MAX_SIDE = 2048
MAX_GUIDANCE = 100.0
MAX_IMAGES = 16
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 10.0


@dataclass(frozen=True)
class ImageRequest:
    """One text-to-image request. Argument names are shared by every family."""

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 25  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance scale; <= 1 turns guidance off
    seed: int = 0  # image i of a batch uses seed + i, so each can be recalled alone
    height: Optional[int] = None  # pixels; None: the model's native size
    width: Optional[int] = None
    scheduler: Optional[str] = None  # a name from pipelines.schedulers.SCHEDULERS; None: the model's own
    num_images: int = 1  # batch size
    capture_trajectory: bool = True  # keep x_t and the x0 estimate of every step
    # Guidance research options (Guidance Explorer). guidance_rescale: Lin et al. 2024, "Common
    # Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4, as diffusers implements
    # it (0 = off, 0.7 suggested). guidance_interval: (start, end) as fractions of the run; guidance
    # applies only to steps i with round(start * n) <= i < round(end * n), other steps use the
    # conditional prediction alone (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited
    # Interval Improves Sample and Distribution Quality"). None = every step.
    guidance_rescale: float = 0.0
    guidance_interval: Optional[tuple[float, float]] = None
    # Token sampling (autoregressive families only): logits / temperature, then keep the top_k
    # largest (0 = all). Diffusion families refuse values other than these defaults.
    temperature: float = 1.0
    top_k: int = 0

    def params(self) -> dict[str, Any]:
        """The exact parameters as a JSON-friendly dict (stored with every result)."""
        return asdict(self)


def uses_token_sampling(req: ImageRequest) -> bool:
    """Whether ``req`` sets temperature or top-k (options of autoregressive families only)."""
    return req.temperature != 1.0 or req.top_k != 0


def guided_steps(interval: Optional[tuple[float, float]], num_steps: int) -> tuple[int, int]:
    """``(first, end)``: the steps ``first <= i < end`` that apply guidance (all without an interval)."""
    if interval is None:
        return 0, num_steps
    return round(interval[0] * num_steps), round(interval[1] * num_steps)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_image_request(req: ImageRequest, size_multiple: int = 8, token_sampling: bool = False) -> None:
    """Raise ``ValueError`` with a message telling the user what to change.

    ``token_sampling``: the model samples tokens (temperature and top-k apply); diffusion models refuse them.
    """
    if not isinstance(req.prompt, str):
        raise ValueError("The prompt must be text.")
    if not _is_int(req.num_inference_steps) or not 1 <= req.num_inference_steps <= MAX_STEPS:
        raise ValueError(f"Steps must be a whole number from 1 to {MAX_STEPS} (got {req.num_inference_steps!r}).")
    g = req.guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
        raise ValueError(f"Guidance scale must be a number from 0 to {MAX_GUIDANCE:g} (got {g!r}).")
    r = req.guidance_rescale
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r <= 1:
        raise ValueError(f"Guidance rescale must be a number from 0 to 1 (got {r!r}).")
    if req.guidance_interval is not None:
        window = req.guidance_interval
        ok = (isinstance(window, (tuple, list)) and len(window) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window))
        if not ok or not 0 <= window[0] < window[1] <= 1:
            raise ValueError("The guidance interval must be two fractions of the run, start < end, from 0 to 1 "
                             f"(for example 0.2 to 0.8; got {window!r}).")
    temp = req.temperature
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) \
            or not 0 < temp <= MAX_TEMPERATURE:
        raise ValueError(f"Temperature must be a number above 0 and at most {MAX_TEMPERATURE:g} (got {temp!r}).")
    if not _is_int(req.top_k) or req.top_k < 0:
        raise ValueError(f"Top-k must be a whole number, 0 (off) or more (got {req.top_k!r}).")
    if not token_sampling and uses_token_sampling(req):
        raise ValueError("Temperature and top-k shape how a token model draws codebook ids; this model denoises "
                         "a latent instead. Set temperature 1 and top-k 0 for it.")
    if not _is_int(req.seed) or not 0 <= req.seed <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED} (got {req.seed!r}).")
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is None:
            continue
        if not _is_int(value) or not size_multiple <= value <= MAX_SIDE or value % size_multiple:
            raise ValueError(
                f"{name.capitalize()} must be a multiple of {size_multiple} from {size_multiple} to {MAX_SIDE} "
                f"(got {value!r})."
            )
    if not _is_int(req.num_images) or not 1 <= req.num_images <= MAX_IMAGES:
        raise ValueError(f"Batch size must be a whole number from 1 to {MAX_IMAGES} (got {req.num_images!r}).")


@dataclass(frozen=True)
class Trajectory:
    """Every step of a run: timesteps, noisy latents x_t and x0 estimates (CPU tensors)."""

    timesteps: tuple[float, ...]
    latents: "torch.Tensor"  # (steps, B, C, h, w), x_t after each step, unit scale
    pred_x0: "torch.Tensor"  # (steps, B, C, h, w), the x0 estimate at each step

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class ImageResult:
    images: list["Image.Image"]
    seeds: list[int]  # one per image
    request: ImageRequest
    model_id: str
    family: str
    scheduler: str  # the scheduler actually used (list name or class name)
    width: int
    height: int
    duration_s: float
    trajectory: Optional[Trajectory] = None
    warnings: list[str] = field(default_factory=list)  # e.g. words cut from a long prompt
    extra: dict[str, Any] = field(default_factory=dict)  # what the family resolved (e.g. a DiT's class label)
    attention: Optional["AttentionMaps"] = None  # cross-attention maps, when the run recorded them

    def params(self) -> dict[str, Any]:
        """The full recipe: request plus what the model resolved (size, scheduler, model)."""
        params = self.request.params()
        params.update(model_id=self.model_id, family=self.family, scheduler=self.scheduler,
                      width=self.width, height=self.height, **self.extra)
        params.pop("capture_trajectory", None)
        return params

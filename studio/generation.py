"""UI-free glue of the Generate tab: form values -> request, result -> gallery rows."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional

from PIL import Image

from pipelines.requests import MAX_SEED, ImageRequest, ImageResult

from .forms import number, whole_number
from .gallery import Gallery
from pipelines.text_limits import has_visible_text

if TYPE_CHECKING:  # pipelines.previews imports torch: only the functions that decode need it
    from pipelines.previews import PreviewDecoder

MODEL_DEFAULT_SCHEDULER = "model default"


def resolve_seed(seed: Any) -> int:
    """-1 (or empty) means a fresh random seed; anything else must be a valid seed."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        seed = -1
    value = whole_number(seed, "Seed")
    if value == -1:
        return random.SystemRandom().randint(0, 2**32 - 1)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"Seed must be -1 (random) or a whole number from 0 to {MAX_SEED} (got {value}).")
    return value


def build_request(prompt: Any, negative_prompt: Any, steps: Any, guidance: Any, seed: Any, width: Any,
                  height: Any, scheduler: Any, batch_size: Any, temperature: Any = 1.0, top_k: Any = 0) -> ImageRequest:
    """Form values -> a validated-type request (range checks happen in the pipeline). Temperature and
    top-k matter to token models only; the form sends 1 and 0 otherwise."""
    if not has_visible_text(prompt):
        raise ValueError("Type a prompt first (for example: a red circle on a white background).")
    sched = None if scheduler in (None, "", MODEL_DEFAULT_SCHEDULER) else str(scheduler)
    return ImageRequest(
        prompt=prompt, negative_prompt=negative_prompt if isinstance(negative_prompt, str) else "",
        num_inference_steps=whole_number(steps, "Steps"), guidance_scale=number(guidance, "Guidance scale"),
        seed=resolve_seed(seed), width=whole_number(width, "Width"), height=whole_number(height, "Height"),
        scheduler=sched, num_images=whole_number(batch_size, "Batch size"),
        temperature=number(1.0 if temperature is None else temperature, "Temperature"),
        top_k=whole_number(0 if top_k is None else top_k, "Top-k"),
    )


@dataclass(frozen=True)
class TrajectoryFrames:
    """Decoded previews of one image's run: x_t and the x0 estimate at every step."""

    timesteps: tuple[float, ...]
    noisy: list[Image.Image]
    estimates: list[Image.Image]

    def sprite(self) -> Image.Image:
        from pipelines.previews import make_sprite

        return make_sprite([self.noisy, self.estimates])


def decode_trajectory(decoder: PreviewDecoder, result: ImageResult, index: int) -> Optional[TrajectoryFrames]:
    traj = result.trajectory
    if traj is None:
        return None
    noisy = decoder.decode(traj.latents[:, index])  # (steps, C, h, w) -> steps images
    estimates = decoder.decode(traj.pred_x0[:, index])
    return TrajectoryFrames(traj.timesteps, noisy, estimates)


def save_result(gallery: Gallery, result: ImageResult, frames: list[Optional[TrajectoryFrames]],
                group_id: Optional[int] = None, extra_params: Optional[dict[str, Any]] = None) -> list[int]:
    """One gallery row per image; each row's recipe regenerates that image alone. ``group_id`` links the
    rows to a gallery group; ``extra_params`` (group place, metrics) are stored beside the recipe."""
    ids = []
    group = {} if group_id is None else {"group_id": group_id}
    for i, image in enumerate(result.images):
        single = replace(result.request, seed=result.seeds[i], num_images=1)
        params = replace(result, request=single).params() | (extra_params or {})
        traj = frames[i] if i < len(frames) else None
        ids.append(gallery.save_image(
            image, params=params,
            fields={"media_type": "image", "family": result.family, "duration_s": result.duration_s,
                    "status": "ok", **group},
            trajectory=traj.sprite() if traj else None,
            trajectory_frames=len(traj.noisy) if traj else 0,
        ))
    return ids


def recall_values(row: Any) -> list[Any]:
    """A gallery row's recipe as Generate-tab values (model, prompt, negative prompt, steps,
    guidance, seed, width, height, scheduler, batch size, temperature, top-k) that regenerate exactly
    that image."""
    p = row.params or {}
    return [row.model_id, row.prompt, row.negative_prompt or "", p.get("num_inference_steps", row.steps),
            p.get("guidance_scale", row.guidance), row.seed, p.get("width", row.width), p.get("height", row.height),
            _form_scheduler(p.get("scheduler")), 1, p.get("temperature", 1.0), p.get("top_k", 0)]


def _form_scheduler(stored: Any) -> str:
    """A stored scheduler as the form's choice: a listed name, else the model's own (a stored class name
    such as FlowMatchEulerDiscreteScheduler, or "autoregressive", came from the model's default)."""
    from pipelines.schedulers import SCHEDULERS

    return stored if stored in SCHEDULERS else MODEL_DEFAULT_SCHEDULER

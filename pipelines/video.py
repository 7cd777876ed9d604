"""Text-to-video latent diffusion with its denoising trajectory: every frame's x0 estimate at every step.

Two diffusers formats load as family ``text_to_video``, each run by diffusers' own pipeline:

- ``TextToVideoSDPipeline`` (ModelScope text-to-video, Wang et al. 2023): a ``UNet3DConditionModel`` whose
  blocks interleave spatial layers with temporal convolutions and temporal attention;
- ``AnimateDiffPipeline`` (Guo et al. 2024, "AnimateDiff"): an image ``UNet2DConditionModel`` in ``unet/`` plus
  a ``MotionAdapter`` in ``motion_adapter/`` (temporal attention modules with a learned position table of
  ``motion_max_seq_length`` frames); the pipeline joins them into a ``UNetMotionModel`` when it loads (a folder
  saved with the joined ``UNetMotionModel`` in ``unet/`` loads too). The builtin motion-ldm is one.

Latents are ``(B, C, F, h, w)``: the VAE is an image VAE that decodes each frame on its own. The studio samples
the initial noise itself from the request's seed (on the CPU, so a seed gives the same clip on every device) and
observes each step: AnimateDiff through ``callback_on_step_end`` (with the guided ``noise_pred`` added to the
tensors it hands out, as the latent diffusion family does), ModelScope's pipeline, which has only the older
``callback(step, t, latents)``, through that callback plus a forward hook on the UNet that keeps the guided
noise prediction. The x0 estimate of all frames comes from :func:`pipelines.x0.predict_x0` (the scheduler's own
alphas and prediction type); :class:`pipelines.events.StepEvent` carries it with ``latents``/``pred_x0`` shaped
``(B, C, F, h, w)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .devices import DeviceSpec
from .events import CancelFlag, StepCallback, StepEvent
from .model_files import check_model_folder
from .previews import PreviewDecoder, find_taesd
from .registry import ModelEntry, ModelLoadError
from .requests import MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS
from .schedulers import SCHEDULERS, make_scheduler, scheduler_name_of
from .text_limits import overflow_warning
from .x0 import predict_x0, supports_x0

# ModelScope's UNet3D has no position table in its temporal attention, so nothing in the weights bounds the clip
# length; it was trained on 16-frame clips, and memory and temporal attention grow with the frame count. 64 frames
# (4x the training length, 8 s at 8 fps) is where the studio stops; AnimateDiff models have a hard limit instead.
MAX_FRAMES_3D_UNET = 64
MAX_FPS = 60.0  # playback speed of the saved file; more is not a video anyone can watch on these models


def mixed_noise(noise: torch.Tensor, correlation: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mixed noise prior (Ge et al. 2023, "Preserve Your Own Correlation", PYoCo): each frame's noise is
    ``sqrt(rho) * shared + sqrt(1 - rho) * own`` for noise shaped (B, C, F, H, W), so every frame is still
    N(0, 1) (the scheduler's maths is unchanged) while any two frames correlate by ``rho``."""
    if correlation <= 0:
        return noise
    b, c, _, h, w = noise.shape
    shared = torch.randn((b, c, 1, h, w), generator=generator, dtype=noise.dtype)
    return correlation ** 0.5 * shared.to(noise.device) + (1 - correlation) ** 0.5 * noise


@dataclass(frozen=True)
class VideoRequest:
    """One text-to-video request (argument names shared with the image and audio families)."""

    prompt: str
    negative_prompt: str = ""
    num_frames: int = 16  # frames of the clip (the model's limit: see TextToVideo.max_frames)
    fps: float = 8.0  # playback speed of the saved clip; sampling does not depend on it
    num_inference_steps: int = 25  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance; <= 1 turns it off
    seed: int = 0  # the initial noise (B=1, C, F, h, w) is drawn on the CPU from this seed
    height: Optional[int] = None  # pixels; None: the model's native size
    width: Optional[int] = None
    scheduler: Optional[str] = None  # a name from pipelines.schedulers.SCHEDULERS; None: the model's own
    capture_trajectory: bool = True  # keep x_t and every frame's x0 estimate of every step

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def validate_video_request(req: VideoRequest, max_frames: int, size_multiple: int = 8) -> None:
    """Raise ``ValueError`` with a message saying what to change."""
    if not isinstance(req, VideoRequest):
        raise ValueError("This model makes video: use the Video tab (or pass a VideoRequest).")
    if not isinstance(req.prompt, str) or not isinstance(req.negative_prompt, str):
        raise ValueError("The prompt and negative prompt must be text.")
    n = req.num_frames
    if not _whole(n) or not 1 <= n <= max_frames:
        raise ValueError(f"Frames must be a whole number from 1 to {max_frames}, this model's limit (got {n!r}).")
    if not _finite(req.fps) or not 0 < req.fps <= MAX_FPS:
        raise ValueError(f"Frames per second must be a number above 0 and at most {MAX_FPS:g} (got {req.fps!r}).")
    if not _whole(req.num_inference_steps) or not 1 <= req.num_inference_steps <= MAX_STEPS:
        raise ValueError(f"Steps must be a whole number from 1 to {MAX_STEPS} (got {req.num_inference_steps!r}).")
    g = req.guidance_scale
    if not _finite(g) or not 0 <= g <= MAX_GUIDANCE:
        raise ValueError(f"Guidance scale must be a number from 0 to {MAX_GUIDANCE:g} (got {g!r}).")
    if not _whole(req.seed) or not 0 <= req.seed <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED} (got {req.seed!r}).")
    if req.scheduler is not None and req.scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {req.scheduler!r}; choose one of {', '.join(SCHEDULERS)} "
                         "(or none: the model's own).")
    for name, side in (("Height", req.height), ("Width", req.width)):
        if side is None:
            continue
        if not _whole(side) or not size_multiple <= side <= MAX_SIDE or side % size_multiple:
            raise ValueError(f"{name} must be a multiple of {size_multiple} from {size_multiple} to {MAX_SIDE} "
                             f"(got {side!r}).")


@dataclass
class VideoResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: float
    params: dict[str, Any]  # the request plus model_id and family: the recipe stored with the clip
    model_id: str
    family: str
    seconds: float  # sampling and decoding
    timesteps: tuple[float, ...] = ()
    latents: Optional[torch.Tensor] = None  # (steps, C, F, h, w): x_t after each step
    pred_x0: Optional[torch.Tensor] = None  # (steps, C, F, h, w): every frame's x0 estimate at each step
    warnings: list[str] = field(default_factory=list)


class _NoiseTap:
    """Forward hook on a UNet: keeps the latest noise prediction after classifier-free guidance."""

    def __init__(self, guidance: float) -> None:
        self.guidance, self.noise_pred = guidance, None

    def __call__(self, module, args, kwargs, output) -> None:
        out = output[0] if isinstance(output, tuple) else output.sample
        if self.guidance > 1.0:  # the pipelines batch [uncond, cond] and mix them exactly like this
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance * (cond - uncond)
        self.noise_pred = out.detach()


class _StepObserver:
    """Per step: the x0 estimate of every frame, the event, trajectory capture, cancellation."""

    def __init__(self, noise: torch.Tensor, num_steps: int, on_step: Optional[StepCallback],
                 cancel: Optional[CancelFlag], capture: bool) -> None:
        self.noise, self.num_steps = noise, num_steps  # noise: (1, C, F, h, w) before init_noise_sigma
        self.on_step, self.cancel, self.capture = on_step, cancel, capture
        self.x_t: Optional[torch.Tensor] = None  # the sample the current step started from
        self.timesteps: list[float] = []
        self.latents: list[torch.Tensor] = []
        self.pred_x0: list[torch.Tensor] = []

    @property
    def wants_x0(self) -> bool:
        return self.capture or self.on_step is not None

    def step(self, scheduler: Any, i: int, t: Any, latents: torch.Tensor, noise_pred: Optional[torch.Tensor]) -> None:
        if self.x_t is None:  # the pipeline scaled our noise by init_noise_sigma
            self.x_t = self.noise.to(latents.device, latents.dtype) * getattr(scheduler, "init_noise_sigma", 1.0)
        x0 = None
        if self.wants_x0 and noise_pred is not None and supports_x0(scheduler):
            x0 = predict_x0(scheduler, noise_pred, t, self.x_t)  # (1, C, F, h, w) float32
        self.x_t = latents
        if self.capture:
            self.timesteps.append(float(t))
            self.latents.append(latents[0].detach().float().cpu())
            self.pred_x0.append((x0[0] if x0 is not None else torch.zeros_like(latents[0], dtype=torch.float32)).cpu())
        if self.on_step is not None:
            self.on_step(StepEvent(step=i, num_steps=self.num_steps, timestep=float(t), latents=latents.detach(),
                                   pred_x0=x0))
        if self.cancel is not None:
            self.cancel.raise_if_set(i + 1)


def _animatediff_pipeline_class():
    from diffusers import AnimateDiffPipeline

    class StudioAnimateDiffPipeline(AnimateDiffPipeline):
        """diffusers' AnimateDiff pipeline that also hands the guided ``noise_pred`` (the exact tensor
        ``scheduler.step`` received) to ``callback_on_step_end``; nothing else changes."""

        _callback_tensor_inputs = [*AnimateDiffPipeline._callback_tensor_inputs, "noise_pred"]

    return StudioAnimateDiffPipeline


class TextToVideo:
    """A loaded text-to-video model: ``generate(VideoRequest) -> VideoResult``."""

    family = "text_to_video"

    def __init__(self, pipe: Any, model_id: str, taesd_dir: Optional[Path] = None,
                 noise_correlation: float = 0.0) -> None:
        self.pipe, self.model_id = pipe, model_id
        # a model trained on a mixed noise prior says so in default_settings.json; its clips start from such noise
        self.noise_correlation = float(noise_correlation)
        self.is_animatediff = hasattr(pipe, "motion_adapter")
        self._scheduler_config = pipe.scheduler.config  # the model's own schedule settings
        self._default_scheduler_cls = type(pipe.scheduler)
        # every frame's x0 is decoded at every step: exactly for small VAEs, TAESD or a linear map for large ones
        self.preview = PreviewDecoder.for_vae(pipe.vae, taesd_dir, max_side=256)

    @classmethod
    def load(cls, entry: ModelEntry, device: DeviceSpec) -> "TextToVideo":
        check_model_folder(entry.path)
        if entry.pipeline_class == "AnimateDiffPipeline":
            pipeline_cls = _animatediff_pipeline_class()
        elif entry.pipeline_class == "TextToVideoSDPipeline":
            from diffusers import TextToVideoSDPipeline as pipeline_cls
        else:
            raise ModelLoadError(f"{entry.id}: {entry.pipeline_class} is not a text-to-video pipeline this family runs "
                                 "(AnimateDiffPipeline or TextToVideoSDPipeline).")
        try:
            pipe = pipeline_cls.from_pretrained(entry.path, torch_dtype=device.dtype, use_safetensors=True,
                                                local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"Could not load the text-to-video folder {entry.path}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        from .default_settings import DefaultSettingsError, read_default_settings

        try:
            rho = read_default_settings(entry.path).get("noise_correlation", 0.0)
        except DefaultSettingsError:
            rho = 0.0  # the Video tab shows the file's problem; sample from independent noise
        return cls(pipe.to(device.device), entry.id, find_taesd(entry.path), noise_correlation=rho)

    # -- what the model allows ---------------------------------------------------------------------------
    @property
    def max_frames(self) -> int:
        """AnimateDiff: the motion modules' position table (``motion_max_seq_length``); ModelScope: 64."""
        if self.is_animatediff:
            adapter = getattr(self.pipe, "motion_adapter", None)
            config = adapter.config if adapter is not None else self.pipe.unet.config
            return int(config.get("motion_max_seq_length", 32))
        return MAX_FRAMES_3D_UNET

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor

    def prompt_warnings(self, req: VideoRequest) -> list[str]:
        tok = self.pipe.tokenizer
        found = [overflow_warning(tok, req.prompt, "prompt"), overflow_warning(tok, req.negative_prompt, "negative prompt")]
        return [w for w in found if w]

    def scheduler_for(self, name: Optional[str]) -> Any:
        """A fresh scheduler: the model's own (``None``) or one of SCHEDULERS on the model's schedule."""
        if name is None:
            return self._default_scheduler_cls.from_config(self._scheduler_config)
        return make_scheduler(name, self._scheduler_config)

    # -- pictures ----------------------------------------------------------------------------------------
    def decode_frames(self, latents: torch.Tensor) -> list:
        """(C, F, h, w) model-space latents -> F preview pictures (the preview decoder: exact for small VAEs)."""
        return self.preview.decode(latents.permute(1, 0, 2, 3))  # (F, C, h, w)

    # -- running -----------------------------------------------------------------------------------------
    def initial_noise(self, req: VideoRequest, height: int, width: int) -> torch.Tensor:
        f = self.pipe.vae_scale_factor
        shape = (1, self.pipe.unet.config.in_channels, req.num_frames, height // f, width // f)  # (B, C, F, h, w)
        gen = torch.Generator("cpu").manual_seed(req.seed)
        return mixed_noise(torch.randn(shape, generator=gen, dtype=torch.float32), self.noise_correlation, gen)

    @torch.no_grad()
    def generate(self, req: VideoRequest, on_step: Optional[StepCallback] = None,
                 cancel: Optional[CancelFlag] = None) -> VideoResult:
        """Run one request. Raises ``ValueError`` for bad parameters, ``GenerationCancelled`` when cancelled."""
        if not isinstance(req, VideoRequest):
            raise ValueError(f"{self.model_id} makes video, not images: use the Video tab.")
        validate_video_request(req, self.max_frames, self.size_multiple)
        pipe = self.pipe
        pipe.scheduler = self.scheduler_for(req.scheduler)  # fresh state every run
        height, width = req.height or self.native_size, req.width or self.native_size
        noise = self.initial_noise(req, height, width).to(pipe.device, pipe.unet.dtype)
        observer = _StepObserver(noise, req.num_inference_steps, on_step, cancel, req.capture_trajectory)
        if cancel is not None:
            cancel.raise_if_set(0)
        common = dict(prompt=req.prompt, negative_prompt=req.negative_prompt or None, num_frames=req.num_frames,
                      height=height, width=width, num_inference_steps=req.num_inference_steps,
                      guidance_scale=req.guidance_scale, latents=noise, output_type="np")
        start = time.perf_counter()
        if self.is_animatediff:
            out = self._run_animatediff(common, observer)
        else:
            out = self._run_modelscope(common, observer, req.guidance_scale)
        video = np.asarray(out.frames[0], dtype=np.float32)  # (F, H, W, 3) in [0, 1]
        frames = np.clip(np.round(video * 255.0), 0, 255).astype(np.uint8)
        result = VideoResult(frames=frames, fps=float(req.fps),
                             params={**req.params(), "model_id": self.model_id, "family": self.family,
                                     "noise_correlation": self.noise_correlation,
                                     "scheduler_used": scheduler_name_of(pipe.scheduler)},
                             model_id=self.model_id, family=self.family, seconds=time.perf_counter() - start,
                             warnings=self.prompt_warnings(req))
        if observer.timesteps:
            result.timesteps = tuple(observer.timesteps)
            result.latents = torch.stack(observer.latents)  # (steps, C, F, h, w)
            result.pred_x0 = torch.stack(observer.pred_x0)
        return result

    def _run_animatediff(self, common: dict, observer: _StepObserver) -> Any:
        def on_step_end(pipe, i, t, tensors):
            observer.step(pipe.scheduler, i, t, tensors["latents"], tensors.get("noise_pred"))
            return {}

        inputs = ["latents", "noise_pred"] if observer.wants_x0 else ["latents"]
        return self.pipe(**common, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=inputs)

    def _run_modelscope(self, common: dict, observer: _StepObserver, guidance: float) -> Any:
        pipe = self.pipe
        tap = _NoiseTap(guidance)
        handle = pipe.unet.register_forward_hook(tap, with_kwargs=True)

        def callback(step_idx, t, latents):
            observer.step(pipe.scheduler, step_idx, t, latents, tap.noise_pred)

        try:
            return pipe(**common, callback=callback, callback_steps=1)
        finally:
            handle.remove()

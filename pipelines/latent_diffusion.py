"""Latent diffusion family: any diffusers Stable Diffusion 1.x/2.x folder, builtin or real.

The run is diffusers' own ``StableDiffusionPipeline.__call__``; the studio observes it
through ``callback_on_step_end`` (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models"; Ho & Salimans 2022, classifier-free guidance).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from .attention_maps import AttentionRecorder, readable_tokens, recording
from .devices import DeviceSpec
from .events import CancelFlag, StepCallback, StepEvent
from .model_files import check_model_folder
from .previews import PreviewDecoder, find_taesd
from .registry import ModelEntry, ModelLoadError
from .requests import ImageRequest, ImageResult, Trajectory, guided_steps, validate_image_request
from .schedulers import make_scheduler, scheduler_name_of
from .text_limits import overflow_warning
from .x0 import predict_x0, supports_x0, unit_scale_after_step


class GuidanceWindow:
    """Mixin for a diffusers pipeline: guidance only inside a window of steps.

    diffusers' loops read ``self.guidance_scale`` at every step in ``u + w * (c - u)``; outside
    the window it gets 1, i.e. the conditional prediction alone.
    """

    _guided_steps: Optional[tuple[int, int]] = None  # (first, end): guidance for first <= i < end
    _current_step: int = 0  # set by the step observer

    @property
    def guidance_scale(self):
        window = self._guided_steps
        if window is not None and self.do_classifier_free_guidance \
                and not window[0] <= self._current_step < window[1]:
            return 1.0
        return self._guidance_scale


class StudioStableDiffusionPipeline(GuidanceWindow, StableDiffusionPipeline):
    """diffusers' SD pipeline that also hands the guided model output to step callbacks.

    ``noise_pred`` is the exact tensor ``scheduler.step`` received, which is what the x0
    estimate needs; nothing else about the pipeline changes.
    """

    _callback_tensor_inputs = [*StableDiffusionPipeline._callback_tensor_inputs, "noise_pred"]


class _StepObserver:
    """The ``callback_on_step_end`` of one run: events, trajectory capture, cancellation."""

    def __init__(self, initial_noise: torch.Tensor, on_step: Optional[StepCallback],
                 cancel: Optional[CancelFlag], capture: bool):
        self.on_step, self.cancel, self.capture = on_step, cancel, capture
        self._initial_noise = initial_noise  # (B, C, h, w), before init_noise_sigma scaling
        self._x_t: Optional[torch.Tensor] = None  # the sample the current step started from
        self.timesteps: list[float] = []
        self.latents: list[torch.Tensor] = []
        self.pred_x0: list[torch.Tensor] = []

    @property
    def needs_noise_pred(self) -> bool:
        return self.capture or self.on_step is not None

    def __call__(self, pipe, i: int, t, kwargs: dict) -> dict:
        pipe._current_step = i + 1
        scheduler = pipe.scheduler
        if self._x_t is None:  # the pipeline scaled our noise by init_noise_sigma
            self._x_t = self._initial_noise * getattr(scheduler, "init_noise_sigma", 1.0)
        latents = kwargs["latents"]  # (B, C, h, w), x_{t-1}
        x0 = None
        if self.needs_noise_pred and supports_x0(scheduler):
            x0 = predict_x0(scheduler, kwargs["noise_pred"], t, self._x_t)
        self._x_t = latents
        if self.capture:
            self.timesteps.append(float(t))
            self.latents.append(latents.detach().float() * unit_scale_after_step(scheduler))
            self.pred_x0.append(x0 if x0 is not None else torch.zeros_like(latents, dtype=torch.float32))
        if self.on_step is not None:
            self.on_step(StepEvent(step=i, num_steps=pipe.num_timesteps, timestep=float(t),
                                   latents=latents.detach(), pred_x0=x0))
        if self.cancel is not None:
            self.cancel.raise_if_set(i + 1)
        return {}

    def trajectory(self) -> Optional[Trajectory]:
        if not self.capture or not self.timesteps:
            return None
        return Trajectory(timesteps=tuple(self.timesteps),
                          latents=torch.stack(self.latents).cpu(),  # (steps, B, C, h, w)
                          pred_x0=torch.stack(self.pred_x0).cpu())


class LatentDiffusion:
    """A loaded latent-diffusion model: ``generate(request) -> ImageResult``."""

    family = "latent_diffusion"
    pipeline_class = StudioStableDiffusionPipeline

    def __init__(self, pipe: Any, model_id: str, taesd_dir: Optional[Path] = None):
        self.pipe = pipe
        self.model_id = model_id
        self._scheduler_config = pipe.scheduler.config  # the model's own schedule settings
        self._default_scheduler_cls = type(pipe.scheduler)
        self.preview = PreviewDecoder.for_vae(pipe.vae, taesd_dir)

    @classmethod
    def load(cls, entry: ModelEntry, device: DeviceSpec) -> "LatentDiffusion":
        check_model_folder(entry.path)
        try:
            pipe = cls.pipeline_class.from_pretrained(entry.path, dtype=device.dtype, use_safetensors=True,
                                                      local_files_only=True, **cls.load_options(entry.path))
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"Could not load {entry.path}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        model = cls(pipe.to(device.device), entry.id, find_taesd(entry.path))
        model.folder = entry.path
        return model

    def warm_up(self) -> None:
        """A 2-step generation at the native size (the scheduler of the model's default settings, else its own),
        with trajectory capture and a live preview, thrown away: pays the first run's one-time costs (oneDNN
        kernel set-up, lazy imports) ahead of the first real request (``ModelCache.get(..., warm_up=True)``)."""
        from pipelines.default_settings import DefaultSettingsError, read_default_settings

        folder = getattr(self, "folder", None)
        try:
            scheduler = read_default_settings(folder)["scheduler"] if folder is not None else None
        except DefaultSettingsError:
            scheduler = None
        req = ImageRequest("warm-up", num_inference_steps=2, seed=0, scheduler=scheduler or None,
                           capture_trajectory=True)
        self.generate(req, on_step=lambda event: self.preview.decode_live(event.pred_x0[:1]))

    @classmethod
    def load_options(cls, folder: Path) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments of this family for ``folder``."""
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @property
    def native_size(self) -> int:
        return int(self.denoiser.config.sample_size) * self.pipe.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        return 8

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that predicts the noise (hooked by the CFG decomposition)."""
        return self.pipe.unet

    @property
    def supports_guidance(self) -> bool:
        """False for guidance-distilled UNets (LCM-style ``time_cond_proj_dim``): the scale is an
        input of the network, there is no unconditional branch to mix."""
        return self.pipe.unet.config.time_cond_proj_dim is None

    def call_options(self, req: ImageRequest) -> dict[str, Any]:
        """Family-specific arguments of the pipeline call."""
        return {"guidance_rescale": req.guidance_rescale}

    def scheduler_for(self, name: Optional[str]):
        if name is None:
            return self._default_scheduler_cls.from_config(self._scheduler_config)
        return make_scheduler(name, self._scheduler_config)

    def prompt_warnings(self, req: ImageRequest) -> list[str]:
        tok = self.pipe.tokenizer
        found = [overflow_warning(tok, req.prompt, "prompt"), overflow_warning(tok, req.negative_prompt, "negative prompt")]
        return [w for w in found if w]

    @torch.no_grad()
    def generate(self, req: ImageRequest, on_step: Optional[StepCallback] = None,
                 cancel: Optional[CancelFlag] = None, attention: Optional[AttentionRecorder] = None) -> ImageResult:
        """Run one request. Raises ``ValueError`` for bad parameters, ``GenerationCancelled``.

        ``attention``: record the UNet's cross-attention maps into this recorder (result.attention);
        None (the default) installs nothing, so the run is exactly diffusers' own."""
        validate_image_request(req, self.size_multiple)
        pipe = self.pipe
        pipe.scheduler = self.scheduler_for(req.scheduler)
        height, width = req.height or self.native_size, req.width or self.native_size
        seeds = [req.seed + i for i in range(req.num_images)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        options = self.call_options(req)  # may refuse an option this family lacks (ValueError)
        shape = (req.num_images, self.denoiser.config.in_channels,
                 height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        noise = randn_tensor(shape, generator=generators, dtype=torch.float32)  # CPU: same on every device
        noise = noise.to(pipe.device, self.denoiser.dtype)
        observer = _StepObserver(noise, on_step, cancel, req.capture_trajectory)
        tensor_inputs = ["latents", "noise_pred"] if observer.needs_noise_pred else ["latents"]
        if cancel is not None:
            cancel.raise_if_set(0)
        pipe._current_step = 0
        pipe._guided_steps = (None if req.guidance_interval is None
                              else guided_steps(req.guidance_interval, req.num_inference_steps))
        callback = observer if attention is None else _advancing(observer, attention)
        if attention is not None:
            attention.num_images = req.num_images
        start = time.perf_counter()
        try:
            with recording(self.denoiser if attention is not None else None, attention):
                out = pipe(
                    prompt=req.prompt, negative_prompt=req.negative_prompt or None,
                    num_inference_steps=req.num_inference_steps, guidance_scale=req.guidance_scale,
                    num_images_per_prompt=req.num_images,
                    height=height, width=width, latents=noise, generator=generators,
                    callback_on_step_end=callback, callback_on_step_end_tensor_inputs=tensor_inputs, **options,
                )
        finally:
            pipe._guided_steps = None
        return ImageResult(
            images=list(out.images), seeds=seeds, request=req, model_id=self.model_id, family=self.family,
            scheduler=req.scheduler or scheduler_name_of(pipe.scheduler), width=width, height=height,
            duration_s=time.perf_counter() - start, trajectory=observer.trajectory(),
            warnings=self.prompt_warnings(req),
            attention=None if attention is None else attention.maps(shape[2:], *readable_tokens(pipe.tokenizer, req.prompt)),
        )


def _advancing(observer: _StepObserver, recorder: AttentionRecorder):
    """The step callback of a recorded run: the observer's work, then the recorder moves to the next step."""
    def callback(pipe, i: int, t, kwargs: dict) -> dict:
        out = observer(pipe, i, t, kwargs)
        recorder.step_done(i)
        return out
    return callback

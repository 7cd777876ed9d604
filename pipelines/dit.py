"""Diffusion Transformer family: any diffusers ``DiTPipeline`` folder (``facebook/DiT-XL-2-256`` or the
builtin shapes-dit), class-conditional, with step events, trajectories and cancellation.

DiT (Peebles & Xie 2023): the latent is cut into patches, transformer blocks with adaLN-Zero
conditioning on (timestep, class) predict the noise. The sampling loop is diffusers'
``DiTPipeline.__call__`` written out (it has no step callback) with the studio's observation added;
for the same noise it gives the same images (tested). Classifier-free guidance uses the null class
id 1000, as the pipeline does; a learned-variance model (DiT-XL-2: 8 output channels) has guidance
applied to the noise half and the variance half dropped before the scheduler step, as the pipeline does.

Prompts: a DiT model knows class names (``id2label``), not sentences. A prompt that names a class
(case-insensitive, any of a label's comma-separated names) uses it; any other prompt is mapped to
the label whose text embedding is nearest (cosine, the builtin mini-CLIP), and the result says
which label it used and how close it was.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import DiTPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from .devices import DeviceSpec
from .events import CancelFlag, StepCallback, StepEvent
from .model_files import check_model_folder
from .previews import PreviewDecoder, find_taesd
from .registry import ModelEntry, ModelLoadError
from .requests import ImageRequest, ImageResult, Trajectory, guided_steps, validate_image_request
from .schedulers import make_scheduler, scheduler_name_of
from .x0 import predict_x0, supports_x0, unit_scale_after_step

NULL_CLASS = 1000  # DiTPipeline's unconditional class id


class LabelMatcher:
    """Prompt -> class id: an exact label name, else the nearest label by text-embedding cosine."""

    def __init__(self, labels: dict[str, int], scorer_factory=None) -> None:
        self.labels = labels  # name -> id (DiTPipeline.labels)
        self._by_lower = {name.lower(): k for name, k in labels.items()}
        self._names = list(labels)
        self._scorer_factory = scorer_factory
        self._embeddings: Optional[torch.Tensor] = None
        self._scorer = None

    def match(self, prompt: str) -> tuple[int, str, Optional[float]]:
        """(class id, the label used, cosine similarity; None for an exact name)."""
        text = " ".join(prompt.lower().split()).strip(" .,!")
        for candidate in (text, text.removeprefix("a ").removeprefix("an ")):
            if candidate in self._by_lower:
                k = self._by_lower[candidate]
                return k, self._name_of(k, candidate), None
        scorer = self._ensure_scorer()
        if scorer is None:
            raise ValueError(f"{prompt!r} is not one of this model's labels, and no CLIP model is available to "
                             f"find the nearest one. Labels include: {', '.join(self._names[:12])} ...")
        query = scorer.text_embedding(prompt)
        sims = self._embeddings @ query
        best = int(sims.argmax())
        name = self._names[best]
        return self.labels[name], name, float(sims[best])

    def _name_of(self, k: int, lower: str) -> str:
        return next(name for name in self._names if name.lower() == lower and self.labels[name] == k)

    def _ensure_scorer(self):
        if self._scorer is None and self._scorer_factory is not None:
            self._scorer = self._scorer_factory()
            if self._scorer is not None:
                self._embeddings = torch.stack([self._scorer.text_embedding(n) for n in self._names])
        return self._scorer


def _builtin_scorer():
    from .metrics import BUILTIN_CLIP_DIR, ClipScorer

    return ClipScorer.builtin() if (BUILTIN_CLIP_DIR / "open_clip_config.json").is_file() else None


class DiT:
    """A loaded DiT model: ``generate(request) -> ImageResult`` (the prompt picks the class)."""

    family = "dit"
    supports_guidance = True

    def __init__(self, pipe: DiTPipeline, model_id: str, taesd_dir: Optional[Path] = None, scorer_factory=None):
        self.pipe = pipe
        self.model_id = model_id
        self._scheduler_config = pipe.scheduler.config
        self._default_scheduler_cls = type(pipe.scheduler)
        self.preview = PreviewDecoder.for_vae(pipe.vae, taesd_dir)
        self.matcher = LabelMatcher(pipe.labels, scorer_factory or _builtin_scorer)

    @classmethod
    def load(cls, entry: ModelEntry, device: DeviceSpec) -> "DiT":
        check_model_folder(entry.path)
        try:
            pipe = DiTPipeline.from_pretrained(entry.path, dtype=device.dtype, use_safetensors=True,
                                               local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"Could not load {entry.path}: {exc}") from exc
        if not pipe.labels:
            raise ModelLoadError(f"{entry.path}: model_index.json has no id2label, so the classes have no names.")
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device.device), entry.id, find_taesd(entry.path))

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def label_names(self) -> list[str]:
        return list(self.pipe.labels)

    @property
    def native_size(self) -> int:
        return int(self.pipe.transformer.config.sample_size) * (2 ** (len(self.pipe.vae.config.block_out_channels) - 1))

    @property
    def size_multiple(self) -> int:
        return self.native_size  # a DiT's position embeddings fix its size

    def scheduler_for(self, name: Optional[str]):
        if name is None:
            return self._default_scheduler_cls.from_config(self._scheduler_config)
        return make_scheduler(name, self._scheduler_config)

    @torch.no_grad()
    def generate(self, req: ImageRequest, on_step: Optional[StepCallback] = None,
                 cancel: Optional[CancelFlag] = None) -> ImageResult:
        validate_image_request(req, 8)
        native = self.native_size
        for side in (req.width, req.height):
            if side is not None and side != native:
                raise ValueError(f"This DiT model makes {native}x{native} images only (got {side}).")
        class_id, label, similarity = self.matcher.match(req.prompt)
        warnings = [f"Class label used: “{label}”" + ("" if similarity is None else
                                                       f" (nearest to the prompt, CLIP text cosine {similarity:.2f})")]
        if req.negative_prompt.strip():
            warnings.append("A class-conditional DiT has no negative prompt; it was ignored.")
        pipe = self.pipe
        transformer = pipe.transformer
        scheduler = pipe.scheduler = self.scheduler_for(req.scheduler)
        device, dtype = pipe._execution_device, transformer.dtype
        channels, size = transformer.config.in_channels, transformer.config.sample_size
        seeds = [req.seed + i for i in range(req.num_images)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        noise = randn_tensor((req.num_images, channels, size, size), generator=generators, dtype=torch.float32)
        latents = noise.to(device, dtype) * scheduler.init_noise_sigma
        guided = req.guidance_scale > 1
        n = req.num_images
        labels = torch.tensor([class_id] * n, device=device)
        labels_in = torch.cat([torch.full_like(labels, NULL_CLASS), labels]) if guided else labels
        scheduler.set_timesteps(req.num_inference_steps, device=device)
        first, end = guided_steps(req.guidance_interval, req.num_inference_steps)
        capture = req.capture_trajectory
        traj_t, traj_x, traj_x0 = [], [], []
        if cancel is not None:
            cancel.raise_if_set(0)
        start = time.perf_counter()
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            x_in = torch.cat([latents, latents]) if guided else latents
            x_in = scheduler.scale_model_input(x_in, t)
            t_batch = (t if torch.is_tensor(t) else torch.tensor(t)).to(device).reshape(1).expand(len(x_in))
            out = transformer(x_in, timestep=t_batch, class_labels=labels_in).sample
            eps = out[:, :channels]
            if guided:
                eps_u, eps_c = eps.chunk(2)
                w = req.guidance_scale if first <= i < end else 1.0
                eps = eps_u + w * (eps_c - eps_u)
                if req.guidance_rescale > 0:
                    eps = rescale_noise_cfg(eps, eps_c, guidance_rescale=req.guidance_rescale)
            x0 = predict_x0(scheduler, eps.float(), t, latents.float()) if supports_x0(scheduler) else None
            latents = scheduler.step(eps, t, latents).prev_sample
            if capture:
                traj_t.append(float(t))
                traj_x.append(latents.detach().float().cpu() * unit_scale_after_step(scheduler))
                traj_x0.append(x0.cpu() if x0 is not None else torch.zeros_like(latents, dtype=torch.float32).cpu())
            if on_step is not None:
                on_step(StepEvent(step=i, num_steps=len(timesteps), timestep=float(t), latents=latents.detach(),
                                  pred_x0=x0))
            if cancel is not None:
                cancel.raise_if_set(i + 1)
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        images = pipe.numpy_to_pil((decoded / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy())
        trajectory = (Trajectory(tuple(traj_t), torch.stack(traj_x), torch.stack(traj_x0)) if capture and traj_t
                      else None)
        return ImageResult(images=images, seeds=seeds, request=req, model_id=self.model_id, family=self.family,
                           scheduler=req.scheduler or scheduler_name_of(scheduler), width=native, height=native,
                           duration_s=time.perf_counter() - start, trajectory=trajectory, warnings=warnings,
                           extra={"class_label": label, "class_id": class_id, "label_similarity": similarity})

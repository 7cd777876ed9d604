"""Flow-matching family: any diffusers Stable Diffusion 3 folder (``StableDiffusion3Pipeline``),
builtin or real, with step events, trajectories, cancellation and guidance options.

Flow matching / rectified flow (Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et
al. 2023, "Flow Straight and Fast"; Esser et al. 2024, SD3): ``x_t = (1 - t) x0 + t eps`` on a
straight line between data and noise, the network predicts the velocity ``v = eps - x0``, and
sampling integrates the ODE from t = 1 to 0 with Euler steps (``FlowMatchEulerDiscreteScheduler``).
The x0 estimate of a step is ``x0 = x_t - t * v`` with the scheduler's own sigma for t
(:func:`pipelines.x0.predict_x0`); at the last step (t_next = 0) the Euler update lands exactly on it.

The run is diffusers' own ``StableDiffusion3Pipeline.__call__``, observed through
``callback_on_step_end`` like the latent-diffusion family. SD3 has no ``guidance_rescale``, so that
option is refused with a message; guidance in an interval of steps works as for latent diffusion.
Only flow schedulers apply to a flow model: the studio's DDPM-family samplers are refused.

Without T5 the pipeline fills the T5 block of the prompt embeddings with ``max_sequence_length`` zero tokens
(256 by default) that every joint-attention block carries. A model trained with a shorter block says so in its
``default_settings.json`` (``"max_sequence_length"``) and is run with exactly that block: the zero tokens are
not inert (the attention weighs them by their count), so the length must match training.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import StableDiffusion3Pipeline

from .latent_diffusion import GuidanceWindow, LatentDiffusion
from .requests import ImageRequest


class StudioStableDiffusion3Pipeline(GuidanceWindow, StableDiffusion3Pipeline):
    """diffusers' SD3 pipeline that also hands the guided velocity to step callbacks."""

    _callback_tensor_inputs = [*StableDiffusion3Pipeline._callback_tensor_inputs, "noise_pred"]


class FlowMatching(LatentDiffusion):
    """A loaded flow-matching (SD3-format) model: ``generate(request) -> ImageResult``."""

    family = "flow_matching"
    pipeline_class = StudioStableDiffusion3Pipeline

    @classmethod
    def load_options(cls, folder: Path) -> dict[str, Any]:
        """Optional components a folder leaves out (SD3 runs without T5 and without an image encoder)."""
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
        optional = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")
        return {name: None for name in optional if not (isinstance(index.get(name), list) and index[name][0])}

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def supports_guidance(self) -> bool:
        return True

    @property
    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * int(self.pipe.transformer.config.patch_size)

    def scheduler_for(self, name: Optional[str]):
        if name is not None:
            raise ValueError(f"A flow-matching model samples with its own flow-match scheduler; {name!r} is a "
                             "diffusion sampler. Pick “model default”.")
        return self._default_scheduler_cls.from_config(self._scheduler_config)

    @property
    def max_sequence_length(self) -> int:
        """The T5 block length this model was trained with (its ``default_settings.json``; else diffusers' 256)."""
        from pipelines.default_settings import FLOW_FALLBACK, DefaultSettingsError, read_default_settings

        folder = getattr(self, "folder", None)
        try:
            settings = read_default_settings(folder) if folder is not None else {}
        except DefaultSettingsError:
            settings = {}
        return int(settings.get("max_sequence_length", FLOW_FALLBACK["max_sequence_length"]))

    def call_options(self, req: ImageRequest) -> dict[str, Any]:
        if req.guidance_rescale > 0:
            raise ValueError("Guidance rescale is not available for flow-matching (SD3) models; set it to 0.")
        return {"max_sequence_length": self.max_sequence_length}

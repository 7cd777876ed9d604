"""Real Stable Diffusion checkpoints through the same registry and family code.

Out of the default run (marker ``real_checkpoint``): ``pytest -m real_checkpoint``. Point
``STUDIO_REAL_SD`` at a diffusers SD 1.x/2.x folder, or have one in the Hugging Face cache.
"""
import os
from pathlib import Path

import pytest

from pipelines.devices import resolve_device
from pipelines.latent_diffusion import LatentDiffusion
from pipelines.registry import ModelEntry, ModelRegistry, default_hf_cache
from pipelines.requests import ImageRequest

pytestmark = pytest.mark.real_checkpoint


def _real_sd() -> ModelEntry:
    if os.environ.get("STUDIO_REAL_SD"):
        folder = Path(os.environ["STUDIO_REAL_SD"])
        return ModelEntry("local/real-sd", "latent_diffusion", folder, "user", "StableDiffusionPipeline")
    found = [e for e in ModelRegistry(builtin_dir=None, hf_cache_dir=default_hf_cache()).entries()
             if e.family == "latent_diffusion"]
    if not found:
        pytest.skip("no real Stable Diffusion checkpoint on disk (set STUDIO_REAL_SD or fill the HF cache)")
    return found[0]


def test_real_sd_generates_with_x0_previews():
    model = LatentDiffusion.load(_real_sd(), resolve_device("auto"))
    assert model.preview.mode in ("taesd", "linear")  # SD's VAE is large: previews stay cheap
    events = []
    result = model.generate(ImageRequest("a red circle on a white background", num_inference_steps=3,
                                         height=256, width=256, seed=0), on_step=events.append)
    assert len(events) == 3 and result.images[0].size == (256, 256)
    assert events[-1].pred_x0.shape == (1, 4, 32, 32)
    assert len(model.preview.decode(events[-1].pred_x0)) == 1

"""Shared fixtures: tiny random-weight models saved in the real diffusers format."""
import shutil
from pathlib import Path

import pytest

from pipelines.tiny import (build_tiny_animatediff, build_tiny_audioldm, build_tiny_dit, build_tiny_sd, build_tiny_sd3,
                            build_tiny_vqgan_prior)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A user models folder: a tiny SD model (epsilon), a v-prediction one, a guidance-distilled one
    (no classifier-free guidance), a tiny DiT (DiT-XL-2's layout), a tiny SD3 (flow matching), a tiny VQGAN +
    token prior, a tiny AudioLDM, a tiny AnimateDiff (text to video, the builtin motion-ldm's layout) and a broken
    copy."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_sd(root / "tiny-sd")
    build_tiny_sd(root / "tiny-sd-v", prediction_type="v_prediction", seed=1)
    build_tiny_sd(root / "tiny-lcm", seed=2, time_cond_proj_dim=8)
    build_tiny_dit(root / "tiny-dit")
    build_tiny_sd3(root / "tiny-sd3")
    build_tiny_vqgan_prior(root / "tiny-vqgan")
    build_tiny_audioldm(root / "tiny-audioldm")
    build_tiny_animatediff(root / "tiny-animatediff")
    shutil.copytree(root / "tiny-sd", root / "tiny-sd-broken")
    weights = root / "tiny-sd-broken" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated: the app must name this file
    return root


@pytest.fixture(scope="session")
def tiny_sd_dir(tiny_models_dir) -> Path:
    return tiny_models_dir / "tiny-sd"


@pytest.fixture()
def model_copy(tiny_sd_dir, tmp_path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    models = tmp_path / "models"
    shutil.copytree(tiny_sd_dir, models / "broken")
    return models / "broken"


@pytest.fixture(scope="session")
def tiny_sd(tiny_models_dir):
    """The tiny model loaded on the CPU (shared; tests must not change it)."""
    from pipelines.devices import resolve_device
    from pipelines.latent_diffusion import LatentDiffusion
    from pipelines.registry import ModelRegistry

    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    return LatentDiffusion.load(registry.get("local/tiny-sd"), resolve_device("cpu"))

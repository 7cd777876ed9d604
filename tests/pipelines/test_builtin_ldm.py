"""The shipped builtin text-to-image model (assets/models/shapes-ldm): loads, obeys prompts, VAE quality.

These tests need the trained weights: without assets/models/shapes-ldm they fail (by design).
"""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.builtin_ldm import MODEL_DIR, folder_mb
from pipelines.registry import BUILTIN_MODELS_DIR, ModelRegistry


@pytest.fixture(scope="module")
def shapes_ldm():
    from pipelines.devices import resolve_device
    from pipelines.latent_diffusion import LatentDiffusion

    torch.set_num_threads(2)
    entry = ModelRegistry().get("builtin/shapes-ldm")
    return LatentDiffusion.load(entry, resolve_device("cpu"))


def test_folder_is_an_sd_folder_within_the_size_budget():
    index = json.loads((MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL_DIR / part).is_dir(), part
    clip = BUILTIN_MODELS_DIR.parent / "clip"
    total = folder_mb(MODEL_DIR) + (folder_mb(clip) if clip.is_dir() else 0.0)
    assert total <= 60.0, f"builtin image weights take {total:.1f} MB"


def test_registry_lists_shapes_ldm():
    entry = ModelRegistry().get("builtin/shapes-ldm")
    assert entry.family == "latent_diffusion" and entry.source == "builtin"


def test_plain_diffusers_load_is_fp32():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, use_safetensors=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16


def test_a_red_circle_at_generate_defaults(shapes_ldm):
    """At the Generate tab's defaults for this model (its default_settings.json), 9 of 10 seeds obey."""
    from pipelines.default_settings import read_default_settings
    from pipelines.judges.shapes import judge
    from pipelines.requests import ImageRequest

    d = read_default_settings(MODEL_DIR)
    assert (MODEL_DIR / "default_settings.json").is_file() and d["scheduler"] == "dpmpp_2m"
    req = ImageRequest(prompt="a red circle", scheduler=d["scheduler"], num_inference_steps=d["num_inference_steps"],
                       guidance_scale=d["guidance_scale"], height=64, width=64, seed=0, num_images=10,
                       capture_trajectory=False)
    result = shapes_ldm.generate(req)
    assert result.seeds == list(range(10))
    verdicts = [judge(im, {"colour": "red", "shape": "circle"}) for im in result.images]
    good = sum(v["colour"] and v["shape"] for v in verdicts)
    assert good >= 9, verdicts


def test_vae_psnr_on_held_out_renders():
    from diffusers import AutoencoderKL

    from pipelines.training.vae import EVAL_SEED, psnr, render_renders

    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(MODEL_DIR / "vae", use_safetensors=True, dtype=torch.float32).eval()
    assert psnr(vae, render_renders(EVAL_SEED, 64, holdout="include")) >= 30.0


def test_shipped_taesd_previews_match_the_vae_and_live_previews_use_it(shapes_ldm):
    """The distilled preview decoder (``python -m pipelines.train taesd``) reproduces the VAE's decode of held-out
    latents within 28 dB; trajectory frames stay exact (the VAE), live previews use TAESD."""
    from pipelines.training.taesd import evaluate

    preview = shapes_ldm.preview
    assert (preview.mode, preview.live_mode) == ("vae", "taesd")
    torch.set_num_threads(2)
    assert evaluate(preview.taesd, shapes_ldm.pipe.vae, n=64)["decoder_psnr_db"] >= 28.0


def test_text_encoder_is_the_shipped_mini_clip_text_tower():
    """The UNet is conditioned on the shipped shapes-clip's text tower: same per-token states."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines import mini_clip

    clip = mini_clip.load_clip(BUILTIN_MODELS_DIR.parent / "clip" / "shapes-clip")
    encoder = CLIPTextModel.from_pretrained(MODEL_DIR / "text_encoder", dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer")
    prompts = ["a small red circle in the top left on a black background", "a purple star", ""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    assert torch.equal(ids, mini_clip.get_tokenizer()(prompts))
    with torch.no_grad():
        x = clip.token_embedding(ids) + clip.positional_embedding
        expected = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        assert (encoder(ids).last_hidden_state - expected).abs().max() < 1e-4

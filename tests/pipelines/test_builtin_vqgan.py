"""The shipped VQGAN image tokenizer (assets/tokenizers/shapes-vqgan): a diffusers VQModel that turns a 64x64 Shapes
render into a 16x16 grid of 256 codebook ids and back, within its quality bar.

These tests need the trained weights: without the folder they fail (by design).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FOLDER = Path(__file__).resolve().parents[2] / "assets" / "tokenizers" / "shapes-vqgan"


@pytest.fixture(scope="module")
def vq():
    from diffusers import VQModel

    torch.set_num_threads(2)
    return VQModel.from_pretrained(FOLDER, use_safetensors=True).eval()


def test_folder_is_a_small_diffusers_vqmodel():
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["_class_name"] == "VQModel" and config["num_vq_embeddings"] == 256
    size = sum(f.stat().st_size for f in FOLDER.iterdir()) / 1e6
    assert size <= 3.0, f"{size:.1f} MB"


def test_reconstruction_psnr_and_codebook_use_on_held_out_renders(vq):
    from pipelines.training.vqgan import evaluate

    metrics = evaluate(vq, n=128)
    assert metrics["psnr"] >= 26.0 and metrics["codes_used"] >= 128, metrics


def test_tokens_are_a_16x16_grid_that_decodes_back(vq):
    from pipelines.training.vae import render_renders
    from pipelines.training.vqgan import tokenize

    images = render_renders(7, 2)
    grids = tokenize(vq, images)
    assert grids.shape == (2, 16, 16) and 0 <= int(grids.min()) and int(grids.max()) < 256
    codes = vq.quantize.get_codebook_entry(grids.flatten(), (2, 16, 16, vq.config.vq_embed_dim))
    with torch.no_grad():
        again = vq.decode(codes, force_not_quantize=True).sample
        direct = vq(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).sample
    torch.testing.assert_close(again, direct, atol=1e-4, rtol=1e-4)  # ids carry everything the decoder needs

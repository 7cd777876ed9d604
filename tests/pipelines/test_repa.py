"""Representation alignment (``--repa-weight``) of the flow and DiT trainers: the targets, the pairing of a
pool row's render with its latent, the head kept out of exports and grids, and resumes that would switch it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipelines.train import main as train_main
from pipelines.training import latents as lat, repa

ROOT = Path(__file__).resolve().parents[2]
VAE = ROOT / "assets" / "models" / "shapes-ldm" / "vae"
CLIP = ROOT / "assets" / "clip" / "shapes-clip"


def _keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        return list(f.keys())


def test_targets_fit_the_token_grid_and_a_pool_rows_render_is_the_image_of_its_latent(tmp_path):
    from diffusers import AutoencoderKL

    from pipelines.worlds import shapes

    pool = lat.load_latent_pool(lat.build_latent_pool(VAE, tmp_path / "pool.pt", 6, seed=3))
    images = repa.renders(pool, range(6))
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    vae = AutoencoderKL.from_pretrained(VAE, use_safetensors=True).eval()
    from pipelines.training.vae import to_tensor

    with torch.no_grad():
        again = vae.encode(to_tensor(images)).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(again.half().float(), pool["latents"].float(), atol=2e-3, rtol=1e-2)

    device = torch.device("cpu")
    for grid in (8, 16):  # patch 2 and patch 1 over the 16x16 latent
        feats = repa.Targets(CLIP, grid, device)(images)
        assert feats.shape == (6, grid * grid, repa.TARGET_DIM) and torch.isfinite(feats).all()
    # the features mark where the object is: against an empty canvas, a small circle on the left changes the
    # left half's tokens most, one on the right the right half's
    objects = [shapes.ShapeRecipe("red", "circle", "small", p, "white") for p in ("left", "right")]
    canvas = np.full((1, 64, 64, 3), 245, np.uint8)
    feats = repa.Targets(CLIP, 8, device)(np.concatenate([np.asarray(shapes.render_batch(objects)), canvas]))
    change = (feats[:2] - feats[2:]).norm(dim=-1).view(2, 8, 8)
    columns = [int(c.flatten().argmax()) % 8 for c in change]
    assert columns[0] < 4 <= columns[1], columns


def test_the_alignment_loss_reaches_the_early_blocks_and_the_head():
    from diffusers import SD3Transformer2DModel

    from pipelines.training.flow import transformer_config

    cfg = transformer_config(32, 2, 16, 64, 64)
    model = SD3Transformer2DModel(**cfg)
    args = argparse.Namespace(repa_weight=0.5, repa_depth=1, repa_clip_dir=CLIP)
    extra: dict = {}
    alignment = repa.setup(model, args, cfg, torch.device("cpu"), extra)
    assert json.loads(extra["repa"]) == {"depth": 1, "width": repa.HEAD_WIDTH, "target": repa.TARGET}
    model(hidden_states=torch.randn(2, 4, 16, 16), encoder_hidden_states=torch.randn(2, 5, 64),
          pooled_projections=torch.randn(2, 64), timestep=torch.tensor([500.0, 900.0]))
    images = np.zeros((2, 64, 64, 3), np.uint8)
    loss = alignment.loss(model, images)
    assert 0 <= loss.item() <= 2
    loss.backward()
    assert model.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    assert model.repa_head[0].weight.grad.abs().sum() > 0
    assert model.transformer_blocks[1].attn.to_q.weight.grad is None  # after the aligned block: untouched
    with pytest.raises(RuntimeError, match="after the model's forward"):
        alignment.loss(model, images)  # each forward pass is used once
    with pytest.raises(SystemExit, match="--repa-depth must be from 1 to the number of blocks \\(2\\)"):
        repa.setup(SD3Transformer2DModel(**cfg), argparse.Namespace(**{**vars(args), "repa_depth": 3}), cfg,
                   torch.device("cpu"), {})


def test_flow_and_dit_runs_align_checkpoint_the_head_export_without_it_and_refuse_a_switch(tmp_path):
    from pipelines.devices import resolve_device
    from pipelines.families import load_model
    from pipelines.registry import ModelRegistry
    from pipelines.requests import ImageRequest

    run = tmp_path / "flow"
    args = ["flow", "--run-dir", str(run), "--random-text", "--pool", "32", "--hidden", "32", "--layers", "2",
            "--head-dim", "16", "--batch-size", "4", "--steps", "4", "--checkpoint-every", "2", "--threads", "1",
            "--sample-every", "2", "--sample-steps", "2", "--repa-weight", "0.5"]
    assert train_main([*args, "--stop-at", "2"])["steps_done"] == 2
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("repa_head.") for k in state["model"])
    assert json.loads(state["extra"]["repa"])["depth"] == 2
    with pytest.raises(SystemExit, match="trained with --repa-weight; resume with it"):
        train_main([*args[:-2], "--resume"])
    with pytest.raises(SystemExit, match="depth 2 vs 1"):
        train_main([*args, "--resume", "--repa-depth", "1"])
    train_main([*args, "--resume"])
    records = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(0 <= r["repa"] <= 2 for r in records)
    assert len(list((run / "samples").glob("*.png"))) == 2  # the grids' network has no head
    assert not any("repa" in k for k in _keys(run / "pack" / "transformer"))
    model = load_model(ModelRegistry(builtin_dir=None, user_dir=tmp_path).get("local/flow/pack"),
                       resolve_device("cpu"))
    assert model.generate(ImageRequest("a red circle", num_inference_steps=2)).images[0].size == (64, 64)

    plain = tmp_path / "plain"  # a run without the head cannot take it on at a resume
    train_main(["flow", "--run-dir", str(plain), *args[3:-2], "--latents", str(run / "latents.pt"), "--stop-at", "2"])
    with pytest.raises(SystemExit, match="trained without --repa-weight; resume without it"):
        train_main(["flow", "--run-dir", str(plain), *args[3:], "--latents", str(run / "latents.pt"), "--resume"])

    dit = tmp_path / "dit"
    train_main(["dit", "--run-dir", str(dit), "--latents", str(run / "latents.pt"), "--hidden", "64", "--layers",
                "2", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--threads", "1", "--repa-weight", "0.5",
                "--repa-depth", "1"])
    assert all(0 <= json.loads(line)["repa"] <= 2 for line in (dit / "loss.jsonl").read_text().splitlines())
    assert not any("repa" in k for k in _keys(dit / "transformer"))

"""Training the shapes-ldm parts: VAE and UNet trainers (smoke + resume), latents, assembly; slow quality runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _vae_args(run_dir: Path, *extra: str) -> list[str]:
    return ["vae", "--tiny", "--steps", "4", "--batch-size", "4", "--warmup", "1", "--checkpoint-every", "2",
            "--threads", "1", "--run-dir", str(run_dir), *extra]


def _ldm_args(run_dir: Path, vae_dir: Path, *extra: str) -> list[str]:
    return ["ldm", "--random-text", "--vae-dir", str(vae_dir), "--pool", "64", "--widths", "8,16",
            "--batch-size", "4", "--steps", "4", "--warmup", "1", "--checkpoint-every", "2", "--threads", "1",
            "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vae")
    train_main(_vae_args(run))
    return run / "out"


def test_vae_resume_matches_uninterrupted(tiny_vae, tmp_path):
    train_main(_vae_args(tmp_path, "--stop-at", "2"))
    assert not (tmp_path / "out").exists() and [r["step"] for r in _log(tmp_path / "loss.jsonl")] == [1, 2]
    train_main(_vae_args(tmp_path, "--resume"))
    resumed, straight = _log(tmp_path / "loss.jsonl"), _log(tiny_vae.parent / "loss.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-4)
    cfg = json.loads((tiny_vae / "config.json").read_text())
    assert cfg["scaling_factor"] > 0 and cfg["scaling_factor"] != 0.18215


def test_ldm_resume_export_and_assembly(tiny_vae, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pipelines.builtin_ldm import assemble

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_main(_ldm_args(straight, tiny_vae))
    train_main(_ldm_args(resumed, tiny_vae, "--stop-at", "2"))
    assert not (resumed / "unet").exists()
    train_main(_ldm_args(resumed, tiny_vae, "--resume"))
    a, b = _log(straight / "loss.jsonl"), _log(resumed / "loss.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    assert (straight / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    folder = assemble(tiny_vae, straight, tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_caption_table_covers_training_captions_and_matches_pipeline(tiny_vae, tmp_path):
    import numpy as np

    from pipelines.training import latents as lat
    from pipelines.training.ldm import prepare_text, sample_captions

    run = tmp_path / "run"
    train_main(_ldm_args(run, tiny_vae, "--steps", "1"))
    table = lat.CaptionTable.build(run / "text" / "text_encoder", run / "text" / "tokenizer")
    pool = lat.load_latent_pool(run / "latents.pt")
    captions = sample_captions(pool, np.arange(64), np.random.default_rng(0), 0.3, 0.1)
    emb = table.lookup(captions)  # every sampled caption is in the table
    assert emb.shape == (64, 32, 128) and "" in captions
    from diffusers import StableDiffusionPipeline

    from pipelines.builtin_ldm import assemble

    pipe = StableDiffusionPipeline.from_pretrained(assemble(tiny_vae, run, tmp_path / "sd"), use_safetensors=True)
    embeds, _ = pipe.encode_prompt(captions[:8], "cpu", 1, False)
    assert torch.allclose(embeds, emb[:8], atol=1e-5)
    assert prepare_text  # exported once, reused


@pytest.mark.slow
def test_few_hundred_steps_reduce_losses(tmp_path):
    vae_run, ldm_run = tmp_path / "vae", tmp_path / "ldm"
    train_main(["vae", "--steps", "300", "--batch-size", "16", "--warmup", "30", "--run-dir", str(vae_run)])
    vae_log = _log(vae_run / "loss.jsonl")
    assert sum(r["loss"] for r in vae_log[-20:]) < 0.3 * sum(r["loss"] for r in vae_log[:20])
    train_main(["ldm", "--random-text", "--vae-dir", str(vae_run / "out"), "--pool", "4000", "--steps", "300",
                "--warmup", "30", "--batch-size", "64", "--run-dir", str(ldm_run)])
    ldm_log = _log(ldm_run / "loss.jsonl")
    mse = [r["mse"] for r in ldm_log]
    assert sum(mse[-50:]) / 50 < 0.8 * sum(mse[:20]) / 20


@pytest.mark.slow
def test_evaluation_reproduces_the_quality_bar(tmp_path):
    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, "-m", "pipelines.evaluate", "shapes-ldm", "--guidance", "1,7.5",
                    "--json", str(out)], cwd=ROOT, check=True)
    result = json.loads(out.read_text())
    seen, held = result["guidance"]["7.5"]["seen"], result["guidance"]["7.5"]["holdout"]
    assert seen["colour"] >= 0.97 and seen["shape"] >= 0.92
    assert seen["position"] >= 0.85 and seen["background"] >= 0.95
    assert held["colour"] >= 0.90 and held["shape"] >= 0.80
    assert all(result["ground_truth"][s][a] >= 0.99 for s in ("seen", "holdout") for a in seen)
    low = result["guidance"]["1.0"]["seen"]
    assert low["colour"] + low["shape"] < seen["colour"] + seen["shape"] - 0.05

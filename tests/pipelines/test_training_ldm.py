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


def test_second_stage_from_trained_weights_and_workers(tiny_vae, tmp_path):
    """--init-unet starts a new schedule from exported weights; --workers gives the same batches."""
    from safetensors.torch import load_file

    from pipelines.builtin_ldm import assemble, folder_mb

    first, second, in_main = tmp_path / "first", tmp_path / "second", tmp_path / "in-main"
    train_main(_ldm_args(first, tiny_vae))
    train_main(_ldm_args(second, tiny_vae, "--init-unet", str(first / "unet"), "--steps", "2", "--workers", "2",
                         "--latents", str(first / "latents.pt")))
    train_main(_ldm_args(in_main, tiny_vae, "--init-unet", str(first / "unet"), "--steps", "2",
                         "--latents", str(first / "latents.pt")))
    info = json.loads((second / "unet" / "training.json").read_text())
    assert info["step"] == 2 and info["init_from"]["step"] == 4
    assert [r["loss"] for r in _log(second / "loss.jsonl")] == pytest.approx(
        [r["loss"] for r in _log(in_main / "loss.jsonl")], rel=1e-5)
    # without a checkpoint, assembly takes the exported UNet of a finished run
    (second / "checkpoint.pt").unlink()
    folder = assemble(tiny_vae, second, tmp_path / "sd", default_guidance=2.0)
    weights = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    exported = load_file(second / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(weights[k], exported[k].half()) for k in exported)
    assert json.loads((folder / "default_settings.json").read_text())["guidance_scale"] == 2.0
    assert json.loads((folder / "training.json").read_text())["ldm_step"] == 2 and folder_mb(folder) > 0
    with pytest.raises(SystemExit, match="config differs"):
        train_main(_ldm_args(tmp_path / "third", tiny_vae, "--init-unet", str(first / "unet"),
                             "--widths", "16,32", "--latents", str(first / "latents.pt")))


def test_time_budget_cuts_the_schedule(monkeypatch):
    from pipelines.training import common

    clock = [100.0]
    monkeypatch.setattr(common.time, "time", lambda: clock[0])
    budget = common.TimeBudget(seconds=100, start_step=0, probe=10, skip=2)
    totals = []
    for step in range(1, 14):
        clock[0] += 1.0  # one second a step
        totals.append(budget.total(step, 1000))
    # timed from step 2 to 12 (1 s a step), 12 s spent, 88 s left: 12 + 88 = 100 steps in all
    assert totals[:11] == [1000] * 11 and totals[11:] == [100, 100]
    assert common.TimeBudget(None, 0).total(50, 1000) == 1000


def test_accelerator_options_only_where_supported(capsys):
    from pipelines.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["vae", "--device", "cuda"])
    assert "--device is not supported by the vae target" in capsys.readouterr().err
    args, _ = parse_args(["ldm", "--device", "auto", "--workers", "2", "--time-budget", "60"])
    assert args.device in ("cpu", "cuda") and args.workers == 2 and args.time_budget == 60


def test_decoder_finetune_keeps_the_latent_space(tiny_vae, tmp_path):
    from safetensors.torch import load_file

    train_main(["vae", "--finetune-decoder", str(tiny_vae), "--steps", "3", "--batch-size", "4", "--warmup", "1",
                "--grad-weight", "1", "--threads", "1", "--run-dir", str(tmp_path)])
    before = load_file(tiny_vae / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    cfg_before = json.loads((tiny_vae / "config.json").read_text())
    cfg_after = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg_after["scaling_factor"] == cfg_before["scaling_factor"]
    assert "grad" in _log(tmp_path / "loss.jsonl")[-1]


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
    """Issue 3's bar, at the Generate tab's default guidance for the shipped model (its default_settings.json)."""
    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, "-m", "pipelines.evaluate", "shapes-ldm", "--guidance", "1,2,4,7.5,12",
                    "--json", str(out)], cwd=ROOT, check=True)
    result = json.loads(out.read_text())
    default = str(float(result["default_guidance"]))
    seen, held = result["guidance"][default]["seen"], result["guidance"][default]["holdout"]
    assert seen["colour"] >= 0.97 and seen["shape"] >= 0.92
    assert seen["position"] >= 0.85 and seen["background"] >= 0.95
    assert held["colour"] >= 0.90 and held["shape"] >= 0.80
    assert all(result["ground_truth"][s][a] >= 0.99 for s in ("seen", "holdout") for a in seen)
    # the curve shows guidance doing something: the share of images with every attribute right
    # peaks at the default, lower without guidance (1) and far lower when over-guided (12)
    n_seen, n_held = result["n_seen"], result["n_holdout"]

    def joint(g):
        scores = result["guidance"][g]
        return (scores["seen"]["all"] * n_seen + scores["holdout"]["all"] * n_held) / (n_seen + n_held)

    assert joint("1.0") <= joint(default) - 0.02  # at least 5 of 240 images more right with guidance
    assert joint("12.0") <= joint(default) - 0.20
    assert result["seconds_per_image_single"] > 0

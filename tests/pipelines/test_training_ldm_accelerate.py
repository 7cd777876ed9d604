"""The ldm trainer under Hugging Face accelerate (2 CPU processes over gloo), its run-folder files for a UI
(status.json, stop.request, sample grids), fine-tuning the shipped shapes-ldm and exporting a run as a model."""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pipelines.train import main as train_main
from pipelines.training import accel, common, latents as lat
from pipelines.training.ldm import BASE_LDM
from tests.accelerate_launch import accelerate_launch

STEPS = 24


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _args(run_dir: Path, pool: Path, *extra: str) -> list[str]:
    """A tiny run on a 64-render pool encoded by the shipped VAE, random-weight text encoder."""
    return ["ldm", "--random-text", "--vae-dir", str(BASE_LDM / "vae"), "--latents", str(pool), "--widths", "8,16,16",
            "--batch-size", "4", "--lr", "2e-3", "--warmup", "2", "--threads", "1", "--run-dir", str(run_dir), *extra]


def _seed_text(src: Path, dst: Path) -> None:
    """Reuse a run's exported text encoder and caption table (the trainer keeps both when they exist)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "text", dst / "text")
    shutil.copy2(src / "captions.pt", dst / "captions.pt")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return lat.build_latent_pool(BASE_LDM / "vae", tmp_path_factory.mktemp("pool") / "latents.pt", 64, seed=123)


@pytest.fixture(scope="module")
def one_process(pool, tmp_path_factory) -> Path:
    """The reference single-process run (also provides the text encoder + caption table for the others)."""
    run = tmp_path_factory.mktemp("one")
    train_main(_args(run, pool, "--steps", str(STEPS), "--grad-accum", "2", "--checkpoint-every", "12"))
    return run


def _launch(run: Path, pool: Path, *extra: str, processes: int = 2, cpu: bool = False) -> subprocess.CompletedProcess:
    """``accelerate launch`` of the trainer on CPU ranks (see tests/accelerate_launch.py)."""
    proc = accelerate_launch(run.parent / f"{run.name}-accelerate.yaml", "pipelines.train",
                             *_args(run, pool, "--device", "cpu", *extra), processes=processes, cpu=cpu)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _halves(values: list[float]) -> tuple[float, float]:
    h = len(values) // 2
    return sum(values[:h]) / h, sum(values[h:]) / (len(values) - h)


def test_two_cpu_processes_under_accelerate_launch(pool, one_process, tmp_path):
    """``accelerate launch --cpu --num_processes 2 -m pipelines.train ldm ...``: two CPU ranks over gloo."""
    from diffusers import UNet2DConditionModel

    from pipelines.training.ldm import export_unet

    two = tmp_path / "two"
    _seed_text(one_process, two)
    proc = _launch(two, pool, "--steps", str(STEPS), "--grad-accum", "2", "--checkpoint-every", "12", cpu=True)
    assert "starting 2 CPU processes" in proc.stdout
    one_log, two_log = _log(one_process / "loss.jsonl"), _log(two / "loss.jsonl")
    for log in (one_log, two_log):  # one record a step, written once (by the main process)
        assert [r["step"] for r in log] == list(range(1, STEPS + 1))
        assert all(math.isfinite(r["loss"]) and math.isfinite(r["mse"]) for r in log)
        first, last = _halves([r["mse"] for r in log])
        assert last < first  # learning, at this tiny scale: the second half's mean MSE is lower
    # each process drew its own batches: twice the data a step, and another curve than one process's
    cfg_one, cfg_two = (json.loads((r / "config.json").read_text()) for r in (one_process, two))
    assert (cfg_one["processes"], cfg_one["global_batch"]) == (1, 8)  # batch 4 x 2 micro-batches
    assert (cfg_two["processes"], cfg_two["global_batch"]) == (2, 16)  # ... x 2 processes
    assert [r["loss"] for r in one_log] != [r["loss"] for r in two_log]
    status = json.loads((two / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == status["steps"] == STEPS and status["processes"] == 2
    meta = json.loads((two / "accelerate_state" / "meta.json").read_text())
    assert meta["step"] == STEPS and meta["processes"] == 2 and "MULTI_CPU" in meta["distributed_type"]
    assert {p.name for p in (two / "accelerate_state").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    # the two-process checkpoint is an ordinary one: its EMA UNet exports and runs
    unet = UNet2DConditionModel.from_pretrained(export_unet(two, tmp_path / "unet"), use_safetensors=True).eval()
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 900]),
                   encoder_hidden_states=torch.randn(2, 32, 128)).sample
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    assert (two / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_ranks_and_micro_batches_draw_their_own_batches(pool, one_process):
    import argparse

    from pipelines.training.ldm import StepBatches

    data = lat.load_latent_pool(pool)
    rows = {c: i for i, c in enumerate(lat.all_captions())}
    args = argparse.Namespace(seed=0, steps=4, batch_size=4, drop_prob=0.3, uncond_prob=0.1, offset_noise=0.2)
    single = StepBatches(data, rows, args, 1000)
    rank0, rank1 = StepBatches(data, rows, args, 1000, rank=0), StepBatches(data, rows, args, 1000, rank=1)
    accum = StepBatches(data, rows, args, 1000, rank=1, accum=2)
    assert all(torch.equal(a, b) for a, b in zip(single[3], rank0[3]))  # rank 0 = the single-process batch
    assert not torch.equal(rank0[3][2], rank1[3][2])
    # rank 1 with 2 micro-batches a step: items 6 and 7 are step 3's, streams 2 and 3 (rank 0 has 0 and 1)
    assert len(accum) == 8 and not torch.equal(accum[6][2], accum[7][2])
    rng = common.step_rng(0, 3, stream=3)
    assert torch.equal(accum[7][0], torch.from_numpy(rng.integers(len(data["latents"]), size=4)))


def test_stop_request_checkpoints_and_resume_restores_the_optimizer(pool, one_process, tmp_path, monkeypatch,
                                                                    capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        _seed_text(one_process, run)
    args = ("--steps", "6", "--checkpoint-every", "100", "--sample-every", "2", "--sample-steps", "2",
            "--sample-prompts", "a red circle|a blue square on a black background")
    train_main(_args(straight, pool, *args))

    log_step = common.LossLog.log

    def log_and_ask_to_stop(self, step, **values):  # a UI's request, arriving during step 3
        log_step(self, step, **values)
        if step == 3 and self.path.parent == stopped:
            (stopped / "stop.request").write_text("stop")

    monkeypatch.setattr(common.LossLog, "log", log_and_ask_to_stop)
    train_main(_args(stopped, pool, *args))
    assert "stopped at step 3/6; resume with --resume" in capsys.readouterr().out
    assert not (stopped / "stop.request").exists() and not (stopped / "unet").exists()
    status = json.loads((stopped / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] == 3 and status["steps"] == 6
    assert status["pid"] == os.getpid() and status["updated"] > 0
    saved = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and json.loads((stopped / "accelerate_state" / "meta.json").read_text())["step"] == 3
    assert [r["step"] for r in _log(stopped / "samples.jsonl")] == [2, 3]  # every 2 steps and where it stopped

    loaded = {}
    load_state = accel.load_state

    def load_and_look(accelerator, folder, ema=None):
        load_state(accelerator, folder, ema)
        loaded.update(copy.deepcopy(accelerator._optimizers[0].state_dict()))  # before training moves on

    monkeypatch.setattr(accel, "load_state", load_and_look)
    train_main(_args(stopped, pool, *args, "--resume"))
    # the optimizer came back as saved: Adam's step counters and moments
    assert loaded["state"].keys() == saved["optimizer"]["state"].keys()
    for k, v in saved["optimizer"]["state"].items():
        assert float(loaded["state"][k]["step"]) == float(v["step"]) == 3.0
        assert torch.equal(loaded["state"][k]["exp_avg"], v["exp_avg"])
        assert torch.equal(loaded["state"][k]["exp_avg_sq"], v["exp_avg_sq"])
    final = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert final["step"] == 6 and all(float(v["step"]) == 6.0 for v in final["optimizer"]["state"].values())
    # the step counter went on from 3, and the run equals the uninterrupted one
    a, b = _log(straight / "loss.jsonl"), _log(stopped / "loss.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert json.loads((stopped / "status.json").read_text())["state"] == "finished"
    assert [r["step"] for r in _log(stopped / "samples.jsonl")] == [2, 3, 4, 6]
    assert (stopped / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_without_accelerate_state_uses_the_checkpoint(pool, one_process, tmp_path):
    """Another process count (or a deleted accelerate_state/) falls back to checkpoint.pt, still exact."""
    run = tmp_path / "run"  # its own text export, as the reference run's (the export draws from the seeded RNG)
    train_main(_args(run, pool, "--steps", str(STEPS), "--grad-accum", "2", "--checkpoint-every", "12",
                     "--stop-at", "12"))
    shutil.rmtree(run / "accelerate_state")
    train_main(_args(run, pool, "--steps", str(STEPS), "--grad-accum", "2", "--checkpoint-every", "12", "--resume"))
    assert [r["loss"] for r in _log(run / "loss.jsonl")] == pytest.approx(
        [r["loss"] for r in _log(one_process / "loss.jsonl")], rel=1e-5)


def test_failed_run_says_so_in_status(pool, one_process, tmp_path):
    run = tmp_path / "bad"
    _seed_text(one_process, run)
    with pytest.raises(SystemExit, match="config differs"):  # a UNet of another shape
        train_main(_args(run, pool, "--steps", "2", "--init-unet", str(one_process / "unet"), "--widths", "8,16"))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "config differs" in status["error"]
    with pytest.raises(SystemExit, match="fp16 needs a GPU"):
        train_main(_args(tmp_path / "fp16", pool, "--steps", "1", "--mixed-precision", "fp16"))


def test_finetune_the_builtin_and_export_a_pipeline(pool, one_process, tmp_path):
    """--init-unet of the shipped UNet needs no shape flags (nor --vae-dir); the export loads and generates."""
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from pipelines.training.ldm import ExportError, cli, export_pipeline

    run, out = tmp_path / "ft", tmp_path / "models" / "ft-step2"
    train_main(["ldm", "--init-unet", str(BASE_LDM / "unet"), "--pool", "16", "--batch-size", "2", "--steps", "2",
                "--lr", "1e-5", "--warmup", "1", "--threads", "1", "--sample-every", "1", "--sample-steps", "2",
                "--sample-prompts", "a red circle|a blue square", "--run-dir", str(run)])
    cfg = json.loads((run / "config.json").read_text())
    base_cfg = json.loads((BASE_LDM / "unet" / "config.json").read_text())
    assert cfg["unet"]["block_out_channels"] == base_cfg["block_out_channels"]
    info = json.loads((run / "unet" / "training.json").read_text())
    assert info["init_from"] and info["text_hash"] == lat.file_hash(BASE_LDM / "text_encoder")
    records = _log(run / "samples.jsonl")
    assert [r["step"] for r in records] == [1, 2] and records[0]["prompts"] == ["a red circle", "a blue square"]
    with Image.open(run / records[-1]["path"]) as grid:
        assert grid.width > 2 * 64 and grid.height > 64

    export_pipeline(run, out)
    assert not out.with_name(out.name + ".tmp").exists()
    assert {p.name for p in out.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                              "model_index.json", "default_settings.json", "training.json"}
    assert json.loads((out / "training.json").read_text())["ldm_step"] == 2
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    # the CLI replaces the folder in place
    cli(["export", str(run), str(out), "--base", str(BASE_LDM)])
    assert (out / "model_index.json").is_file() and not out.with_name(out.name + ".old").exists()
    # a run on another text encoder is refused, and leaves nothing behind
    with pytest.raises(ExportError, match="another text encoder"):
        export_pipeline(one_process, tmp_path / "models" / "wrong")
    assert not (tmp_path / "models" / "wrong").exists() and not (tmp_path / "models" / "wrong.tmp").exists()


@pytest.mark.slow
def test_two_process_stop_and_resume_is_exact(pool, one_process, tmp_path):
    """Stopped and resumed under the same launch (accelerate_state: every rank's state), a two-process run reads
    like an uninterrupted one (three launches: about a minute and a half on 2 CPU cores)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run in (straight, resumed):
        _seed_text(one_process, run)
    _launch(straight, pool, "--steps", "8", "--checkpoint-every", "100")
    _launch(resumed, pool, "--steps", "8", "--checkpoint-every", "100", "--stop-at", "4")
    assert json.loads((resumed / "status.json").read_text())["state"] == "stopped"
    out = _launch(resumed, pool, "--steps", "8", "--checkpoint-every", "100", "--resume")
    assert "resumed step 4 from" in out.stdout
    assert [r["loss"] for r in _log(resumed / "loss.jsonl")] == pytest.approx(
        [r["loss"] for r in _log(straight / "loss.jsonl")], rel=1e-6)

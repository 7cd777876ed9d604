"""The run-folder files of the VAE and mini-CLIP trainers (:mod:`pipelines.training.monitor`): status.json,
stop.request (checkpoint, stop, resume) and the ``--sample-every`` grids, on tiny configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.train import main as train_main

STEPS = 4
# --sample-posterior: the VAE's training then draws from the torch RNG, so a grid that touched it would show
ARGS = {
    "vae": ["vae", "--tiny", "--batch-size", "4", "--warmup", "1", "--sample-posterior"],
    "clip": ["clip", "--batch-size", "8", "--vision-width", "8", "--warmup", "1",
             "--eval-n", "8", "--ema", "0.9"],
}
EXPORT = {"vae": "out/diffusion_pytorch_model.safetensors", "clip": "out/open_clip_model.safetensors"}


def _args(trainer: str, run: Path, *extra: str) -> list[str]:
    return [*ARGS[trainer], "--steps", str(STEPS), "--checkpoint-every", "100", "--threads", "1",
            "--run-dir", str(run), "--out", str(run / "out"), *extra]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture(scope="module", params=["vae", "clip"])
def trainer(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def baseline(trainer, tmp_path_factory) -> list[dict]:
    """The loss log of an uninterrupted run without sample grids."""
    run = tmp_path_factory.mktemp(f"{trainer}-plain")
    train_main(_args(trainer, run))
    assert not (run / "samples").exists() and _log(run / "samples.jsonl") == []
    return _log(run / "loss.jsonl")


def _check_grids(trainer: str, run: Path, steps: list[int]) -> None:
    records = _log(run / "samples.jsonl")
    assert [r["step"] for r in records] == steps
    for r in records:
        assert r["path"] == f"samples/step_{r['step']:06d}.png"
        with Image.open(run / r["path"]) as image:
            assert image.mode == "RGB" and image.width > 8 * 64
        assert len(r["prompts"]) == 8 and all(p.startswith("a ") for p in r["prompts"])
        if trainer == "vae":
            assert r["kind"] == "reconstructions" and 0 < r["psnr"] < 100
        else:
            assert r["kind"] == "zero-shot" and 0.0 <= r["zero_shot_top1"] <= 1.0 and r["weights"] == "ema"
    assert records[0]["prompts"] == records[-1]["prompts"]  # the same fixed renders every time
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_{s:06d}.png" for s in steps]


def test_sample_grids_and_finished_status(trainer, baseline, tmp_path):
    train_main(_args(trainer, tmp_path, "--sample-every", "3"))
    status = _status(tmp_path)
    assert status["state"] == "finished" and status["step"] == status["steps"] == STEPS
    assert status["loss"] == pytest.approx(baseline[-1]["loss"], rel=1e-4, abs=1e-6)
    _check_grids(trainer, tmp_path, [3, STEPS])  # every 3 steps and at the end
    assert (tmp_path / EXPORT[trainer]).is_file()
    # the grids never changed training: the same losses as without them
    assert [r["loss"] for r in _log(tmp_path / "loss.jsonl")] == pytest.approx(
        [r["loss"] for r in baseline], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("when", ["before", "during"])
def test_stop_request_checkpoints_and_resume_continues(trainer, baseline, tmp_path, monkeypatch, capsys, when):
    from pipelines.training import common

    if when == "before":  # asked before the run started: it stops after its first step
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stop.request").write_text("stop")
        stopped_at = 1
    else:  # a UI's request arriving during step 2
        stopped_at = 2
        log_step = common.LossLog.log

        def log_and_ask_to_stop(self, step, **values):
            log_step(self, step, **values)
            if step == 2:
                (tmp_path / "stop.request").write_text("stop")

        monkeypatch.setattr(common.LossLog, "log", log_and_ask_to_stop)
    train_main(_args(trainer, tmp_path, "--sample-every", "3"))  # returns: a stop is not an error
    monkeypatch.undo()
    assert f"stopped at step {stopped_at}/{STEPS}; resume with --resume" in capsys.readouterr().out
    assert not (tmp_path / "stop.request").exists() and not (tmp_path / "out").exists()
    status = _status(tmp_path)
    assert status["state"] == "stopped" and status["step"] == stopped_at and status["steps"] == STEPS
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert saved["step"] == stopped_at and saved["model"]
    _check_grids(trainer, tmp_path, [stopped_at])  # a grid where it stopped

    train_main(_args(trainer, tmp_path, "--sample-every", "3", "--resume"))
    status = _status(tmp_path)
    assert status["state"] == "finished" and status["step"] == STEPS
    log = _log(tmp_path / "loss.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))  # the step counter went on
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in baseline], rel=1e-4, abs=1e-6)
    _check_grids(trainer, tmp_path, [stopped_at, 3, STEPS])
    assert torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == STEPS
    assert (tmp_path / EXPORT[trainer]).is_file()


def test_an_exception_marks_the_run_failed(trainer, tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module(f"pipelines.training.{trainer}")
    name = "vae_loss" if trainer == "vae" else "positives_matrix"  # called once per step
    original, calls = getattr(module, name), []

    def fail_on_the_second_step(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in step 2")
        return original(*a, **k)

    monkeypatch.setattr(module, name, fail_on_the_second_step)
    with pytest.raises(RuntimeError, match="boom in step 2"):
        train_main(_args(trainer, tmp_path, "--sample-every", "1"))
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["error"] == "RuntimeError: boom in step 2"
    assert status["step"] == 1 and [r["step"] for r in _log(tmp_path / "samples.jsonl")] == [1]

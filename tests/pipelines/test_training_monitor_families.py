"""The run-folder files of the flow and DiT trainers (status.json, stop.request, sample grids), as the Train tab
reads them, and :class:`pipelines.training.monitor.RunMonitor` itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines.train import main as train_main
from pipelines.training import accel
from pipelines.training.monitor import RunMonitor

TINY = {
    "flow": ["--random-text", "--pool", "32", "--hidden", "32", "--layers", "1", "--head-dim", "16"],
    "dit": ["--pool", "32", "--hidden", "64", "--layers", "1"],
}


def _args(target: str, run: Path, *extra: str) -> list[str]:
    return [target, "--run-dir", str(run), *TINY[target], "--batch-size", "4", "--steps", "4", "--warmup", "1",
            "--checkpoint-every", "2", "--threads", "1", "--sample-every", "2", "--sample-steps", "2", *extra]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# flow's grids, stop and export run through the Train tab's manager in tests/studio/test_training_runs.py, its
# --stop-at / --resume in test_flow.py; the DiT run (seconds) covers the whole monitor path here
@pytest.mark.parametrize("target", ["dit"])
def test_stop_request_sample_grids_and_resume(target, tmp_path):
    run = tmp_path / target
    run.mkdir()
    (run / accel.STOP_FILE).write_text("now")  # as the Train tab's Stop button writes it
    assert train_main(_args(target, run))["steps_done"] == 1
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] == 1 and status["steps"] == 4
    assert not (run / accel.STOP_FILE).exists()  # served
    assert (run / "checkpoint.pt").is_file()  # the step it stopped at was saved
    grids = _jsonl(run / "samples.jsonl")
    assert [g["step"] for g in grids] == [1]  # a grid at every end of a run
    train_main(_args(target, run, "--resume"))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4 and "loss" in status
    assert [r["step"] for r in _jsonl(run / "loss.jsonl")] == [1, 2, 3, 4]
    grids = _jsonl(run / "samples.jsonl")
    assert [g["step"] for g in grids] == [1, 2, 4]
    for g in grids:
        with Image.open(run / g["path"]) as im:
            assert im.width > 64 and im.height > 64  # a grid of 64x64 samples with captions
        assert len(g["prompts"]) == len(g["seeds"]) == 8 and g["num_inference_steps"] == 2
    assert (run / ("pack" if target == "flow" else "transformer")).is_dir()  # exported once finished


def test_a_failing_run_says_so(tmp_path, monkeypatch):
    import pipelines.training.dit as dit

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dit.F, "mse_loss", broken)
    run = tmp_path / "bad"
    with pytest.raises(RuntimeError, match="disk on fire"):
        train_main(_args("dit", run))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "disk on fire" in status["error"]


def test_run_monitor(tmp_path):
    m = RunMonitor(tmp_path, steps=10, samples_per_step=8, start=0, stop=10)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "running"
    assert m.after_step(1, 0.5, 10) == 10
    (tmp_path / accel.STOP_FILE).write_text("")
    assert m.after_step(2, 0.4, 10) == 2 and m.stop_requested
    assert [RunMonitor.sample_due(s, 6, 3) for s in (1, 3, 5, 6)] == [False, True, False, True]
    assert not RunMonitor.sample_due(6, 6, 0)
    m.samples.write(2, Image.new("RGB", (8, 8)), {"prompts": ["x"]})
    assert m.end(2) == "stopped" and not (tmp_path / accel.STOP_FILE).exists()
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"
    # a resumed run keeps the grids up to its start step; a fresh one starts the log anew
    m.samples.write(5, Image.new("RGB", (8, 8)), {"prompts": ["y"]})
    RunMonitor(tmp_path, steps=10, samples_per_step=8, start=2, stop=10, resume=True)
    assert [r["step"] for r in _jsonl(tmp_path / "samples.jsonl")] == [2]
    RunMonitor(tmp_path, steps=10, samples_per_step=8, start=0, stop=10)
    assert _jsonl(tmp_path / "samples.jsonl") == []
    assert RunMonitor(tmp_path, 4, 1, 0, 4).end(4) == "finished"

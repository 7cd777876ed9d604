"""Training runs started the way the Train tab starts them (studio.training): a separate process per run, its state
read back from the run folder; stop / resume continue from the checkpoint; a killed run never takes the manager
down; a finished latent-diffusion run exports a model the registry lists and its sample grids reach the gallery."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from pipelines.registry import ModelRegistry
from studio.gallery import Gallery
from studio.training import TARGETS, TrainingError, TrainingManager, TrainSpec, parse_extra

TINY = ("--pool", "16", "--widths", "8,16,16", "--warmup", "1", "--threads", "1")


def tiny_spec(name: str, steps: int, **kw) -> TrainSpec:
    return TrainSpec(target="ldm-fresh", name=name, steps=steps, batch_size=2, lr=1e-3, sample_every=kw.pop("every", 0),
                     checkpoint_every=kw.pop("ckpt", 2), extra=TINY + tuple(kw.pop("extra", ())), **kw)


def ended(mgr, name):
    """A waiting predicate: the run's state once its process has ended, else None."""
    return lambda: (lambda st: None if st.alive else st)(mgr.state(name))


def wait_for(predicate, timeout: float = 300, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def mgr(tmp_path) -> TrainingManager:
    return TrainingManager(tmp_path / "runs", tmp_path / "models")


def test_bad_specs_and_names_get_clear_messages(mgr):
    bad = [TrainSpec(target="nope"), TrainSpec(steps=0), TrainSpec(batch_size=-1), TrainSpec(lr=0.0),
           TrainSpec(lr=float("nan")), TrainSpec(ema_decay=1.0), TrainSpec(caption_dropout=2.0), TrainSpec(world="mars")]
    for spec in bad:
        with pytest.raises(TrainingError):
            spec.validate()
    for name in ("../escape", "a/b", "-flag", "x" * 49, "spa ce", ""):
        with pytest.raises(TrainingError, match="run name"):
            mgr.run_dir(name)
    with pytest.raises(TrainingError, match="not allowed"):
        parse_extra("--out /etc")
    with pytest.raises(TrainingError, match="not allowed"):
        parse_extra("--run-dir=/tmp/x")
    with pytest.raises(TrainingError, match="start with a --flag"):
        parse_extra("rm -rf /")
    with pytest.raises(TrainingError):
        parse_extra('--pool "unclosed')
    assert parse_extra("--pool 64 --warmup 5") == ("--pool", "64", "--warmup", "5")
    # the trainer's own parser vets values before a process starts, and nothing is left behind
    with pytest.raises(TrainingError, match="refused"):
        mgr.start(tiny_spec("badpool", 2, extra=("--pool", "lots")))
    assert mgr.runs() == []


def test_a_run_trains_in_its_own_process_then_exports_a_listed_model_and_gallery_samples(mgr, tmp_path, monkeypatch):
    name = mgr.start(tiny_spec("tiny", 4, every=2))
    with pytest.raises(TrainingError, match="exists already"):
        mgr.start(tiny_spec("tiny", 4))
    assert mgr.active() == "tiny"
    st = wait_for(ended(mgr, name), what="the run to end")
    assert st.state == "finished", st.log_tail
    assert st.step == st.steps == 4 and [s for s, _ in st.losses] == [1, 2, 3, 4]
    assert [r["step"] for r in st.samples] == [2, 4]
    assert all((mgr.run_dir(name) / r["path"]).is_file() for r in st.samples)
    model_id = mgr.export(name)
    assert model_id == "local/tiny-step4"
    assert mgr.export(name) is None  # once per checkpoint
    import torch

    def no_load(*a, **k):
        raise AssertionError("the checkpoint was read again")

    monkeypatch.setattr(torch, "load", no_load)  # the tab asks every poll: no 100 MB read each time
    assert mgr.export(name) is None
    monkeypatch.undo()
    registry = ModelRegistry(builtin_dir=None, user_dir=tmp_path / "models")
    assert registry.get(model_id).pipeline_class == "StableDiffusionPipeline"
    assert mgr.state(name).exported == model_id
    gallery = Gallery.open(tmp_path / "gallery")
    try:
        ids = mgr.import_samples(name, gallery)
        assert len(ids) == 2 and mgr.import_samples(name, gallery) == []
        row = gallery.get(ids[-1])
        assert {"training", "run:tiny", "step:4"} <= set(row.tags) and row.model_id == "run/tiny"
        assert gallery.integrity_check() == "ok"
    finally:
        gallery.close()


def test_stop_then_resume_continues_from_the_saved_step(mgr):
    name = mgr.start(tiny_spec("long", 100_000, ckpt=1000))
    wait_for(lambda: mgr.state(name).step >= 3, what="a few steps")
    assert "Stopping" in mgr.stop(name)
    st = wait_for(ended(mgr, name), what="the stop")
    assert st.state == "stopped" and 3 <= st.step < 100_000, st.log_tail
    k = st.step
    assert st.can_resume
    assert "Resumed" in mgr.resume(name)
    with pytest.raises(TrainingError, match="still running"):
        mgr.resume(name)
    wait_for(lambda: mgr.state(name).step >= k + 2, what="steps after the resume")
    mgr.stop(name)
    st2 = wait_for(ended(mgr, name), what="the second stop")
    steps = [s for s, _ in st2.losses]
    assert steps == list(range(1, st2.step + 1))  # the log reads like one uninterrupted run
    assert "stopped at step" in mgr.log_tail(name, lines=200)


def test_a_killed_run_is_reported_and_a_restarted_studio_reconnects(mgr, tmp_path):
    name = mgr.start(tiny_spec("victim", 100_000, ckpt=1000))
    wait_for(lambda: mgr.state(name).step >= 1, what="a first step")
    again = TrainingManager(tmp_path / "runs", tmp_path / "models")  # the studio restarted: only the files remain
    assert again.active() == name and again.state(name).alive
    pid = json.loads((mgr.run_dir(name) / "job.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_for(ended(again, name), what="the kill")
    assert st.state == "crashed" and again.active() is None
    with pytest.raises(TrainingError, match="no checkpoint"):
        again.resume(name)
    # the manager that started it reaps its exit code (-9): failed (the process may take a moment to be reaped)
    assert wait_for(ended(mgr, name), what="the reap").state == "failed"


GOOD_FORM = ("ldm-finetune", "shapes", "", 200, 16, 1e-4, 0.999, 0.1, 50, "")


@pytest.mark.parametrize("index, value", [
    (0, "dit-from-mars"), (1, "underwater"), (2, "../../etc"), (2, "x" * 100_000), (2, "名前 with spaces"),
    (3, float("nan")), (3, float("inf")), (3, -5), (3, 2.5), (3, "many"), (3, None), (3, 10**12),
    (4, 0), (4, float("-inf")), (5, 0), (5, float("nan")), (5, "fast"), (6, 1.0), (6, -0.1),
    (7, 1.5), (8, -1), (9, "--run-dir /tmp/elsewhere"), (9, "; rm -rf /"), (9, "--out=/etc/passwd"),
])
def test_the_train_form_refuses_bad_values_with_a_message_and_starts_nothing(index, value, mgr):
    from studio.tabs.train import spec_from_form

    form = list(GOOD_FORM)
    form[index] = value
    with pytest.raises(TrainingError) as info:
        spec_from_form(*form)
        mgr.start(spec_from_form(*form))  # names are checked when the run folder is made
    assert str(info.value) and "Traceback" not in str(info.value)
    assert mgr.runs() == [] and not mgr.runs_dir.exists()


def test_the_train_form_accepts_its_defaults():
    from studio.tabs.train import spec_from_form

    spec = spec_from_form(*GOOD_FORM)
    assert (spec.steps, spec.batch_size, spec.sample_every, spec.checkpoint_every) == (200, 16, 50, 50)
    assert "--init-unet" in spec.argv(Path("/tmp/run"))


@pytest.mark.parametrize("key", list(TARGETS))
def test_every_target_makes_a_command_line_its_trainer_accepts(key, tmp_path):
    """Each target's form defaults give a command line the trainer's own parser takes, with the form's EMA and
    dropout only where the target has them and every output inside the run folder."""
    from pipelines import train

    target = TARGETS[key]
    steps, batch, lr = target.defaults
    spec = TrainSpec(target=key, steps=steps, batch_size=batch, lr=lr)
    spec.validate()
    argv = spec.argv(tmp_path / "run")
    args, _ = train.parse_args(argv)
    assert (args.target, args.steps, args.batch_size, args.lr, args.sample_every) == (
        target.target, steps, batch, lr, spec.sample_every)
    assert (target.ema_flag in argv) == (target.ema_flag is not None)
    assert (target.dropout_flag in argv) == (target.dropout_flag is not None)
    assert args.run_dir == tmp_path / "run"
    if args.out is not None:  # never the shipped assets (mini-CLIP's default --out)
        assert Path(args.out).is_relative_to(tmp_path / "run")


# Every target of the tab, tiny: (form key, extra trainer flags, the pipeline class its export lists as, or None)
FAMILY_TARGETS = [
    ("flow-fresh", ("--pool", "16", "--hidden", "32", "--layers", "1", "--head-dim", "16", "--warmup", "1",
                    "--sample-steps", "2"), "StableDiffusion3Pipeline", "flow_matching"),
    ("dit-fresh", ("--pool", "16", "--hidden", "64", "--layers", "1", "--warmup", "1", "--sample-steps", "2"),
     "DiTPipeline", "dit"),
    ("vae-decoder", ("--warmup", "1"), "StableDiffusionPipeline", "vae"),
    ("clip-fresh", ("--vision-width", "8", "--warmup", "1"), None, "clip"),  # its weights stay in the run folder
]


@pytest.mark.parametrize("key, extra, pipeline_class, family", FAMILY_TARGETS, ids=[t[0] for t in FAMILY_TARGETS])
def test_each_target_stops_on_request_exports_a_listed_model_and_grids(key, extra, pipeline_class, family, mgr,
                                                                       tmp_path):
    """Started as the tab starts it: it runs in its own process, Stop checkpoints it, a grid is drawn at the stop,
    the export is listed by the registry and generates, and its grids reach the gallery under its family."""
    from pipelines.devices import resolve_device
    from pipelines.families import load_model
    from pipelines.requests import ImageRequest

    spec = TrainSpec(target=key, name=key, steps=100_000, batch_size=2, lr=1e-3, sample_every=1000,
                     checkpoint_every=1000, extra=(*extra, "--threads", "1"))
    name = mgr.start(spec)
    wait_for(lambda: mgr.state(name).step >= 2, what="a few steps")
    mgr.stop(name)
    st = wait_for(ended(mgr, name), what="the stop")
    assert st.state == "stopped" and 2 <= st.step < 100_000 and st.can_resume, st.log_tail
    assert [r["step"] for r in st.samples] == [st.step]  # the grid at the stop
    model_id = mgr.export(name)
    if pipeline_class is None:
        assert model_id is None and not (tmp_path / "models").exists()
    else:
        assert model_id == f"local/{name}-step{st.step}" and mgr.export(name) is None
        entry = ModelRegistry(builtin_dir=None, user_dir=tmp_path / "models").get(model_id)
        assert entry.pipeline_class == pipeline_class
        result = load_model(entry, resolve_device("cpu")).generate(
            ImageRequest("a red circle", num_inference_steps=2, guidance_scale=2.0, seed=1))
        assert result.images[0].size == (64, 64)
    gallery = Gallery.open(tmp_path / "gallery")
    try:
        ids = mgr.import_samples(name, gallery)
        assert len(ids) == 1 and gallery.get(ids[0]).family == family
    finally:
        gallery.close()

"""studio.batch: a guidance sweep split across 2 CPU processes by accelerate merges into one gallery group that the
Guidance Explorer reopens, with the same pixels as one process; prompt batches; bad input saves nothing."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.accelerate_launch import accelerate_launch

from pipelines.tiny import build_tiny_sd
from studio import batch
from studio.gallery import Gallery
from studio.sweeps import SWEEP_KIND, load_group

PROMPT = "a red circle on a white background"
SWEEP = ["--model", "local/tiny-sd", "--prompt", PROMPT, "--scales", "1,3", "--seeds", "0,1", "--steps", "2",
         "--scheduler", "ddim", "--device", "cpu", "--no-hf-cache"]
CELLS = [(0, 1.0), (0, 3.0), (1, 1.0), (1, 3.0)]  # (seed, scale), row-major: rows = seeds


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch-models")
    build_tiny_sd(root / "tiny-sd")
    return root


def _run(argv: list[str]) -> int:
    """``main`` in this process on one thread (as each launched rank runs), threads restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return batch.main(argv)
    finally:
        torch.set_num_threads(threads)


def _group_id(stdout: str) -> int:
    return int(re.search(r"as gallery group #(\d+)", stdout).group(1))


def _pixels(gallery_dir: Path, group_id: int) -> tuple:
    with Gallery.open(gallery_dir) as gallery:
        group, cells = load_group(gallery, group_id)
        members = gallery.group_members(group_id)
        return group, cells, members, gallery.count(), gallery.groups()


@pytest.fixture(scope="module")
def one_process(models, tmp_path_factory):
    """The plain run (no accelerate): all four cells in this process."""
    gallery_dir = tmp_path_factory.mktemp("one") / "gallery"
    assert _run(SWEEP + ["--models-dir", str(models), "--gallery-dir", str(gallery_dir)]) == 0
    return gallery_dir


def _launch(tmp: Path, *argv: str, processes: int = 2, cpu: bool = False) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``studio.batch`` on CPU ranks (see tests/accelerate_launch.py)."""
    return accelerate_launch(tmp / "accelerate.yaml", "studio.batch", *argv, processes=processes, cpu=cpu)


@pytest.mark.parametrize("cpu", [False, True], ids=["multi_gpu-device-cpu", "cpu-num_processes-2"])
def test_two_cpu_processes_merge_into_one_sweep_group(models, one_process, tmp_path, cpu):
    gallery_dir = tmp_path / "gallery"
    proc = _launch(tmp_path, *SWEEP, "--models-dir", str(models), "--gallery-dir", str(gallery_dir), cpu=cpu)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert ("starting 2 CPU processes" in out) == cpu
    assert "4 cells · 2 steps · 2 processes (MULTI_CPU, gloo)" in out
    assert "rank 0: 2 cells [0, 1]" in out and "rank 1: 2 cells [2, 3]" in out  # accelerate's contiguous split
    assert out.count("saved 4 cells") == 1  # only the main process printed (and saved)

    group, cells, members, count, groups = _pixels(gallery_dir, _group_id(out))
    # one group, every cell once, in grid order, readable as the Guidance Explorer reopens a saved sweep
    assert [g.id for g in groups] == [group.id] and count == 4 and len(members) == 4
    assert group.kind == SWEEP_KIND and group.status == "done" and group.model_id == "local/tiny-sd"
    assert group.data["settings"]["rows"] == ["seed 0", "seed 1"]
    assert group.data["settings"]["columns"] == ["w = 1", "w = 3"]
    assert [c.metrics["index"] for c in cells] == [0, 1, 2, 3]
    assert [(c.metrics["seed"], c.metrics["scale"]) for c in cells] == CELLS
    assert sorted(c.metrics["gallery_id"] for c in cells) == sorted(m.id for m in members)
    assert [p["scale"] for p in group.data["points"]] == [1.0, 3.0]
    assert all(c.metrics["clip_score"] is not None for c in cells)
    for cell, row in zip(cells, sorted(members, key=lambda m: m.params["group"]["cell"])):
        i = cell.metrics["index"]
        assert row.params["group"] == {"id": group.id, "cell": i, "row": i // 2, "column": i % 2, "variant": "CFG"}
        assert (row.seed, row.guidance, row.steps, row.group_id) == (*CELLS[i], 2, group.id)

    # rank-independent pixels: cells 2 and 3 came from rank 1 here and from the only process there
    _, one_cells, *_ = _pixels(one_process, 1)
    for a, b in zip(cells, one_cells):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.metrics["clip_score"] == pytest.approx(b.metrics["clip_score"], abs=1e-6)
    assert not np.array_equal(np.asarray(cells[0].image), np.asarray(cells[1].image))  # the scale matters


def test_plain_run_and_a_prompt_batch(models, one_process, tmp_path, capsys):
    group, cells, members, count, _ = _pixels(one_process, 1)
    assert group.kind == SWEEP_KIND and group.status == "done" and count == len(members) == 4
    assert [(c.metrics["seed"], c.metrics["scale"]) for c in cells] == CELLS

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# one prompt per line\n{PROMPT}\n\na blue square on a black background\n", encoding="utf-8")
    argv = ["--model", "local/tiny-sd", "--prompts-file", str(prompts), "--seeds", "0,1", "--guidance", "3",
            "--steps", "2", "--scheduler", "ddim", "--device", "cpu", "--no-hf-cache", "--models-dir", str(models),
            "--gallery-dir", str(one_process)]  # the same gallery: a second group beside the sweep
    capsys.readouterr()
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "prompt batch · 2 prompts x 2 seeds · guidance 3" in out and "1 process (NO)" in out
    assert "rank 0: 4 cells [0, 1, 2, 3]" in out
    group, batch_cells, members, count, groups = _pixels(one_process, _group_id(out))
    assert group.kind == batch.BATCH_KIND and group.status == "done" and len(groups) == 2 and count == 8
    assert [c.metrics["prompt"] for c in batch_cells] == [PROMPT, PROMPT, *["a blue square on a black background"] * 2]
    assert [c.metrics["seed"] for c in batch_cells] == [0, 1, 0, 1]
    assert group.data["settings"]["columns"] == ["seed 0", "seed 1"] and len(members) == 4
    # the batch's (prompt, seed 0) at guidance 3 is the sweep's cell (seed 0, w = 3): same recipe, same pixels
    assert np.array_equal(np.asarray(batch_cells[0].image), np.asarray(cells[1].image))


@pytest.mark.parametrize("change, message", [
    ({"--model": "local/nope"}, "Unknown model id 'local/nope'"),
    ({"--scales": "1,x"}, "'x' is not a number"),
    ({"--scheduler": "warp"}, "Unknown scheduler 'warp'"),
    ({"--steps": "0"}, "Steps must be a whole number from 1"),
    ({"--prompt": None, "--prompts-file": "EMPTY"}, "has no prompts"),
    ({"--gallery-dir": "UNWRITABLE"}, "is not writable"),
])
def test_bad_input_exits_non_zero_and_saves_nothing(models, tmp_path, capsys, change, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n# only a comment\n", encoding="utf-8")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    values = dict(zip(SWEEP[::2], SWEEP[1::2]))
    values.update({"--models-dir": str(models), "--gallery-dir": str(tmp_path / "gallery")})
    values.update({k: {"EMPTY": str(empty), "UNWRITABLE": str(blocker / "gallery")}.get(v, v)
                   for k, v in change.items()})
    if "--prompts-file" in values:
        values.pop("--scales")
    argv = [t for k, v in values.items() if v is not None for t in (k, v)] + ["--no-hf-cache"]
    assert batch.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "gallery").exists()  # input is checked before the gallery is opened


def test_a_failure_while_saving_leaves_nothing_half_saved(models, tmp_path, monkeypatch, capsys):
    saved = []

    def save_two_then_fail(gallery, cell, group_id):
        if len(saved) == 2:
            raise OSError("disk full")
        saved.append(real_save(gallery, cell, group_id))
        return saved[-1]

    real_save = batch.save_cell
    monkeypatch.setattr(batch, "save_cell", save_two_then_fail)
    gallery_dir = tmp_path / "gallery"
    assert _run(SWEEP + ["--models-dir", str(models), "--gallery-dir", str(gallery_dir)]) == 1
    assert "nothing saved: disk full" in capsys.readouterr().err
    with Gallery.open(gallery_dir) as gallery:
        assert len(saved) == 2 and gallery.count() == 0 and gallery.groups() == []
        assert not [p for p in gallery.store.media_root.rglob("*") if p.is_file()]


def test_merge_refuses_missing_or_repeated_cells():
    def cell(i):
        return batch.SweepCell(index=i, row=0, column=i, seed=0, scale=1.0, image=None, seconds=0.0,
                               clip_score=None, adherence=None, colourfulness=0.0)

    ok = batch.merged_cells([{"cells": [cell(2), cell(3)]}, {"cells": [cell(0), cell(1)]}], 4)
    assert [c.index for c in ok] == [0, 1, 2, 3]
    with pytest.raises(batch.BatchFailed, match="expected 0..3 once each"):
        batch.merged_cells([{"cells": [cell(0), cell(1)]}, {"cells": [cell(1), cell(3)]}], 4)


def test_a_rank_that_fails_is_reported_and_nothing_is_saved(models, tmp_path, monkeypatch, capsys):
    def broken(*_):
        raise OSError("weights unreadable")

    monkeypatch.setattr(batch, "load_model", broken)
    gallery_dir = tmp_path / "gallery"
    assert batch.main(SWEEP + ["--models-dir", str(models), "--gallery-dir", str(gallery_dir)]) == 1
    assert "error: nothing saved: rank 0: OSError: weights unreadable" in capsys.readouterr().err
    with Gallery.open(gallery_dir) as gallery:
        assert gallery.count() == 0 and gallery.groups() == []

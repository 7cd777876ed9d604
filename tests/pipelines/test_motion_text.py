"""The video trainer's text tower: the shipped mini-CLIP barely separates direction words (the measured reason
the first video models ignored them), ``--text-lr-scale`` trains the tower with the video model (checkpointed,
resumed, packed as the pipeline's own text encoder, reloaded by ``--init``), and the caption-sensitivity probe
runs on a packed model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import train
from pipelines.training import motion as motion_training
from pipelines.training import motion_probe

BASE = Path("assets/models/shapes-ldm")


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("motion-text")
    pool = motion_training.build_pool(BASE / "vae", root / "pool.pt", 6, frames=4, seed=5, growth_prob=0.0)
    args = ["motion", "--latents", str(pool), "--steps", "3", "--batch-size", "2", "--warmup", "1", "--lr", "1e-2",
            "--checkpoint-every", "1", "--threads", "1", "--text-lr-scale", "1.0", "--uncond-prob", "0"]
    train.main([*args, "--run-dir", str(root / "run")])
    train.main([*args, "--run-dir", str(root / "split"), "--stop-at", "2"])
    train.main([*args, "--run-dir", str(root / "split"), "--resume"])
    return {"root": root, "pool": pool, "run": root / "run", "split": root / "split"}


def test_the_shipped_text_tower_separates_colours_far_more_than_directions():
    from transformers import CLIPTextModel, CLIPTokenizer

    text = CLIPTextModel.from_pretrained(BASE / "text_encoder", use_safetensors=True).eval()
    sep = motion_probe.text_separation(text, CLIPTokenizer.from_pretrained(BASE / "tokenizer"))
    assert sep["colours"] > 3 * sep["directions"] > 0


def _text_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "text_encoder" / "model.safetensors")


def test_trained_text_tower_is_packed_as_the_pipelines_text_encoder(text_runs):
    from diffusers import AnimateDiffPipeline

    pack = text_runs["run"] / "pack"
    mine, base = _text_state(pack), _text_state(BASE)
    assert mine.keys() == base.keys()
    changed = [k for k in mine if not torch.equal(mine[k], base[k])]
    assert any("token_embedding" in k for k in changed) and any(".layers." in k for k in changed)
    pipe = AnimateDiffPipeline.from_pretrained(pack, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving up", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert np.asarray(frames).shape == (4, 64, 64, 3) and np.isfinite(np.asarray(frames)).all()


def test_text_tower_state_is_checkpointed_and_resumed(text_runs):
    a = torch.load(text_runs["run"] / "checkpoint.pt", weights_only=True)
    b = torch.load(text_runs["split"] / "checkpoint.pt", weights_only=True)
    text_keys = [k for k in a["model"] if k.startswith(motion_training.TEXT_TOWER + ".")]
    assert text_keys and a["extra"]["text_trained"] == "1"
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], msg=key)


def test_a_runs_text_tower_cannot_change_silently(text_runs, tmp_path):
    base = ["motion", "--latents", str(text_runs["pool"]), "--steps", "4", "--batch-size", "2", "--threads", "1"]
    with pytest.raises(SystemExit, match="trained: resume with --text-lr-scale"):
        train.main([*base, "--run-dir", str(text_runs["run"]), "--resume"])
    with pytest.raises(SystemExit, match="its text tower differs"):
        train.main([*base, "--run-dir", str(tmp_path / "frozen"), "--init", str(text_runs["run"] / "pack")])
    assert not (tmp_path / "frozen" / "checkpoint.pt").exists()


def test_init_from_a_text_trained_pack_loads_its_text_encoder(text_runs):
    pack = text_runs["run"] / "pack"
    model, _, _ = motion_training.build_model(BASE, heads=4, mid=False)
    motion_training.attach_text_tower(model, BASE / "text_encoder")
    motion_training.load_init(model, pack)
    mine = {k[len("text_tower."):]: v for k, v in model.state_dict().items() if k.startswith("text_tower.")}
    packed = _text_state(pack)
    for key, value in packed.items():
        torch.testing.assert_close(mine[key], value, msg=key)


def test_probe_reports_caption_sensitivity_of_a_pack(text_runs):
    out = motion_probe.probe(text_runs["run"] / "pack", clips=2, timesteps=(500, 900), seed=1)
    assert out["frames"] == 4 and set(out["gap"]) == {500, 900}
    assert all(np.isfinite(v) for v in out["gap"].values())
    assert all(0.0 <= v <= 1.0 for v in out["true_caption_lowest"].values())
    assert all(v >= 0.0 for v in out["time_reversal_difference"].values())
    assert out["text_separation"]["colours"] > 0 and out["text_separation"]["directions"] > 0
    json.dumps(out)  # the CLI prints it


def test_probe_cli_refuses_a_folder_that_is_not_a_video_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        motion_probe.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "not a packed video model" in capsys.readouterr().err


def _batches(codes: torch.Tensor, **options):
    import argparse

    from pipelines.training.motion_data import captions_for

    args = argparse.Namespace(seed=0, batch_size=8, steps=20, uncond_prob=0.0, drop_prob=0.3, offset_noise=0.0,
                              noise_correlation=0.0, high_t_frac=0.0, high_t_min=700, **options)
    rows = {c: i for i, c in enumerate(captions_for(codes))}
    return motion_training.StepBatches(codes, (4, 4, 2, 2), rows, args, 1000)


def test_directions_restrict_the_clips_a_run_draws():
    from pipelines.worlds import motion

    codes = torch.tensor([[0, 0, 0, d, 0] for d in range(len(motion.DIRECTIONS))] * 3)
    right = motion.DIRECTIONS.index("right")
    drawn = torch.cat([_batches(codes, directions="right")[step][0] for step in range(20)])
    assert set(codes[drawn, 3].tolist()) == {right}
    everything = torch.cat([_batches(codes, directions=None)[step][0] for step in range(20)])
    assert len(set(codes[everything, 3].tolist())) == len(motion.DIRECTIONS)
    with pytest.raises(SystemExit, match="sideways not among"):
        _batches(codes, directions="right,sideways")
    with pytest.raises(SystemExit, match="no clip of the pool"):
        _batches(codes[codes[:, 3] != right], directions="right")

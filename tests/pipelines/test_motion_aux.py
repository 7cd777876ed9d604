"""The video trainer's auxiliary motion target (``--motion-aux-weight``): the path targets, the head's gradient
into the layers that read the caption and the frame order, and the head kept out of the packed pipeline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipelines import train
from pipelines.training import motion as motion_training, motion_aux
from pipelines.worlds import motion

BASE = Path("assets/models/shapes-ldm")


def test_path_targets_follow_the_direction_over_the_clip():
    codes = torch.zeros(5, 5, dtype=torch.int64)
    codes[:, 3] = torch.arange(5)  # left, right, up, down, still
    targets = motion_aux.path_targets(codes, 3)
    assert targets.shape == (5, 3, 2)
    expected = {"left": [[1, 0], [0, 0], [-1, 0]], "right": [[-1, 0], [0, 0], [1, 0]],
                "up": [[0, 1], [0, 0], [0, -1]], "down": [[0, -1], [0, 0], [0, 1]], "still": [[0, 0]] * 3}
    for i, name in enumerate(motion.DIRECTIONS):  # canvas coordinates: y grows downwards
        torch.testing.assert_close(targets[i], torch.tensor(expected[name], dtype=torch.float32))


def test_the_head_reads_the_mid_block_and_its_loss_reaches_the_motion_modules_and_cross_attention():
    model, _, _ = motion_training.build_model(BASE, heads=4, mid=False)
    aux = motion_aux.setup(model, argparse.Namespace(motion_aux_weight=0.5, motion_aux_min_t=900), 16)
    assert aux.weight == 0.5 and aux.min_t == 900
    assert motion_aux.setup(model, argparse.Namespace(motion_aux_weight=0.0, motion_aux_min_t=900), 16) is None
    g = torch.Generator().manual_seed(0)
    frames = 3
    x, cond = torch.randn(2, 4, frames, 16, 16, generator=g), torch.randn(2 * frames, 77, 128, generator=g)
    codes = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 4, 0]])
    model(x, torch.tensor([100, 100]), encoder_hidden_states=cond)
    assert aux.loss(model, codes, frames, torch.tensor([100, 100])) is None  # below --motion-aux-min-t: no term
    model(x, torch.tensor([950, 100]), encoder_hidden_states=cond)
    with torch.no_grad():  # only the clip at t >= 900 counts: clip 0, "moving right"
        expected = torch.nn.functional.mse_loss(
            getattr(model, motion_aux.HEAD)(aux._features.view(2, frames, -1)[:1]),
            motion_aux.path_targets(codes[:1], frames))
    loss = aux.loss(model, codes, frames, torch.tensor([950, 100]))
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    named = dict(model.named_parameters())
    first_motion = next(n for n in named if ".motion_modules." in n and n.endswith("proj_out.weight"))  # zero at step 0
    cross = next(n for n in named if ".attentions." in n and "attn2.to_k.weight" in n and n.startswith("down_blocks"))
    assert named[first_motion].grad.abs().sum() > 0  # frame order
    assert named[cross].grad.abs().sum() > 0  # the caption
    assert named[motion_aux.HEAD + ".0.weight"].grad.abs().sum() > 0
    assert all(p.grad is None for n, p in named.items() if n.startswith("up_blocks"))  # after the mid block
    with pytest.raises(RuntimeError, match="after the model's forward"):
        aux.loss(model, codes, frames, torch.tensor([950, 950]))


def test_a_run_with_the_aux_target_logs_it_packs_without_the_head_and_refuses_a_switch(tmp_path):
    pool = motion_training.build_pool(BASE / "vae", tmp_path / "pool.pt", 4, frames=4, seed=5, growth_prob=0.0)
    args = ["motion", "--latents", str(pool), "--steps", "2", "--batch-size", "2", "--warmup", "1",
            "--checkpoint-every", "1", "--threads", "1", "--run-dir", str(tmp_path / "run")]
    aux = ["--motion-aux-weight", "1", "--motion-aux-min-t", "0"]
    train.main([*args, *aux, "--stop-at", "1"])
    with pytest.raises(SystemExit, match="trained with --motion-aux-weight; resume with it"):
        train.main([*args, "--resume"])
    train.main([*args, *aux, "--resume"])
    records = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["path"] >= 0 for r in records)
    pack = tmp_path / "run" / "pack"
    for part in ("unet", "motion_adapter"):
        with safe_open(str(pack / part / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert not any("aux" in k for k in f.keys())
    from pipelines.evaluation.motion import load_model, sample

    model, _ = load_model(pack)
    assert sample(model, ["a red circle moving right"], [0], 3.0, 2, 4)[0].shape == (4, 64, 64, 3)

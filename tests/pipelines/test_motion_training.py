"""The text-to-video training target at tiny settings: it starts from shapes-ldm's UNet with motion
modules that are the identity (so step 0 equals the image model frame by frame), packs an
AnimateDiffPipeline folder that diffusers loads and samples, and an interrupted run resumed with
--resume ends exactly where an uninterrupted one does."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import train
from pipelines.training import motion as motion_training

BASE = Path("assets/models/shapes-ldm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("motion-train")
    pool = motion_training.build_pool(BASE / "vae", root / "pool.pt", 6, frames=4, seed=3, growth_prob=0.5)
    args = ["motion", "--latents", str(pool), "--steps", "3", "--batch-size", "2", "--warmup", "1",
            "--checkpoint-every", "1", "--threads", "1"]
    train.main([*args, "--run-dir", str(root / "run")])
    train.main([*args, "--run-dir", str(root / "split"), "--stop-at", "2"])
    train.main([*args, "--run-dir", str(root / "split"), "--resume"])
    return {"root": root, "pool": pool, "run": root / "run", "split": root / "split"}


def test_motion_modules_start_as_identity_so_the_video_model_equals_the_image_model_per_frame():
    from diffusers import UNet2DConditionModel

    model, _, _ = motion_training.build_model(BASE, heads=4, mid=False)
    unet2d = UNet2DConditionModel.from_pretrained(BASE / "unet", use_safetensors=True)
    unet2d.config.addition_embed_type = None  # the motion UNet has no pooled-text embedding
    unet2d.add_embedding = None
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 4, 3, 16, 16, generator=g), torch.randn(1, 77, 128, generator=g)
    t = torch.tensor([400])
    with torch.no_grad():
        video = model(x, t, encoder_hidden_states=cond.repeat_interleave(3, 0)).sample
        frames = unet2d(x[0].permute(1, 0, 2, 3), t.repeat(3), encoder_hidden_states=cond.repeat(3, 1, 1)).sample
    torch.testing.assert_close(video[0].permute(1, 0, 2, 3), frames, atol=1e-4, rtol=1e-4)


def test_pool_and_captions(trained):
    pool = torch.load(trained["pool"], weights_only=True)
    assert pool["latents"].shape == (6, 4, 4, 16, 16) and pool["codes"].shape == (6, 5)
    table = torch.load(trained["run"] / "captions.pt", weights_only=True)
    assert "" in table["captions"]
    assert all(c == "" or "moving" in c or "staying still" in c for c in table["captions"])


def test_packed_folder_is_an_animatediff_pipeline_that_samples(trained):
    from diffusers import AnimateDiffPipeline

    pack = trained["run"] / "pack"
    index = json.loads((pack / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline"
    assert index["motion_adapter"] == ["diffusers", "MotionAdapter"]
    assert not list(pack.rglob("*.bin"))
    pipe = AnimateDiffPipeline.from_pretrained(pack, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving right", num_frames=4, num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert np.asarray(frames).shape == (4, 64, 64, 3) and np.isfinite(np.asarray(frames)).all()
    assert json.loads((pack / "default_settings.json").read_text())["num_frames"] == 4


def test_resumed_run_ends_where_an_uninterrupted_one_does(trained):
    a = torch.load(trained["run"] / "checkpoint.pt", weights_only=True)
    b = torch.load(trained["split"] / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], msg=key)
    losses = [json.loads(line)["loss"] for line in (trained["split"] / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3


def test_init_starts_a_run_from_a_packed_folder(trained, tmp_path):
    """``--init PACK`` loads the packed spatial UNet and motion modules: 0 steps later the weights are the pack's."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    pack = trained["run"] / "pack"
    model, _, _ = motion_training.build_model(BASE, heads=4, mid=False)
    motion_training.load_init(model, pack)
    src = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(pack / "unet", use_safetensors=True),
                                      MotionAdapter.from_pretrained(pack / "motion_adapter", use_safetensors=True))
    mine, theirs = model.state_dict(), src.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], msg=key)
    fresh, _, _ = motion_training.build_model(BASE, heads=4, mid=False)
    moved = [k for k in mine if ".motion_modules." in k and not torch.equal(mine[k], fresh.state_dict()[k])]
    assert moved, "the trained pack's motion modules differ from a fresh adapter's"


def test_loss_weights_raise_the_x0_weight_to_the_floor_at_high_noise():
    from diffusers import DDPMScheduler

    from pipelines.training.ldm import SCHEDULER_CFG, min_snr_weights

    alphas = DDPMScheduler(**SCHEDULER_CFG).alphas_cumprod.float()
    t = torch.tensor([10, 300, 600, 900, 999])
    snr = alphas[t] / (1 - alphas[t])
    plain = motion_training.loss_weights(alphas, t, 5.0, 0.0)
    torch.testing.assert_close(plain, min_snr_weights(alphas, t, 5.0))
    floored = motion_training.loss_weights(alphas, t, 5.0, 0.2)
    x0_weight = floored * snr                       # epsilon MSE = SNR x x0 MSE
    assert bool((x0_weight >= 0.2 - 1e-6).all())
    torch.testing.assert_close(x0_weight, torch.maximum(snr.clamp(max=5.0), torch.tensor(0.2)))
    assert torch.equal(floored[:2], plain[:2])      # low noise (SNR above the floor): Min-SNR unchanged

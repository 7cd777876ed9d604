"""The text-to-video family on tiny random components in both real formats (ModelScope's TextToVideoSDPipeline with a
UNet3DConditionModel; AnimateDiff's UNet2DConditionModel + MotionAdapter), loaded through the registry: frames of the
asked count, one step event per step with every frame's x0 estimate, the last x0 equal to the final latents,
determinism by seed, cancellation, the model's frame limit and clear refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.devices import resolve_device
from pipelines.events import CancelFlag, GenerationCancelled
from pipelines.families import load_model
from pipelines.registry import FAMILY_MEDIA, ModelRegistry
from pipelines.video import MAX_FRAMES_3D_UNET, TextToVideo, VideoRequest, validate_video_request
from pipelines.x0 import predict_x0


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from pipelines.tiny import build_tiny_animatediff, build_tiny_text_to_video

    root = tmp_path_factory.mktemp("video-models")
    build_tiny_text_to_video(root / "tiny-t2v")
    build_tiny_animatediff(root / "tiny-animatediff", motion_max_seq_length=8)
    return ModelRegistry(builtin_dir=None, user_dir=root)


@pytest.fixture(scope="module")
def models(registry):
    return {name: load_model(registry.get(f"local/{name}"), resolve_device("cpu"))
            for name in ("tiny-t2v", "tiny-animatediff")}


def test_both_formats_register_as_the_video_family(registry):
    entries = {e.id: e for e in registry.entries(media="video")}
    assert entries["local/tiny-t2v"].pipeline_class == "TextToVideoSDPipeline"
    assert entries["local/tiny-animatediff"].pipeline_class == "AnimateDiffPipeline"
    assert {e.family for e in entries.values()} == {"text_to_video"} and FAMILY_MEDIA["text_to_video"] == "video"
    assert not registry.entries(media="image")  # video models are not offered as image models
    index = json.loads((entries["local/tiny-animatediff"].path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["motion_adapter"][1] == "MotionAdapter"
    assert index["image_encoder"] == [None, None] and index["feature_extractor"] == [None, None]


@pytest.mark.parametrize("name", ["tiny-t2v", "tiny-animatediff"])
def test_two_steps_give_frames_events_and_a_consistent_trajectory(models, name):
    model = models[name]
    events = []
    req = VideoRequest("a red circle moving right", num_frames=4, num_inference_steps=2, guidance_scale=3.0, seed=5)
    result = model.generate(req, on_step=events.append)
    assert result.frames.shape == (4, 16, 16, 3) and result.frames.dtype == np.uint8
    assert [e.step for e in events] == [0, 1] and all(e.num_steps == 2 for e in events)
    assert events[0].pred_x0.shape == (1, 4, 4, 8, 8)  # (B, C, F, h, w): every frame's x0 estimate
    assert result.pred_x0.shape == result.latents.shape == (2, 4, 4, 8, 8) and len(result.timesteps) == 2
    # DDIM (alpha at the end = 1) and DPM-Solver++ (final sigma 0) land their last step on the x0 estimate
    torch.testing.assert_close(result.pred_x0[-1], result.latents[-1], atol=1e-4, rtol=1e-4)
    # ... and the decoded last estimate is the clip
    decoded = np.stack([np.asarray(im) for im in model.decode_frames(result.pred_x0[-1])]).astype(int)
    assert np.abs(decoded - result.frames.astype(int)).mean() < 2
    assert result.params["model_id"] == f"local/{name}" and result.params["family"] == "text_to_video"
    assert result.params["num_frames"] == 4 and result.params["fps"] == 8.0


def test_the_first_x0_estimate_is_the_schedulers_own(models):
    """Step 0 by hand: the pipeline's x0 equals DDIM's pred_original_sample (guidance off, one UNet call)."""
    model = models["tiny-t2v"]
    events = []
    model.generate(VideoRequest("a blue square", num_frames=3, num_inference_steps=2, guidance_scale=1.0, seed=2),
                   on_step=events.append)
    pipe = model.pipe
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(2)
    noise = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    emb = pipe.encode_prompt("a blue square", "cpu", 1, False)[0]
    t = sched.timesteps[0]
    out = pipe.unet(sched.scale_model_input(noise, t), t, encoder_hidden_states=emb).sample
    expected = sched.step(out, t, noise).pred_original_sample
    torch.testing.assert_close(events[0].pred_x0, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predict_x0(sched, out, t, noise), expected, rtol=1e-4, atol=1e-4)


def test_same_seed_same_clip_other_seed_other_clip(models):
    model = models["tiny-animatediff"]
    req = VideoRequest("a yellow star staying still", num_frames=3, num_inference_steps=2, seed=11,
                       capture_trajectory=False)
    a, b = model.generate(req), model.generate(req)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.pred_x0 is None
    c = model.generate(VideoRequest("a yellow star staying still", num_frames=3, num_inference_steps=2, seed=12,
                                    capture_trajectory=False))
    assert not np.array_equal(a.frames, c.frames)


def test_another_scheduler_on_the_models_schedule(models):
    model = models["tiny-animatediff"]
    assert type(model.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    result = model.generate(VideoRequest("a red circle", num_frames=2, num_inference_steps=2, scheduler="ddim"))
    assert result.params["scheduler"] == "ddim" and result.params["scheduler_used"] == "ddim"
    torch.testing.assert_close(result.pred_x0[-1], result.latents[-1], atol=1e-4, rtol=1e-4)
    own = model.generate(VideoRequest("a red circle", num_frames=2, num_inference_steps=2))
    assert own.params["scheduler"] is None and own.params["scheduler_used"] == "dpmpp_2m"


def test_cancel_after_the_first_step(models):
    flag, events = CancelFlag(), []

    def on_step(event):
        events.append(event)
        flag.cancel()

    with pytest.raises(GenerationCancelled) as info:
        models["tiny-animatediff"].generate(VideoRequest("a red circle moving up", num_frames=2, num_inference_steps=3),
                                            on_step=on_step, cancel=flag)
    assert info.value.completed_steps == 1 and len(events) == 1


def test_frame_limits_come_from_the_model(models):
    assert models["tiny-animatediff"].max_frames == 8  # the motion adapter's motion_max_seq_length
    assert models["tiny-t2v"].max_frames == MAX_FRAMES_3D_UNET
    with pytest.raises(ValueError, match="Frames must be a whole number from 1 to 8, this model's limit"):
        models["tiny-animatediff"].generate(VideoRequest("a red circle", num_frames=9, num_inference_steps=1))
    with pytest.raises(ValueError, match="use the Video tab"):
        from pipelines.requests import ImageRequest

        models["tiny-animatediff"].generate(ImageRequest("a red circle"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_frames": 0}, "Frames must be"), ({"num_frames": 65}, "Frames must be"), ({"num_frames": 2.5}, "Frames"),
    ({"fps": 0}, "Frames per second"), ({"fps": -3.0}, "Frames per second"), ({"fps": 1000}, "at most 60"),
    ({"fps": float("nan")}, "Frames per second"), ({"num_inference_steps": 0}, "Steps"),
    ({"num_inference_steps": 10**6}, "Steps"), ({"guidance_scale": float("inf")}, "Guidance"),
    ({"guidance_scale": -1.0}, "Guidance"), ({"seed": -1}, "Seed"), ({"seed": True}, "Seed"),
    ({"height": 20}, "Height must be a multiple of 8"), ({"prompt": None}, "must be text"),
    ({"scheduler": "warp"}, "Unknown scheduler 'warp'")])
def test_bad_requests_are_refused_with_a_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_video_request(VideoRequest(**{"prompt": "a red circle", **changes}), max_frames=MAX_FRAMES_3D_UNET)


def test_an_animatediff_folder_saved_with_the_joined_motion_unet_loads_too(tmp_path):
    from pipelines.tiny import build_tiny_animatediff

    build_tiny_animatediff(tmp_path / "joined", unet_layout="motion")
    entry = ModelRegistry(builtin_dir=None, user_dir=tmp_path).get("local/joined")
    model = TextToVideo.load(entry, resolve_device("cpu"))
    assert json.loads((entry.path / "model_index.json").read_text())["unet"][1] == "UNetMotionModel"
    assert model.generate(VideoRequest("a red circle", num_frames=2, num_inference_steps=1)).frames.shape[0] == 2


def test_mixed_noise_prior_keeps_each_frame_standard_normal_and_correlates_frames():
    from pipelines.video import mixed_noise

    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, 6, 8, 8, generator=g)
    assert mixed_noise(base, 0.0, g) is base  # independent frames: untouched
    mixed = mixed_noise(base, 0.5, g)
    assert abs(float(mixed.std()) - 1.0) < 0.03 and abs(float(mixed.mean())) < 0.03
    a, b = mixed[:, :, 0].flatten(), mixed[:, :, 5].flatten()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - 0.5) < 0.05


def test_a_model_trained_on_mixed_noise_starts_its_clips_from_it(tmp_path):
    from pipelines.tiny import build_tiny_animatediff

    build_tiny_animatediff(tmp_path / "mixed", motion_max_seq_length=8)
    (tmp_path / "mixed" / "default_settings.json").write_text(json.dumps(
        {"guidance_scale": 2.0, "num_inference_steps": 2, "num_frames": 4, "noise_correlation": 0.9}))
    model = load_model(ModelRegistry(builtin_dir=None, user_dir=tmp_path).get("local/mixed"), resolve_device("cpu"))
    assert model.noise_correlation == 0.9
    noise = model.initial_noise(VideoRequest(prompt="x", num_frames=4, seed=3), 64, 64)  # (1, 4, 4, 8, 8)
    corr = torch.corrcoef(torch.stack([noise[0, :, 0].flatten(), noise[0, :, 3].flatten()]))[0, 1]
    assert 0.8 < float(corr) < 0.97  # 0.9 up to the sampling error of 256 values
    result = model.generate(VideoRequest(prompt="x", num_frames=4, num_inference_steps=2, seed=3, fps=8.0))
    assert result.params["noise_correlation"] == 0.9

"""The latent-diffusion family on tiny random weights: shapes, events, seeds, cancel, x0."""
import numpy as np
import pytest
import torch

from pipelines.devices import resolve_device
from pipelines.events import CancelFlag, GenerationCancelled
from pipelines.latent_diffusion import LatentDiffusion
from pipelines.previews import PreviewDecoder, make_sprite, sprite_frame
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest
from pipelines.schedulers import SCHEDULERS
from pipelines.x0 import predict_x0


def _pixels(result):
    return np.stack([np.asarray(im) for im in result.images])


def test_two_steps_shapes_and_events(tiny_sd):
    events = []
    result = tiny_sd.generate(ImageRequest("a red circle", num_inference_steps=2, seed=3, num_images=2),
                              on_step=events.append)
    assert [im.size for im in result.images] == [(16, 16), (16, 16)]
    assert result.seeds == [3, 4]
    assert [e.step for e in events] == [0, 1] and all(e.num_steps == 2 for e in events)
    assert all(e.latents.shape == (2, 4, 8, 8) and e.pred_x0.shape == (2, 4, 8, 8) for e in events)
    traj = result.trajectory
    assert traj.num_steps == 2 and traj.latents.shape == traj.pred_x0.shape == (2, 2, 4, 8, 8)
    assert traj.timesteps == tuple(e.timestep for e in events)
    params = result.params()
    assert params["model_id"] == "local/tiny-sd" and params["width"] == 16 and params["scheduler"] == "ddim"


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs_with_one_event_per_step(tiny_sd, name):
    events = []
    tiny_sd.generate(ImageRequest("a blue square", num_inference_steps=3, scheduler=name, capture_trajectory=False),
                     on_step=events.append)
    # PNDM's PLMS warm-up repeats one timestep, so it makes one model call more than asked.
    expected = 4 if name == "pndm" else 3
    assert len(events) == expected and events[-1].num_steps == expected


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_sd):
    req = ImageRequest("a green star", num_inference_steps=2, seed=11, scheduler="euler_a")
    a, b = tiny_sd.generate(req), tiny_sd.generate(req)
    c = tiny_sd.generate(ImageRequest("a green star", num_inference_steps=2, seed=12, scheduler="euler_a"))
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_batch_image_equals_single_run_with_its_seed(tiny_sd):
    batch = tiny_sd.generate(ImageRequest("a cyan cross", num_inference_steps=2, seed=5, num_images=2))
    single = tiny_sd.generate(ImageRequest("a cyan cross", num_inference_steps=2, seed=6))
    assert np.abs(_pixels(batch)[1].astype(int) - _pixels(single)[0].astype(int)).max() <= 1


@pytest.mark.parametrize("k", [1, 2])
def test_cancel_after_step_k_stops_at_k(tiny_sd, k):
    flag, events = CancelFlag(), []

    def on_step(event):
        events.append(event)
        if event.step + 1 == k:
            flag.cancel()

    with pytest.raises(GenerationCancelled) as info:
        tiny_sd.generate(ImageRequest("a pink diamond", num_inference_steps=5), on_step=on_step, cancel=flag)
    assert info.value.completed_steps == k and len(events) == k


def test_pred_x0_in_events_matches_scheduler_maths(tiny_models_dir):
    """For a v-prediction model the event's x0 equals the scheduler's own DDIM estimate."""
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    model = LatentDiffusion.load(registry.get("local/tiny-sd-v"), resolve_device("cpu"))
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    seen = []
    model.generate(ImageRequest("a red circle", num_inference_steps=3, guidance_scale=1.0, scheduler="ddim"),
                   on_step=seen.append)
    # Re-run the first step by hand with the scheduler's own step() and compare.
    pipe, sched = model.pipe, model.scheduler_for("ddim")
    sched.set_timesteps(3)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    emb = pipe.encode_prompt("a red circle", "cpu", 1, False)[0]
    t = sched.timesteps[0]
    out = pipe.unet(sched.scale_model_input(noise, t), t, encoder_hidden_states=emb).sample
    expected = sched.step(out, t, noise).pred_original_sample
    torch.testing.assert_close(seen[0].pred_x0, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predict_x0(sched, out, t, noise), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_inference_steps", 0, "Steps"),
        ("num_inference_steps", 10**6, "Steps"),
        ("guidance_scale", float("nan"), "Guidance"),
        ("guidance_scale", -1.0, "Guidance"),
        ("width", 20, "Width must be a multiple of 8"),
        ("height", 4096, "Height"),
        ("seed", 1.5, "Seed"),
        ("seed", -3, "Seed"),
        ("num_images", 0, "Batch"),
        ("scheduler", "warp-drive", "Unknown scheduler"),
    ],
)
def test_bad_parameters_are_clear_errors(tiny_sd, field, value, message):
    req = ImageRequest(**{"prompt": "a red circle", "num_inference_steps": 2, field: value})
    with pytest.raises(ValueError, match=message):
        tiny_sd.generate(req)


def test_long_prompt_runs_and_says_what_was_cut(tiny_sd):
    prompt = "a red circle " + " ".join(f"word{i}" for i in range(120))
    result = tiny_sd.generate(ImageRequest(prompt, num_inference_steps=1, capture_trajectory=False))
    assert len(result.images) == 1
    assert len(result.warnings) == 1 and "word119" in result.warnings[0] and "red" not in result.warnings[0]


def test_previews_and_sprite(tiny_sd):
    result = tiny_sd.generate(ImageRequest("a red circle", num_inference_steps=3))
    decoder = PreviewDecoder.for_vae(tiny_sd.pipe.vae)
    assert decoder.mode == "vae"  # a small VAE decodes previews exactly
    traj = result.trajectory
    xt = decoder.decode(traj.latents[:, 0])
    x0 = decoder.decode(traj.pred_x0[:, 0])
    sprite = make_sprite([xt, x0])
    assert sprite.size == (16 * 3, 16 * 2)
    assert np.array_equal(np.asarray(sprite_frame(sprite, 3, 1, 2)), np.asarray(x0[2]))
    # The last x0 estimate decodes to the final image (same latents up to the last step).
    last = np.asarray(x0[-1]).astype(int)
    assert np.abs(last - np.asarray(result.images[0]).astype(int)).mean() < 8
    linear = PreviewDecoder(tiny_sd.pipe.vae, "linear").decode(traj.pred_x0[:, 0])
    assert linear[0].size == (8, 8) and linear[0].mode == "RGB"


def test_large_vae_previews_use_taesd_when_on_disk(tiny_sd, tmp_path):
    from diffusers import AutoencoderTiny

    from pipelines.previews import find_taesd

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    latent_channels=4).save_pretrained(tmp_path / "taesd", safe_serialization=True)
    (tmp_path / "some-model").mkdir()
    found = find_taesd(tmp_path / "some-model")
    assert found == tmp_path / "taesd"
    # Pretend the tiny VAE is large: previews then come from TAESD (8x upsampling), or the linear map.
    taesd = PreviewDecoder.for_vae(tiny_sd.pipe.vae, found, small_vae_params=0)
    assert taesd.mode == "taesd"
    images = taesd.decode(torch.randn(2, 4, 8, 8))
    assert len(images) == 2 and images[0].size == (64, 64)
    assert PreviewDecoder.for_vae(tiny_sd.pipe.vae, None, small_vae_params=0).mode == "linear"
    # A small VAE with a TAESD beside it: trajectory frames stay exact, live previews use TAESD.
    both = PreviewDecoder.for_vae(tiny_sd.pipe.vae, found)
    assert (both.mode, both.live_mode) == ("vae", "taesd")
    latents = torch.randn(1, 4, 8, 8)
    exact = np.asarray(both.decode(latents)[0])
    assert exact.shape == (16, 16, 3)  # the tiny VAE's 2x
    assert np.array_equal(exact, np.asarray(PreviewDecoder(tiny_sd.pipe.vae, "vae").decode(latents)[0]))
    assert both.decode_live(latents)[0].size == (64, 64)  # TAESD's 8x
    assert PreviewDecoder.for_vae(tiny_sd.pipe.vae, None).live_mode == "vae"  # no TAESD: live = exact


def test_swapped_ddim_and_ddpm_do_not_clip_latents_unless_the_model_says_so():
    """DDIM/DDPM's class default clip_sample=True clips x0 to [-1, 1] (pixel models); a config without the
    key (a DPM-Solver one, as the builtin model ships) must not switch it on for a latent model."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from pipelines.schedulers import make_scheduler

    dpm = DPMSolverMultistepScheduler(beta_schedule="scaled_linear").config
    assert make_scheduler("ddim", dpm).config.clip_sample is False
    assert make_scheduler("ddpm", dpm).config.clip_sample is False
    pixel = DDIMScheduler(clip_sample=True).config  # a model that asks for clipping keeps it
    assert make_scheduler("ddim", pixel).config.clip_sample is True
    assert make_scheduler("euler", dpm).__class__.__name__ == "EulerDiscreteScheduler"

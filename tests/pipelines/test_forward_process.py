"""The forward-process explorer against diffusers' own schedulers, and its one-step x0 estimate on tiny models."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from pipelines import forward_process as fp
from pipelines.devices import resolve_device
from pipelines.families import load_model
from pipelines.registry import ModelRegistry

VP = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled-linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
STEPS = [0, 1, 137, 500, 998, 999]


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)


def _picture() -> Image.Image:
    y, x = np.mgrid[0:48, 0:64]
    return Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8))


@pytest.mark.parametrize("name", list(VP))
@pytest.mark.parametrize("shape", [(3, 12, 10), (2, 4, 8, 8)])
def test_x_t_is_ddpm_add_noise(name, shape):
    theirs = DDPMScheduler(num_train_timesteps=1000, **VP[name])
    x0, eps = _pair(shape)
    for t in STEPS:
        expected = theirs.add_noise(x0, eps, torch.tensor([t]))
        torch.testing.assert_close(fp.noisy(x0, eps, name, t), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 12, 10), (2, 4, 8, 8)])
def test_x_t_is_flow_scale_noise(shape):
    theirs = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    x0, eps = _pair(shape)
    for t in STEPS:
        timestep = theirs.timesteps[999 - t : 1000 - t]  # the training grid runs 1000 .. 1
        expected = theirs.scale_noise(x0, timestep, eps)
        torch.testing.assert_close(fp.noisy(x0, eps, "flow matching", t), expected, rtol=0, atol=0)
        sigma = (t + 1) / 1000  # x_t = (1 - s) x0 + s eps, s = (t + 1) / 1000
        torch.testing.assert_close(expected, (1 - sigma) * x0 + sigma * eps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(VP))
def test_coefficients_and_curves_match_alphas_cumprod(name):
    abar = DDPMScheduler(num_train_timesteps=1000, **VP[name]).alphas_cumprod.double().numpy()
    curve = fp.curves([name])[name]
    np.testing.assert_allclose(curve.alpha_bar, abar, rtol=1e-12)
    np.testing.assert_allclose(curve.log_snr, np.log(abar / (1 - abar)), rtol=1e-9)
    assert np.all(np.diff(curve.alpha_bar) < 0) and np.all(np.diff(curve.log_snr) < 0)
    for t in STEPS:
        level = fp.signal_noise(name, t)
        assert level.a**2 == pytest.approx(abar[t]) and level.b**2 == pytest.approx(1 - abar[t])
        assert level.snr == pytest.approx(abar[t] / (1 - abar[t])) and level.alpha_bar == pytest.approx(abar[t])
        x0, eps = _pair((3, 4, 4))  # the coefficients are those the scheduler applies
        torch.testing.assert_close(fp.noisy(x0, eps, name, t), level.a * x0 + level.b * eps, rtol=0, atol=1e-6)


def test_flow_curve_is_the_abar_equivalent():
    curve = fp.curves(["flow matching"])["flow matching"]
    sigma = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(curve.noise, sigma, rtol=1e-6)
    np.testing.assert_allclose(curve.alpha_bar, (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2), atol=1e-6)
    assert np.all(np.diff(curve.alpha_bar) < 0) and np.all(np.diff(curve.log_snr[:-1]) < 0)
    assert curve.log_snr[-1] == -math.inf and fp.signal_noise("flow matching", 999).snr == 0
    assert fp.signal_noise("flow matching", 499).snr == pytest.approx(1.0)  # s = 0.5: as much signal as noise


def test_the_same_t_is_a_different_noise_level_per_schedule():
    levels = {name: fp.signal_noise(name, 500).alpha_bar for name in fp.SCHEDULES}
    assert levels["linear"] < levels["scaled-linear"] < levels["cosine"]


def test_snr_matched_timestep():
    grid = fp.model_grid(DDPMScheduler(**VP["scaled-linear"]).config, flow=False)
    same = fp.match_timestep(grid, fp.signal_noise("scaled-linear", 500))
    assert int(same.timestep) == 500 and same.scale == pytest.approx(1.0)
    target = fp.signal_noise("cosine", 500)
    abar = DDPMScheduler(**VP["scaled-linear"]).alphas_cumprod.double()
    matched = fp.match_timestep(grid, target)
    m = int(matched.timestep)
    assert abs(abar[m] - target.alpha_bar) <= min(abs(abar[m - 1] - target.alpha_bar),
                                                  abs(abar[m + 1] - target.alpha_bar))
    assert 300 < m < 400 and matched.alpha_bar == pytest.approx(float(abar[m]))
    flow = fp.signal_noise("flow matching", 499)  # a = b = 0.5: the VP sample is x_t / sqrt(0.5)
    assert fp.match_timestep(grid, flow).scale == pytest.approx(1 / math.sqrt(0.5))
    flow_grid = fp.model_grid(FlowMatchEulerDiscreteScheduler().config, flow=True)
    to_flow = fp.match_timestep(flow_grid, target)  # a VP sample onto the line: divide by a + b
    assert to_flow.scale == pytest.approx(1 / (target.a + target.b), rel=1e-2)
    assert fp.match_timestep(flow_grid, fp.signal_noise("flow matching", 321)).timestep == pytest.approx(322)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fp.signal_noise("sigmoid", 5), "Unknown schedule"),
    (lambda: fp.signal_noise("linear", -1), "t must be a whole number from 0 to 999"),
    (lambda: fp.signal_noise("linear", 1000), "t must be"),
    (lambda: fp.signal_noise("cosine", 2.5), "t must be"),
    (lambda: fp.signal_noise("cosine", True), "t must be"),
    (lambda: fp.noisy(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), "cosine", "12"), "t must be"),
    (lambda: fp.noisy(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5), "cosine", 3), "same shape"),
    (lambda: fp.curves(["linear", "nope"]), "Unknown schedule"),
    (lambda: fp.draw_noise((2,), -1), "noise seed"),
])
def test_bad_input_is_a_value_error_with_a_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_view_tensor_and_display():
    big = Image.new("RGB", (1000, 500), (255, 0, 200))
    x0 = fp.view_tensor(big)
    assert x0.shape == (3, 128, 256) and x0.min() >= -1 and x0.max() <= 1
    shown = fp.to_image(x0 * 3)  # clipped for display only
    assert shown.size == (256, 128) and shown.getpixel((0, 0)) == (255, 0, 255)


def test_one_step_on_the_tiny_sd_model(tiny_sd):
    picture = _picture()
    near = fp.one_step_x0(tiny_sd, picture, "scaled-linear", 0, seed=3, prompt="a red circle")
    far = fp.one_step_x0(tiny_sd, picture, "scaled-linear", 999, seed=3, prompt="a red circle")
    for result in (near, far):
        assert result.x0_estimate.size == result.x0_true.size == result.input_image.size == (16, 16)
    assert near.model_timestep == 0 and far.model_timestep == 999 and near.condition == "prompt “a red circle”"
    # x0_hat - x0 = (b / a) (eps - eps_theta): tiny at t = 0 whatever the (random) network predicts
    assert near.latent_mse < 0.01 < far.latent_mse
    again = fp.one_step_x0(tiny_sd, picture, "scaled-linear", 0, seed=3, prompt="a red circle")
    assert again.latent_mse == near.latent_mse
    other = fp.one_step_x0(tiny_sd, picture, "scaled-linear", 0, seed=4, prompt="a red circle")
    assert other.latent_mse != near.latent_mse
    guided = fp.one_step_x0(tiny_sd, picture, "cosine", 400, seed=3, prompt="a red circle", guidance_scale=4)
    assert "guidance scale 4" in guided.condition and 0 < guided.model_timestep < 400


@pytest.mark.parametrize(("schedule", "t", "tolerance"), [
    ("scaled-linear", 600, 1e-10), ("cosine", 600, 1e-4), ("flow matching", 600, 1e-4), ("linear", 300, 1e-4)])
def test_a_perfect_noise_predictor_recovers_x0_under_any_schedule(tiny_sd, monkeypatch, schedule, t, tolerance):
    """With the true noise as the network's output the estimate is x0, up to the SNR grid's rounding: this
    checks the timestep mapping and the rescaling of x_t into the model's own schedule."""
    seen = {}

    def oracle(model, x, timestep, prompt, w):
        seen["timestep"] = timestep
        return fp.draw_noise(tuple(x.shape), 5), "oracle"

    monkeypatch.setitem(fp._OUTPUTS, "latent_diffusion", oracle)
    result = fp.one_step_x0(tiny_sd, _picture(), schedule, t, seed=5)
    assert result.latent_mse < tolerance and float(seen["timestep"]) == result.model_timestep
    unmatched = fp.signal_noise(schedule, t).alpha_bar - float(tiny_sd.pipe.scheduler.alphas_cumprod[t])
    assert (result.model_timestep == t) == (abs(unmatched) < 1e-9)


@pytest.fixture(scope="module")
def tiny(tiny_models_dir):
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    return lambda name: load_model(registry.get(f"local/{name}"), resolve_device("cpu"))


def test_one_step_on_dit_and_flow_models(tiny, monkeypatch):
    dit, flow = tiny("tiny-dit"), tiny("tiny-sd3")
    labelled = fp.one_step_x0(dit, _picture(), "linear", 100, seed=1, prompt="red circle")
    assert labelled.condition == "class label “red circle”" and labelled.x0_estimate.size == (16, 16)
    assert "unconditional" in fp.one_step_x0(dit, _picture(), "linear", 100, seed=1).condition
    result = fp.one_step_x0(flow, _picture(), "flow matching", 250, seed=1, prompt="a red circle")
    assert result.model_timestep == pytest.approx(251) and result.x0_estimate.size == (16, 16)

    def velocity_oracle(model, x, timestep, prompt, w):  # v = eps - x0
        z0 = fp._vae_encode(model.pipe.vae, fp.square_tensor(_picture(), model.native_size))
        return fp.draw_noise(tuple(x.shape), 1) - z0, "oracle"

    monkeypatch.setitem(fp._OUTPUTS, "flow_matching", velocity_oracle)
    assert fp.one_step_x0(flow, _picture(), "flow matching", 250, seed=1).latent_mse < 1e-10
    assert fp.one_step_x0(flow, _picture(), "scaled-linear", 250, seed=1).latent_mse < 1e-4


def test_one_step_refuses_other_families_and_bad_options(tiny_sd):
    class Audio:
        family, model_id = "audio_ldm", "local/tiny-audioldm"

    with pytest.raises(ValueError, match="latent-diffusion, DiT and flow-matching.*audio_ldm"):
        fp.one_step_x0(Audio(), _picture(), "linear", 3, seed=0)
    with pytest.raises(ValueError, match="guidance scale must be a number from 0 to 30"):
        fp.one_step_x0(tiny_sd, _picture(), "linear", 3, seed=0, guidance_scale=-2)
    with pytest.raises(ValueError, match="prompt must be text"):
        fp.one_step_x0(tiny_sd, _picture(), "linear", 3, seed=0, prompt=None)
    with pytest.raises(ValueError, match="Unknown schedule"):
        fp.one_step_x0(tiny_sd, _picture(), "karras", 3, seed=0)

"""Guidance research options (rescale, interval), models without guidance, the sampler grid and the
judge's graded reading."""
import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from pipelines.cfg_decomposition import decompose
from pipelines.devices import resolve_device
from pipelines.guidance_sweep import (PLAIN_CFG, GuidanceVariant, parse_step_counts, run_sampler_grid, sampler_plan,
                                      sweep_plan)
from pipelines.judges.shapes import grade, judge
from pipelines.latent_diffusion import LatentDiffusion
from pipelines.model_files import guidance_note
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest, guided_steps, validate_image_request
from pipelines.worlds.shapes import render, sample_recipe


def test_guidance_rescale_is_what_the_scheduler_received(tiny_sd):
    req = ImageRequest("a red circle", num_inference_steps=3, guidance_scale=6.0, seed=3, guidance_rescale=0.7)
    _, steps = decompose(tiny_sd, req)
    for s in steps:
        plain = s.eps_uncond + 6.0 * (s.eps_cond - s.eps_uncond)
        expected = rescale_noise_cfg(plain[None], s.eps_cond[None], guidance_rescale=0.7)[0]
        torch.testing.assert_close(s.eps_guided, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(s.eps_guided, plain, atol=1e-5)  # the option did something
    plain_run = tiny_sd.generate(ImageRequest("a red circle", num_inference_steps=3, guidance_scale=6.0, seed=3))
    rescaled = tiny_sd.generate(req)
    assert not np.array_equal(np.asarray(plain_run.images[0]), np.asarray(rescaled.images[0]))


def test_guidance_interval_uses_the_conditional_prediction_outside_it(tiny_sd):
    req = ImageRequest("a blue square", num_inference_steps=4, guidance_scale=5.0, seed=1,
                       guidance_interval=(0.5, 1.0), scheduler="euler")
    assert guided_steps(req.guidance_interval, 4) == (2, 4)
    _, steps = decompose(tiny_sd, req)
    assert [s.scale for s in steps] == [1.0, 1.0, 5.0, 5.0]
    for s in steps:
        expected = s.eps_uncond + s.scale * (s.eps_cond - s.eps_uncond)
        torch.testing.assert_close(s.eps_guided, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(steps[0].eps_guided, steps[0].eps_cond, rtol=1e-4, atol=1e-5)
    # the window is per run: a later plain run guides every step again
    _, again = decompose(tiny_sd, ImageRequest("a blue square", num_inference_steps=4, guidance_scale=5.0, seed=1,
                                               scheduler="euler"))
    assert [s.scale for s in again] == [5.0] * 4
    assert tiny_sd.pipe._guided_steps is None


@pytest.mark.parametrize("changes, message", [
    ({"guidance_rescale": 1.5}, "Guidance rescale"), ({"guidance_rescale": float("nan")}, "Guidance rescale"),
    ({"guidance_interval": (0.8, 0.2)}, "guidance interval"), ({"guidance_interval": (0, 2)}, "guidance interval"),
    ({"guidance_interval": ("a", 1)}, "guidance interval"),
])
def test_bad_guidance_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_image_request(ImageRequest("x", **changes))


def test_a_guidance_distilled_model_says_it_has_no_guidance(tiny_models_dir, tiny_sd):
    entry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir).get("local/tiny-lcm")
    assert "no classifier-free guidance" in guidance_note(entry.path)
    assert guidance_note(tiny_models_dir / "tiny-sd") is None
    lcm = LatentDiffusion.load(entry, resolve_device("cpu"))
    assert lcm.supports_guidance is False and tiny_sd.supports_guidance is True
    assert len(lcm.generate(ImageRequest("a red circle", num_inference_steps=2, guidance_scale=4.0)).images) == 1


def test_sweep_plan_with_variants_and_the_sampler_grid(tiny_sd):
    variant = GuidanceVariant(0.5, (0.25, 0.75))
    assert variant.name == "CFG, rescale 0.5, interval 25–75%" and PLAIN_CFG.name == "CFG"
    plan = sweep_plan("a red circle", [1.0, 3.0], [7, 8], steps=2, variants=[PLAIN_CFG, variant])
    assert [(p.row, p.column, p.variant, p.request.seed) for p in plan][4:6] == [
        (2, 0, variant.name, 7), (2, 1, variant.name, 7)]
    assert plan[5].request.guidance_rescale == 0.5 and plan[5].request.guidance_interval == (0.25, 0.75)
    with pytest.raises(ValueError, match="at most 64"):
        sampler_plan("x", 0, ["ddim"] * 13, [1, 2, 3, 4, 5], guidance_scale=2)
    assert parse_step_counts("4, 8 16") == [4, 8, 16]
    with pytest.raises(ValueError, match="not a step count"):
        parse_step_counts("4, 0")
    cells = list(run_sampler_grid(tiny_sd, "a red circle", 5, ["ddim", "euler"], [1, 2], guidance_scale=3.0))
    assert [(c.row, c.column, c.scheduler, c.steps) for c in cells] == [
        (0, 0, "ddim", 1), (0, 1, "ddim", 2), (1, 0, "euler", 1), (1, 1, "euler", 2)]
    single = tiny_sd.generate(ImageRequest("a red circle", num_inference_steps=2, guidance_scale=3.0, seed=5,
                                           scheduler="euler")).images[0]
    assert np.array_equal(np.asarray(single), np.asarray(cells[3].image))
    assert all(c.seconds > 0 and 0 <= c.adherence <= 1 and 0 <= c.fidelity <= 1 for c in cells)


def test_graded_judge_is_high_on_the_world_and_low_on_wrong_attributes():
    rng = np.random.default_rng(7)
    recipes = [sample_recipe(rng) for _ in range(60)]
    means = [np.mean(list(grade(render(r), r).values())) for r in recipes]
    assert np.mean(means) > 0.9 and min(means) > 0.6
    r = recipes[0]
    wrong_colour = "blue" if r.colour != "blue" else "red"
    assert grade(render(r), {"colour": wrong_colour})["colour"] < 0.5
    assert judge(render(r), {"colour": wrong_colour}) == {"colour": False}
    blank = np.full((64, 64, 3), 245, np.uint8)  # white, no object
    assert grade(blank, {"colour": "red", "shape": "circle", "background": "white"}) == {
        "colour": 0.0, "shape": 0.0, "background": 1.0}

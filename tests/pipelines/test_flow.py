"""The flow-matching family on a tiny random-weight Stable Diffusion 3 folder (no T5)."""
import numpy as np
import pytest
import torch

from pipelines.cfg_decomposition import decompose
from pipelines.devices import resolve_device
from pipelines.flow import FlowMatching
from pipelines.model_files import native_image_size
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest


@pytest.fixture(scope="module")
def tiny_flow(tiny_models_dir):
    entry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir).get("local/tiny-sd3")
    assert entry.family == "flow_matching"
    return FlowMatching.load(entry, resolve_device("cpu"))


def test_flow_steps_x0_and_determinism(tiny_flow, tiny_models_dir):
    assert native_image_size(tiny_models_dir / "tiny-sd3") == tiny_flow.native_size == 16
    events = []
    req = ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0, seed=2)
    result = tiny_flow.generate(req, on_step=events.append)
    assert [e.step for e in events] == [0, 1, 2, 3] and all(e.pred_x0 is not None for e in events)
    assert result.images[0].size == (16, 16) and result.scheduler == "FlowMatchEulerDiscreteScheduler"
    traj = result.trajectory
    assert traj.latents.shape == (4, 1, 4, 8, 8)
    # the Euler step to t = 0 lands exactly on the x0 estimate x_t - t * v
    torch.testing.assert_close(traj.pred_x0[-1], traj.latents[-1], atol=1e-5, rtol=1e-5)
    assert traj.timesteps[0] > traj.timesteps[-1]  # t runs from noise (1000) towards data
    again = tiny_flow.generate(req)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_flow_x0_estimate_is_x_t_minus_t_v(tiny_flow):
    """Step 0 by hand: the scheduler's sigma for t, the recorded velocity, x0 = x_t - sigma * v."""
    req = ImageRequest("a blue square", num_inference_steps=3, guidance_scale=2.5, seed=4)
    _, steps = decompose(tiny_flow, req)
    first = steps[0]
    sigma = tiny_flow.pipe.scheduler.sigmas[0].item()
    torch.testing.assert_close(first.x0_guided, first.sample - sigma * first.eps_guided, atol=1e-5, rtol=1e-5)
    for s in steps:
        torch.testing.assert_close(s.eps_guided, s.eps_uncond + 2.5 * s.delta, atol=1e-5, rtol=1e-4)


def test_flow_options_and_refusals(tiny_flow):
    _, steps = decompose(tiny_flow, ImageRequest("a red circle", num_inference_steps=4, guidance_scale=3.0,
                                                 guidance_interval=(0.0, 0.5)))
    assert [s.scale for s in steps] == [3.0, 3.0, 1.0, 1.0]
    torch.testing.assert_close(steps[3].eps_guided, steps[3].eps_cond, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Guidance rescale is not available"):
        tiny_flow.generate(ImageRequest("x", num_inference_steps=1, guidance_rescale=0.5))
    with pytest.raises(ValueError, match="flow-match scheduler"):
        tiny_flow.generate(ImageRequest("x", num_inference_steps=1, scheduler="ddim"))

"""CFG decomposition: the recomputed guided prediction is what the pipeline used at each step."""
import pytest
import torch

from pipelines.cfg_decomposition import decompose
from pipelines.requests import ImageRequest


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler"])
def test_guided_prediction_equals_what_the_pipeline_used(tiny_sd, scheduler):
    req = ImageRequest("a red circle", negative_prompt="blue", num_inference_steps=3, guidance_scale=5.0, seed=3,
                       scheduler=scheduler)
    result, steps = decompose(tiny_sd, req)
    assert len(steps) == 3 and result.trajectory is not None
    for s in steps:
        recomputed = s.eps_uncond + 5.0 * (s.eps_cond - s.eps_uncond)
        assert torch.allclose(recomputed, s.eps_guided, atol=1e-5)
        assert s.delta_norm > 0
    # the x0 under the guided prediction is the one the studio showed for that step
    assert torch.allclose(torch.stack([s.x0_guided for s in steps]), result.trajectory.pred_x0[:, 0], atol=1e-5)
    # and the run is the ordinary request: same image as generate()
    again = tiny_sd.generate(req).images[0]
    assert list(again.getdata()) == list(result.images[0].getdata())
    assert "scheduler_for" not in vars(tiny_sd)  # the recording wrapper is gone


def test_guidance_off_has_nothing_to_decompose(tiny_sd):
    with pytest.raises(ValueError, match="nothing to decompose"):
        decompose(tiny_sd, ImageRequest("a red circle", num_inference_steps=2, guidance_scale=1.0))

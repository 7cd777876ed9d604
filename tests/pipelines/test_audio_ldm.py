"""The AudioLDM family on tiny random AudioLDM components: sound of the asked length, one trajectory entry
per step, the last x0 estimate equal to the final latent (DDIM), determinism by seed, clear refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.audio_ldm import AudioLDM, AudioRequest, validate_audio_request
from pipelines.devices import resolve_device
from pipelines.registry import ModelEntry


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from pipelines.tiny import build_tiny_audioldm

    folder = build_tiny_audioldm(tmp_path_factory.mktemp("audio") / "tiny-audioldm")
    entry = ModelEntry(id="local/tiny-audioldm", family="audio_ldm", path=folder, source="user",
                       pipeline_class="AudioLDMPipeline")
    return AudioLDM.load(entry, resolve_device("cpu"))


def test_generates_the_asked_length_with_a_trajectory(model):
    result = model.generate(AudioRequest(prompt="a low sine tone rising", duration_s=0.5, num_inference_steps=3,
                                         guidance_scale=2.5, seed=1))
    assert result.sample_rate == 16_000 and result.samples.shape == (8000,) and np.isfinite(result.samples).all()
    assert len(result.timesteps) == 3 and result.pred_x0.shape == result.latents.shape
    assert result.x0_mels.shape[0] == 3 and result.x0_mels.shape[1:] == result.mel.shape
    # DDIM's last step lands on its own x0 estimate (alpha_prev = 1): the last x0 is the final latent.
    torch.testing.assert_close(result.pred_x0[-1], result.latents[-1], atol=1e-4, rtol=1e-4)
    assert result.params["model_id"] == "local/tiny-audioldm" and result.params["seed"] == 1


def test_same_seed_same_sound_other_seed_other_sound(model):
    req = AudioRequest(prompt="a loud high square wave", duration_s=0.5, num_inference_steps=2, seed=7,
                       capture_trajectory=False)
    a, b = model.generate(req).samples, model.generate(req).samples
    np.testing.assert_array_equal(a, b)
    c = model.generate(AudioRequest(prompt="a loud high square wave", duration_s=0.5, num_inference_steps=2, seed=8,
                                    capture_trajectory=False)).samples
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("changes", "message"), [
    ({"prompt": "  "}, "Type a prompt"), ({"duration_s": 0.0}, "Duration"), ({"duration_s": float("nan")}, "Duration"),
    ({"num_inference_steps": 0}, "Steps"), ({"guidance_scale": -1.0}, "Guidance"), ({"seed": -1}, "Seed")])
def test_bad_requests_are_refused_with_a_reason(changes, message):
    req = AudioRequest(**{"prompt": "a tone", **changes})
    with pytest.raises(ValueError, match=message):
        validate_audio_request(req)

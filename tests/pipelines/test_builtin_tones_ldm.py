"""The shipped builtin text-to-audio model (assets/models/tones-ldm): listed by the registry as an audio model,
small, with its default settings and weightless Griffin-Lim vocoder, and it does what its prompt says: "a high
sine tone" is judged high AND sine for at least 8 of 10 seeds at its default settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.registry import BUILTIN_MODELS_DIR, ModelRegistry

FOLDER = BUILTIN_MODELS_DIR / "tones-ldm"


@pytest.fixture(scope="module")
def model():
    from pipelines.audio_ldm import AudioLDM
    from pipelines.devices import resolve_device

    entry = ModelRegistry(user_dir=None, hf_cache_dir=None).get("builtin/tones-ldm")
    return AudioLDM.load(entry, resolve_device("cpu"))


@pytest.fixture(scope="module")
def defaults():
    from pipelines.default_settings import read_default_settings

    return read_default_settings(FOLDER)


def test_listed_as_an_audio_model_small_with_defaults_and_a_griffin_lim_vocoder(defaults):
    entries = {e.id: e for e in ModelRegistry(user_dir=None, hf_cache_dir=None).entries(media="audio")}
    assert entries["builtin/tones-ldm"].family == "audio_ldm"
    assert "builtin/tones-ldm" not in {e.id for e in ModelRegistry(user_dir=None, hf_cache_dir=None).entries()}
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    assert json.loads((FOLDER / "model_index.json").read_text())["vocoder"] == ["pipelines.audio_ldm",
                                                                                "GriffinLimVocoder"]
    assert not list((FOLDER / "vocoder").glob("*.safetensors"))
    assert 1 < defaults["guidance_scale"] and 1 <= defaults["num_inference_steps"] <= 50


def test_a_high_sine_tone_is_heard_high_and_sine_for_at_least_8_of_10_seeds(model, defaults):
    from pipelines.audio_ldm import AudioRequest
    from pipelines.evaluation.tones import sample
    from pipelines.judges import tones as judge

    steps, guidance = defaults["num_inference_steps"], defaults["guidance_scale"]
    clips = sample(model, ["a high sine tone"] * 10, range(10), guidance, steps)
    heard = [judge.describe(c) for c in clips]
    hits = sum(h["pitch"] == "high" and h["waveform"] == "sine" for h in heard)
    assert hits >= 8, heard
    # the batched evaluation path makes the same clip as the studio's single request with that seed
    single = model.generate(AudioRequest(prompt="a high sine tone", num_inference_steps=steps,
                                         guidance_scale=guidance, seed=3, capture_trajectory=False))
    assert single.samples.shape == clips[3].shape == (32_000,)
    np.testing.assert_allclose(single.samples, clips[3], atol=2e-3)

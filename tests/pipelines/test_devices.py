"""Device, dtype and compile choices (``--device --dtype --compile``): what is refused and why, bfloat16 on the CPU,
and ``torch.compile`` of the denoiser when a model loads (the real compile is slow on a CPU: marked ``slow``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.devices import compile_denoiser, resolve_device
from pipelines.families import ModelCache
from pipelines.registry import ModelRegistry
from pipelines.requests import ImageRequest


def test_the_cpu_defaults_to_float32_eager_and_takes_bfloat16():
    spec = resolve_device("cpu")
    assert (spec.device, spec.dtype, spec.compile_mode) == ("cpu", torch.float32, None)
    assert resolve_device("cpu", "auto", "off") == spec
    assert resolve_device("cpu", "bfloat16").dtype == torch.bfloat16
    assert resolve_device("cpu", compile_mode="max-autotune").compile_mode == "max-autotune"


@pytest.mark.parametrize(("dtype", "mode", "message"), [
    ("float16", None, "float16 on the CPU.*bfloat16"),
    ("int8", None, "Unknown dtype 'int8'"),
    (None, "fastest", "Unknown compile mode 'fastest'.*reduce-overhead"),
])
def test_bad_choices_are_refused_with_the_fix(dtype, mode, message):
    with pytest.raises(ValueError, match=message):
        resolve_device("cpu", dtype, mode)


def test_a_bfloat16_model_generates_on_the_cpu(tiny_models_dir):
    cache = ModelCache(ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir), resolve_device("cpu", "bfloat16"))
    model = cache.get("local/tiny-sd")
    assert model.pipe.unet.dtype == torch.bfloat16
    image = np.asarray(model.generate(ImageRequest("a red circle", num_inference_steps=3, seed=4)).images[0])
    assert image.shape == (model.native_size, model.native_size, 3) and image.std() > 0


def test_compile_mode_compiles_each_loaded_denoiser_in_place(tiny_models_dir, monkeypatch):
    """The wiring (the real compile is the slow test below): every model the cache loads has its denoiser
    compiled in place with the chosen mode, and an eager device compiles nothing."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    ModelCache(registry, resolve_device("cpu")).get("local/tiny-sd")
    assert calls == []
    cache = ModelCache(registry, resolve_device("cpu", compile_mode="reduce-overhead"))
    sd, dit = cache.get("local/tiny-sd"), cache.get("local/tiny-dit")
    assert calls == [("UNet2DConditionModel", {"mode": "reduce-overhead"}),
                     ("DiTTransformer2DModel", {"mode": "reduce-overhead"})]
    assert sd.denoiser is sd.pipe.unet and dit.denoiser is dit.pipe.transformer  # same modules, not wrappers
    assert not compile_denoiser(object(), resolve_device("cpu", compile_mode="default"))  # nothing to compile


@pytest.mark.slow
def test_a_compiled_model_gives_the_eager_pixels(tiny_models_dir):
    """A real ``torch.compile`` (inductor; about 2 minutes for the tiny UNet on 2 cores)."""
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    req = ImageRequest("a red circle", num_inference_steps=3, seed=4, capture_trajectory=True)
    eager = ModelCache(registry, resolve_device("cpu")).get("local/tiny-sd").generate(req)
    compiled = ModelCache(registry, resolve_device("cpu", compile_mode="default")).get("local/tiny-sd").generate(req)
    a, b = (np.asarray(r.images[0]).astype(int) for r in (eager, compiled))
    assert np.abs(a - b).max() <= 1
    assert torch.allclose(eager.trajectory.latents, compiled.trajectory.latents, atol=1e-4)

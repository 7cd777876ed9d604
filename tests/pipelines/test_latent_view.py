"""The latent compression view: sizes and ratio from the tensors, channels, reconstruction and its PSNR."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.devices import resolve_device
from pipelines.families import load_model
from pipelines.latent_view import (channel_images, compression_view, image_vae_of, prepare_image, psnr,
                                   require_image_vae, to_tensor)
from pipelines.registry import BUILTIN_MODELS_DIR, ModelRegistry
from pipelines.worlds import shapes


def world_image(seed: int) -> Image.Image:
    """A 64x64 Shapes-world render (the studio's "World sample" source)."""
    return shapes.render(shapes.sample_recipe(np.random.default_rng(seed), holdout="include"))


@pytest.fixture(scope="module")
def loaded(tiny_models_dir):
    """model name -> loaded family object (CPU, fp32), loaded on first use."""
    registry, cache = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir), {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(registry.get(f"local/{name}"), resolve_device("cpu"))
        return cache[name]
    return get


def test_ratio_equals_the_tensor_sizes(tiny_sd):
    vae, size = image_vae_of(tiny_sd)
    view = compression_view(vae, world_image(0), size)
    x = to_tensor(view.input_image)  # (1, 3, H, W): an independent encode of the shown input
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()  # (1, C, h, w)
    assert view.pixel_shape == tuple(x.shape[1:]) == (3, size, size)
    assert view.latent_shape == tuple(z.shape[1:])
    assert view.ratio == x.numel() / z.numel() == math.prod(view.pixel_shape) / math.prod(view.latent_shape)
    assert view.pixel_values == x.numel() and view.latent_values == z.numel()
    c, h, w = view.latent_shape
    assert f"{c}×{h}×{w} = {c * h * w:,} values" in view.summary() and f"{view.ratio:.1f}× fewer" in view.summary()
    # the channels show the scaled latent the denoiser sees
    assert torch.allclose(view.latent, z[0] * vae.config.scaling_factor, atol=1e-5)


def test_one_channel_image_per_latent_channel(tiny_sd):
    vae, size = image_vae_of(tiny_sd)
    view = compression_view(vae, world_image(1), size)
    assert len(view.channels) == vae.config.latent_channels == view.latent_shape[0]
    _, h, w = view.latent_shape
    for k, ch in enumerate(view.channels):
        assert ch.index == k and ch.image.mode == "L"
        assert ch.image.size[0] % w == 0 and min(ch.image.size) >= 128  # enlarged by a whole factor
        assert ch.low == pytest.approx(float(view.latent[k].min())) and ch.high == pytest.approx(
            float(view.latent[k].max()))
        pixels = np.asarray(ch.image)
        assert pixels.min() == 0 and pixels.max() == 255  # normalised per channel
        assert ch.label.startswith(f"channel {k} (")
        # nearest enlargement: shrinking back by sampling one pixel per cell gives the normalised channel
        factor = ch.image.size[0] // w
        cells = pixels[::factor, ::factor].astype(float) / 255
        unit = (view.latent[k] - ch.low) / (ch.high - ch.low)
        assert np.allclose(cells, unit.numpy(), atol=1 / 255)


def test_a_constant_channel_is_mid_gray():
    flat = torch.zeros(2, 4, 4)
    flat[1] = torch.arange(16.0).view(4, 4)
    gray, ramp = channel_images(flat, min_side=8)
    assert set(np.asarray(gray.image).ravel()) == {128} and (gray.low, gray.high) == (0.0, 0.0)
    assert ramp.image.size == (8, 8) and (ramp.low, ramp.high) == (0.0, 15.0)


def test_psnr_equals_an_independent_computation(tiny_sd):
    vae, size = image_vae_of(tiny_sd)
    view = compression_view(vae, world_image(2), size)
    a = torch.tensor(np.asarray(view.input_image), dtype=torch.float64) / 255
    b = torch.tensor(np.asarray(view.reconstruction), dtype=torch.float64) / 255
    mse = float(((a - b) ** 2).mean())
    assert view.mse == pytest.approx(mse) and view.psnr_db == pytest.approx(-10 * math.log10(mse))
    # and the reconstruction is decode(z), z the posterior mean of the input
    with torch.no_grad():
        decoded = vae.decode(vae.encode(to_tensor(view.input_image)).latent_dist.mode()).sample
    expected = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(view.reconstruction, dtype=float) - expected).max() <= 1


def test_psnr_of_known_images():
    base = Image.new("RGB", (8, 8), (100, 100, 100))
    off_by_5 = Image.new("RGB", (8, 8), (105, 105, 105))
    mse, db = psnr(base, off_by_5)
    assert mse == pytest.approx((5 / 255) ** 2) and db == pytest.approx(20 * math.log10(255 / 5))
    assert psnr(base, base) == (0.0, math.inf)
    with pytest.raises(ValueError, match="one size"):
        psnr(base, Image.new("RGB", (4, 4)))


def test_a_shift_factor_vae_is_shifted_then_scaled(loaded):
    vae, size = image_vae_of(loaded("tiny-sd3"))
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    assert shift  # the tiny SD3 VAE has one, as SD3's does
    view = compression_view(vae, world_image(3), size)
    with torch.no_grad():
        z = vae.encode(to_tensor(view.input_image)).latent_dist.mode()  # (1, C, h, w)
        decoded = vae.decode(z).sample
    assert torch.allclose(view.latent, (z[0] - shift) * scale, atol=1e-5)
    assert "shift" in view.latent_space and f"{shift:g}" in view.latent_space
    expected = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(view.reconstruction, dtype=float) - expected).max() <= 1  # the shift is undone
    assert view.ratio == math.prod(view.pixel_shape) / math.prod(view.latent_shape)


def test_dit_and_vqgan_models(loaded):
    dit_vae, dit_size = image_vae_of(loaded("tiny-dit"))
    dit = compression_view(dit_vae, world_image(4), dit_size)
    assert dit.pixel_shape == (3, 16, 16) and dit.latent_shape == (4, 8, 8) and dit.ratio == 3.0
    model = loaded("tiny-vqgan")
    vq, size = image_vae_of(model)
    view = compression_view(vq, world_image(4), size)
    grid = model.grid_size
    assert view.vae_class == "VQModel" and view.latent_shape == (vq.config.vq_embed_dim, grid, grid)
    assert view.ratio == (3 * size * size) / (vq.config.vq_embed_dim * grid * grid)
    assert view.tokens == grid * grid and view.codebook_size == vq.config.num_vq_embeddings
    codebook = vq.quantize.embedding.weight  # (K, D): every shown cell is one codebook vector
    cells = view.latent.permute(1, 2, 0).reshape(-1, view.latent_shape[0])  # (h * w, D)
    nearest = (cells[:, None] - codebook.detach()[None]).abs().amax(dim=-1).min(dim=1).values  # (h * w,)
    assert nearest.max() < 1e-6  # z + (z_q - z) rounds in the last bit


def test_the_image_is_brought_to_the_native_size_and_says_how(tiny_sd):
    vae, size = image_vae_of(tiny_sd)
    wide = Image.new("RGB", (96, 64), (200, 30, 30))
    view = compression_view(vae, wide, size)
    assert view.input_image.size == (size, size) and view.pixel_shape == (3, size, size)
    assert "centre-cropped from 96×64 to 64×64" in view.preprocessing
    assert f"to the model's native {size}×{size}" in view.preprocessing
    small, note = prepare_image(Image.new("RGB", (8, 8)), 16, 2)
    assert small.size == (16, 16) and "nearest" in note
    same, note = prepare_image(Image.new("RGB", (16, 16)), None, 8)
    assert same.size == (16, 16) and "as given" in note


def test_bad_input_is_a_clear_error(tiny_sd):
    vae, _ = image_vae_of(tiny_sd)
    with pytest.raises(ValueError, match="multiples of 2"):
        compression_view(vae, Image.new("RGB", (15, 16)))
    with pytest.raises(ValueError, match="positive multiple of 2"):
        compression_view(vae, Image.new("RGB", (16, 16)), 15)
    with pytest.raises(ValueError, match="local/tiny-audioldm has no image VAE to show"):
        image_vae_of(SimpleNamespace(family="audio_ldm", model_id="local/tiny-audioldm"))
    with pytest.raises(ValueError, match="has no image VAE"):
        require_image_vae("local/tiny-animatediff", "text_to_video")


def test_builtin_shapes_ldm_compresses_12x_and_reconstructs_well():
    from diffusers import AutoencoderKL

    folder = BUILTIN_MODELS_DIR / "shapes-ldm" / "vae"
    if not (folder / "config.json").is_file():
        pytest.skip("the builtin shapes-ldm is not shipped in this checkout")
    vae = AutoencoderKL.from_pretrained(folder).eval()
    for seed in range(4):
        view = compression_view(vae, world_image(seed), 64)
        assert view.pixel_shape == (3, 64, 64) and view.latent_shape == (4, 16, 16)
        assert view.ratio == 12.0 and view.preprocessing.startswith("used as given")
        assert view.psnr_db > 25, (seed, view.psnr_db)

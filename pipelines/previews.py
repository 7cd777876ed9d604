"""Cheap pictures of latents for live previews and trajectory scrubbing.

Small VAEs (like the builtin ones) decode trajectory frames exactly. Large VAEs (Stable Diffusion's
83M-parameter one) would make every step several times slower (AUTOMATIC1111's full-VAE
previews cost 2-2.5x), so they use TAESD when it is on disk, or a linear latent-to-RGB map.
Live previews during a run (:meth:`PreviewDecoder.decode_live`) use TAESD whenever the model has one,
even beside a small VAE: the builtin shapes-ldm ships a distilled one (``pipelines.train taesd``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

SMALL_VAE_PARAMS = 20_000_000  # decode previews with the real VAE below this size

# Linear latent -> RGB factors for the SD 1.x/2.x 4-channel VAE (as used by ComfyUI's previews).
SD_LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


class PreviewDecoder:
    """Turns model-space latents (B, C, h, w) into small RGB previews."""

    def __init__(self, vae, mode: str, taesd=None, max_side: int = 128, live_taesd: bool = False):
        if mode not in ("vae", "taesd", "linear"):
            raise ValueError(f"unknown preview mode {mode!r}")
        self.vae, self.mode, self.taesd, self.max_side = vae, mode, taesd, max_side
        self.live_mode = "taesd" if (live_taesd and taesd is not None) else mode

    @classmethod
    def for_vae(cls, vae, taesd_dir: Path | None = None, max_side: int = 128,
                small_vae_params: int = SMALL_VAE_PARAMS) -> "PreviewDecoder":
        """Exact VAE previews for small VAEs; TAESD (diffusers AutoencoderTiny folder) or linear otherwise."""
        n_params = sum(p.numel() for p in vae.parameters())
        taesd = None
        if taesd_dir is not None and (taesd_dir / "config.json").is_file():
            from diffusers import AutoencoderTiny

            taesd = AutoencoderTiny.from_pretrained(taesd_dir, use_safetensors=True).eval().to(vae.device, vae.dtype)
            # Channels-last weights: its small convolutions run in 60% of the time on a CPU (2.0 -> 1.26 ms for
            # the builtin's 16x16 latent, measured), the same numbers to float rounding.
            taesd.to(memory_format=torch.channels_last)
        if n_params <= small_vae_params:
            return cls(vae, "vae", taesd=taesd, max_side=max_side, live_taesd=True)
        return cls(vae, "taesd" if taesd is not None else "linear", taesd=taesd, max_side=max_side)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Model-space latents (already multiplied by the VAE's scaling factor), as trajectory frames."""
        return self._decode(latents, self.mode)

    @torch.no_grad()
    def decode_live(self, latents: torch.Tensor) -> list[Image.Image]:
        """A live preview during a run: TAESD whenever the model has one (a fraction of the VAE's time at
        every step), else what :meth:`decode` does."""
        if self.live_mode == self.mode:
            return self.decode(latents)
        return self._decode(latents, self.live_mode)

    def _decode(self, latents: torch.Tensor, mode: str) -> list[Image.Image]:
        if mode == "vae":
            scaled = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
            images = self.vae.decode(scaled, return_dict=False)[0]  # (B, 3, H, W)
        elif mode == "taesd":
            images = self.taesd.decode(latents.to(self.taesd.device, self.taesd.dtype), return_dict=False)[0]
        else:
            images = self._linear(latents)
        pil = to_pil(images)
        return [_shrink(im, self.max_side) for im in pil]

    def _linear(self, latents: torch.Tensor) -> torch.Tensor:
        lat = latents.float().cpu()
        if lat.shape[1] == SD_LATENT_RGB.shape[0]:
            rgb = torch.einsum("bchw,cr->brhw", lat, SD_LATENT_RGB)  # (B, 3, h, w)
        else:  # unknown latent space: show the first three channels, normalised
            rgb = lat[:, :3]
            rgb = rgb / rgb.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        return rgb


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def make_sprite(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Tile frames into one image: one row per sequence (e.g. x_t and x0), one column per step."""
    w, h = rows[0][0].size
    sprite = Image.new("RGB", (w * len(rows[0]), h * len(rows)))
    for r, frames in enumerate(rows):
        for c, frame in enumerate(frames):
            sprite.paste(frame, (c * w, r * h))
    return sprite


def sprite_frame(sprite: Image.Image, num_frames: int, row: int, index: int, num_rows: int = 2) -> Image.Image:
    """Cut frame ``index`` of row ``row`` out of a sprite made by :func:`make_sprite`."""
    if not 0 <= index < num_frames:
        raise ValueError(f"step {index + 1} is outside the trajectory's {num_frames} steps")
    w, h = sprite.width // num_frames, sprite.height // num_rows
    return sprite.crop((index * w, row * h, (index + 1) * w, (row + 1) * h))


def frames_to_array(frames: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(f) for f in frames])


def find_taesd(model_dir: Path) -> Path | None:
    """TAESD next to a model: ``<model>/taesd`` or a ``taesd`` folder beside the model folders."""
    for candidate in (model_dir / "taesd", model_dir.parent / "taesd"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def latent_heatmap(latent: torch.Tensor, vmax: float, cell: int = 64) -> Image.Image:
    """A (C, h, w) tensor as a tile of C diverging maps (blue < 0 < red, white at 0), ``vmax`` at full colour.

    Shows noise predictions and their differences, which are not images: channels side by side
    (2 x 2 for 4 channels), each upscaled to ``cell`` pixels without smoothing.
    """
    lat = latent.detach().float().cpu()
    c = lat.shape[0]
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    v = (lat / max(float(vmax), 1e-8)).clamp(-1, 1).numpy()
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    # white -> red for positive, white -> blue for negative
    rgb = np.stack([1 - neg * 0.8, 1 - (pos + neg) * 0.8, 1 - pos * 0.8], axis=-1)  # (C, h, w, 3)
    tile = Image.new("RGB", (cols * cell + (cols - 1) * 2, rows * cell + (rows - 1) * 2), (90, 90, 90))
    for k in range(c):
        im = Image.fromarray((rgb[k] * 255).round().astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST)
        tile.paste(im, ((k % cols) * (cell + 2), (k // cols) * (cell + 2)))
    return tile

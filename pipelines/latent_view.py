"""Latent compression view: what a model's VAE keeps of an image, counted and shown.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models") denoises the latent of an autoencoder instead of pixels: Stable Diffusion's VAE maps a
512x512x3 image to a 64x64x4 latent, 786,432 -> 16,384 values, 48x fewer (an 8x smaller side, 4
channels instead of 3). This module measures the same for any loaded image model:

- ``ratio = (3 * H * W) / (C * h * w)``, counted from the encoder's input tensor and the latent tensor
  it returned (not from config arithmetic);
- the latent the diffusion model sees, one grayscale picture per channel;
- the decoder's reconstruction and its PSNR = 10 * log10(1 / MSE), MSE over the [0, 1] pixels of
  the two images shown (Gonzalez & Woods, "Digital Image Processing", peak signal-to-noise ratio).

Works for a diffusers ``AutoencoderKL`` (latent diffusion, DiT, SD3: ``latents = (z - shift) * scale``)
and a ``VQModel`` (VQGAN + token prior: the code vectors of the nearest codebook entries). UI-free.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from PIL import Image

# families whose loaded object holds a VAE over RGB images (audio VAEs encode spectrograms)
IMAGE_VAE_FAMILIES = ("latent_diffusion", "dit", "flow_matching", "vqgan_prior")
CHANNEL_MIN_SIDE = 128  # channel pictures are enlarged (nearest) to at least this many pixels a side


@dataclass(frozen=True)
class LatentChannel:
    index: int  # k: which latent channel
    image: Image.Image  # grayscale, (v - low) / (high - low) per channel, enlarged with nearest pixels
    low: float  # the channel's smallest value (black)
    high: float  # the channel's largest value (white)

    @property
    def label(self) -> str:
        return f"channel {self.index} ({self.low:.2f} … {self.high:.2f})"


@dataclass(frozen=True)
class CompressionView:
    vae_class: str  # "AutoencoderKL" or "VQModel"
    input_image: Image.Image  # exactly what the encoder received, W x H
    preprocessing: str  # what was done to the given image before encoding, in words
    pixel_shape: tuple[int, int, int]  # (3, H, W) of the encoder's input tensor
    latent_shape: tuple[int, int, int]  # (C, h, w) of the latent tensor
    ratio: float  # pixel values / latent values, counted from the two tensors
    latent: torch.Tensor  # (C, h, w) float32 on the CPU: the latent the channels show
    latent_space: str  # what the latent is (scaling, shift, quantisation), in words
    channels: tuple[LatentChannel, ...]
    reconstruction: Image.Image  # decode(encode(x)), W x H
    mse: float  # mean squared error over [0, 1] pixels of input_image vs reconstruction
    psnr_db: float  # 10 * log10(1 / mse); inf for identical images
    encode_s: float
    decode_s: float
    tokens: Optional[int] = None  # VQModel: h * w codebook ids make the image
    codebook_size: Optional[int] = None  # VQModel: K codebook entries (log2 K bits per id)

    @property
    def pixel_values(self) -> int:
        return math.prod(self.pixel_shape)

    @property
    def latent_values(self) -> int:
        return math.prod(self.latent_shape)

    def summary(self) -> str:
        """E.g. ``pixels 3×64×64 = 12,288 values → latent 4×16×16 = 1,024 values: 12.0× fewer``."""
        return (f"pixels {_dims(self.pixel_shape)} = {self.pixel_values:,} values → latent "
                f"{_dims(self.latent_shape)} = {self.latent_values:,} values: {self.ratio:.1f}× fewer")


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


# -- which VAE ------------------------------------------------------------------------------------------

def require_image_vae(model_id: str, family: str) -> None:
    """ValueError unless models of ``family`` hold an image VAE (cheap: no model is loaded)."""
    if family not in IMAGE_VAE_FAMILIES:
        raise ValueError(f"{model_id} has no image VAE to show (it is a {family} model). Pick an image model: "
                         "latent diffusion, DiT, flow matching (SD3) or VQGAN.")


def image_vae_of(model: Any) -> tuple[Any, int]:
    """(the VAE, the model's native image side in pixels) of a loaded family object."""
    family = getattr(model, "family", type(model).__name__)
    require_image_vae(getattr(model, "model_id", type(model).__name__), family)
    vae = model.vqvae if family == "vqgan_prior" else model.pipe.vae
    return vae, int(model.native_size)


def is_vq(vae: Any) -> bool:
    return hasattr(vae, "quantize")


def downsampling(vae: Any) -> int:
    """How many pixels a latent cell covers per side: 2 per encoder block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# -- the image ------------------------------------------------------------------------------------------

def prepare_image(image: Image.Image, size: Optional[int], multiple: int) -> tuple[Image.Image, str]:
    """The RGB image to encode and what was done to it. ``size``: square side to bring it to (None: as is)."""
    image = image.convert("RGB")
    w, h = image.size
    if size is None:
        if w % multiple or h % multiple:
            raise ValueError(f"The image is {w}×{h}; this VAE needs sides that are multiples of {multiple}. "
                             "Give a size to resize to.")
        return image, f"used as given ({w}×{h})"
    if size <= 0 or size % multiple:
        raise ValueError(f"Size must be a positive multiple of {multiple} (got {size}).")
    steps = []
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        steps.append(f"centre-cropped from {w}×{h} to {side}×{side}")
    side = image.size[0]
    if side != size:
        whole = size % side == 0  # enlarging by a whole factor: copy pixels, invent nothing
        image = image.resize((size, size), Image.Resampling.NEAREST if whole else Image.Resampling.LANCZOS)
        steps.append(f"resized from {side}×{side} to the model's native {size}×{size} "
                     f"({'nearest' if whole else 'Lanczos'})")
    return image, ", then ".join(steps) if steps else f"used as given (the model's native {size}×{size})"


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) in [-1, 1], the VAE's input range."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    return (x.float() / 127.5 - 1.0)[None]  # (1, 3, H, W)


def to_image(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> RGB PIL (clamped, rounded to 8 bits)."""
    arr = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, H, W)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())


def psnr(reference: Image.Image, test: Image.Image) -> tuple[float, float]:
    """(MSE, PSNR in dB) over [0, 1] pixels: PSNR = 10 * log10(1 / MSE) (peak value 1); inf if equal."""
    a = np.asarray(reference.convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(test.convert("RGB"), dtype=np.float64) / 255.0
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs images of one size (got {reference.size} and {test.size}).")
    mse = float(np.mean((a - b) ** 2))
    return mse, (math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse))


def channel_images(latent: torch.Tensor, min_side: int = CHANNEL_MIN_SIDE) -> tuple[LatentChannel, ...]:
    """(C, h, w) -> one grayscale picture per channel, normalised per channel, enlarged with nearest pixels."""
    _, h, w = latent.shape
    factor = max(1, math.ceil(min_side / max(h, w)))
    out = []
    for k, c in enumerate(latent.float()):  # c: (h, w)
        low, high = float(c.min()), float(c.max())
        unit = (c - low) / (high - low) if high > low else torch.full_like(c, 0.5)
        gray = Image.fromarray((unit * 255).round().to(torch.uint8).numpy(), mode="L")
        out.append(LatentChannel(k, gray.resize((w * factor, h * factor), Image.Resampling.NEAREST), low, high))
    return tuple(out)


# -- encode and decode ----------------------------------------------------------------------------------

@contextmanager
def _fp32_if_needed(vae: Any) -> Iterator[None]:
    """An fp16 VAE marked ``force_upcast`` overflows in fp16: run it in fp32 meanwhile, as diffusers' pipelines do."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def _shift(vae: Any) -> float:
    shift = getattr(vae.config, "shift_factor", None)
    return 0.0 if shift is None else float(shift)


def _encode_kl(vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(1, 3, H, W) -> the scaled latent (1, C, h, w): ``(mode(q(z|x)) - shift) * scale``."""
    z = vae.encode(x).latent_dist.mode()  # (1, C, h, w), the posterior's mean: deterministic
    scale, shift = float(vae.config.scaling_factor), _shift(vae)
    words = (f"the posterior mean z, shifted and scaled as the denoiser sees it: (z − {shift:g}) × {scale:.4g}"
             if shift else f"the posterior mean z, scaled as the denoiser sees it: z × {scale:.4g}")
    return (z - shift) * scale, words


def _decode_kl(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    z = latent / float(vae.config.scaling_factor) + _shift(vae)  # undo the scaling: (1, C, h, w)
    return vae.decode(z).sample  # (1, 3, H, W)


def _encode_vq(vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(1, 3, H, W) -> the code vectors (1, D, h, w) of the nearest codebook entries."""
    h = vae.encode(x).latents  # (1, D, h, w), before quantisation
    z_q, _, _ = vae.quantize(h)  # each cell replaced by its nearest codebook vector
    k = int(vae.config.num_vq_embeddings)
    return z_q, (f"the nearest codebook vectors (one of {k} per cell); the token prior writes only their ids, "
                 f"{math.log2(k):g} bits each")


def _decode_vq(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    return vae.decode(latent, force_not_quantize=True).sample  # already quantised: (1, 3, H, W)


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    if isinstance(out, tuple):
        out = (out[0].detach().float().cpu(), *out[1:])  # to the CPU: also waits for the device
    else:
        out = out.detach().float().cpu()
    return out, time.perf_counter() - start


@torch.no_grad()
def compression_view(vae: Any, image: Image.Image, size: Optional[int] = None) -> CompressionView:
    """Encode ``image`` (brought to ``size`` x ``size`` when given), show its latent, decode it back.

    Raises ``ValueError`` for an image the VAE cannot take."""
    vq = is_vq(vae)
    picture, preprocessing = prepare_image(image, size, downsampling(vae))
    x = to_tensor(picture)  # (1, 3, H, W) in [-1, 1]
    with _fp32_if_needed(vae):
        x_in = x.to(vae.device, vae.dtype)
        (latent, words), encode_s = _timed(_encode_vq if vq else _encode_kl, vae, x_in)  # (1, C, h, w)
        if not torch.isfinite(latent).all():
            raise ValueError(f"The VAE's latent has NaN or infinite values (it runs in {vae.dtype}); "
                             "run the studio in float32 (e.g. --device cpu).")
        recon, decode_s = _timed(_decode_vq if vq else _decode_kl, vae, latent.to(vae.device, vae.dtype))
    reconstruction = to_image(recon)  # (H, W) RGB, 8 bits
    mse, psnr_db = psnr(picture, reconstruction)
    latent = latent[0]  # (C, h, w)
    c, h, w = latent.shape
    return CompressionView(
        vae_class=type(vae).__name__, input_image=picture, preprocessing=preprocessing,
        pixel_shape=tuple(x.shape[1:]), latent_shape=(c, h, w), ratio=x[0].numel() / latent.numel(),
        latent=latent, latent_space=words, channels=channel_images(latent), reconstruction=reconstruction,
        mse=mse, psnr_db=psnr_db, encode_s=encode_s, decode_s=decode_s,
        tokens=h * w if vq else None, codebook_size=int(vae.config.num_vq_embeddings) if vq else None)

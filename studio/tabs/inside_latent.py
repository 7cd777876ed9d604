"""Inside the Model, latent compression: the selected model's VAE on one image, counted and shown.

The work is :func:`pipelines.latent_view.compression_view`; this module picks the image and the VAE,
and turns the result into what the page shows.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import gradio as gr
from PIL import Image

from pipelines.latent_view import CompressionView, compression_view, image_vae_of, require_image_vae

from ..image_sources import SOURCES, pick_image
from ..services import Services
from .generate import model_choices
from .how import how_panel

HOW = """A latent diffusion model does not denoise pixels. Its VAE's encoder first squeezes the image into a small
**latent** (C channels of h×w numbers), the denoiser works there for every step, and the decoder turns the final
latent back into pixels. Stable Diffusion's VAE maps 512×512×3 = 786,432 pixel values to a 64×64×4 = 16,384-value
latent, 48× fewer; the builtin shapes-ldm maps 64×64×3 = 12,288 values to 16×16×4 = 1,024, 12× fewer (its side
shrinks 4×, not 8×). Each denoising step is cheaper by about that factor, and the VAE, trained once, keeps what the
eye needs (edges, colours) while the diffusion model spends its capacity on what the image shows.

**ratio = (3·H·W) / (C·h·w)**  (the summary line: pixel tensor 3×H×W, latent tensor C×h×w, both counted from the
tensors the VAE received and returned)

**PSNR = 10·log₁₀(1 / MSE)**  dB, MSE the mean squared difference of the *Input* and *Reconstruction* pixels on
[0, 1] (higher is closer; above ~30 dB differences are hard to see).

The *Latent channels* are the latent the denoiser sees: the encoder's posterior mean z times the VAE's
scaling_factor (SD3-style VAEs also subtract a shift_factor first), so the channels have roughly unit spread. Each
is drawn in gray from its own minimum (black) to its maximum (white), the numbers in its label; one latent cell
covers a block of pixels. A VQGAN (token models) shows the codebook vectors its cells snapped to; the prior writes
only their ids. The *Input* is the image brought to the model's native size (the summary says how), so the
reconstruction can be compared pixel for pixel."""


def compress(services: Services, model_id: Any, source: Any, upload: Optional[Image.Image], gen_id: Any,
             world_seed: Any) -> tuple[CompressionView, str]:
    """(the view, where the image came from). Raises ``ValueError`` (``ModelLoadError`` too) with a message."""
    if not model_id:
        raise ValueError("Pick a model first.")
    entry = services.registry.get(str(model_id))  # unknown id: ModelLoadError
    require_image_vae(entry.id, entry.family)  # before loading anything
    image, described = pick_image(services.gallery, source, upload, gen_id, world_seed)
    vae, size = image_vae_of(services.models.get(entry.id))
    return compression_view(vae, image, size), described


def summary_markdown(view: CompressionView, model_id: str, described: str) -> str:
    psnr = "∞ (identical)" if math.isinf(view.psnr_db) else f"{view.psnr_db:.2f} dB"
    lines = [f"**{view.summary()}**",
             f"- model `{model_id}`, its {view.vae_class}; image: {described}, {view.preprocessing}",
             f"- latent shown: {view.latent_space}",
             f"- reconstruction PSNR {psnr} (MSE {view.mse:.6f} on [0, 1] pixels)",
             f"- encode {view.encode_s * 1000:.0f} ms, decode {view.decode_s * 1000:.0f} ms"]
    if view.tokens is not None:
        bits = view.tokens * math.log2(view.codebook_size)
        lines.append(f"- as tokens: {view.tokens} ids from a codebook of {view.codebook_size} = {bits:,.0f} bits, "
                     f"against {view.pixel_values * 8:,} bits of 8-bit pixels")
    return "\n".join(lines)


def view_outputs(view: CompressionView, model_id: str, described: str) -> tuple:
    """(summary, input image, reconstruction, channel gallery) as the page shows them."""
    return (summary_markdown(view, model_id, described), view.input_image, view.reconstruction,
            [(c.image, c.label) for c in view.channels])


def build_latent_section(services: Services) -> None:
    how_panel(HOW, "latent-how")
    with gr.Row():
        model = gr.Dropdown(model_choices(services), value=services.default_model_id(), label="Model",
                            elem_id="latent-model")
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Image source", elem_id="latent-source")
    with gr.Row():
        world_seed = gr.Number(value=0, precision=0, label="World seed (World sample)", elem_id="latent-seed")
        gen_id = gr.Number(value=None, precision=0, label="Gallery item number (Gallery item)",
                           elem_id="latent-gen-id")
        upload = gr.Image(type="pil", label="Upload (Upload)", height=160, elem_id="latent-upload")
    run = gr.Button("Compress", variant="primary", elem_id="latent-run")
    summary = gr.Markdown("Pick a model and an image, then press Compress.", elem_id="latent-summary")
    with gr.Row():
        original = gr.Image(label="Input x (what the encoder saw)", type="pil", format="png", interactive=False,
                            height=256, elem_classes=["pixel-view"], elem_id="latent-input")
        recon = gr.Image(label="Reconstruction decode(encode(x)) (its PSNR is in the summary)", type="pil",
                         format="png", interactive=False, height=256, elem_classes=["pixel-view"],
                         elem_id="latent-recon")
    channels = gr.Gallery(label="Latent channels (scaled latent, each from its min to its max)", columns=4,
                          height=220, type="pil", format="png", object_fit="contain", elem_id="latent-channels")

    def on_compress(model_id, source_v, upload_v, gen_id_v, seed_v):
        try:
            view, described = compress(services, model_id, source_v, upload_v, gen_id_v, seed_v)
        except (ValueError, RuntimeError) as exc:  # ModelLoadError is a ValueError; RuntimeError: torch
            raise gr.Error(str(exc)) from None
        return view_outputs(view, model_id, described)

    run.click(on_compress, [model, source, upload, gen_id, world_seed], [summary, original, recon, channels],
              api_name="latent_compression", concurrency_limit=1,
              concurrency_id=f"model-{services.device.device}")

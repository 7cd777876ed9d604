"""Inside the Model tab: what the seeds teach, shown on the loaded model and the user's own image or prompt.

Three sections, each in its own module: the forward process (x_t, the noise schedules, one-step x0 estimates),
cross-attention maps per prompt token, and the latent compression of the model's VAE.
"""
from __future__ import annotations

import gradio as gr

from ..services import Services


def build_inside_tab(services: Services):
    """Build the tab; returns the event that fires after a recorded generation was saved to the gallery."""
    # Imported here, not at the top, so that `import studio.app` stays free of torch and diffusers: the sections'
    # modules import them (pipelines.attention_maps, latent_view, forward_process), and the forward-process
    # section computes its first x_t and schedule plot with them while it is built.
    from .inside_attention import build_attention_section
    from .inside_forward import build_forward_section
    from .inside_latent import build_latent_section

    with gr.Tabs():
        with gr.Tab("Forward process", id="inside-forward"):
            build_forward_section(services)
        with gr.Tab("Cross-attention maps", id="inside-attention"):
            recorded = build_attention_section(services)
        with gr.Tab("Latent compression", id="inside-latent"):
            build_latent_section(services)
    return recorded

"""Builds the studio's gr.Blocks: one function per tab, services passed in explicitly."""
from __future__ import annotations

import gradio as gr

from .services import Services
from .tabs.gallery import build_gallery_tab
from .tabs.audio import build_audio_tab
from .tabs.embedding_map import HEAD as EMBEDDING_HEAD, build_embedding_map_tab
from .tabs.generate import build_generate_tab
from .tabs.guidance import build_guidance_tab
from .tabs.inside import build_inside_tab
from .tabs.train import build_train_tab
from .tabs.video import build_video_tab

TITLE = "Multimodal Studio"
# Small models make small images (64 px): show them large and crisp instead of tiny or blurred.
CSS = """
.pixel-view img { width: 100% !important; height: 100% !important; object-fit: contain; image-rendering: pixelated; }
#gallery-grid img, #generate-result img { image-rendering: pixelated; }
#video-player video, #gallery-video video, #video-frame-strip img { image-rendering: pixelated; }
"""
HEAD = EMBEDDING_HEAD  # scripts for launch(head=...): the embedding map's hover thumbnails and clicks


def build_app(services: Services) -> gr.Blocks:
    # Here, not at the top: the module's constants come from pipelines.embedding_space, which imports torch.
    from .tabs.tokenizer_viewer import build_tokenizer_viewer_tab

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}\nOffline-first diffusion studio · device: **{services.device.device}** "
                    f"({services.device.dtype_name}) · gallery: `{services.settings.gallery_dir}`")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = build_generate_tab(services)
            with gr.Tab("Guidance Explorer", id="guidance"):
                guidance = build_guidance_tab(services, tabs)
            with gr.Tab("Embedding Map", id="embedding"):
                embedding = build_embedding_map_tab(services)
            with gr.Tab("Tokenizer Viewer", id="tokenizer"):
                build_tokenizer_viewer_tab(services)
            with gr.Tab("Audio", id="audio"):
                audio = build_audio_tab(services)
            with gr.Tab("Video", id="video"):
                video = build_video_tab(services)
            with gr.Tab("Inside the Model", id="inside"):
                recorded = build_inside_tab(services)
            with gr.Tab("Train", id="train"):
                train = build_train_tab(services, generate)
            with gr.Tab("Gallery", id="gallery"):
                gallery = build_gallery_tab(services, generate, tabs, guidance)
        refresh_fn, refresh_inputs, refresh_outputs = gallery["refresh"]
        open_fn, open_outputs = gallery["open"]
        embedding.open_button.click(open_fn, embedding.clicked, open_outputs, api_name="open_generation",
                                    concurrency_limit=None)
        choices_fn, choices_outputs = gallery["choices"]
        # After every finished generation and on every page load the gallery shows the newest items.
        for finished in [generate.finished, generate.compared, *guidance.finished, audio.finished,
                         video.finished, recorded]:
            finished.then(refresh_fn, refresh_inputs, refresh_outputs, api_visibility="private",
                          concurrency_limit=None)
        demo.load(refresh_fn, refresh_inputs, refresh_outputs, api_visibility="private", concurrency_limit=None)
        demo.load(choices_fn, None, choices_outputs, api_visibility="private", concurrency_limit=None)
        reconnect_fn, reconnect_output = train["reconnect"]
        demo.load(reconnect_fn, None, reconnect_output, api_visibility="private", concurrency_limit=None)
        demo.load(guidance.saved_choices, None, guidance.saved, api_visibility="private", concurrency_limit=None)
    demo.queue(default_concurrency_limit=8)
    return demo

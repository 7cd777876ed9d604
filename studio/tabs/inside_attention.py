"""Inside the Model · Cross-attention maps: generate with recording on, then one heatmap per prompt token.

The run is a real generation (saved to the gallery like any other); the maps are the UNet's cross-attention
probabilities recorded through diffusers' attention processors (:mod:`pipelines.attention_maps`), averaged
over heads and over the layers of the chosen resolution, at one recorded step or averaged over all of them.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional

import gradio as gr

from pipelines.attention_maps import (DEFAULT_PROMPT, AttentionMaps, AttentionRecorder, heatmap_overlay,
                                      peak_quadrant)
from pipelines.registry import ModelLoadError

from ..forms import whole_number
from ..generation import build_request, decode_trajectory, save_result
from ..services import Services
from .generate import model_defaults
from .how import how_panel

log = logging.getLogger(__name__)
CROSS_ATTENTION_FAMILIES = ("latent_diffusion",)
MAX_RECORD_EVERY = 1000
HOW = """Text reaches the denoiser through *cross-attention*: at every image position of a
UNet block the query **Q = W_q·h** is compared with a key **K = W_k·c** for each token of the encoded prompt c, and
**A = softmax(Q·Kᵀ/√d)** says how much of each token's value **V = W_v·c** that position takes in. Each row of A
sums to 1 over the text encoder's positions (start token, your words, end and padding tokens). Press **Generate
and record** to run the model with its cross-attention layers reporting A; each heatmap is A's column for one
prompt token, averaged over heads and over the layers at the chosen **Resolution**, at the chosen **Step** (or
averaged over all recorded steps), overlaid on the result. Bright = that token is attended to there. Much of A
goes to the start token (a "no-op" sink); the summary line gives that share."""


def _model_choices(services: Services) -> list[tuple[str, str]]:
    return [(e.label, e.id) for e in services.registry.entries() if e.family in CROSS_ATTENTION_FAMILIES]


def _res_label(hw: tuple[int, int], layers: int) -> str:
    return f"{hw[0]}×{hw[1]} ({layers} layer{'s' if layers != 1 else ''})"


def _parse_res(label: Any, maps: AttentionMaps) -> tuple[int, int]:
    for hw in maps.resolutions:
        if label == _res_label(hw, maps.layers[hw]):
            return hw
    return maps.resolutions[0]


def render_maps(maps: Optional[AttentionMaps], image: Any, res_label: Any, average: bool, step: Any,
                shared_scale: bool) -> tuple[list[tuple[Any, str]], str]:
    """The per-token overlays and a caption for the chosen resolution and step."""
    if maps is None or image is None:
        return [], "No maps yet: press **Generate and record**."
    hw = _parse_res(res_label, maps)
    index = min(max(int(step or 1), 1), len(maps.steps)) - 1
    chosen = None if average else maps.steps[index]
    heat = maps.token_maps(hw, chosen)  # (T, h, w), raw probabilities
    items = []
    for (pos, text), h in zip(maps.prompt_tokens, heat):
        low, high = (float(heat.min()), float(heat.max())) if shared_scale else (float(h.min()), float(h.max()))
        items.append((heatmap_overlay(image, h, low, high),
                      f"{text} · peak {peak_quadrant(h)} · max {float(h.max()):.3f}"))
    when = "averaged over all recorded steps" if average else f"step {chosen + 1} of the run"
    caption = (f"{len(items)} prompt tokens · {_res_label(hw, maps.layers[hw])} · {when} · "
               f"{maps.special_share(hw, chosen):.0%} of the attention goes to the start/end/padding tokens · "
               f"{'one colour scale for all tokens' if shared_scale else 'each map scaled to its own min–max'}")
    return items, caption


def build_attention_section(services: Services) -> Any:
    """Build the section; returns the event that fires after a recorded run was saved."""
    choices = _model_choices(services)
    default = services.default_model_id()
    default = default if default in [c[1] for c in choices] else (choices[0][1] if choices else None)
    d, _ = model_defaults(services, default)
    how_panel(HOW, "attention-how")
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(choices, value=default, label="Model (UNet with cross-attention)",
                                elem_id="attention-model")
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, elem_id="attention-prompt")
            with gr.Row():
                steps = gr.Slider(1, 100, value=d["num_inference_steps"], step=1, label="Steps")
                guidance = gr.Slider(0, 20, value=d["guidance_scale"], step=0.5, label="Guidance scale")
            with gr.Row():
                seed = gr.Number(0, label="Seed (-1 = random)", precision=0)
                every = gr.Number(1, label="Record every k-th step", precision=0, minimum=1)
            run = gr.Button("Generate and record", variant="primary", elem_id="attention-run")
            summary = gr.Markdown("", elem_id="attention-summary")
            result = gr.Image(label="Result", type="pil", height=256, interactive=False, elem_classes=["pixel-view"])
        with gr.Column(scale=3):
            with gr.Row():
                resolution = gr.Dropdown([], label="Resolution (layers averaged)", elem_id="attention-resolution")
                average = gr.Checkbox(True, label="Average over recorded steps")
                shared = gr.Checkbox(False, label="One colour scale for all tokens")
            step = gr.Slider(1, 2, value=1, step=1, label="Step (of the recorded steps)", elem_id="attention-step")
            caption = gr.Markdown("No maps yet: press **Generate and record**.", elem_id="attention-caption")
            heatmaps = gr.Gallery(label="One map per prompt token", columns=4, height=520, elem_id="attention-maps",
                                  object_fit="contain", interactive=False)
    maps_state, image_state = gr.State(None), gr.State(None)

    def generate_and_record(model_id, prompt_v, steps_v, guidance_v, seed_v, every_v):
        try:
            if not model_id:
                raise ValueError("Pick a model with cross-attention (a latent-diffusion UNet).")
            form = build_request(prompt_v, "", steps_v, guidance_v, seed_v, 8, 8, None, 1)
            req = replace(form, width=None, height=None)  # the model's native size
            every_k = whole_number(every_v, "Record every k-th step")
            if not 1 <= every_k <= MAX_RECORD_EVERY:
                raise ValueError(f"Record every k-th step: k must be a whole number from 1 to {MAX_RECORD_EVERY}.")
            if services.registry.get(model_id).family not in CROSS_ATTENTION_FAMILIES:
                raise ValueError(f"{model_id} has no UNet cross-attention to record; pick a latent-diffusion model.")
            model = services.models.get(model_id)
            recorder = AttentionRecorder(steps=range(0, req.num_inference_steps, every_k))
            out = model.generate(req, attention=recorder)
        except (ValueError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None
        frames = decode_trajectory(model.preview, out, 0)
        gen_id = save_result(services.gallery, out, [frames], extra_params={"attention_recorded": True})[0]
        maps = out.attention
        labels = [_res_label(hw, maps.layers[hw]) for hw in maps.resolutions]
        items, text = render_maps(maps, out.images[0], labels[0], True, 1, False)
        note = (f"Saved as gallery item #{gen_id} · seed {out.seeds[0]} · {out.duration_s:.2f} s · recorded "
                f"{len(maps.steps)} of {req.num_inference_steps} steps at {', '.join(labels)}")
        return (out.images[0], note, maps, out.images[0], gr.Dropdown(choices=labels, value=labels[0]),
                gr.Checkbox(value=True), gr.Slider(1, max(len(maps.steps), 2), value=len(maps.steps), step=1),
                items, text)

    finished = run.click(generate_and_record, [model, prompt, steps, guidance, seed, every],
                         [result, summary, maps_state, image_state, resolution, average, step, heatmaps, caption],
                         api_name="attention_maps", concurrency_limit=1,
                         concurrency_id=f"model-{services.device.device}")

    def redraw(maps, image, res_label, average_v, step_v, shared_v):
        return render_maps(maps, image, res_label, bool(average_v), step_v, bool(shared_v))

    def show_step(maps, image, res_label, step_v, shared_v):
        """Moving the step slider shows that one step (and unticks the average)."""
        return (*render_maps(maps, image, res_label, False, step_v, bool(shared_v)), gr.Checkbox(value=False))

    def on_model(model_id):
        """A picked model brings its own default steps and guidance."""
        defaults, _ = model_defaults(services, model_id)
        return gr.Slider(value=defaults["num_inference_steps"]), gr.Slider(value=defaults["guidance_scale"])

    model.input(on_model, model, [steps, guidance], queue=False, api_visibility="private")
    view = [maps_state, image_state, resolution, average, step, shared]
    for control in (resolution, average, shared):
        control.input(redraw, view, [heatmaps, caption], api_visibility="private", show_progress="hidden")
    step.input(show_step, [maps_state, image_state, resolution, step, shared], [heatmaps, caption, average],
               api_visibility="private", show_progress="hidden")
    return finished

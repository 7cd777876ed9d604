"""The Guidance Explorer's CFG decomposition section: one cell, step by step, as pictures."""
from __future__ import annotations

import gradio as gr

from pipelines.requests import ImageRequest

from ..services import Services
from ..sweeps import build_sweep_spec, decomposition_frames, plot_frame
from .studies import load_guided_model


def _step_view(frames, step) -> list:
    if frames is None:
        return ["Pick a cell and press Decompose.", *[None] * 7]
    k = min(max(int(step or 1), 1), len(frames.captions)) - 1
    maps, est = frames.maps[k], frames.estimates[k]
    return [frames.captions[k], maps["uncond"], maps["cond"], maps["delta"], maps["guided"], est["uncond"],
            est["cond"], est["guided"]]


def build_decomposition(services: Services, form: list, concurrency: dict) -> tuple[gr.Number, gr.Number]:
    """The accordion and its events. ``form``: model, prompt, negative, steps, scheduler, rescale,
    interval start, interval end, compare-plain (the sweep's inputs). Returns (seed, scale) inputs,
    which a click on a grid cell fills in."""
    with gr.Accordion("CFG decomposition of one cell: ε̃ = ε_u + w · (ε_c − ε_u), step by step", open=False):
        with gr.Row():
            seed = gr.Number(value=0, label="Seed", precision=0)
            scale = gr.Number(value=7.5, label="Guidance scale w (> 1)")
            run = gr.Button("Decompose", variant="primary", elem_id="guidance-decompose")
        step = gr.Slider(1, 2, value=1, step=1, label="Step")
        caption = gr.Markdown("Pick a cell (click it in the grid) and press Decompose.",
                              elem_id="guidance-decomp-caption")
        gr.Markdown("Noise predictions per latent channel (blue < 0 < red, one colour scale per step):")
        with gr.Row():
            maps = [gr.Image(label=label, type="pil", height=150, interactive=False, elem_classes=["pixel-view"],
                             format="png")
                    for label in ("ε_u (unconditional)", "ε_c (conditional)", "w · (ε_c − ε_u)",
                                  "ε̃ (what the scheduler received)")]
        gr.Markdown("The clean image each prediction implies at this step (x0 estimate, decoded):")
        with gr.Row():
            x0 = [gr.Image(label=label, type="pil", height=150, interactive=False, elem_classes=["pixel-view"],
                           format="png")
                  for label in ("x0 from ε_u", "x0 from ε_c", "x0 from ε̃ (guided)")]
        norm = gr.LinePlot(None, x="step", y="value", color="series",
                           title="How hard the prompt pulls: RMS of (ε_c − ε_u) per step", height=220,
                           elem_id="guidance-delta-norm")
    frames_state = gr.State(None)

    def decompose_fn(model_id, prompt_v, negative_v, steps_v, sched_v, rescale_v, lo_v, hi_v, _plain_v, seed_v,
                     scale_v):
        from pipelines.cfg_decomposition import decompose  # imports torch: loaded on the first Decompose

        try:
            spec = build_sweep_spec(model_id, prompt_v, negative_v, str(scale_v), str(int(seed_v or 0)), steps_v,
                                    sched_v, rescale_v, lo_v, hi_v, False)
        except (ValueError, TypeError) as exc:
            raise gr.Error(str(exc)) from None
        model = load_guided_model(services, spec.model_id)
        variant = spec.variants[0]
        req = ImageRequest(spec.prompt, spec.negative_prompt, spec.steps, spec.scales[0], spec.seeds[0],
                           scheduler=spec.scheduler, capture_trajectory=False,
                           guidance_rescale=variant.guidance_rescale, guidance_interval=variant.guidance_interval)
        try:
            _, steps_list = decompose(model, req)
        except (ValueError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        frames = decomposition_frames(model, steps_list)
        norms = plot_frame([{"step": k + 1, "value": v, "series": "RMS(ε_c − ε_u)"}
                            for k, v in enumerate(frames.delta_norms)], "step")
        last = len(frames.captions)
        return (frames, gr.Slider(maximum=max(last, 2), value=last), norms, *_step_view(frames, last))

    outputs = [caption, *maps, *x0]
    run.click(decompose_fn, [*form, seed, scale], [frames_state, step, norm, *outputs],
              api_name="guidance_decompose", **concurrency)
    step.input(_step_view, [frames_state, step], outputs, queue=False, api_visibility="private")
    return seed, scale

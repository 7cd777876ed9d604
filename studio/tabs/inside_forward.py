"""Inside the Model · Forward process: x_t of any picture under the noise schedules, their ᾱ_t / log-SNR
curves, and the model's one-step x0 estimate from that x_t (issue 12).

The slider only does pixel-space maths on a prepared (x0, ε) pair kept in ``gr.State``, so it stays fast;
the model runs only when "Predict x0 from x_t" is pressed, in the device's model queue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.subplots import make_subplots

from pipelines import forward_process as fp

from ..forms import number, whole_number
from ..image_sources import SOURCES, pick_image, world_sample
from ..services import Services
from .generate import model_choices
from .how import how_panel

DEFAULT_WORLD_SEED = 7
DEFAULT_NOISE_SEED = 0
DEFAULT_T = 500
DEFAULT_SCHEDULE = "scaled-linear"
PLOT_EVERY = 4  # plot every 4th t (250 points per curve; the marker is exact)

HOW = """\
Training a diffusion model starts by *destroying* pictures on purpose. At step t of the forward process the \
clean picture x₀ and Gaussian noise ε are mixed as **x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε**, where \
ᾱ_t = ∏ (1 − β_s) falls from about 1 to about 0 as t goes from 0 to 999 (Ho et al. 2020). The *schedule* is the \
choice of the β's: linear (DDPM), scaled-linear (Stable Diffusion and the builtin shapes model) or cosine \
(Nichol & Dhariwal 2021). Flow matching instead walks the straight line **x_t = (1 − t) · x₀ + t · ε** with \
t = σ from 0 to 1 (Lipman et al. 2022; Liu et al. 2022); here σ = (t + 1)/1000.

The **t slider** moves along that path; the numbers are the signal coefficient a_t (√ᾱ_t, or 1 − σ), the noise \
coefficient b_t (√(1 − ᾱ_t), or σ) and the signal-to-noise ratio **SNR = a_t²/b_t² = ᾱ/(1 − ᾱ)**. The plot puts \
the schedules side by side: the same t means very different noise levels. For flow the curve shows the \
ᾱ-equivalent (1 − σ)² / ((1 − σ)² + σ²), the ᾱ with the same SNR. Values outside [−1, 1] are clipped for display only.

**Predict x0 from x_t** encodes your picture with the model's VAE, noises that latent with the same seed and \
noise level, and runs the network *once*. From its noise prediction ε_θ the clean picture is estimated as \
**x̂₀ = (x_t − √(1 − ᾱ_t) · ε_θ) / √ᾱ_t** (v- and flow models: the equivalent formula). The model only knows its own \
schedule, so the studio feeds it the timestep with the same SNR (shown) and rescales x_t to match. Small t: x̂₀ is \
almost x₀. Large t: the estimate is a blurry average of what the model has learned could be there.
"""


@dataclass(frozen=True)
class Prepared:
    """The picture and the noise the slider mixes (per browser session, in gr.State)."""

    x0: torch.Tensor  # (3, H, W) in [-1, 1]
    noise: torch.Tensor  # (3, H, W) standard normal, drawn from the noise seed
    description: str  # where the picture came from


def _error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc))


def _noise_seed(value: Any) -> int:
    seed = whole_number(value, "Noise seed")
    if not 0 <= seed < 2**32:
        raise ValueError(f"Noise seed must be a whole number from 0 to {2**32 - 1} (got {seed}).")
    return seed


def prepare_image(image: Image.Image, description: str, noise_seed: Any) -> Prepared:
    x0 = fp.view_tensor(image)  # (3, H, W)
    return Prepared(x0, fp.draw_noise(tuple(x0.shape), _noise_seed(noise_seed)), description)


def prepare(services: Services, source, upload, gen_id, world_seed, noise_seed) -> tuple[Prepared, str]:
    """The chosen picture and its noise; gr.Error with a message for bad input."""
    try:
        image, description = pick_image(services.gallery, source, upload, gen_id, world_seed)
        prepared = prepare_image(image, description, noise_seed)
    except ValueError as exc:
        raise _error(exc) from None
    h, w = prepared.x0.shape[-2:]
    return prepared, f"Picture: {description} · shown at {w}×{h} px"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.4g}".replace("-", "−")


def numbers_line(level: fp.SignalNoise) -> str:
    kind = fp.get_schedule(level.schedule).kind
    if kind == "flow":
        coefficients = f"a_t = 1 − σ = {_fmt(level.a)} · b_t = σ = {_fmt(level.b)}"
    else:
        coefficients = f"a_t = √ᾱ_t = {_fmt(level.a)} · b_t = √(1 − ᾱ_t) = {_fmt(level.b)}"
    return (f"**t = {level.t}** ({level.schedule}) · {coefficients} · SNR = a²/b² = {_fmt(level.snr)} · "
            f"log-SNR = {_fmt(level.log_snr)} · ᾱ{'-equivalent' if kind == 'flow' else ''} = "
            f"{_fmt(level.alpha_bar)}")


def noise_view(prepared: Optional[Prepared], schedule: Any, t: Any) -> tuple[Image.Image, str]:
    """x_t of the prepared picture (clipped to [-1, 1] for display) and its numbers."""
    if prepared is None:
        raise gr.Error("Choose a picture first (source, then its upload / item number / world seed).")
    try:
        level = fp.signal_noise(schedule, t)
        x_t = fp.noisy(prepared.x0, prepared.noise, schedule, level.t)  # (3, H, W)
    except ValueError as exc:
        raise _error(exc) from None
    return fp.to_image(x_t), numbers_line(level)


def _finite(values) -> list[Optional[float]]:
    return [float(v) if math.isfinite(v) else None for v in values]  # plotly leaves a gap at ±inf


def schedule_figure(compare: Any, schedule: Any, t: Any) -> go.Figure:
    """ᾱ_t (ᾱ-equivalent for flow) and log-SNR of the compared schedules (plus the chosen one), marker at t."""
    try:
        step = fp.check_t(t)
        names = list(dict.fromkeys([schedule, *(compare or [])]))
        found = fp.curves(names)
    except ValueError as exc:
        raise _error(exc) from None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ᾱ_t (flow: ᾱ-equivalent)", "log-SNR = log(a_t²/b_t²)"))
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for name, curve in found.items():
        colour = colours[list(fp.SCHEDULES).index(name) % len(colours)]
        xs = list(range(0, fp.NUM_STEPS, PLOT_EVERY)) + [fp.NUM_STEPS - 1]
        for col, ys in ((1, curve.alpha_bar), (2, curve.log_snr)):
            fig.add_trace(go.Scatter(x=xs, y=_finite(ys[xs]), mode="lines", name=name, legendgroup=name,
                                     showlegend=col == 1, line={"color": colour, "width": 3 if name == schedule else 1.5}),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=[step], y=_finite([ys[step]]), mode="markers", legendgroup=name,
                                     showlegend=False, marker={"color": colour, "size": 10},
                                     hovertemplate=f"{name}: t = %{{x}}, %{{y:.4g}}<extra></extra>"), row=1, col=col)
    fig.add_vline(x=step, line={"dash": "dot", "color": "grey"})
    fig.update_xaxes(title_text="t", range=[0, fp.NUM_STEPS - 1])
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h"})
    return fig


def predictable_models(services: Services) -> list[tuple[str, str]]:
    """(label, id) of the models with a one-step x0 estimate (latent diffusion, DiT, flow matching)."""
    families = {e.id: e.family for e in services.registry.entries()}
    return [(label, mid) for label, mid in model_choices(services) if families.get(mid) in fp.SUPPORTED_FAMILIES]


def load_model(services: Services, model_id: Any) -> Any:
    if not model_id:
        raise gr.Error("Choose a model for the one-step x0 estimate.")
    try:
        model = services.models.get(model_id)  # ModelLoadError is a ValueError
    except ValueError as exc:
        raise _error(exc) from None
    if getattr(model, "family", None) not in fp.SUPPORTED_FAMILIES:
        raise gr.Error(f"The one-step x0 estimate works for latent-diffusion, DiT and flow-matching models; "
                       f"{model_id} is a {getattr(model, 'family', 'unknown')} model. Pick another model.")
    return model


def result_line(result: fp.OneStepResult) -> str:
    level = result.level
    return (f"Model timestep used: **{result.model_timestep:g}** (its own ᾱ = {_fmt(result.model_alpha_bar)}; "
            f"chosen {level.schedule} t = {level.t}, ᾱ = {_fmt(level.alpha_bar)}) · conditioned on "
            f"{result.condition} · latent MSE(x̂₀, x₀) = **{result.latent_mse:.4g}** · PSNR of x̂₀ vs the input = "
            f"**{_fmt(result.psnr_input)} dB**, vs the VAE reconstruction = {_fmt(result.psnr_reconstruction)} dB")


def predict(services: Services, source, upload, gen_id, world_seed, noise_seed, schedule, t, model_id, prompt,
            guidance) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """One network evaluation: (x̂₀, true x₀ = VAE reconstruction, the input at the model's size, the error line)."""
    try:
        image, _ = pick_image(services.gallery, source, upload, gen_id, world_seed)
        seed = _noise_seed(noise_seed)
        level = fp.signal_noise(schedule, t)
        scale = number(guidance, "Guidance scale")
    except ValueError as exc:
        raise _error(exc) from None
    model = load_model(services, model_id)
    try:
        result = fp.one_step_x0(model, image, level.schedule, level.t, seed, prompt or "", scale)
    except (ValueError, RuntimeError) as exc:
        raise _error(exc) from None
    return result.x0_estimate, result.x0_true, result.input_image, result_line(result)


def _initial() -> tuple[Prepared, str, str]:
    image, caption = world_sample(DEFAULT_WORLD_SEED)
    prepared = prepare_image(image, f"Shapes world sample: {caption}", DEFAULT_NOISE_SEED)
    return prepared, f"Picture: {prepared.description}", caption


def build_forward_section(services: Services) -> None:
    prepared0, described0, caption0 = _initial()
    xt0, numbers0 = noise_view(prepared0, DEFAULT_SCHEDULE, DEFAULT_T)
    gr.Markdown("Pick a picture and a noise schedule, then move **t**: that is what the model is trained to undo. "
                "Press **Predict x0 from x_t** to see what the model makes of it in one step.")
    prepared = gr.State(prepared0)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            source = gr.Radio(list(SOURCES), value="World sample", label="Picture", elem_id="forward-source")
            world_seed = gr.Number(DEFAULT_WORLD_SEED, precision=0, label="World seed", elem_id="forward-world-seed")
            gen_id = gr.Number(None, precision=0, label="Gallery item #", elem_id="forward-gen-id")
            upload = gr.Image(type="pil", label="Upload", height=160, sources=["upload", "clipboard"],
                              elem_id="forward-upload")
            noise_seed = gr.Number(DEFAULT_NOISE_SEED, precision=0, label="Noise seed (ε)", elem_id="forward-noise-seed")
            schedule = gr.Dropdown(list(fp.SCHEDULES), value=DEFAULT_SCHEDULE, label="Schedule for x_t",
                                   elem_id="forward-schedule")
            compare = gr.CheckboxGroup(list(fp.SCHEDULES), value=list(fp.SCHEDULES), label="Compare in the plot",
                                       elem_id="forward-compare")
        with gr.Column(scale=2):
            t = gr.Slider(0, fp.NUM_STEPS - 1, value=DEFAULT_T, step=1, label="t (0 = clean, 999 = noise)",
                          elem_id="forward-t")
            xt = gr.Image(xt0, label="x_t (clipped to [−1, 1] for display)", type="pil", height=380,
                          interactive=False, format="png", elem_id="forward-xt", elem_classes=["pixel-view"])
            numbers = gr.Markdown(numbers0, elem_id="forward-numbers")
            described = gr.Markdown(described0, elem_id="forward-picture")
    plot = gr.Plot(schedule_figure(list(fp.SCHEDULES), DEFAULT_SCHEDULE, DEFAULT_T), label="Noise schedules",
                   elem_id="forward-plot")
    gr.Markdown("### One-step x0 estimate")
    with gr.Row():
        choices = predictable_models(services)
        default = services.default_model_id()
        model = gr.Dropdown(choices, value=default if default in [c[1] for c in choices] else
                            (choices[0][1] if choices else None), label="Model", scale=2, allow_custom_value=True,
                            elem_id="forward-model")
        prompt = gr.Textbox(caption0, label="Prompt (DiT: a class name; empty = unconditional)", scale=3,
                            elem_id="forward-prompt")
        guidance = gr.Slider(0, 15, value=1, step=0.5, label="Guidance scale (1 = none)", elem_id="forward-guidance")
        run = gr.Button("Predict x0 from x_t", variant="primary", elem_id="forward-predict", scale=1)
    with gr.Row():
        estimate, true_x0, shown_input = (
            gr.Image(label=label, type="pil", height=260, interactive=False, format="png", elem_id=elem,
                     elem_classes=["pixel-view"])
            for label, elem in (("x̂₀: the model's estimate from x_t", "forward-estimate"),
                                ("x₀: VAE reconstruction of the input", "forward-true"),
                                ("the input at the model's size", "forward-input")))
    error = gr.Markdown("", elem_id="forward-error")
    how_panel(HOW, "forward-how")

    picture_inputs = [source, upload, gen_id, world_seed, noise_seed]
    upload.upload(lambda: "Upload", None, source, api_visibility="private", queue=False)
    view = dict(fn=noise_view, inputs=[prepared, schedule, t], outputs=[xt, numbers], show_progress="hidden")
    gr.on([source.change, upload.change, gen_id.submit, world_seed.submit, noise_seed.submit, world_seed.blur,
           noise_seed.blur, gen_id.blur],
          lambda *values: prepare(services, *values), picture_inputs, [prepared, described], api_name="forward_image",
          show_progress="hidden").success(**view, api_visibility="private")
    gr.on([t.change, schedule.change], **view, api_name="forward_noise", trigger_mode="always_last")
    gr.on([t.change, schedule.change, compare.change], schedule_figure, [compare, schedule, t], plot,
          show_progress="hidden", trigger_mode="always_last", api_visibility="private")
    run.click(lambda *values: predict(services, *values),
              [*picture_inputs, schedule, t, model, prompt, guidance], [estimate, true_x0, shown_input, error],
              api_name="forward_predict", concurrency_limit=1, concurrency_id=f"model-{services.device.device}")

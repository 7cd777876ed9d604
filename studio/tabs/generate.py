"""Generate tab: prompt -> image, with live x0 previews, honest phases, Cancel and a trajectory scrubber."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from pipelines.default_settings import FALLBACK, DefaultSettingsError, read_default_settings
from pipelines.events import GenerationCancelled
from pipelines.families import TOKEN_FAMILIES
from pipelines.model_files import class_labels, native_image_size
from pipelines.registry import ModelLoadError
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from pipelines.streaming import Finished, iterate_steps

from ..generation import (MODEL_DEFAULT_SCHEDULER, TrajectoryFrames, build_request, decode_trajectory,
                          save_result)
from ..services import Services
from .compare import build_compare_section
from .how import how_panel

log = logging.getLogger(__name__)
PREVIEW_EVERY_S = 0.2  # decode a live preview at most this often (the run itself never waits)
EXAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square on a white background",
    "a small yellow star in the top left on a black background",
    "a green triangle at the bottom on a gray background",
    "a purple star",  # a hold-out pair: never seen in training
    "a pink cross on the right",
]
HOW = """Sampling runs the learned noising process backwards. The **Seed** (−1: a random one) fixes the starting
noise x_T ~ N(0, I), drawn on the CPU so a seed gives the same start on every device (image i of a batch uses
seed + i). Each of the **Steps** calls the network once for its noise prediction ε_θ(x_t, t, prompt); with
**Guidance scale** w > 1 that is the guided ε̃ = ε_u + w·(ε_c − ε_u), the **Negative prompt** feeding ε_u (w ≤ 1
runs the prompt branch alone). The **Scheduler** turns the prediction into the next, less noisy x_t; the form
starts at the model's default_settings.json choice, else DPM-Solver++ 2M for latent diffusion and the folder's own
sampler (*model default*) for the other families. From the same prediction the studio computes the clean-image
estimate that the live preview and the *x0 estimate* pane show:

**x̂₀ = (x_t − √(1−ᾱ_t)·ε_θ(x_t, t)) / √ᾱ_t**

with ᾱ_t the scheduler's cumulative signal fraction at step t (a v-prediction model uses the same estimate in its
own form). The trajectory's **Step** slider shows x_t and x̂₀ after every step. A flow model (SD3 format) instead
integrates dx/dt = v_θ(x_t, t) from noise (t = 1) to data (t = 0) with Euler steps, x̂₀ = x_t − t·v; a token model
(VQGAN + prior) writes one codebook id per network call, its **Temperature** dividing the logits and **Top-k**
limiting the choice, and its Steps are checkpoints of the filling grid. *Compare families* below runs them side by
side."""


@dataclass
class GenerateTab:
    """The components other tabs fill in (Recall) or listen to."""

    model: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    steps: gr.Slider
    guidance: gr.Slider
    seed: gr.Number
    width: gr.Slider
    height: gr.Slider
    scheduler: gr.Dropdown
    batch_size: gr.Slider
    temperature: gr.Slider
    top_k: gr.Number
    finished: Any  # the event after a generation completed (for chaining gallery refreshes)
    compared: Any = None  # the event after a family comparison completed

    def recall_outputs(self) -> list:
        return [self.model, self.prompt, self.negative_prompt, self.steps, self.guidance, self.seed,
                self.width, self.height, self.scheduler, self.batch_size, self.temperature, self.top_k]


def model_choices(services: Services) -> list[tuple[str, str]]:
    return [(e.label, e.id) for e in services.registry.entries()]


def model_defaults(services: Services, model_id: str | None) -> tuple[dict, str | None]:
    """(the model's default settings, an error message if its default_settings.json is broken)."""
    if not model_id:
        return dict(FALLBACK), None
    try:
        return read_default_settings(services.registry.get(model_id).path), None
    except ModelLoadError:
        return dict(FALLBACK), None
    except DefaultSettingsError as exc:
        return dict(FALLBACK), f"{exc} Using the usual defaults instead."


def scheduler_default(services: Services, model_id: str | None, defaults: dict) -> str:
    """The scheduler a form starts with: the model's ``default_settings.json`` one; else DPM-Solver++ 2M
    for latent diffusion (whose shipped scheduler is often a slow PNDM or DDIM); else the model's own
    (a flow model's flow-match Euler, a DiT's)."""
    if defaults["scheduler"]:
        return defaults["scheduler"]
    family = model_family(services, model_id)
    return DEFAULT_SCHEDULER if family in (None, "latent_diffusion") else MODEL_DEFAULT_SCHEDULER


def model_family(services: Services, model_id: str | None) -> str | None:
    try:
        return services.registry.get(model_id).family if model_id else None
    except ModelLoadError:
        return None


STEPS_INFO = {"vqgan_prior": "a token model writes every grid cell (one network evaluation each); steps = how "
                             "many checkpoints of the filling grid the trajectory keeps"}


def _guidance_info(defaults: dict) -> str:
    return f"this model's default: {defaults['guidance_scale']:g} (≤ 1 turns guidance off)"


def _show_step(frames: list[TrajectoryFrames] | None, image_index: Any, step: Any):
    if not frames:
        return None, None, "No trajectory yet."
    i = min(max(int(image_index or 1) - 1, 0), len(frames) - 1)
    traj = frames[i]
    k = min(max(int(step or 1) - 1, 0), len(traj.noisy) - 1)
    caption = f"Image {i + 1}, step {k + 1} of {len(traj.noisy)} (timestep {traj.timesteps[k]:g})"
    return traj.noisy[k], traj.estimates[k], caption


def build_generate_tab(services: Services) -> GenerateTab:
    default_model = services.default_model_id()
    entry_size = (native_image_size(services.registry.get(default_model).path) if default_model else None) or 512
    defaults, problem = model_defaults(services, default_model)
    if problem:
        log.warning(problem)
    how_panel(HOW, "generate-how")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                model = gr.Dropdown(model_choices(services), value=default_model, label="Model", scale=4, elem_id="generate-model",
                                    allow_custom_value=True,
                                    info=None if default_model else "No models found: see the README's model section.")
                refresh = gr.Button("↻ Rescan models", scale=1, size="sm")
            labels = class_labels(services.registry.get(default_model).path) if default_model else None
            class_label = gr.Dropdown(labels or [], value=None, visible=bool(labels), allow_custom_value=False,
                                      label="Class label (a class-conditional model knows these names; a typed "
                                            "prompt is mapped to the nearest one)", elem_id="generate-class-label")
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a small red circle in the top left")
            negative = gr.Textbox(label="Negative prompt", lines=1)
            gr.Examples(EXAMPLE_PROMPTS, inputs=[prompt], label="Example prompts (Shapes world vocabulary)")
            family = model_family(services, default_model)
            with gr.Row():
                steps = gr.Slider(1, 150, value=defaults["num_inference_steps"], step=1, label="Steps",
                                  info=STEPS_INFO.get(family))
                guidance = gr.Slider(0, 30, value=defaults["guidance_scale"], step=0.5, label="Guidance scale",
                                     info=_guidance_info(defaults))
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed (-1 = random)")
                random_seed = gr.Button("🎲 Random", size="sm")
                reuse_seed = gr.Button("♻ Reuse last seed", size="sm")
            with gr.Row():
                width = gr.Slider(16, 1024, value=entry_size, step=8, label="Width")
                height = gr.Slider(16, 1024, value=entry_size, step=8, label="Height")
            with gr.Row():
                scheduler = gr.Dropdown([(MODEL_DEFAULT_SCHEDULER, MODEL_DEFAULT_SCHEDULER)]
                                        + [(c.label, c.name) for c in SCHEDULERS.values()],
                                        value=scheduler_default(services, default_model, defaults),
                                        label="Scheduler")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
            with gr.Row(visible=family in TOKEN_FAMILIES) as token_row:
                temperature = gr.Slider(0.05, 3, value=defaults["temperature"], step=0.05, label="Temperature",
                                        info="logits / T before sampling each token (lower: safer, less varied)")
                top_k = gr.Number(value=defaults["top_k"], precision=0, minimum=0, label="Top-k (0 = off)",
                                  info="sample only among the k most likely tokens")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
        with gr.Column(scale=3):
            status = gr.Markdown("Ready.", elem_id="generate-status")
            preview = gr.Image(label="Live preview: the model's current estimate of the clean image (x0)",
                               type="pil", height=256, interactive=False,
                               elem_classes=["pixel-view"])
            results = gr.Gallery(label="Result", columns=4, height=300, type="pil", elem_id="generate-result",
                                 format="png", interactive=False, object_fit="contain", fit_columns=False)
            with gr.Accordion("Trajectory: scrub through every step", open=True):
                with gr.Row():
                    traj_image = gr.Radio(["1"], value="1", label="Image of the batch")
                    traj_step = gr.Slider(1, 150, value=1, step=1, label="Step")
                traj_caption = gr.Markdown("No trajectory yet.")
                with gr.Row():
                    traj_noisy = gr.Image(label="x_t (noisy latent)", type="pil", height=192, interactive=False,
                                          elem_classes=["pixel-view"])
                    traj_x0 = gr.Image(label="x0 estimate", type="pil", height=192, interactive=False,
                                       elem_classes=["pixel-view"])
            params = gr.JSON(label="Exact parameters")
    frames_state = gr.State(None)
    last_seed = gr.State(None)

    def generate_fn(model_id, prompt_v, negative_v, steps_v, guidance_v, seed_v, width_v, height_v, sched_v,
                    batch_v, temperature_v=1.0, top_k_v=0, request: gr.Request = None,
                    progress=gr.Progress()) -> Iterator[dict]:
        try:
            if not model_id:
                raise ValueError("Pick a model first (none is selected).")
            if model_family(services, model_id) not in TOKEN_FAMILIES:  # hidden fields: not this model's options
                temperature_v, top_k_v = 1.0, 0
            req = build_request(prompt_v, negative_v, steps_v, guidance_v, seed_v, width_v, height_v, sched_v,
                                batch_v, temperature_v, top_k_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)
        try:
            yield from _run(services, model_id, req, flag, progress, outputs)
        finally:
            services.jobs.finish(key, flag)

    outputs = {"status": status, "preview": preview, "results": results, "params": params,
               "frames": frames_state, "step": traj_step, "image": traj_image, "noisy": traj_noisy,
               "x0": traj_x0, "caption": traj_caption, "last_seed": last_seed}
    inputs = [model, prompt, negative, steps, guidance, seed, width, height, scheduler, batch_size, temperature, top_k]
    event = generate.click(generate_fn, inputs, list(outputs.values()), api_name="generate",
                           concurrency_limit=1, concurrency_id=f"model-{services.device.device}")
    prompt.submit(generate_fn, inputs, list(outputs.values()), api_visibility="private",
                  concurrency_limit=1, concurrency_id=f"model-{services.device.device}")

    def cancel_fn(request: gr.Request) -> str:
        stopped = services.jobs.cancel(request.session_hash if request is not None else "api")
        return "Cancelling: the run stops after the current step." if stopped else "Nothing is running."

    cancel.click(cancel_fn, None, status, queue=False, api_name="cancel")
    for comp in (traj_image, traj_step):
        comp.input(_show_step, [frames_state, traj_image, traj_step], [traj_noisy, traj_x0, traj_caption],
                   queue=False, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, queue=False, api_visibility="private")
    reuse_seed.click(lambda s: s if s is not None else -1, last_seed, seed, queue=False, api_visibility="private")

    def rescan(current):
        services.registry.refresh()
        choices = model_choices(services)
        ids = [c[1] for c in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    refresh.click(rescan, model, model, queue=False, api_visibility="private")

    def on_model_change(model_id):
        """A picked model brings its native size and its default steps, guidance and scheduler."""
        try:
            size = native_image_size(services.registry.get(model_id).path) if model_id else None
        except ModelLoadError:
            size = None
        d, problem = model_defaults(services, model_id)
        if problem:
            gr.Warning(problem)
        sized = (gr.Slider(value=size), gr.Slider(value=size)) if size else (gr.Slider(), gr.Slider())
        try:
            names = class_labels(services.registry.get(model_id).path) if model_id else None
        except ModelLoadError:
            names = None
        fam = model_family(services, model_id)
        return (*sized, gr.Slider(value=d["num_inference_steps"], info=STEPS_INFO.get(fam)),
                gr.Slider(value=d["guidance_scale"], info=_guidance_info(d)),
                gr.Dropdown(value=scheduler_default(services, model_id, d)),
                gr.Dropdown(choices=names or [], value=None, visible=bool(names)),
                gr.Row(visible=fam in TOKEN_FAMILIES), gr.Slider(value=d["temperature"]), gr.Number(value=d["top_k"]))

    model.input(on_model_change, model, [width, height, steps, guidance, scheduler, class_label, token_row,
                                         temperature, top_k], queue=False, api_visibility="private")
    class_label.input(lambda name: name or gr.skip(), class_label, prompt, queue=False, api_visibility="private")
    compared = build_compare_section(services, prompt, negative, seed)
    return GenerateTab(model, prompt, negative, steps, guidance, seed, width, height, scheduler, batch_size,
                       temperature, top_k, finished=event, compared=compared)


def _run(services: Services, model_id: str, req, flag, progress, out: dict) -> Iterator[dict]:
    started = time.perf_counter()
    if not services.models.is_loaded(model_id):
        yield {out["status"]: f"Loading model `{model_id}` ..."}
    try:
        model = services.models.get(model_id)
    except ModelLoadError as exc:
        raise gr.Error(str(exc)) from None
    progress(0, desc="Encoding prompt")
    yield {out["status"]: "Encoding prompt ...", out["preview"]: None}
    run = lambda on_step: model.generate(req, on_step=on_step, cancel=flag)  # noqa: E731
    last_update, result = 0.0, None
    try:
        for item in iterate_steps(run, flag):
            if isinstance(item, Finished):
                result = item.result
                break
            k, n = item.step + 1, item.num_steps
            now = time.perf_counter()
            if now - last_update < PREVIEW_EVERY_S and k < n:
                continue  # one page update per PREVIEW_EVERY_S: each costs a render in the browser
            last_update = now
            phase = "Writing tokens: checkpoint" if model.family in TOKEN_FAMILIES else "Denoising: step"
            progress((k, n), desc=f"{phase} {k}/{n}")
            update = {out["status"]: f"{phase} {k} of {n}" + (" · decoding ..." if k == n else "")}
            if item.pred_x0 is not None:
                update[out["preview"]] = model.preview.decode_live(item.pred_x0[:1])[0]
            yield update
    except GenerationCancelled as exc:
        yield {out["status"]: f"Cancelled after {exc.completed_steps} of {req.num_inference_steps} steps; "
                              "nothing was saved."}
        return
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    for warning in result.warnings:
        gr.Warning(warning)
    progress(1.0, desc="Saving")
    # The images show now; decoding the trajectory (two VAE decodes per step) and saving come after.
    yield {out["status"]: "Saving to the gallery ...", out["results"]: result.images}
    frames = [decode_trajectory(model.preview, result, i) for i in range(len(result.images))]
    ids = save_result(services.gallery, result, frames)
    noisy, x0, caption = _show_step(frames if frames[0] else None, 1, len(frames[0].noisy) if frames[0] else 1)
    elapsed = time.perf_counter() - started
    notes = "".join(f"\n\n⚠ {w}" for w in result.warnings)
    yield {
        out["status"]: f"Done in {elapsed:.2f} s (sampling {result.duration_s:.2f} s) · seed {result.seeds[0]} · "
                       f"saved as gallery #{', #'.join(map(str, ids))}{notes}",
        out["results"]: result.images,
        out["params"]: result.params() | {"seeds": result.seeds, "gallery_ids": ids},
        out["frames"]: frames if frames[0] else None,
        out["step"]: gr.Slider(maximum=max(len(frames[0].noisy), 2) if frames[0] else 2,
                               value=len(frames[0].noisy) if frames[0] else 1),
        out["image"]: gr.Radio([str(i + 1) for i in range(len(result.images))], value="1"),
        out["noisy"]: noisy, out["x0"]: x0, out["caption"]: caption,
        out["last_seed"]: result.seeds[0],
    }

"""Train tab: train models in the browser and watch them learn.

Image training starts ``python -m pipelines.train`` in its own process (:mod:`studio.training`); a timer reads the
run folder every couple of seconds: state, step, throughput and ETA, the loss curve, the sample grids the trainer
writes every N steps (each also saved to the gallery, tagged with the run and step) and the end of its log. Stop
asks the trainer to checkpoint and stop; Resume continues from that checkpoint with its optimizer state. When a
latent-diffusion, flow, DiT or VAE-decoder run stops or finishes, its weights are exported into the models folder
and the Generate tab's model list offers them at once (mini-CLIP and fresh-VAE weights stay in the run folder).
A page reload reconnects to a run that is still going.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import gradio as gr
import pandas as pd

from ..services import Services
from ..training import EXTRA_FLAGS, TARGETS, WORLDS, RunState, TrainingError, TrainSpec, parse_extra
from .generate import GenerateTab, model_choices
from .how import how_panel
from .lab2d import build_lab2d_section

log = logging.getLogger(__name__)
POLL_S = 2.0
MAX_PLOT_POINTS = 1000
HOW = """A denoiser learns the DDPM objective: take a clean latent x₀, draw noise ε and a
timestep t, make x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, and minimise **L = ‖ε − ε_θ(x_t, t, text)‖²**. The *loss* curve below
is that L (Min-SNR weighted) per step; *caption dropout* trains the unconditional ε_θ(x_t, t, "") that
classifier-free guidance needs; the *EMA* of the weights (decay per step) is what samples and exports. A flow
model instead learns the velocity v = ε − x₀ along the straight line x_t = (1−t)·x₀ + t·ε; a DiT is the same
ε objective with a transformer over latent patches and a class label; the VAE learns to reconstruct images from
latents; mini-CLIP learns to match images with their captions (its grids show zero-shot guesses)."""


def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def status_text(st: Optional[RunState]) -> str:
    if st is None:
        return "No run selected. Choose a target and press **Start training**."
    rate = f"{st.samples_per_s:.1f} samples/s" if st.samples_per_s else "– samples/s"
    line = (f"**{st.name}** · {st.state} · step {st.step} / {st.steps or '?'} · {rate} · ETA {_fmt_s(st.eta_s)}"
            if st.state in ("running", "stopping", "starting") else
            f"**{st.name}** · {st.state} at step {st.step} / {st.steps or '?'}")
    if st.exported:
        line += f" · exported as **{st.exported}** (listed in the Generate tab)"
    if st.state in ("failed", "crashed"):
        line += " · the run's log below says why; **Resume** continues from its last checkpoint if it has one"
    return line


def objective_text(key: str) -> str:
    """What the chosen target minimises and where its result goes."""
    t = TARGETS[key]
    goes = {"ldm": "the Generate tab (a StableDiffusionPipeline)", "flow": "the Generate tab (an SD3 pipeline)",
            "dit": "the Generate tab (a DiTPipeline: pick a class label)",
            "vae": "the Generate tab (shapes-ldm with the new decoder)"}.get(t.export or "", "its run folder")
    unused = [w for w, flag in (("EMA", t.ema_flag), ("dropout", t.dropout_flag)) if flag is None]
    return (f"*Loss:* {t.objective}. *When it stops:* its weights go to {goes}."
            + (f" ({' and '.join(unused)} not used by this target.)" if unused else ""))


def loss_frame(st: Optional[RunState]) -> Optional[pd.DataFrame]:
    if st is None or not st.losses:
        return None
    pts = st.losses[:: max(1, len(st.losses) // MAX_PLOT_POINTS)]
    if pts[-1] != st.losses[-1]:
        pts.append(st.losses[-1])
    return pd.DataFrame(pts, columns=["step", "loss"])


def sample_items(services: Services, st: Optional[RunState]) -> list[tuple[str, str]]:
    if st is None:
        return []
    run_dir = services.training.run_dir(st.name)
    items = []
    for rec in reversed(st.samples):
        path = run_dir / str(rec.get("path", ""))
        if path.is_file():
            items.append((str(path), f"step {rec.get('step')}"))
    return items


def build_train_tab(services: Services, generate: GenerateTab) -> dict[str, Any]:
    with gr.Tabs():
        with gr.Tab("Image models", id="train-images"):
            out = _build_image_training(services, generate)
        with gr.Tab("2-D lab: DDPM vs flow", id="train-lab2d"):
            build_lab2d_section(services)
    return out


def _build_image_training(services: Services, generate: GenerateTab) -> dict[str, Any]:
    mgr = services.training
    how_panel(HOW, "train-how")
    with gr.Row():
        with gr.Column(scale=2):
            target = gr.Dropdown([(t.label, key) for key, t in TARGETS.items()], value="ldm-finetune",
                                 label="What to train", elem_id="train-target")
            objective = gr.Markdown(objective_text("ldm-finetune"), elem_id="train-objective")
            world = gr.Dropdown(list(WORLDS), value=WORLDS[0], label="World (training data)", elem_id="train-world")
            name = gr.Textbox("", label="Run name (empty: target and time)", elem_id="train-name")
            with gr.Row():
                steps = gr.Number(200, precision=0, label="Steps", elem_id="train-steps")
                batch = gr.Number(16, precision=0, label="Batch size", elem_id="train-batch")
            with gr.Row():
                lr = gr.Number(1e-4, label="Learning rate", elem_id="train-lr")
                ema = gr.Number(0.999, label="EMA decay", elem_id="train-ema")
            with gr.Row():
                dropout = gr.Slider(0, 1, value=0.1, step=0.05, label="Caption dropout (for guidance)",
                                    elem_id="train-dropout")
                every = gr.Number(50, precision=0, label="Sample grid every N steps (0: off)", elem_id="train-every")
            more = gr.Textbox("", label="More options (trainer flags)", placeholder="--pool 2000 --warmup 50",
                              info="Allowed: " + " ".join(EXTRA_FLAGS), elem_id="train-more")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                resume = gr.Button("Resume", elem_id="train-resume")
            runs = gr.Dropdown(mgr.runs(), value=None, label="Run (reconnects after a reload)", elem_id="train-run")
        with gr.Column(scale=3):
            status = gr.Markdown(status_text(None), elem_id="train-status")
            message = gr.Markdown("", elem_id="train-message")
            plot = gr.LinePlot(None, x="step", y="loss", title="Training loss", height=260, elem_id="train-loss")
            grids = gr.Gallery(label="Sample grids (newest first)", columns=3, height=300, interactive=False,
                               object_fit="contain", elem_id="train-samples", elem_classes=["pixel-view"])
            logs = gr.Textbox("", label="Log (last lines)", lines=6, max_lines=12, interactive=False,
                              elem_id="train-log")
    timer = gr.Timer(POLL_S)

    def start_fn(*form_values):
        try:
            run = mgr.start(spec_from_form(*form_values))
        except TrainingError as exc:
            return gr.Dropdown(), f"⚠ {exc}"
        return gr.Dropdown(choices=mgr.runs(), value=run), f"Started **{run}** in its own process."

    def on_run(action):
        """Stop / Resume: the manager's message, or why it could not."""
        def handler(run):
            if not run:
                return "⚠ Choose a run first."
            try:
                return action(run)
            except TrainingError as exc:
                return f"⚠ {exc}"
        return handler

    stop_fn, resume_fn = on_run(mgr.stop), on_run(mgr.resume)

    def poll(run, current_model):
        """The selected run as the page shows it; exports a stopped/finished run and imports its sample grids."""
        no_change = gr.Dropdown()
        if not run:
            return status_text(None), None, [], "", no_change
        try:
            st = mgr.state(run)
            if st.samples:
                mgr.import_samples(run, services.gallery)
            model_update = no_change
            if not st.alive and st.state in ("stopped", "finished"):
                exported = mgr.export(run)
                if exported:
                    st = mgr.state(run)
                    services.registry.refresh()
                    choices = model_choices(services)
                    ids = [c[1] for c in choices]
                    model_update = gr.Dropdown(choices=choices,
                                               value=current_model if current_model in ids else exported)
        except TrainingError as exc:
            return f"⚠ {exc}", None, [], "", no_change
        except Exception as exc:  # a broken run folder must not break the tab
            log.exception("reading run %s", run)
            return f"⚠ Could not read run {run!r}: {exc}", None, [], "", no_change
        return status_text(st), loss_frame(st), sample_items(services, st), st.log_tail, model_update

    def on_target(key):
        """The form follows the target: its usual steps, batch and LR; EMA and dropout only where it has them."""
        t = TARGETS.get(key)
        if t is None:
            return (gr.skip(),) * 6
        n_steps, n_batch, rate = t.defaults
        return (objective_text(key), gr.Number(value=n_steps), gr.Number(value=n_batch), gr.Number(value=rate),
                gr.Number(interactive=t.ema_flag is not None),
                gr.Slider(interactive=t.dropout_flag is not None,
                          label=f"{'Label' if t.target == 'dit' else 'Caption'} dropout (for guidance)"))

    target.change(on_target, target, [objective, steps, batch, lr, ema, dropout], api_visibility="private",
                  show_progress="hidden")
    form = [target, world, name, steps, batch, lr, ema, dropout, every, more]
    start.click(start_fn, form, [runs, message], api_name="start_training", concurrency_limit=1)
    stop.click(stop_fn, runs, message, api_name="stop_training", concurrency_limit=1)
    resume.click(resume_fn, runs, message, api_name="resume_training", concurrency_limit=1)
    poll_outputs = [status, plot, grids, logs, generate.model]
    timer.tick(poll, [runs, generate.model], poll_outputs, api_visibility="private", concurrency_limit=1,
               show_progress="hidden")
    runs.change(poll, [runs, generate.model], poll_outputs, api_visibility="private", show_progress="hidden")

    def reconnect():
        names = mgr.runs()
        return gr.Dropdown(choices=names, value=mgr.active() or (names[0] if names else None))

    return {"reconnect": (reconnect, runs), "start": start_fn}


def spec_from_form(target_v, world_v, name_v, steps_v, batch_v, lr_v, ema_v, drop_v, every_v, more_v) -> TrainSpec:
    """The form's values as a validated :class:`TrainSpec` (a :class:`TrainingError` says what is wrong)."""
    every = _int(every_v, "Sample every")
    spec = TrainSpec(target=target_v, name=str(name_v or ""), world=world_v, steps=_int(steps_v, "Steps"),
                     batch_size=_int(batch_v, "Batch size"), lr=_float(lr_v, "Learning rate"),
                     ema_decay=_float(ema_v, "EMA decay"), caption_dropout=_float(drop_v, "Caption dropout"),
                     sample_every=every, checkpoint_every=max(1, min(every or 50, 200)), extra=parse_extra(more_v))
    spec.validate()
    return spec


def _int(value: Any, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"{what} must be a number (got {value!r}).") from None
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise TrainingError(f"{what} must be a whole number (got {value!r}).")
    return int(f)


def _float(value: Any, what: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"{what} must be a number (got {value!r}).") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise TrainingError(f"{what} must be a finite number (got {value!r}).")
    return f

"""The Train tab's 2-D lab: a DDPM and a flow-matching model (and a reflow of it) trained side by side on a toy
2-D dataset in seconds, with live loss curves, particles travelling from noise to data along each model's sampling
trajectory, and the measured straightness and sample distance at 1 to 50 steps (:mod:`pipelines.lab2d`)."""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..services import Services
from .how import how_panel

if TYPE_CHECKING:  # pipelines.lab2d imports torch: the section loads it when it is built
    from pipelines import lab2d

STEP_CHOICES = (1, 2, 4, 8, 16, 50)
PANEL = 240            # px per model panel in the animation
MODEL_COLOURS = {"ddpm": (214, 39, 40), "ddim": (148, 103, 189), "flow": (31, 119, 180), "reflow": (44, 160, 44)}
HOW = """Both models learn to turn Gaussian noise into the dataset. The **DDPM** learns to
predict the noise ε in x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε and samples with its own ancestral sampler (row *ddpm*:
fresh noise added at every step, so its particles jitter) and, as row *ddim*, with deterministic DDIM steps
(the same network as an ODE); the **flow** model
learns the velocity v = ε − x₀ along the straight line x_t = (1−t)·x₀ + t·ε and samples by Euler steps
x_{t−Δt} = x_t − Δt·v_θ(x_t, t); **reflow** retrains the flow on its own (noise, sample) pairs so its paths
straighten further. (On these unit-scale sets plain flow's paths bend more than DDIM's: its linear path
pulls the cloud inwards half-way; reflow is what makes them straight.) *Straightness* = start-to-end distance ÷ path length (1 = a straight line); *distance* is the
energy distance from the samples to fresh data (lower is better; the floor is two data samples' distance)."""


def render_animation(result: "lab2d.Comparison", steps: int, n_points: int = 600, frames: int = 26) -> str:
    """An animated GIF: one panel per model, every particle moving from noise (t=1) to its sample (t=0) along the
    sampler's own trajectory at ``steps`` steps, the data shown faintly behind. Returns the file path."""
    models = result.rows
    trajs = {m: result.trajectories[m][steps][:, :n_points] for m in models}
    lim = float(np.percentile(np.abs(np.concatenate([t.reshape(-1, 2) for t in trajs.values()])), 99.5)) * 1.05 + 1e-6
    lim = max(lim, float(np.abs(result.data).max()) * 1.05)

    def to_px(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] / lim + 1) * PANEL / 2, (1 - xy[:, 1] / lim) * PANEL / 2], axis=1)

    data_px = to_px(result.data[:800])
    images = []
    for f in range(frames):
        u = f / (frames - 1)  # 0 = noise, 1 = sample
        canvas = Image.new("RGB", (PANEL * len(models), PANEL + 18), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, m in enumerate(models):
            traj = trajs[m]
            pos = u * (len(traj) - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, len(traj) - 1)
            xy = traj[lo] + (traj[hi] - traj[lo]) * (pos - lo)  # between sampler steps: on the straight segment
            ox = i * PANEL
            for x, y in data_px:
                draw.point((ox + x, y), fill=(200, 200, 200))
            colour = MODEL_COLOURS.get(m, (0, 0, 0))
            for x, y in to_px(xy):
                draw.rectangle((ox + x - 1, y - 1, ox + x + 1, y + 1), fill=colour)
            draw.text((ox + 6, PANEL + 3), f"{m} · {steps} step{'s' if steps > 1 else ''}", fill=(0, 0, 0))
            if i:
                draw.line((ox, 0, ox, PANEL + 18), fill=(160, 160, 160))
        images.append(canvas)
    images += [images[-1]] * 8  # hold the result a moment before looping
    path = Path(tempfile.mkdtemp(prefix="lab2d-")) / f"particles-{steps}.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=90, loop=0)
    return str(path)


def loss_frame(losses: dict[str, list[float]], max_points: int = 400) -> Optional[pd.DataFrame]:
    rows = []
    for model, values in losses.items():
        if not values:
            continue
        stride = max(1, len(values) // max_points)
        arr = np.asarray(values, dtype=float)
        # a running mean over the stride keeps the curve readable (single-batch losses are noisy)
        for start in range(0, len(arr), stride):
            rows.append({"step": start + stride, "loss": float(arr[start:start + stride].mean()), "model": model})
    return pd.DataFrame(rows) if rows else None


def table_frame(result: "lab2d.Comparison") -> pd.DataFrame:
    df = pd.DataFrame(result.table)
    return df.assign(distance=df["distance"].round(4), straightness=df["straightness"].round(4))


def summary(result: "lab2d.Comparison") -> str:
    rows = {(r["model"], r["steps"]): r for r in result.table}
    most = max(r["steps"] for r in result.table)
    parts = [f"{m}: straightness **{rows[(m, most)]['straightness']:.3f}**, distance at 1 step "
             f"{rows[(m, min(r['steps'] for r in result.table))]['distance']:.3f} → at {most} steps "
             f"**{rows[(m, most)]['distance']:.3f}** ("
             + (f"trained in {result.seconds[m]:.1f} s)" if m in result.seconds else f"the {result.model_of(m)} network)")
             for m in result.rows]
    note = " (stopped early: the rest was not trained)" if result.stopped else ""
    return (f"**{result.dataset}**{note} · distance floor (two data samples) {result.floor:.4f}<br>"
            + "<br>".join(parts))


def build_lab2d_section(services: Services) -> None:
    from pipelines import lab2d

    how_panel(HOW, "lab-how")
    with gr.Row():
        dataset = gr.Dropdown(list(lab2d.DATASETS), value="two_moons", label="Dataset", elem_id="lab-dataset")
        train_steps = gr.Number(lab2d.DEFAULT_TRAIN_STEPS, precision=0, label="Training steps per model",
                                elem_id="lab-train-steps")
        reflow = gr.Checkbox(True, label="Also reflow the flow model", elem_id="lab-reflow")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="lab-seed")
    with gr.Row():
        run = gr.Button("Train DDPM and flow side by side", variant="primary", elem_id="lab-run")
        stop = gr.Button("Stop", variant="stop", elem_id="lab-stop")
    status = gr.Markdown("", elem_id="lab-status")
    with gr.Row():
        loss_plot = gr.LinePlot(None, x="step", y="loss", color="model", title="Training loss (live)", height=260,
                                elem_id="lab-loss")
        with gr.Column():
            anim = gr.Image(label="Particles: noise → data along each sampler's path", type="filepath",
                            interactive=False, elem_id="lab-animation")
            anim_steps = gr.Radio([str(s) for s in STEP_CHOICES], value="50", label="Sampling steps in the animation",
                                  elem_id="lab-anim-steps")
    with gr.Row():
        dist_plot = gr.LinePlot(None, x="steps", y="distance", color="model", title="Distance to data vs steps",
                                height=260, elem_id="lab-distance")
        straight_plot = gr.LinePlot(None, x="steps", y="straightness", color="model",
                                    title="Straightness vs steps (1 = straight)", height=260, elem_id="lab-straightness")
    table = gr.Dataframe(label="Measured", interactive=False, elem_id="lab-table")
    result_state = gr.State(None)
    stop_flag = {"event": threading.Event()}

    def run_fn(name, n_steps, do_reflow, seed_v) -> Iterator[tuple]:
        try:
            n = int(n_steps)
            s = int(seed_v)
            if not 1 <= n <= 100_000:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            yield (f"⚠ Training steps must be a whole number from 1 to 100,000 and the seed a whole number.",
                   *([gr.skip()] * 6))
            return
        if name not in lab2d.DATASETS:
            yield (f"⚠ Unknown dataset {name!r}; choose one of {', '.join(lab2d.DATASETS)}.", *([gr.skip()] * 6))
            return
        flag = threading.Event()
        stop_flag["event"] = flag
        losses: dict[str, list[float]] = {}
        box: dict[str, Any] = {}

        def on_step(model: str, step: int, loss: float) -> None:
            losses.setdefault(model, []).append(loss)

        def work() -> None:
            try:
                box["result"] = lab2d.compare(name, train_steps=n, steps=STEP_CHOICES, seed=s, reflow=bool(do_reflow),
                                              on_step=on_step, should_stop=flag.is_set, threads=1)
            except Exception as exc:  # shown in the tab, the studio carries on
                box["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        t0 = time.time()
        worker.start()
        while worker.is_alive():
            worker.join(0.7)
            done = {m: len(v) for m, v in losses.items()}
            yield (f"Training… {', '.join(f'{m} {k}' for m, k in done.items()) or 'starting'} steps · "
                   f"{time.time() - t0:.0f} s", loss_frame(dict(losses)), *([gr.skip()] * 5))
        if "error" in box:
            yield (f"⚠ The lab failed: {box['error']}", *([gr.skip()] * 6))
            return
        result = box["result"]
        if not result.models:
            yield ("Stopped before any training step.", None, None, None, None, None, None)
            return
        df = table_frame(result)
        yield (summary(result), loss_frame(result.losses), render_animation(result, 50),
               df[["model", "steps", "distance"]], df[["model", "steps", "straightness"]], df, result)

    def stop_fn():
        stop_flag["event"].set()
        return "Stopping: the models trained so far are sampled and measured."

    def anim_fn(result, steps):
        if result is None:
            return gr.skip()
        return render_animation(result, int(steps))

    run.click(run_fn, [dataset, train_steps, reflow, seed],
              [status, loss_plot, anim, dist_plot, straight_plot, table, result_state],
              api_name="lab2d", concurrency_limit=1)
    stop.click(stop_fn, None, status, queue=False, api_visibility="private")
    anim_steps.change(anim_fn, [result_state, anim_steps], anim, api_visibility="private")

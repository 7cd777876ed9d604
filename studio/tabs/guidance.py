"""Guidance Explorer: a guidance sweep streamed into a grid with measured curves, the per-step CFG
decomposition of one cell, a sampler x steps comparison, and saved sweeps reopened from the gallery."""
from __future__ import annotations

import functools
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import gradio as gr
import pandas as pd

from pipelines.cfg_decomposition import decompose
from pipelines.events import GenerationCancelled
from pipelines.guidance_sweep import (DEFAULT_SCALES, DEFAULT_SEEDS, DEFAULT_STEP_COUNTS, run_sampler_grid,
                                      run_sweep, summarise)
from pipelines.metrics import BUILTIN_CLIP_DIR, ClipScorer
from pipelines.model_files import guidance_note
from pipelines.registry import ModelLoadError
from pipelines.requests import ImageRequest
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from pipelines.streaming import Finished, iterate_steps

from ..services import Services
from ..sweeps import (KINDS, METRIC_TITLES, MODEL_DEFAULT, SAMPLER_KIND, SWEEP_KIND, adherence_frame,
                      build_sampler_spec, build_sweep_spec, cell_caption, cells_table, decomposition_frames,
                      export_files, group_data, load_group, metric_frame, plot_frame, points_as_dicts, sampler_points,
                      save_cell, start_group)
from .generate import model_choices, model_defaults

log = logging.getLogger(__name__)
STATUS_EVERY_S = 0.25  # step-progress text at most this often (cells always update at once)
SWEEP_PLOTS = ("adherence", "clip_score", "diversity", "colourfulness")
SAMPLER_PLOTS = ("fidelity", "clip_score", "seconds")


@functools.lru_cache(maxsize=1)
def _builtin_scorer() -> Optional[ClipScorer]:
    """The shipped mini-CLIP for CLIP scores (None when its folder is missing)."""
    if not (BUILTIN_CLIP_DIR / "open_clip_config.json").is_file():
        log.warning("No builtin CLIP at %s: sweeps run without CLIP score and diversity", BUILTIN_CLIP_DIR)
        return None
    return ClipScorer.builtin()


_scorer_lock = threading.Lock()


def scorer() -> Optional[ClipScorer]:
    with _scorer_lock:
        return _builtin_scorer()


@dataclass
class GuidanceTab:
    open_group: Callable  # group id -> updates of ``open_outputs`` (and selects this tab)
    open_outputs: list
    saved: gr.Dropdown
    saved_choices: Callable  # -> an update of ``saved``
    finished: list  # the events after which new images are in the gallery


def _plot(metric: str, x: str, elem_id: str, x_title: str) -> gr.LinePlot:
    # starts empty (None): Gradio 6 draws no lines for a colour series whose first value was an empty frame
    return gr.LinePlot(None, x=x, y="value", color="series",
                       title=METRIC_TITLES[metric], x_title=x_title, y_title=metric.replace("_", " "),
                       tooltip="all", height=280, elem_id=elem_id,
                       label=METRIC_TITLES[metric] + " · drag across points to see their images")


def _or_none(frame: pd.DataFrame) -> Optional[pd.DataFrame]:
    """An empty plot is None (see :func:`_plot`)."""
    return frame if len(frame) else None


def _sweep_plot_values(points: list[dict]) -> list[Optional[pd.DataFrame]]:
    return [_or_none(adherence_frame(points) if m == "adherence" else metric_frame(points, m)) for m in SWEEP_PLOTS]


def _sampler_plot_values(records: list[dict]) -> list[Optional[pd.DataFrame]]:
    pts = sampler_points(records)
    return [_or_none(metric_frame(pts, m, x="steps", series="scheduler")) for m in SAMPLER_PLOTS]


def _grid_items(study: dict) -> list[tuple[Any, str]]:
    return [(img, cell_caption(m, study["kind"])) for img, m in zip(study["images"], study["records"])
            if img is not None]


def _stream(make_cells: Callable[[Callable], Iterator], flag) -> Iterator[tuple]:
    """Run ``make_cells(on_step)`` in a worker thread; yield ``("step", cell_index, event)`` and
    ``("cell", cell)`` as they happen (errors and cancellation re-raised here)."""
    def work(emit):
        for cell in make_cells(lambda i, e: emit(("step", i, e))):
            emit(("cell", cell))

    for item in iterate_steps(work, flag):
        if isinstance(item, Finished):
            return
        yield item


def _new_study(kind: str, spec: Any, group_id: Optional[int]) -> dict:
    return {"kind": kind, "group_id": group_id, "prompt": spec.prompt, "model_id": spec.model_id,
            "rows": spec.row_labels(), "columns": spec.column_labels(), "records": [], "images": [],
            "points": [], "settings": spec.settings()}


def build_guidance_tab(services: Services, tabs: gr.Tabs) -> GuidanceTab:
    default_model = services.default_model_id()
    defaults, _ = model_defaults(services, default_model)
    scheduler_choices = [(MODEL_DEFAULT, MODEL_DEFAULT)] + [(c.label, c.name) for c in SCHEDULERS.values()]
    gr.Markdown("Classifier-free guidance mixes two predictions of the same network at every step: "
                "**ε̃ = ε_u + w · (ε_c − ε_u)**. Low w: diverse but off-prompt; moderate w: on-prompt; high w: "
                "over-saturated and broken. Sweep w on your prompt and *measure* it.")
    with gr.Row():
        model = gr.Dropdown(model_choices(services), value=default_model, label="Model", scale=2,
                            allow_custom_value=True, elem_id="guidance-model")
        prompt = gr.Textbox(label="Prompt", value="a red triangle on a white background", scale=3,
                            elem_id="guidance-prompt")
        negative = gr.Textbox(label="Negative prompt", scale=2)
    with gr.Row():
        scales = gr.Textbox(label="Guidance scales", value=", ".join(f"{s:g}" for s in DEFAULT_SCALES),
                            elem_id="guidance-scales", info="comma-separated numbers; at most 64 cells in all")
        seeds = gr.Textbox(label="Seeds (rows)", value=", ".join(map(str, DEFAULT_SEEDS)), elem_id="guidance-seeds")
        steps = gr.Slider(1, 150, value=defaults["num_inference_steps"], step=1, label="Steps",
                          elem_id="guidance-steps")
        scheduler = gr.Dropdown(scheduler_choices, value=defaults["scheduler"] or DEFAULT_SCHEDULER,
                                label="Scheduler")
    with gr.Accordion("Guidance options (each runs as its own series in the same curves)", open=False):
        with gr.Row():
            rescale = gr.Slider(0, 1, value=0, step=0.05, label="Guidance rescale (0 = off; 0.7 suggested)",
                                info="Lin et al. 2024 §3.4, as diffusers implements it")
            interval_start = gr.Slider(0, 100, value=0, step=5, label="Guidance from (% of the steps)")
            interval_end = gr.Slider(0, 100, value=100, step=5, label="Guidance until (% of the steps)",
                                     info="outside the interval the step uses ε_c alone (w = 1)")
            compare_plain = gr.Checkbox(True, label="Also run plain CFG for comparison")
    with gr.Row():
        run = gr.Button("Run sweep", variant="primary", elem_id="guidance-run")
        cancel = gr.Button("Cancel", variant="stop", elem_id="guidance-cancel")
    status = gr.Markdown(guidance_note(services.registry.get(default_model).path) or "Ready."
                         if default_model else "No models found.", elem_id="guidance-status")
    grid = gr.Gallery(label="Grid: rows = seeds, columns = scales (click a cell to decompose it)",
                      columns=len(DEFAULT_SCALES), height=360, object_fit="contain", allow_preview=False,
                      elem_id="guidance-grid", interactive=False, format="png")
    with gr.Row():
        plots = [_plot(m, "scale", f"guidance-plot-{m}", "guidance scale w") for m in SWEEP_PLOTS[:2]]
    with gr.Row():
        plots += [_plot(m, "scale", f"guidance-plot-{m}", "guidance scale w") for m in SWEEP_PLOTS[2:]]
    with gr.Row():
        picked = gr.Gallery(label="Images of the selected points", columns=8, height=160, object_fit="contain",
                            allow_preview=False, elem_id="guidance-picked", interactive=False)
        picked_info = gr.Markdown("Drag across points on a plot (or click a grid cell or a table row) to see "
                                  "their images here.")
    table = gr.Dataframe(label="Every cell (click a row to see its image)", interactive=False, wrap=True,
                         elem_id="guidance-table")
    with gr.Row():
        export = gr.Button("Export PNG grid + CSV", size="sm")
        export_files_out = gr.File(label="Exports", file_count="multiple", interactive=False)
    study = gr.State(None)

    with gr.Accordion("CFG decomposition of one cell: ε̃ = ε_u + w · (ε_c − ε_u), step by step", open=False):
        with gr.Row():
            d_seed = gr.Number(value=0, label="Seed", precision=0)
            d_scale = gr.Number(value=7.5, label="Guidance scale w (> 1)")
            d_run = gr.Button("Decompose", variant="primary", elem_id="guidance-decompose")
        d_step = gr.Slider(1, 2, value=1, step=1, label="Step")
        d_caption = gr.Markdown("Pick a cell (click it in the grid) and press Decompose.",
                                elem_id="guidance-decomp-caption")
        gr.Markdown("Noise predictions per latent channel (blue < 0 < red, one colour scale per step):")
        with gr.Row():
            d_maps = [gr.Image(label=label, type="pil", height=150, interactive=False, elem_classes=["pixel-view"],
                               format="png")
                      for label in ("ε_u (unconditional)", "ε_c (conditional)", "w · (ε_c − ε_u)",
                                    "ε̃ (what the scheduler received)")]
        gr.Markdown("The clean image each prediction implies at this step (x0 estimate, decoded):")
        with gr.Row():
            d_x0 = [gr.Image(label=label, type="pil", height=150, interactive=False, elem_classes=["pixel-view"],
                               format="png")
                    for label in ("x0 from ε_u", "x0 from ε_c", "x0 from ε̃ (guided)")]
        d_norm = gr.LinePlot(None, x="step", y="value",
                             color="series", title="How hard the prompt pulls: RMS of (ε_c − ε_u) per step",
                             height=220, elem_id="guidance-delta-norm")
    d_frames = gr.State(None)

    with gr.Accordion("Sampler and step comparison: same prompt and seed, schedulers x step counts", open=False):
        with gr.Row():
            s_schedulers = gr.CheckboxGroup([(c.label, c.name) for c in SCHEDULERS.values()],
                                            value=["ddim", "euler", "dpmpp_2m", "unipc"], label="Schedulers")
            s_steps = gr.Textbox(label="Step counts", value=", ".join(map(str, DEFAULT_STEP_COUNTS)))
            s_seed = gr.Number(value=0, label="Seed", precision=0)
            s_guidance = gr.Number(value=defaults["guidance_scale"], label="Guidance scale")
        s_run = gr.Button("Run comparison", variant="primary", elem_id="sampler-run")
        s_status = gr.Markdown("", elem_id="sampler-status")
        s_grid = gr.Gallery(label="Rows = schedulers, columns = step counts", columns=len(DEFAULT_STEP_COUNTS),
                            height=320, object_fit="contain", allow_preview=False, elem_id="sampler-grid",
                            interactive=False, format="png")
        with gr.Row():
            s_plots = [_plot(m, "steps", f"sampler-plot-{m}", "steps") for m in SAMPLER_PLOTS]
        s_table = gr.Dataframe(label="Every cell", interactive=False, wrap=True)
    s_study = gr.State(None)

    with gr.Accordion("Saved sweeps (reopen one with its grid and plots)", open=False):
        with gr.Row():
            saved = gr.Dropdown([], label="Saved sweeps and comparisons", scale=4, elem_id="guidance-saved",
                                allow_custom_value=True)
            saved_refresh = gr.Button("↻", size="sm", scale=0)
            saved_open = gr.Button("Open", scale=1, elem_id="guidance-open")

    concurrency = dict(concurrency_limit=1, concurrency_id=f"model-{services.device.device}")

    # -- the sweep --------------------------------------------------------------------------------
    def load(model_id: str):
        entry_note = None
        try:
            entry_note = guidance_note(services.registry.get(model_id).path)
        except ModelLoadError:
            pass
        if entry_note:
            raise gr.Error(entry_note)
        try:
            m = services.models.get(model_id)
        except ModelLoadError as exc:
            raise gr.Error(str(exc)) from None
        if not getattr(m, "supports_guidance", False):
            raise gr.Error(f"Model `{model_id}` has no classifier-free guidance to explore.")
        return m

    sweep_outputs = [status, grid, *plots, table, study, picked, picked_info]

    def sweep_fn(model_id, prompt_v, negative_v, scales_v, seeds_v, steps_v, sched_v, rescale_v, lo_v, hi_v,
                 plain_v, request: gr.Request, progress=gr.Progress()) -> Iterator[list]:
        try:
            spec = build_sweep_spec(model_id, prompt_v, negative_v, scales_v, seeds_v, steps_v, sched_v, rescale_v,
                                    lo_v, hi_v, plain_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        yield [f"Loading model `{spec.model_id}` ...", *[gr.skip()] * (len(sweep_outputs) - 1)]
        m = load(spec.model_id)
        clip = scorer()
        group_id = start_group(services.gallery, SWEEP_KIND, spec)
        state = _new_study(SWEEP_KIND, spec, group_id)
        cells, ids = [], []
        n, per = spec.num_cells, spec.steps
        grid_update = gr.Gallery(value=[], columns=len(spec.scales))
        yield [f"Cell 1 of {n}, step 0 of {per} ...", grid_update, *_sweep_plot_values([]), cells_table([]), state,
               [], ""]
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)

        def sweep_cells(on_step):
            return run_sweep(m, spec.prompt, spec.scales, spec.seeds, negative_prompt=spec.negative_prompt,
                             steps=spec.steps, scheduler=spec.scheduler, scorer=clip, variants=spec.variants,
                             cancel=flag, on_step=on_step)

        started, last = time.perf_counter(), 0.0
        try:
            for item in _stream(sweep_cells, flag):
                if item[0] == "step":
                    _, i, event = item
                    done = i * per + event.step + 1
                    progress((done, n * per), desc=f"Cell {i + 1} of {n}, step {event.step + 1} of {per}")
                    now = time.perf_counter()
                    if now - last >= STATUS_EVERY_S:
                        last = now
                        yield [f"Cell {i + 1} of {n}, step {event.step + 1} of {per}",
                               *[gr.skip()] * (len(sweep_outputs) - 1)]
                    continue
                cell = item[1]
                cells.append(cell)
                ids.append(save_cell(services.gallery, cell, group_id))
                points = points_as_dicts(summarise(cells))
                record = cell.metrics() | {"gallery_id": ids[-1]}
                state["records"].append(record)
                state["images"].append(cell.image)
                state["points"] = points
                yield [f"Cell {len(cells)} of {n} done ({cell_caption(record)})", _grid_items(state),
                       *_sweep_plot_values(points), cells_table(state["records"]), state, gr.skip(), gr.skip()]
        except GenerationCancelled:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, summarise(cells) if cells else []),
                                          status="cancelled")
            yield [f"Cancelled after {len(cells)} of {n} cells; the finished cells are saved as sweep #{group_id}.",
                   *[gr.skip()] * (len(sweep_outputs) - 1)]
            return
        except ValueError as exc:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, summarise(cells) if cells else []),
                                          status="failed")
            raise gr.Error(str(exc)) from None
        except Exception:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, summarise(cells) if cells else []),
                                          status="failed")
            raise
        finally:
            services.jobs.finish(key, flag)
        services.gallery.update_group(group_id, data=group_data(spec, cells, ids, summarise(cells)), status="done")
        elapsed = time.perf_counter() - started
        note = "" if clip is not None else " (no builtin CLIP found: no CLIP score or diversity)"
        yield [f"Done: {n} cells in {elapsed:.1f} s, saved to the gallery as sweep #{group_id}{note}.",
               _grid_items(state), *_sweep_plot_values(state["points"]), cells_table(state["records"]), state,
               gr.skip(), gr.skip()]

    sweep_inputs = [model, prompt, negative, scales, seeds, steps, scheduler, rescale, interval_start, interval_end,
                    compare_plain]
    run_event = run.click(sweep_fn, sweep_inputs, sweep_outputs, api_name="guidance_sweep", **concurrency)

    def cancel_fn(request: gr.Request) -> str:
        stopped = services.jobs.cancel(request.session_hash if request is not None else "api")
        return "Cancelling: the sweep stops after the current step." if stopped else "Nothing is running."

    cancel.click(cancel_fn, None, status, queue=False, api_name="guidance_cancel")

    # -- linking points and cells to images ----------------------------------------------------------
    def _show_cells(st: Optional[dict], indices: list[int], what: str):
        if not st or not indices:
            return [], f"No cells {what}."
        items = [(st["images"][k], cell_caption(st["records"][k], st["kind"])) for k in indices
                 if k < len(st["images"]) and st["images"][k] is not None]
        return items, f"{len(indices)} cell{'s' if len(indices) != 1 else ''} {what}."

    def on_plot_select(st, evt: gr.SelectData):
        if not st or evt.index is None:
            return [], "Run a sweep first."
        lo, hi = sorted(float(v) for v in evt.index)
        key = "scale" if st["kind"] == SWEEP_KIND else "steps"
        inside = [k for k, r in enumerate(st["records"]) if lo <= float(r[key]) <= hi]
        if not inside and st["records"]:  # a click without a drag: the nearest x
            nearest = min((abs(float(r[key]) - (lo + hi) / 2), float(r[key])) for r in st["records"])[1]
            inside = [k for k, r in enumerate(st["records"]) if float(r[key]) == nearest]
        return _show_cells(st, inside, f"with {key} from {lo:g} to {hi:g}")

    for p in plots:
        p.select(on_plot_select, study, [picked, picked_info], queue=False, api_visibility="private")

    def on_grid_select(st, evt: gr.SelectData):
        present = [k for k, img in enumerate(st["images"]) if img is not None] if st else []
        if evt.index is None or evt.index >= len(present):
            return gr.skip(), gr.skip(), [], "Nothing selected."
        k = present[evt.index]
        record = st["records"][k]
        items, info = _show_cells(st, [k], "selected")
        return record["seed"], record["scale"], items, f"{info} {cell_caption(record)} · gallery #{record.get('gallery_id')}"

    grid.select(on_grid_select, study, [d_seed, d_scale, picked, picked_info], queue=False, api_visibility="private")

    def on_table_select(st, evt: gr.SelectData):
        if not st or evt.index is None:
            return gr.skip(), gr.skip(), [], "Nothing selected."
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if row >= len(st["records"]):
            return gr.skip(), gr.skip(), [], "Nothing selected."
        record = st["records"][row]
        items, info = _show_cells(st, [row], "selected")
        return record["seed"], record["scale"], items, f"{info} {cell_caption(record)}"

    table.select(on_table_select, study, [d_seed, d_scale, picked, picked_info], queue=False,
                 api_visibility="private")

    def export_fn(st):
        if not st or not st["records"]:
            raise gr.Error("Run or open a sweep first: there is nothing to export.")
        folder = Path(tempfile.mkdtemp(prefix="studio-export-"))
        title = f"{KINDS[st['kind']]} · {st['model_id']} · {st['prompt'][:80]}"
        images = list(st["images"]) + [None] * (len(st["rows"]) * len(st["columns"]) - len(st["images"]))
        png, csv_path = export_files(folder, st["group_id"], images, st["records"], st["rows"], st["columns"], title)
        return [str(png), str(csv_path)]

    export.click(export_fn, study, export_files_out, api_name="guidance_export", concurrency_limit=None)

    # -- the decomposition ---------------------------------------------------------------------------
    def decompose_fn(model_id, prompt_v, negative_v, steps_v, sched_v, rescale_v, lo_v, hi_v, plain_v, seed_v,
                     scale_v):
        try:
            spec = build_sweep_spec(model_id, prompt_v, negative_v, str(scale_v), str(int(seed_v or 0)), steps_v,
                                    sched_v, rescale_v, lo_v, hi_v, False)
        except (ValueError, TypeError) as exc:
            raise gr.Error(str(exc)) from None
        m = load(spec.model_id)
        variant = spec.variants[0]
        req = ImageRequest(spec.prompt, spec.negative_prompt, spec.steps, spec.scales[0], spec.seeds[0],
                           scheduler=spec.scheduler, capture_trajectory=False,
                           guidance_rescale=variant.guidance_rescale, guidance_interval=variant.guidance_interval)
        try:
            _, steps_list = decompose(m, req)
        except (ValueError, RuntimeError) as exc:
            raise gr.Error(str(exc)) from None
        frames = decomposition_frames(m, steps_list)
        norms = plot_frame([{"step": k + 1, "value": v, "series": "RMS(ε_c − ε_u)"}
                            for k, v in enumerate(frames.delta_norms)], "step")
        last = len(frames.captions)
        return (frames, gr.Slider(maximum=max(last, 2), value=last), norms, *_decomp_step(frames, last))

    def _decomp_step(frames, step):
        if frames is None:
            return ["Pick a cell and press Decompose.", *[None] * 7]
        k = min(max(int(step or 1), 1), len(frames.captions)) - 1
        maps, est = frames.maps[k], frames.estimates[k]
        return [frames.captions[k], maps["uncond"], maps["cond"], maps["delta"], maps["guided"], est["uncond"],
                est["cond"], est["guided"]]

    d_outputs = [d_caption, *d_maps, *d_x0]
    d_run.click(decompose_fn, [model, prompt, negative, steps, scheduler, rescale, interval_start, interval_end,
                               compare_plain, d_seed, d_scale], [d_frames, d_step, d_norm, *d_outputs],
                api_name="guidance_decompose", **concurrency)
    d_step.input(_decomp_step, [d_frames, d_step], d_outputs, queue=False, api_visibility="private")

    # -- sampler x steps -----------------------------------------------------------------------------
    s_outputs = [s_status, s_grid, *s_plots, s_table, s_study]

    def sampler_fn(model_id, prompt_v, negative_v, seed_v, guidance_v, schedulers_v, counts_v, request: gr.Request,
                   progress=gr.Progress()):
        try:
            spec = build_sampler_spec(model_id, prompt_v, negative_v, seed_v, guidance_v, schedulers_v, counts_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        m = load(spec.model_id)
        clip = scorer()
        group_id = start_group(services.gallery, SAMPLER_KIND, spec)
        state = _new_study(SAMPLER_KIND, spec, group_id)
        total_steps = sum(spec.step_counts) * len(spec.schedulers)
        n = len(spec.schedulers) * len(spec.step_counts)
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)
        yield [f"Cell 1 of {n} ...", gr.Gallery(value=[], columns=len(spec.step_counts)),
               *_sampler_plot_values([]), cells_table([]), state]

        def grid_cells(on_step):
            return run_sampler_grid(m, spec.prompt, spec.seed, spec.schedulers, spec.step_counts,
                                    guidance_scale=spec.guidance, negative_prompt=spec.negative_prompt, scorer=clip,
                                    cancel=flag, on_step=on_step)

        cells, ids, done_steps = [], [], 0
        try:
            for item in _stream(grid_cells, flag):
                if item[0] == "step":
                    _, i, event = item
                    progress((done_steps + event.step + 1, total_steps),
                             desc=f"Cell {i + 1} of {n}, step {event.step + 1} of {event.num_steps}")
                    continue
                cell = item[1]
                done_steps += cell.steps
                cells.append(cell)
                ids.append(save_cell(services.gallery, cell, group_id))
                state["records"].append(cell.metrics() | {"gallery_id": ids[-1]})
                state["images"].append(cell.image)
                yield [f"Cell {len(cells)} of {n} done", _grid_items(state), *_sampler_plot_values(state["records"]),
                       cells_table(state["records"]), state]
        except GenerationCancelled:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="cancelled")
            yield [f"Cancelled after {len(cells)} of {n} cells (saved as comparison #{group_id}).",
                   *[gr.skip()] * (len(s_outputs) - 1)]
            return
        except ValueError as exc:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="failed")
            raise gr.Error(str(exc)) from None
        except Exception:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="failed")
            raise
        finally:
            services.jobs.finish(key, flag)
        services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="done")
        yield [f"Done: {n} cells, saved as comparison #{group_id}.", _grid_items(state),
               *_sampler_plot_values(state["records"]), cells_table(state["records"]), state]

    s_event = s_run.click(sampler_fn, [model, prompt, negative, s_seed, s_guidance, s_schedulers, s_steps], s_outputs,
                api_name="sampler_comparison", **concurrency)

    # -- saved sweeps --------------------------------------------------------------------------------
    def saved_choices():
        groups = services.gallery.groups()
        return gr.Dropdown(choices=[(f"#{g.id} · {g.title} · {g.status} · {g.created_at:%Y-%m-%d %H:%M}", g.id)
                                    for g in groups], value=groups[0].id if groups else None)

    saved_refresh.click(saved_choices, None, saved, queue=False, api_visibility="private")
    for event in (run_event, s_event):
        event.then(saved_choices, None, saved, queue=False, api_visibility="private")

    def open_group(group_id):
        """Reopen a saved sweep (grid, plots, table) or sampler comparison."""
        if group_id in (None, ""):
            raise gr.Error("Pick a saved sweep first.")
        try:
            group, saved_cells = load_group(services.gallery, int(group_id))
        except (KeyError, ValueError):
            raise gr.Error(f"No saved sweep #{group_id} in this gallery.") from None
        settings = group.data.get("settings", {})
        state = {"kind": group.kind, "group_id": group.id, "prompt": group.prompt, "model_id": group.model_id,
                 "rows": settings.get("rows", []), "columns": settings.get("columns", []),
                 "records": [c.metrics for c in saved_cells], "images": [c.image for c in saved_cells],
                 "points": group.data.get("points", []), "settings": settings}
        missing = sum(c.image is None for c in saved_cells)
        info = (f"Reopened {KINDS.get(group.kind, group.kind)} #{group.id} ({group.status}): {len(saved_cells)} cells"
                + (f", {missing} deleted from the gallery since" if missing else "") + ".")
        columns = max(len(state["columns"]), 1)
        if group.kind == SAMPLER_KIND:
            return [gr.skip()] * len(sweep_outputs) + [info, gr.Gallery(value=_grid_items(state), columns=columns),
                                                       *_sampler_plot_values(state["records"]),
                                                       cells_table(state["records"]), state,
                                                       gr.Tabs(selected="guidance")]
        return [info, gr.Gallery(value=_grid_items(state), columns=columns), *_sweep_plot_values(state["points"]),
                cells_table(state["records"]), state, [], "",
                *[gr.skip()] * len(s_outputs), gr.Tabs(selected="guidance")]

    open_outputs = sweep_outputs + s_outputs + [tabs]
    saved_open.click(open_group, saved, open_outputs, api_name="guidance_open", concurrency_limit=None)

    def model_changed(model_id):
        d, problem = model_defaults(services, model_id)
        note = None
        try:
            note = guidance_note(services.registry.get(model_id).path) if model_id else None
        except ModelLoadError:
            pass
        return (gr.Slider(value=d["num_inference_steps"]), gr.Dropdown(value=d["scheduler"] or DEFAULT_SCHEDULER),
                gr.Number(value=d["guidance_scale"]), note or problem or "Ready.")

    model.input(model_changed, model, [steps, scheduler, s_guidance, status], queue=False, api_visibility="private")
    return GuidanceTab(open_group=open_group, open_outputs=open_outputs, saved=saved, saved_choices=saved_choices,
                       finished=[run_event, s_event])

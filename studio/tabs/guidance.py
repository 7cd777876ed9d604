"""Guidance Explorer: a guidance sweep streamed into a grid with measured curves, the per-step CFG
decomposition of one cell, a sampler x steps comparison, and saved sweeps reopened from the gallery."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import gradio as gr

from pipelines.events import GenerationCancelled
from pipelines.guidance_sweep import DEFAULT_SCALES, DEFAULT_SEEDS, run_sweep, summarise
from pipelines.model_files import guidance_note
from pipelines.registry import ModelLoadError
from pipelines.schedulers import SCHEDULERS

from ..services import Services
from ..sweeps import (KINDS, MODEL_DEFAULT, SAMPLER_KIND, SWEEP_KIND, build_sweep_spec, cell_caption, cells_table,
                      export_files, group_data, load_group, points_as_dicts, save_cell, start_group)
from .cfg_view import build_decomposition
from .generate import model_choices, model_defaults, scheduler_default
from .how import how_panel
from .sampler_view import build_sampler_comparison
from .studies import (SWEEP_PLOTS, grid_items, load_guided_model, metric_plot, new_study, scorer, stream_cells,
                      sweep_plot_values)

log = logging.getLogger(__name__)
STATUS_EVERY_S = 0.25  # step-progress text at most this often (cells always update at once)
HOW = """At every step the network runs twice on the same x_t: with the **Prompt** (ε_c) and with the **Negative prompt**
or an empty one (ε_u). The scheduler receives their extrapolation

**ε̃ = ε_u + w·(ε_c − ε_u)**

so w = 1 is the plain conditional prediction and each unit of w adds one more step along the direction the prompt
pulls in. Each number in **Guidance scales** is one w and one column of the grid; each of the **Seeds (rows)** is a
row whose starting noise is the same in every column, so along a row only w changes. The curves plot, per w, means
over the seeds: *Judge adherence* (share of the prompt's attributes the Shapes judge finds; Shapes-world prompts
only), *CLIP score* (cosine of the prompt's and the image's mini-CLIP embeddings), *Diversity across seeds* (mean
pairwise 1 − cos of the image embeddings) and *Colourfulness*. Under *Guidance options*, **Guidance rescale** φ
scales ε̃ back toward the standard deviation of ε_c and mixes by φ, and **Guidance from / until** apply w only in
that share of the steps (ε_c alone outside); each option runs as its own series. *CFG decomposition* shows ε_u,
ε_c, w·(ε_c − ε_u) and ε̃ of one cell as pictures, step by step, with the x̂₀ each implies."""


@dataclass
class GuidanceTab:
    open_group: Callable  # group id -> updates of ``open_outputs`` (and selects this tab)
    open_outputs: list
    saved: gr.Dropdown
    saved_choices: Callable  # -> an update of ``saved``
    finished: list  # the events after which new images are in the gallery


def build_guidance_tab(services: Services, tabs: gr.Tabs) -> GuidanceTab:
    default_model = services.default_model_id()
    defaults, _ = model_defaults(services, default_model)
    scheduler_choices = [(MODEL_DEFAULT, MODEL_DEFAULT)] + [(c.label, c.name) for c in SCHEDULERS.values()]
    gr.Markdown("Classifier-free guidance mixes two predictions of the same network at every step: "
                "**ε̃ = ε_u + w · (ε_c − ε_u)**. Low w: diverse but off-prompt; moderate w: on-prompt; high w: "
                "over-saturated and broken. Sweep w on your prompt and *measure* it.")
    how_panel(HOW, "guidance-how")
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
        scheduler = gr.Dropdown(scheduler_choices, value=scheduler_default(services, default_model, defaults),
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
        plots = [metric_plot(m, "scale", f"guidance-plot-{m}", "guidance scale w") for m in SWEEP_PLOTS[:2]]
    with gr.Row():
        plots += [metric_plot(m, "scale", f"guidance-plot-{m}", "guidance scale w") for m in SWEEP_PLOTS[2:]]
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

    concurrency = dict(concurrency_limit=1, concurrency_id=f"model-{services.device.device}")

    # -- the sweep --------------------------------------------------------------------------------
    sweep_outputs = [status, grid, *plots, table, study, picked, picked_info]

    def sweep_values(info: str, state: dict, picked_reset: bool = False) -> list:
        """``sweep_outputs`` showing a sweep (live, finished or reopened); a new grid (``picked_reset``,
        a first frame or a reopened sweep) also sets the grid's number of columns."""
        items = grid_items(state)
        return [info, gr.Gallery(value=items, columns=max(len(state["columns"]), 1)) if picked_reset else items,
                *sweep_plot_values(state["points"]), cells_table(state["records"]), state,
                *(([], "") if picked_reset else (gr.skip(), gr.skip()))]

    def sweep_fn(model_id, prompt_v, negative_v, scales_v, seeds_v, steps_v, sched_v, rescale_v, lo_v, hi_v,
                 plain_v, request: gr.Request, progress=gr.Progress()) -> Iterator[list]:
        try:
            spec = build_sweep_spec(model_id, prompt_v, negative_v, scales_v, seeds_v, steps_v, sched_v, rescale_v,
                                    lo_v, hi_v, plain_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        yield [f"Loading model `{spec.model_id}` ...", *[gr.skip()] * (len(sweep_outputs) - 1)]
        m = load_guided_model(services, spec.model_id)
        clip = scorer()
        group_id = start_group(services.gallery, SWEEP_KIND, spec)
        state = new_study(SWEEP_KIND, spec, group_id)
        cells, ids = [], []
        n, per = spec.num_cells, spec.steps
        yield sweep_values(f"Cell 1 of {n}, step 0 of {per} ...", state, picked_reset=True)
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)

        def sweep_cells(on_step):
            return run_sweep(m, spec.prompt, spec.scales, spec.seeds, negative_prompt=spec.negative_prompt,
                             steps=spec.steps, scheduler=spec.scheduler, scorer=clip, variants=spec.variants,
                             cancel=flag, on_step=on_step)

        def end_group(status: str) -> None:
            points = summarise(cells) if cells else []
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, points), status=status)

        started, last = time.perf_counter(), 0.0
        try:
            for item in stream_cells(sweep_cells, flag):
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
                record = cell.metrics() | {"gallery_id": ids[-1]}
                state["records"].append(record)
                state["images"].append(cell.image)
                state["points"] = points_as_dicts(summarise(cells))
                yield sweep_values(f"Cell {len(cells)} of {n} done ({cell_caption(record)})", state)
        except GenerationCancelled:
            end_group("cancelled")
            yield [f"Cancelled after {len(cells)} of {n} cells; the finished cells are saved as sweep #{group_id}.",
                   *[gr.skip()] * (len(sweep_outputs) - 1)]
            return
        except Exception as exc:
            end_group("failed")
            if isinstance(exc, ValueError):
                raise gr.Error(str(exc)) from None
            raise
        finally:
            services.jobs.finish(key, flag)
        end_group("done")
        elapsed = time.perf_counter() - started
        note = "" if clip is not None else " (no builtin CLIP found: no CLIP score or diversity)"
        yield sweep_values(f"Done: {n} cells in {elapsed:.1f} s, saved to the gallery as sweep #{group_id}{note}.",
                           state)

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
        caption = f"{info} {cell_caption(record)} · gallery #{record.get('gallery_id')}"
        return record["seed"], record["scale"], items, caption

    def on_table_select(st, evt: gr.SelectData):
        if not st or evt.index is None:
            return gr.skip(), gr.skip(), [], "Nothing selected."
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if row >= len(st["records"]):
            return gr.skip(), gr.skip(), [], "Nothing selected."
        record = st["records"][row]
        items, info = _show_cells(st, [row], "selected")
        return record["seed"], record["scale"], items, f"{info} {cell_caption(record)}"

    def export_fn(st):
        if not st or not st["records"]:
            raise gr.Error("Run or open a sweep first: there is nothing to export.")
        folder = Path(tempfile.mkdtemp(prefix="studio-export-"))
        title = f"{KINDS[st['kind']]} · {st['model_id']} · {st['prompt'][:80]}"
        images = list(st["images"]) + [None] * (len(st["rows"]) * len(st["columns"]) - len(st["images"]))
        png, csv_path = export_files(folder, st["group_id"], images, st["records"], st["rows"], st["columns"], title)
        return [str(png), str(csv_path)]

    export.click(export_fn, study, export_files_out, api_name="guidance_export", concurrency_limit=None)

    # -- the decomposition and the sampler comparison (their own sections) ------------------------------
    d_seed, d_scale = build_decomposition(services, [model, prompt, negative, steps, scheduler, rescale,
                                                     interval_start, interval_end, compare_plain], concurrency)
    grid.select(on_grid_select, study, [d_seed, d_scale, picked, picked_info], queue=False, api_visibility="private")
    table.select(on_table_select, study, [d_seed, d_scale, picked, picked_info], queue=False,
                 api_visibility="private")
    sampler = build_sampler_comparison(services, model, prompt, negative, defaults["guidance_scale"], concurrency)
    s_outputs, s_event = sampler.outputs, sampler.finished

    with gr.Accordion("Saved sweeps (reopen one with its grid and plots)", open=False):
        with gr.Row():
            saved = gr.Dropdown([], label="Saved sweeps and comparisons", scale=4, elem_id="guidance-saved",
                                allow_custom_value=True)
            saved_refresh = gr.Button("↻", size="sm", scale=0)
            saved_open = gr.Button("Open", scale=1, elem_id="guidance-open")

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
        if group.kind == SAMPLER_KIND:
            shown = [gr.skip()] * len(sweep_outputs) + sampler.values(info, state, new_grid=True)
        else:
            shown = sweep_values(info, state, picked_reset=True) + [gr.skip()] * len(s_outputs)
        return shown + [gr.Tabs(selected="guidance")]

    open_outputs = sweep_outputs + s_outputs + [tabs]
    saved_open.click(open_group, saved, open_outputs, api_name="guidance_open", concurrency_limit=None)

    def model_changed(model_id):
        d, problem = model_defaults(services, model_id)
        note = None
        try:
            note = guidance_note(services.registry.get(model_id).path) if model_id else None
        except ModelLoadError:
            pass
        return (gr.Slider(value=d["num_inference_steps"]), gr.Dropdown(value=scheduler_default(services, model_id, d)),
                gr.Number(value=d["guidance_scale"]), note or problem or "Ready.")

    model.input(model_changed, model, [steps, scheduler, sampler.guidance, status], queue=False,
                api_visibility="private")
    return GuidanceTab(open_group=open_group, open_outputs=open_outputs, saved=saved, saved_choices=saved_choices,
                       finished=[run_event, s_event])

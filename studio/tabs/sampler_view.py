"""The Guidance Explorer's sampler and step comparison: one prompt and seed, schedulers x step counts."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.events import GenerationCancelled
from pipelines.guidance_sweep import DEFAULT_STEP_COUNTS, run_sampler_grid
from pipelines.schedulers import SCHEDULERS

from ..services import Services
from ..sweeps import SAMPLER_KIND, build_sampler_spec, cells_table, group_data, save_cell, start_group
from .studies import (SAMPLER_PLOTS, grid_items, load_guided_model, metric_plot, new_study, sampler_plot_values,
                      scorer, stream_cells)


@dataclass
class SamplerSection:
    outputs: list  # status, grid, plots..., table, state
    guidance: gr.Number
    finished: object  # the run's event

    def values(self, info: str, state: dict, new_grid: bool = False) -> list:
        """``outputs`` showing a comparison; a new grid (a first frame, a reopened comparison) also
        sets the grid's number of columns."""
        items = grid_items(state)
        return [info, gr.Gallery(value=items, columns=max(len(state["columns"]), 1)) if new_grid else items,
                *sampler_plot_values(state["records"]), cells_table(state["records"]), state]


def build_sampler_comparison(services: Services, model, prompt, negative, default_guidance: float,
                             concurrency: dict) -> SamplerSection:
    with gr.Accordion("Sampler and step comparison: same prompt and seed, schedulers x step counts", open=False):
        with gr.Row():
            schedulers = gr.CheckboxGroup([(c.label, c.name) for c in SCHEDULERS.values()],
                                          value=["ddim", "euler", "dpmpp_2m", "unipc"], label="Schedulers")
            step_counts = gr.Textbox(label="Step counts", value=", ".join(map(str, DEFAULT_STEP_COUNTS)))
            seed = gr.Number(value=0, label="Seed", precision=0)
            guidance = gr.Number(value=default_guidance, label="Guidance scale")
        run = gr.Button("Run comparison", variant="primary", elem_id="sampler-run")
        status = gr.Markdown("", elem_id="sampler-status")
        grid = gr.Gallery(label="Rows = schedulers, columns = step counts", columns=len(DEFAULT_STEP_COUNTS),
                          height=320, object_fit="contain", allow_preview=False, elem_id="sampler-grid",
                          interactive=False, format="png")
        with gr.Row():
            plots = [metric_plot(m, "steps", f"sampler-plot-{m}", "steps") for m in SAMPLER_PLOTS]
        table = gr.Dataframe(label="Every cell", interactive=False, wrap=True)
    study = gr.State(None)
    outputs = [status, grid, *plots, table, study]
    section = SamplerSection(outputs, guidance, None)

    def sampler_fn(model_id, prompt_v, negative_v, seed_v, guidance_v, schedulers_v, counts_v, request: gr.Request,
                   progress=gr.Progress()):
        try:
            spec = build_sampler_spec(model_id, prompt_v, negative_v, seed_v, guidance_v, schedulers_v, counts_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        m = load_guided_model(services, spec.model_id)
        clip = scorer()
        group_id = start_group(services.gallery, SAMPLER_KIND, spec)
        state = new_study(SAMPLER_KIND, spec, group_id)
        total_steps = sum(spec.step_counts) * len(spec.schedulers)
        n = len(spec.schedulers) * len(spec.step_counts)
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)
        yield section.values(f"Cell 1 of {n} ...", state, new_grid=True)

        def grid_cells(on_step):
            return run_sampler_grid(m, spec.prompt, spec.seed, spec.schedulers, spec.step_counts,
                                    guidance_scale=spec.guidance, negative_prompt=spec.negative_prompt, scorer=clip,
                                    cancel=flag, on_step=on_step)

        cells, ids, done_steps = [], [], 0
        try:
            for item in stream_cells(grid_cells, flag):
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
                yield section.values(f"Cell {len(cells)} of {n} done", state)
        except GenerationCancelled:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="cancelled")
            yield [f"Cancelled after {len(cells)} of {n} cells (saved as comparison #{group_id}).",
                   *[gr.skip()] * (len(outputs) - 1)]
            return
        except Exception as exc:
            services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="failed")
            if isinstance(exc, ValueError):
                raise gr.Error(str(exc)) from None
            raise
        finally:
            services.jobs.finish(key, flag)
        services.gallery.update_group(group_id, data=group_data(spec, cells, ids, []), status="done")
        yield section.values(f"Done: {n} cells, saved as comparison #{group_id}.", state)

    section.finished = run.click(sampler_fn, [model, prompt, negative, seed, guidance, schedulers, step_counts],
                                 outputs, api_name="sampler_comparison", **concurrency)
    return section

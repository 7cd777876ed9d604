"""Compare families (in the Generate tab): the form's prompt and seed through several models side by side
at a matched number of network evaluations, each with its trajectory and judge score, saved as one
gallery group. The engine is :mod:`pipelines.compare`."""
from __future__ import annotations

from typing import Any, Iterator, Optional

import gradio as gr
import pandas as pd

from pipelines.compare import FamilyRun, parse_nfe, run_comparison
from pipelines.events import GenerationCancelled
from pipelines.registry import ModelLoadError

from ..generation import decode_trajectory, resolve_seed, save_result
from ..services import Services
from ..sweeps import grid_png
from .how import how_panel
from .studies import stream_cells
from pipelines.text_limits import has_visible_text

COMPARE_KIND = "family_comparison"
FRAMES = 6  # trajectory columns: x0 estimates at 1/6 ... 6/6 of each run
TABLE_COLUMNS = ["model_id", "family", "network_evaluations", "steps", "guidance_scale", "scheduler", "adherence",
                 "fidelity", "seconds"]
HOW = """The families reach an image by different routes; the trajectory sheet shows each route's x0 estimate at the same
fractions of its run. Latent diffusion and DiT both predict the noise ε; a DiT cuts the latent into p×p patches and
runs transformer blocks over them, conditioned on a class label (a typed prompt is mapped to the nearest class
name). A flow model (SD3 format) predicts a velocity v = ε − x₀ along the straight path x_t = (1−t)·x₀ + t·ε and
integrates dx/dt = v_θ(x_t, t) from noise (t = 1) to data (t = 0) with Euler steps:

**x_{t−Δt} = x_t − Δt·v_θ(x_t, t)**

Each step is one network evaluation, so **Network evaluations** sets each diffusion or flow model's step count. A
token model (VQGAN + prior) instead writes its grid of codebook ids one per evaluation, each drawn from
softmax(logits / temperature), so its count is its grid size whatever the budget. Evaluations are counted with a
hook on each network; adherence and fidelity in the table come from the Shapes judge."""


def default_models(services: Services) -> list[str]:
    """One model per family, builtin ones first (the registry's order)."""
    entries = sorted(services.registry.entries(), key=lambda e: e.source != "builtin")
    picked: dict[str, str] = {}
    for e in entries:
        picked.setdefault(e.family, e.id)
    return list(picked.values())


def _caption(run: FamilyRun) -> str:
    score = "n/a" if run.adherence is None else f"{run.adherence:.2f}"
    return f"{run.family} · {run.model_id} · {run.network_evaluations} NFE · adherence {score}"


def _table(runs: list[FamilyRun]) -> pd.DataFrame:
    return pd.DataFrame([r.metrics() for r in runs], columns=TABLE_COLUMNS)


def _sheet(runs: list[FamilyRun], title: str):
    columns = [f"{round(100 * (k + 1) / FRAMES)}%" for k in range(FRAMES)]
    images: list[Optional[Any]] = []
    for run in runs:
        row = list(run.frames)[:FRAMES]
        images += row + [None] * (FRAMES - len(row))
    return grid_png(images, [f"{r.family} ({r.network_evaluations} NFE)" for r in runs], columns, title, cell=96)


def build_compare_section(services: Services, prompt: gr.Textbox, negative: gr.Textbox, seed: gr.Number) -> Any:
    """The accordion under the Generate form; returns the finished event (for gallery refreshes)."""
    choices = [e.id for e in services.registry.entries()]
    with gr.Accordion("Compare families: same prompt and seed, matched network evaluations", open=False):
        gr.Markdown("Each model runs at its own default settings (guidance, scheduler, temperature) with "
                    "*Network evaluations* sampler steps; a token model always writes its whole grid, one "
                    "evaluation per token. Evaluations are counted, not assumed. All results go to the gallery "
                    "as one group.")
        how_panel(HOW, "compare-how")
        with gr.Row():
            models = gr.CheckboxGroup(choices, value=default_models(services), label="Models to compare",
                                      elem_id="compare-models", scale=3)
            nfe = gr.Number(value=16, precision=0, minimum=1, label="Network evaluations", scale=1)
        run_btn = gr.Button("Compare families", variant="primary", elem_id="compare-button")
        status = gr.Markdown("", elem_id="compare-status")
        finals = gr.Gallery(label="Final images", columns=4, height=260, type="pil", format="png",
                            interactive=False, object_fit="contain", elem_id="compare-result")
        sheet = gr.Image(label="Trajectories: x0 estimate at the same fractions of each run", type="pil",
                         interactive=False, elem_classes=["pixel-view"])
        table = gr.Dataframe(headers=TABLE_COLUMNS, label="Per model", interactive=False, elem_id="compare-table")

    def compare_fn(model_ids, nfe_v, prompt_v, negative_v, seed_v, request: gr.Request = None,
                   progress=gr.Progress()) -> Iterator[tuple]:
        try:
            if not has_visible_text(prompt_v):
                raise ValueError("Type a prompt in the form above first.")
            if not model_ids:
                raise ValueError("Tick at least one model to compare.")
            n = parse_nfe(nfe_v)
            seed_value = resolve_seed(seed_v)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        loaded = []
        for model_id in model_ids:
            try:
                loaded.append((model_id, services.models.get(model_id), services.registry.get(model_id).path))
            except ModelLoadError as exc:
                raise gr.Error(str(exc)) from None
        key = request.session_hash if request is not None else "api"
        flag = services.jobs.start(key)
        title = f"Compare families: {len(loaded)} models · {n} NFE · {prompt_v[:60]}"
        group_id = services.gallery.create_group(kind=COMPARE_KIND, title=title, model_id=",".join(model_ids),
                                                 prompt=prompt_v, data={"nfe": n, "seed": seed_value, "runs": []})
        runs: list[FamilyRun] = []
        try:
            cells = stream_cells(lambda on_step: run_comparison(loaded, prompt_v, seed_value, n,
                                                                negative_prompt=negative_v or "", frames=FRAMES,
                                                                cancel=flag, on_step=on_step), flag)
            for kind, *item in cells:
                if kind == "step":
                    i, event = item
                    progress((event.step + 1, event.num_steps), desc=f"{model_ids[i]}: step {event.step + 1}")
                    continue
                run = item[0]
                model = loaded[run.index][1]
                frames = [decode_trajectory(model.preview, run.result, 0)]
                (gid,) = save_result(services.gallery, run.result, frames, group_id=group_id,
                                     extra_params={"group": {"id": group_id, "cell": run.index},
                                                   "metrics": {"adherence": run.adherence, "fidelity": run.fidelity,
                                                               "network_evaluations": run.network_evaluations}})
                runs.append(run)
                services.gallery.update_group(group_id, data={"nfe": n, "seed": seed_value, "runs": [
                    r.metrics() for r in runs]})
                yield (f"Model {len(runs)} of {len(loaded)} done (gallery #{gid}).",
                       [(r.image, _caption(r)) for r in runs], _sheet(runs, title), _table(runs))
        except GenerationCancelled:
            services.gallery.update_group(group_id, status="cancelled")
            yield (f"Cancelled: {len(runs)} of {len(loaded)} models finished (kept in group #{group_id}).",
                   gr.skip(), gr.skip(), gr.skip())
            return
        except ValueError as exc:
            services.gallery.update_group(group_id, status="failed")
            raise gr.Error(str(exc)) from None
        finally:
            services.jobs.finish(key, flag)
        services.gallery.update_group(group_id, status="done")
        yield (f"Done: {len(runs)} models, seed {seed_value}, saved as gallery group #{group_id}.",
               [(r.image, _caption(r)) for r in runs], _sheet(runs, title), _table(runs))

    return run_btn.click(compare_fn, [models, nfe, prompt, negative, seed], [status, finals, sheet, table],
                         api_name="compare_families", concurrency_limit=1,
                         concurrency_id=f"model-{services.device.device}")

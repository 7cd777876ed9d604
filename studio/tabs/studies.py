"""Pieces the Guidance Explorer's sections share: the CLIP scorer, metric plots, the cell stream of a
study run in a worker thread, and loading a model that has guidance."""
from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import gradio as gr
import pandas as pd

from pipelines.model_files import guidance_note
from pipelines.registry import ModelLoadError
from pipelines.streaming import Finished, iterate_steps

from ..services import Services
from ..sweeps import METRIC_TITLES, adherence_frame, cell_caption, metric_frame, sampler_points

if TYPE_CHECKING:  # pipelines.metrics imports torch: loaded with the scorer, on a study's first run
    from pipelines.metrics import ClipScorer

log = logging.getLogger(__name__)
SWEEP_PLOTS = ("adherence", "clip_score", "diversity", "colourfulness")
SAMPLER_PLOTS = ("fidelity", "clip_score", "seconds")
_scorer_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _builtin_scorer() -> Optional[ClipScorer]:
    from pipelines.metrics import BUILTIN_CLIP_DIR, ClipScorer

    if not (BUILTIN_CLIP_DIR / "open_clip_config.json").is_file():
        log.warning("No builtin CLIP at %s: sweeps run without CLIP score and diversity", BUILTIN_CLIP_DIR)
        return None
    return ClipScorer.builtin()


def scorer() -> Optional[ClipScorer]:
    """The shipped mini-CLIP for CLIP scores, loaded once (None when its folder is missing)."""
    with _scorer_lock:
        return _builtin_scorer()


def metric_plot(metric: str, x: str, elem_id: str, x_title: str) -> gr.LinePlot:
    # starts empty (None): Gradio 6 draws no lines for a colour series whose first value was an empty frame
    return gr.LinePlot(None, x=x, y="value", color="series",
                       title=METRIC_TITLES[metric], x_title=x_title, y_title=metric.replace("_", " "),
                       tooltip="all", height=280, elem_id=elem_id,
                       label=METRIC_TITLES[metric] + " · drag across points to see their images")


def _or_none(frame: pd.DataFrame) -> Optional[pd.DataFrame]:
    """An empty plot is None (see :func:`metric_plot`)."""
    return frame if len(frame) else None


def sweep_plot_values(points: list[dict]) -> list[Optional[pd.DataFrame]]:
    return [_or_none(adherence_frame(points) if m == "adherence" else metric_frame(points, m)) for m in SWEEP_PLOTS]


def sampler_plot_values(records: list[dict]) -> list[Optional[pd.DataFrame]]:
    pts = sampler_points(records)
    return [_or_none(metric_frame(pts, m, x="steps", series="scheduler")) for m in SAMPLER_PLOTS]


def grid_items(study: dict) -> list[tuple[Any, str]]:
    return [(img, cell_caption(m, study["kind"])) for img, m in zip(study["images"], study["records"])
            if img is not None]


def stream_cells(make_cells: Callable[[Callable], Iterator], flag) -> Iterator[tuple]:
    """Run ``make_cells(on_step)`` in a worker thread; yield ``("step", cell_index, event)`` and
    ``("cell", cell)`` as they happen (errors and cancellation re-raised here)."""
    def work(emit):
        for cell in make_cells(lambda i, e: emit(("step", i, e))):
            emit(("cell", cell))

    for item in iterate_steps(work, flag):
        if isinstance(item, Finished):
            return
        yield item


def new_study(kind: str, spec: Any, group_id: Optional[int]) -> dict:
    """The per-session state of a study shown in the tab (records, images, labels)."""
    return {"kind": kind, "group_id": group_id, "prompt": spec.prompt, "model_id": spec.model_id,
            "rows": spec.row_labels(), "columns": spec.column_labels(), "records": [], "images": [],
            "points": [], "settings": spec.settings()}


def load_guided_model(services: Services, model_id: str) -> Any:
    """The loaded model, or a gr.Error that says why it cannot be studied (unloadable, no guidance)."""
    try:
        note = guidance_note(services.registry.get(model_id).path)
    except ModelLoadError:
        note = None  # services.models.get names the problem below
    if note:
        raise gr.Error(note)
    try:
        model = services.models.get(model_id)
    except ModelLoadError as exc:
        raise gr.Error(str(exc)) from None
    if not getattr(model, "supports_guidance", False):
        raise gr.Error(f"Model `{model_id}` has no classifier-free guidance to explore.")
    return model

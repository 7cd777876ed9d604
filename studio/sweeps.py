"""UI-free glue of the Guidance Explorer: form values -> a sweep spec, cells -> gallery rows and a
group, cells -> tables, plot frames, a labelled PNG grid and a CSV; a saved group -> cells again."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from pipelines.guidance_sweep import (MAX_CELLS, PLAIN_CFG, GuidanceVariant, ScalePoint, SweepCell, check_grid,
                                      parse_scales, parse_seeds, parse_step_counts)
from pipelines.schedulers import SCHEDULERS

from .forms import number, whole_number
from .gallery import Gallery
from pipelines.text_limits import has_visible_text

SWEEP_KIND = "guidance_sweep"
SAMPLER_KIND = "sampler_grid"
BATCH_KIND = "prompt_batch"  # prompts x seeds from ``python -m studio.batch`` (a sweep's data layout)
KINDS = {SWEEP_KIND: "guidance sweep", SAMPLER_KIND: "sampler comparison", BATCH_KIND: "prompt batch"}
MODEL_DEFAULT = "model default"
# The metrics every cell carries, with their plot titles.
METRIC_TITLES = {
    "adherence": "Judge adherence (share of the prompt's attributes right)",
    "fidelity": "Judge fidelity (graded closeness to each attribute)",
    "clip_score": "CLIP score (cosine of prompt and image embeddings)",
    "diversity": "Diversity across seeds (mean pairwise 1 - cos)",
    "colourfulness": "Colourfulness (Hasler & Süsstrunk)",
    "seconds": "Seconds per image",
}


@dataclass(frozen=True)
class SweepSpec:
    """A validated guidance sweep: what to run and how to label it."""

    model_id: str
    prompt: str
    negative_prompt: str
    scales: list[float]
    seeds: list[int]
    steps: int
    scheduler: Optional[str]
    variants: list[GuidanceVariant] = field(default_factory=lambda: [PLAIN_CFG])

    @property
    def num_cells(self) -> int:
        return len(self.scales) * len(self.seeds) * len(self.variants)

    def row_labels(self) -> list[str]:
        many = len(self.variants) > 1
        return [f"{v.name} · seed {s}" if many else f"seed {s}" for v in self.variants for s in self.seeds]

    def column_labels(self) -> list[str]:
        return [f"w = {s:g}" for s in self.scales]

    def settings(self) -> dict[str, Any]:
        return {"negative_prompt": self.negative_prompt, "scales": self.scales, "seeds": self.seeds,
                "steps": self.steps, "scheduler": self.scheduler,
                "variants": [{"name": v.name, "guidance_rescale": v.guidance_rescale,
                              "guidance_interval": v.guidance_interval} for v in self.variants],
                "rows": self.row_labels(), "columns": self.column_labels()}


def _prompt(prompt: Any) -> str:
    if not has_visible_text(prompt):
        raise ValueError("Type a prompt first (for example: a red triangle on a white background).")
    return prompt


def _scheduler(value: Any) -> Optional[str]:
    if value in (None, "", MODEL_DEFAULT):
        return None
    if value not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {value!r}; choose one of {', '.join(SCHEDULERS)}.")
    return str(value)


def guidance_variants(rescale: Any, interval_start: Any, interval_end: Any,
                      compare_plain: Any) -> list[GuidanceVariant]:
    """The sweep's series: plain CFG, and/or CFG with rescale and/or an interval (given in percent)."""
    r = number(rescale if rescale not in (None, "") else 0, "Guidance rescale")
    lo = number(interval_start if interval_start not in (None, "") else 0, "Interval start")
    hi = number(interval_end if interval_end not in (None, "") else 100, "Interval end")
    if not 0 <= r <= 1:
        raise ValueError(f"Guidance rescale must be from 0 to 1 (got {r:g}).")
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"The guidance interval must satisfy 0 ≤ start < end ≤ 100 % (got {lo:g}–{hi:g} %).")
    interval = None if (lo, hi) == (0, 100) else (lo / 100, hi / 100)
    if r == 0 and interval is None:
        return [PLAIN_CFG]
    variant = GuidanceVariant(r, interval)
    return [PLAIN_CFG, variant] if compare_plain else [variant]


def build_sweep_spec(model_id: Any, prompt: Any, negative: Any, scales: Any, seeds: Any, steps: Any, scheduler: Any,
                     rescale: Any = 0, interval_start: Any = 0, interval_end: Any = 100,
                     compare_plain: Any = True) -> SweepSpec:
    """Form values -> a spec; ValueError with the reason (empty or non-numeric scales, > 64 cells, ...)."""
    if not model_id:
        raise ValueError("Pick a model first (none is selected).")
    spec = SweepSpec(model_id=str(model_id), prompt=_prompt(prompt),
                     negative_prompt=negative if isinstance(negative, str) else "",
                     scales=parse_scales(scales), seeds=parse_seeds(seeds), steps=whole_number(steps, "Steps"),
                     scheduler=_scheduler(scheduler),
                     variants=guidance_variants(rescale, interval_start, interval_end, compare_plain))
    check_grid(spec.scales, spec.seeds, len(spec.variants))
    return spec


@dataclass(frozen=True)
class SamplerSpec:
    model_id: str
    prompt: str
    negative_prompt: str
    seed: int
    guidance: float
    schedulers: list[Optional[str]]
    step_counts: list[int]

    def row_labels(self) -> list[str]:
        return [SCHEDULERS[s].label if s else MODEL_DEFAULT for s in self.schedulers]

    def column_labels(self) -> list[str]:
        return [f"{n} steps" for n in self.step_counts]

    def settings(self) -> dict[str, Any]:
        return {"negative_prompt": self.negative_prompt, "seed": self.seed, "guidance": self.guidance,
                "schedulers": self.schedulers, "step_counts": self.step_counts, "rows": self.row_labels(),
                "columns": self.column_labels()}


def build_sampler_spec(model_id: Any, prompt: Any, negative: Any, seed: Any, guidance: Any, schedulers: Any,
                       step_counts: Any) -> SamplerSpec:
    if not model_id:
        raise ValueError("Pick a model first (none is selected).")
    names = [_scheduler(s) for s in (schedulers or [])]
    if not names:
        raise ValueError("Tick at least one scheduler to compare.")
    counts = parse_step_counts(step_counts)
    seed_v = whole_number(seed, "Seed")
    if not 0 <= seed_v <= 2**32 - 1:
        raise ValueError(f"Seed must be a whole number from 0 to {2**32 - 1} (got {seed_v}).")
    n = len(names) * len(counts)
    if n > MAX_CELLS:
        raise ValueError(f"{len(names)} schedulers x {len(counts)} step counts = {n} cells; a comparison holds at "
                         f"most {MAX_CELLS} cells.")
    return SamplerSpec(str(model_id), _prompt(prompt), negative if isinstance(negative, str) else "", seed_v,
                       number(guidance, "Guidance scale"), list(dict.fromkeys(names)), counts)


# -- saving and reopening ------------------------------------------------------------------------

def start_group(gallery: Gallery, kind: str, spec: Any) -> int:
    title = (f"{KINDS[kind]}: {len(spec.row_labels())} x {len(spec.column_labels())} · {spec.prompt[:60]}")
    return gallery.create_group(kind=kind, title=title, model_id=spec.model_id, prompt=spec.prompt,
                                data={"settings": spec.settings(), "cells": [], "points": []})


def save_cell(gallery: Gallery, cell: SweepCell, group_id: int) -> int:
    """One gallery row for one cell (its recipe regenerates it), linked to the group."""
    result = cell.result
    params = replace(result, request=replace(result.request, num_images=1)).params()
    params["group"] = {"id": group_id, "cell": cell.index, "row": cell.row, "column": cell.column,
                       "variant": cell.variant}
    params["metrics"] = {k: v for k, v in cell.metrics().items()
                         if k in ("clip_score", "adherence", "fidelity", "colourfulness")}
    return gallery.save_image(cell.image, params=params,
                              fields={"media_type": "image", "family": result.family, "duration_s": cell.seconds,
                                      "status": "ok", "group_id": group_id})


def points_as_dicts(points: Sequence[ScalePoint]) -> list[dict[str, Any]]:
    return [{"variant": p.variant, "scale": p.scale, "clip_score": p.clip_score, "adherence": p.adherence,
             "fidelity": p.fidelity, "diversity": p.diversity, "colourfulness": p.colourfulness,
             "seconds": p.seconds, "cells": p.cells} for p in points]


def group_data(spec: Any, cells: Sequence[SweepCell], ids: Sequence[int], points: Sequence[ScalePoint]) -> dict:
    return {"settings": spec.settings(),
            "cells": [c.metrics() | {"gallery_id": gid} for c, gid in zip(cells, ids)],
            "points": points_as_dicts(points)}


@dataclass
class SavedCell:
    """A cell read back from the gallery (image from its file; None when the row was deleted)."""

    metrics: dict[str, Any]
    image: Optional[Image.Image]


def load_group(gallery: Gallery, group_id: int) -> tuple[Any, list[SavedCell]]:
    """(group row, its cells in grid order). KeyError for an unknown id."""
    group = gallery.get_group(group_id)
    if group is None:
        raise KeyError(group_id)
    members = {row.id: row for row in gallery.group_members(group_id)}
    cells = []
    for record in group.data.get("cells", []):
        row = members.get(record.get("gallery_id"))
        image = None
        if row is not None:
            with Image.open(gallery.store.resolve(row.media_path)) as im:
                image = im.convert("RGB")
        cells.append(SavedCell(record, image))
    return group, cells


# -- tables, plots and exports ------------------------------------------------------------------

def cell_caption(m: dict[str, Any], kind: str = SWEEP_KIND) -> str:
    head = (f"seed {m['seed']} · w {m['scale']:g}" if kind == SWEEP_KIND
            else f"{m.get('scheduler') or MODEL_DEFAULT} · {m['steps']} steps")
    parts = [head]
    if m.get("variant") and m["variant"] != PLAIN_CFG.name:
        parts.append(m["variant"])
    if m.get("adherence") is not None:
        parts.append(f"adh {m['adherence']:.2f}")
    if m.get("clip_score") is not None:
        parts.append(f"clip {m['clip_score']:.3f}")
    return " · ".join(parts)


@dataclass
class DecompositionFrames:
    """One cell's CFG decomposition as pictures, one entry per step."""

    maps: list[dict[str, Image.Image]]  # eps_u, eps_c, w*(eps_c - eps_u), guided: diverging maps
    estimates: list[dict[str, Image.Image]]  # x0 under uncond / cond / guided, decoded
    captions: list[str]
    delta_norms: list[float]
    scales: list[float]


def decomposition_frames(model: Any, steps: Sequence[Any]) -> DecompositionFrames:
    """Pictures of :func:`pipelines.cfg_decomposition.decompose`'s steps (one colour scale per step)."""
    import torch

    from pipelines.previews import latent_heatmap

    maps, estimates, captions = [], [], []
    for s in steps:
        scaled = s.scale * s.delta
        vmax = max(float(t.abs().quantile(0.99)) for t in (s.eps_uncond, s.eps_cond, scaled, s.eps_guided))
        maps.append({"uncond": latent_heatmap(s.eps_uncond, vmax), "cond": latent_heatmap(s.eps_cond, vmax),
                     "delta": latent_heatmap(scaled, vmax), "guided": latent_heatmap(s.eps_guided, vmax)})
        decoded = model.preview.decode(torch.stack([s.x0_uncond, s.x0_cond, s.x0_guided]))
        estimates.append(dict(zip(("uncond", "cond", "guided"), decoded)))
        captions.append(f"Step {s.step + 1} of {len(steps)} · timestep {s.timestep:g} · w = {s.scale:g} · "
                        f"RMS(ε_c − ε_u) = {s.delta_norm:.4f} · colour scale ±{vmax:.3f}")
    return DecompositionFrames(maps, estimates, captions, [s.delta_norm for s in steps], [s.scale for s in steps])


def cells_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    cols = ["index", "variant", "seed", "scale", "scheduler", "steps", "adherence", "fidelity", "clip_score",
            "colourfulness", "seconds", "gallery_id"]
    rows = [[r.get(c) for c in cols] for r in records]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.round({"adherence": 3, "fidelity": 3, "clip_score": 4, "colourfulness": 1, "seconds": 3})


def metric_frame(points: Sequence[dict[str, Any]], metric: str, x: str = "scale",
                 series: str = "variant") -> pd.DataFrame:
    """Long frame (x, value, series) for one metric, rows without a value left out."""
    rows = [{x: p[x], "value": p[metric], "series": p[series] or MODEL_DEFAULT} for p in points
            if p.get(metric) is not None and not (isinstance(p[metric], float) and math.isnan(p[metric]))]
    return plot_frame(rows, x)


def plot_frame(rows: Sequence[dict[str, Any]], x: str) -> pd.DataFrame:
    """Rows -> (x, value, series) with fixed dtypes, also when empty: the plot's encoding (numeric
    axes, a categorical colour) is read from the dtypes, so an empty first value must not turn
    the axes categorical."""
    frame = pd.DataFrame(list(rows), columns=[x, "value", "series"])
    return frame.astype({x: "float64", "value": "float64", "series": "object"})


def adherence_frame(points: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Adherence and fidelity in one plot: series "<variant> · adherence" / "· fidelity"."""
    rows = []
    for metric in ("adherence", "fidelity"):
        for p in points:
            if p.get(metric) is not None:
                rows.append({"scale": p["scale"], "value": p[metric], "series": f"{p['variant']} · {metric}"})
    return plot_frame(rows, "scale")


def sampler_points(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per cell of a sampler comparison (x = steps, series = scheduler)."""
    return [dict(r, scheduler=r.get("scheduler") or MODEL_DEFAULT) for r in records]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid_png(images: Sequence[Optional[Image.Image]], rows: Sequence[str], columns: Sequence[str],
             title: str = "", cell: int = 128) -> Image.Image:
    """A labelled grid (row-major ``images``; None leaves a grey cell), pixel-sharp upscaling."""
    font = _font(14)
    left = max([int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(r, font=font)) for r in rows] + [40]) + 16
    top = 28 + (24 if title else 0)
    pad = 4
    width = left + len(columns) * (cell + pad) + pad
    height = top + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 6), title, fill="black", font=font)
    for c, label in enumerate(columns):
        draw.text((left + c * (cell + pad) + 4, top - 22), label, fill="black", font=font)
    for r, label in enumerate(rows):
        y = top + r * (cell + pad)
        draw.text((8, y + cell // 2 - 8), label, fill="black", font=font)
        for c in range(len(columns)):
            k = r * len(columns) + c
            x = left + c * (cell + pad)
            image = images[k] if k < len(images) else None
            if image is None:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 200, 200))
            else:
                canvas.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
    return canvas


def metrics_csv(records: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    frame = cells_table(records)
    frame.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()


def export_files(folder: Path, group_id: Optional[int], images: Sequence[Optional[Image.Image]],
                 records: Sequence[dict[str, Any]], rows: Sequence[str], columns: Sequence[str],
                 title: str) -> tuple[Path, Path]:
    """Write ``<name>-grid.png`` and ``<name>-metrics.csv`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"sweep-{group_id}" if group_id is not None else "sweep"
    png = folder / f"{name}-grid.png"
    grid_png(images, rows, columns, title).save(png)
    path_csv = folder / f"{name}-metrics.csv"
    path_csv.write_text(metrics_csv(records), encoding="utf-8")
    return png, path_csv

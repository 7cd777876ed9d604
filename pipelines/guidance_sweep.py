"""Guidance sweeps: one prompt over guidance scales x seeds, cell by cell, with measured curves.

The engine behind the Guidance Explorer (issue 5). A sweep is a grid, rows = seeds and columns
= scales; :func:`run_sweep` generates it row by row through the model's ordinary ``generate``
(so every cell equals a Generate-tab request with that seed and scale) and yields each cell as
soon as it is done, with its metrics (:mod:`pipelines.metrics`): CLIP score, Shapes adherence
when the prompt is in the Shapes vocabulary, colourfulness. :func:`summarise` turns the cells
into one point per scale, adding the diversity across seeds. A sweep may hold several
:class:`GuidanceVariant` series (guidance rescale, guidance in an interval of steps), measured in
the same curves. :func:`run_sampler_grid` is the same machinery over schedulers x step counts.
Classifier-free guidance: Ho & Salimans 2022; ``guidance <= 1`` runs the conditional branch alone.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from pipelines.requests import MAX_GUIDANCE, MAX_STEPS, ImageRequest

if TYPE_CHECKING:  # torch and the metrics load where a sweep runs, so importing this module stays cheap
    import torch

    from pipelines.metrics import ClipScorer

MAX_CELLS = 64
DEFAULT_SCALES = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0)
DEFAULT_SEEDS = (0, 1, 2, 3)
DEFAULT_STEP_COUNTS = (4, 8, 16, 25, 50)


def _tokens(text: Any, what: str) -> list[str]:
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if not isinstance(text, str) or not text.strip():
        example = {"scale": "1, 3, 7.5", "seed": "0, 1, 2", "step count": "4, 8, 16"}[what]
        raise ValueError(f"Give at least one {what} (for example: {example}).")
    return [t for t in re.split(r"[,\s;]+", text.strip()) if t]


def parse_scales(text: Any) -> list[float]:
    """'1, 2, 7.5' -> [1.0, 2.0, 7.5]; a clear ValueError for anything else."""
    scales = []
    for token in _tokens(text, "scale"):
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"{token!r} is not a number: scales are numbers such as 1, 3 or 7.5.") from None
        if not math.isfinite(value) or not 0 <= value <= MAX_GUIDANCE:
            raise ValueError(f"Scale {token} is out of range: scales go from 0 to {MAX_GUIDANCE:g}.")
        scales.append(value)
    return list(dict.fromkeys(scales))  # duplicates once, order kept


def parse_seeds(text: Any) -> list[int]:
    """'0, 1, 2' -> [0, 1, 2] (whole numbers from 0 to 2**32 - 1)."""
    seeds = []
    for token in _tokens(text, "seed"):
        if not re.fullmatch(r"\d+", token) or int(token) > 2**32 - 1:
            raise ValueError(f"{token!r} is not a seed: seeds are whole numbers from 0 to {2**32 - 1}.")
        seeds.append(int(token))
    return list(dict.fromkeys(seeds))


def parse_step_counts(text: Any) -> list[int]:
    """'4, 8, 16' -> [4, 8, 16] (whole numbers from 1 to the step limit)."""
    counts = []
    for token in _tokens(text, "step count"):
        if not re.fullmatch(r"\d+", token) or not 1 <= int(token) <= MAX_STEPS:
            raise ValueError(f"{token!r} is not a step count: use whole numbers from 1 to {MAX_STEPS}.")
        counts.append(int(token))
    return list(dict.fromkeys(counts))


def check_grid(scales: Sequence[float], seeds: Sequence[int], variants: int = 1) -> int:
    """Number of cells; ValueError when the grid is empty or larger than :data:`MAX_CELLS`."""
    n = len(scales) * len(seeds) * variants
    if n == 0:
        raise ValueError("The sweep needs at least one scale and one seed.")
    if n > MAX_CELLS:
        times = f" x {variants} guidance variants" if variants > 1 else ""
        raise ValueError(f"{len(scales)} scales x {len(seeds)} seeds{times} = {n} cells; a sweep holds at most "
                         f"{MAX_CELLS} cells. Use fewer scales or seeds.")
    return n


@dataclass(frozen=True)
class GuidanceVariant:
    """How guidance is applied in one series of a sweep (plain CFG, rescaled, or in an interval)."""

    guidance_rescale: float = 0.0
    guidance_interval: Optional[tuple[float, float]] = None  # fractions of the run

    @property
    def name(self) -> str:
        parts = []
        if self.guidance_rescale > 0:
            parts.append(f"rescale {self.guidance_rescale:g}")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            parts.append(f"interval {lo * 100:g}–{hi * 100:g}%")
        return "CFG, " + ", ".join(parts) if parts else "CFG"


PLAIN_CFG = GuidanceVariant()


@dataclass
class SweepCell:
    """One finished cell of a sweep or a sampler grid: its place, its image and its metrics."""

    index: int  # 0-based, row-major
    row: int
    column: int
    seed: int
    scale: float
    image: Any
    seconds: float
    clip_score: Optional[float]
    adherence: Optional[float]
    colourfulness: float
    fidelity: Optional[float] = None
    variant: str = PLAIN_CFG.name
    scheduler: Optional[str] = None  # None: the model's own
    steps: int = 0
    embedding: Optional[torch.Tensor] = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)  # the model's ImageResult (for saving)

    def metrics(self) -> dict[str, Any]:
        """The cell's place, settings and measurements as plain values (for tables, CSV, the gallery)."""
        return {"index": self.index, "row": self.row, "column": self.column, "seed": self.seed,
                "scale": self.scale, "variant": self.variant, "scheduler": self.scheduler, "steps": self.steps,
                "clip_score": self.clip_score, "adherence": self.adherence, "fidelity": self.fidelity,
                "colourfulness": self.colourfulness, "seconds": self.seconds}


@dataclass
class ScalePoint:
    """One point of the curves: a scale's means over the seeds, and the diversity across them."""

    scale: float
    clip_score: Optional[float]
    adherence: Optional[float]
    diversity: Optional[float]
    colourfulness: float
    seconds: float
    cells: list[int]
    fidelity: Optional[float] = None
    variant: str = PLAIN_CFG.name


@dataclass(frozen=True)
class PlannedCell:
    row: int
    column: int
    variant: str
    request: ImageRequest


def run_plan(model: Any, plan: Sequence[PlannedCell], prompt: str, scorer: Optional[ClipScorer], cancel: Any,
              on_step: Optional[Callable[[int, Any], None]]) -> Iterator[SweepCell]:
    from pipelines.metrics import colourfulness, shapes_adherence, shapes_fidelity

    text_embedding = scorer.text_embedding(prompt) if scorer is not None else None
    for index, planned in enumerate(plan):
        req = planned.request
        callback = (lambda event, i=index: on_step(i, event)) if on_step is not None else None
        start = time.perf_counter()
        result = model.generate(req, on_step=callback, cancel=cancel)
        seconds = time.perf_counter() - start
        image = result.images[0]
        embedding = scorer.image_embeddings([image])[0] if scorer is not None else None
        yield SweepCell(index=index, row=planned.row, column=planned.column, seed=req.seed,
                        scale=req.guidance_scale, image=image, seconds=seconds,
                        clip_score=float(embedding @ text_embedding) if embedding is not None else None,
                        adherence=shapes_adherence(image, prompt), colourfulness=colourfulness(image),
                        fidelity=shapes_fidelity(image, prompt), variant=planned.variant,
                        scheduler=req.scheduler, steps=req.num_inference_steps, embedding=embedding,
                        result=result)


def sweep_plan(prompt: str, scales: Sequence[float], seeds: Sequence[int], *, negative_prompt: str = "",
               steps: int = 25, scheduler: Optional[str] = None,
               variants: Sequence[GuidanceVariant] = (PLAIN_CFG,)) -> list[PlannedCell]:
    """Rows = (variant, seed), columns = scales; row-major."""
    check_grid(scales, seeds, len(variants))
    plan = []
    for v, variant in enumerate(variants):
        for s, seed in enumerate(seeds):
            for column, scale in enumerate(scales):
                req = ImageRequest(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                                   guidance_scale=float(scale), seed=int(seed), scheduler=scheduler,
                                   capture_trajectory=False, guidance_rescale=variant.guidance_rescale,
                                   guidance_interval=variant.guidance_interval)
                plan.append(PlannedCell(v * len(seeds) + s, column, variant.name, req))
    return plan


def run_sweep(model: Any, prompt: str, scales: Sequence[float], seeds: Sequence[int], *, negative_prompt: str = "",
              steps: int = 25, scheduler: Optional[str] = None, scorer: Optional[ClipScorer] = None,
              variants: Sequence[GuidanceVariant] = (PLAIN_CFG,), cancel: Any = None,
              on_step: Optional[Callable[[int, Any], None]] = None) -> Iterator[SweepCell]:
    """Generate the grid row by row; yield each cell when done. ``on_step(cell_index, event)`` per step."""
    plan = sweep_plan(prompt, scales, seeds, negative_prompt=negative_prompt, steps=steps, scheduler=scheduler,
                      variants=variants)
    yield from run_plan(model, plan, prompt, scorer, cancel, on_step)


def sampler_plan(prompt: str, seed: int, schedulers: Sequence[Optional[str]], step_counts: Sequence[int], *,
                 guidance_scale: float, negative_prompt: str = "") -> list[PlannedCell]:
    """Rows = schedulers, columns = step counts; one seed."""
    n = len(schedulers) * len(step_counts)
    if n == 0:
        raise ValueError("The comparison needs at least one scheduler and one step count.")
    if n > MAX_CELLS:
        raise ValueError(f"{len(schedulers)} schedulers x {len(step_counts)} step counts = {n} cells; a comparison "
                         f"holds at most {MAX_CELLS} cells.")
    return [PlannedCell(r, c, PLAIN_CFG.name,
                        ImageRequest(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=int(steps),
                                     guidance_scale=float(guidance_scale), seed=int(seed), scheduler=scheduler,
                                     capture_trajectory=False))
            for r, scheduler in enumerate(schedulers) for c, steps in enumerate(step_counts)]


def run_sampler_grid(model: Any, prompt: str, seed: int, schedulers: Sequence[Optional[str]],
                     step_counts: Sequence[int], *, guidance_scale: float, negative_prompt: str = "",
                     scorer: Optional[ClipScorer] = None, cancel: Any = None,
                     on_step: Optional[Callable[[int, Any], None]] = None) -> Iterator[SweepCell]:
    """The same prompt and seed across schedulers x step counts, with the sweep's metrics and timing."""
    plan = sampler_plan(prompt, seed, schedulers, step_counts, guidance_scale=guidance_scale,
                        negative_prompt=negative_prompt)
    yield from run_plan(model, plan, prompt, scorer, cancel, on_step)


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(cells: Sequence[SweepCell]) -> list[ScalePoint]:
    """One :class:`ScalePoint` per (variant, scale), in the order they first appear."""
    import torch

    from pipelines.metrics import diversity

    points = []
    for variant, scale in dict.fromkeys((c.variant, c.scale) for c in cells):
        group = [c for c in cells if c.scale == scale and c.variant == variant]
        embeddings = [c.embedding for c in group if c.embedding is not None]
        points.append(ScalePoint(
            scale=scale, clip_score=_mean([c.clip_score for c in group]),
            adherence=_mean([c.adherence for c in group]),
            diversity=diversity(torch.stack(embeddings)) if len(embeddings) >= 2 else None,
            colourfulness=sum(c.colourfulness for c in group) / len(group),
            seconds=sum(c.seconds for c in group) / len(group), cells=[c.index for c in group],
            fidelity=_mean([c.fidelity for c in group]), variant=variant))
    return points


def format_table(points: Sequence[ScalePoint]) -> str:
    """The curves as a text table (one line per variant and scale)."""
    def f(v: Optional[float], digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"{'variant':<28} {'scale':>6} {'adherence':>9} {'fidelity':>8} {'clip':>7} {'diversity':>9} "
             f"{'colourful':>9} {'s/image':>7}"]
    for p in points:
        lines.append(f"{p.variant:<28} {p.scale:>6g} {f(p.adherence):>9} {f(p.fidelity):>8} {f(p.clip_score):>7} "
                     f"{f(p.diversity):>9} {f(p.colourfulness, 1):>9} {p.seconds:>7.2f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[ScalePoint]:
    """``python -m pipelines.guidance_sweep``: run a sweep on the CPU and print its curves."""
    import argparse

    from pipelines.default_settings import DefaultSettingsError, read_default_settings
    from pipelines.devices import resolve_device
    from pipelines.families import ModelCache
    from pipelines.metrics import ClipScorer
    from pipelines.registry import ModelLoadError, ModelRegistry

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.guidance_sweep",
        description="Guidance sweep with measured curves (the Guidance Explorer's engine).")
    parser.add_argument("--model", default="builtin/shapes-ldm")
    parser.add_argument("--prompt", default="a red triangle on a white background")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default steps")
    parser.add_argument("--scheduler", default=None, help="default: the model's default scheduler")
    parser.add_argument("--rescale", type=float, default=None, help="add a series with this guidance rescale")
    parser.add_argument("--interval", default=None, help="add a series with guidance only in START,END (fractions)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        scales, seeds = parse_scales(args.scales), parse_seeds(args.seeds)
        variants = [PLAIN_CFG]
        interval = None
        if args.interval:
            lo, hi = (float(v) for v in args.interval.split(","))
            interval = (lo, hi)
        if args.rescale or interval:
            variants.append(GuidanceVariant(args.rescale or 0.0, interval))
        registry = ModelRegistry()
        defaults = read_default_settings(registry.get(args.model).path)
        started = time.perf_counter()
        model = ModelCache(registry, resolve_device(args.device)).get(args.model)
        scorer = ClipScorer.builtin()
        cells = list(run_sweep(model, args.prompt, scales, seeds, negative_prompt=args.negative_prompt,
                               steps=args.steps or defaults["num_inference_steps"],
                               scheduler=args.scheduler or defaults["scheduler"], scorer=scorer, variants=variants))
    except (ValueError, ModelLoadError, DefaultSettingsError) as exc:
        parser.exit(2, f"error: {exc}\n")
    points = summarise(cells)
    print(f"{args.model} · {args.prompt!r} · {len(cells)} cells · "
          f"{args.steps or defaults['num_inference_steps']} steps · model default guidance "
          f"{defaults['guidance_scale']:g}")
    print(format_table(points))
    print(f"total {time.perf_counter() - started:.1f} s including model load")
    return points


if __name__ == "__main__":
    main()

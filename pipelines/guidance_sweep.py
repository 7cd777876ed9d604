"""Guidance sweeps: one prompt over guidance scales x seeds, cell by cell, with measured curves.

The engine behind the Guidance Explorer (issue 5). A sweep is a grid, rows = seeds and columns
= scales; :func:`run_sweep` generates it row by row through the model's ordinary ``generate``
(so every cell equals a Generate-tab request with that seed and scale) and yields each cell as
soon as it is done, with its metrics (:mod:`pipelines.metrics`): CLIP score, Shapes adherence
when the prompt is in the Shapes vocabulary, colourfulness. :func:`summarise` turns the cells
into one point per scale, adding the diversity across seeds. Classifier-free guidance: Ho &
Salimans 2022; ``guidance <= 1`` runs the conditional branch alone.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from pipelines.metrics import ClipScorer, colourfulness, diversity, shapes_adherence
from pipelines.requests import MAX_GUIDANCE, ImageRequest

MAX_CELLS = 64
DEFAULT_SCALES = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0)
DEFAULT_SEEDS = (0, 1, 2, 3)


def _tokens(text: Any, what: str) -> list[str]:
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Give at least one {what} (for example: {'1, 3, 7.5' if what == 'scale' else '0, 1, 2'}).")
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


def check_grid(scales: Sequence[float], seeds: Sequence[int]) -> int:
    """Number of cells; ValueError when the grid is empty or larger than :data:`MAX_CELLS`."""
    n = len(scales) * len(seeds)
    if n == 0:
        raise ValueError("The sweep needs at least one scale and one seed.")
    if n > MAX_CELLS:
        raise ValueError(f"{len(scales)} scales x {len(seeds)} seeds = {n} cells; a sweep holds at most "
                         f"{MAX_CELLS} cells. Use fewer scales or seeds.")
    return n


@dataclass
class SweepCell:
    """One finished cell: its place, its image and its metrics."""

    index: int  # 0-based, row-major (seed row, scale column)
    row: int
    column: int
    seed: int
    scale: float
    image: Any
    seconds: float
    clip_score: Optional[float]
    adherence: Optional[float]
    colourfulness: float
    embedding: Optional[torch.Tensor] = field(default=None, repr=False)
    result: Any = field(default=None, repr=False)  # the model's ImageResult (for saving)


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


def run_sweep(model: Any, prompt: str, scales: Sequence[float], seeds: Sequence[int], *, negative_prompt: str = "",
              steps: int = 25, scheduler: Optional[str] = None, scorer: Optional[ClipScorer] = None,
              cancel: Any = None, on_step: Optional[Callable[[int, Any], None]] = None) -> Iterator[SweepCell]:
    """Generate the grid row by row; yield each cell when done. ``on_step(cell_index, event)`` per step."""
    check_grid(scales, seeds)
    text_embedding = scorer.text_embedding(prompt) if scorer is not None else None
    index = 0
    for row, seed in enumerate(seeds):
        for column, scale in enumerate(scales):
            req = ImageRequest(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps,
                               guidance_scale=float(scale), seed=int(seed), scheduler=scheduler,
                               capture_trajectory=False)
            callback = (lambda event, i=index: on_step(i, event)) if on_step is not None else None
            start = time.perf_counter()
            result = model.generate(req, on_step=callback, cancel=cancel)
            seconds = time.perf_counter() - start
            image = result.images[0]
            embedding = scorer.image_embeddings([image])[0] if scorer is not None else None
            yield SweepCell(index=index, row=row, column=column, seed=int(seed), scale=float(scale), image=image,
                            seconds=seconds,
                            clip_score=float(embedding @ text_embedding) if embedding is not None else None,
                            adherence=shapes_adherence(image, prompt), colourfulness=colourfulness(image),
                            embedding=embedding, result=result)
            index += 1


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(cells: Sequence[SweepCell]) -> list[ScalePoint]:
    """One :class:`ScalePoint` per scale (in the order scales first appear)."""
    points = []
    for scale in dict.fromkeys(c.scale for c in cells):
        group = [c for c in cells if c.scale == scale]
        embeddings = [c.embedding for c in group if c.embedding is not None]
        points.append(ScalePoint(
            scale=scale, clip_score=_mean([c.clip_score for c in group]),
            adherence=_mean([c.adherence for c in group]),
            diversity=diversity(torch.stack(embeddings)) if len(embeddings) >= 2 else None,
            colourfulness=sum(c.colourfulness for c in group) / len(group),
            seconds=sum(c.seconds for c in group) / len(group), cells=[c.index for c in group]))
    return points

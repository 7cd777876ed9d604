"""Judge for the Shapes world: reads colour, shape, size, position and background from an
image with classical computer vision (numpy + the world's own renderer), and checks them
against what a prompt or recipe asked for.

Pipeline of :func:`describe` (64x64 canvas; other sizes are box-resized first):

1. background: median of the border pixels -> nearest background colour; ``None`` when the
   median is far from every background or fewer than half the border pixels are near it;
2. object colour: pixels far from the background (> ``OBJECT_DIST``), eroded once so only
   confident interior pixels remain; their median -> nearest palette colour (``None`` when
   farther than ``COLOUR_TOL``);
3. coverage: each pixel's fraction of object colour along the line background -> colour
   (anti-aliased edges count partially; off-line pixels and coverage below ``ALPHA_MIN``,
   the noise floor, count 0). Without a colour, the
   binary far-from-background mask is used instead;
4. position: coverage-weighted centroid -> nearest anchor; size: the bounding radius that
   gives the best shape template the measured area, thresholded at sqrt(9 * 17) px;
5. shape: best soft IoU between the coverage and each shape's template rendered by
   :func:`pipelines.worlds.shapes.coverage` at the centroid with equal area (``None`` below
   ``SHAPE_MIN_IOU``).

An object counts as found when its area is at least ``MIN_AREA`` px and either its colour is
recognised or some template of plausible size fits (IoU >= ``SHAPE_MIN_IOU``, bounding
radius within ``RADIUS_RANGE``); otherwise every object
attribute is ``None``, which :func:`judge` counts as wrong. Noise therefore scores ~0 on
object attributes instead of being accidentally right.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.judges import accuracy
from pipelines.worlds.shapes import (ATTRIBUTES, BACKGROUNDS, COLOURS, IMAGE_SIZE, POSITIONS, SHAPES,
                                     SIZES, ShapeRecipe, coverage, unit_area)

BG_TOL = 40.0          # max RGB distance of the border median / border pixels to the background
OBJECT_DIST = 50.0     # RGB distance from the background that marks a pixel as object
COLOUR_TOL = 60.0      # max RGB distance from the object's median colour to its palette colour
RESIDUAL_TOL = 40.0    # max distance of a pixel from the background -> colour line
ALPHA_MIN = 0.25       # coverage below this counts as 0 (in images and templates): noise floor
MIN_AREA = 40.0        # px; the smallest shape (small triangle) covers ~105 px
SHAPE_MIN_IOU = 0.6    # soft IoU a template needs to name the shape
SIZE_THRESHOLD = math.sqrt(SIZES["small"] * SIZES["large"])  # ~12.4 px bounding radius
RADIUS_RANGE = (0.5 * SIZES["small"], 1.6 * SIZES["large"])  # outside it: size None

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_COLOUR_NAMES = list(COLOURS)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)
_POS_NAMES = list(POSITIONS)
_POS_XY = np.array(list(POSITIONS.values()), dtype=np.float32)
_OBJECT_KEYS = ("colour", "shape", "size", "position")


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as float32 (64, 64, 3) in 0..255 (floats in [0, 1] are scaled up)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if arr.dtype.kind == "f" and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        else:
            return arr.astype(np.float32)
    img = image.convert("RGB")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def _background(arr: np.ndarray) -> tuple[str | None, np.ndarray]:
    """Background name (or None) and the RGB the object should be measured against."""
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    median = np.median(border, axis=0)
    k = int(np.argmin(np.linalg.norm(_BG_RGB - median, axis=1)))
    near = np.linalg.norm(border - _BG_RGB[k], axis=1) < BG_TOL
    if np.linalg.norm(_BG_RGB[k] - median) < BG_TOL and near.mean() >= 0.5:
        return _BG_NAMES[k], _BG_RGB[k]
    return None, median.astype(np.float32)


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour binary erosion (border pixels become False)."""
    out = np.zeros_like(mask)
    out[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                       & mask[1:-1, :-2] & mask[1:-1, 2:])
    return out


def _shape_iou(shape: str, weights: np.ndarray, area: float, cx: float, cy: float) -> float:
    """Soft IoU of ``weights`` with ``shape``'s template of equal area centred at (cx, cy)."""
    t = coverage(shape, cx, cy, math.sqrt(area / unit_area(shape)))
    t[t < ALPHA_MIN] = 0.0
    return float(np.minimum(weights, t).sum() / max(np.maximum(weights, t).sum(), 1e-6))


def _best_shape(weights: np.ndarray, area: float, cx: float, cy: float) -> tuple[str, float, float]:
    """(shape, soft IoU, bounding radius) of the template that best matches ``weights``."""
    best = ("", -1.0, 0.0)
    for shape in SHAPES:
        iou = _shape_iou(shape, weights, area, cx, cy)
        if iou > best[1]:
            best = (shape, iou, math.sqrt(area / unit_area(shape)))
    return best


@dataclass
class _Reading:
    """What :func:`_measure` saw: the labels of :func:`describe` plus the measurements behind them."""

    labels: dict[str, str | None]
    border_median: np.ndarray
    object_median: np.ndarray | None = None  # None: nothing far from the background
    weights: np.ndarray | None = None  # per-pixel object coverage
    centre: tuple[float, float] | None = None
    found: bool = False  # a recognisable object (the rule in the module docstring)


def _measure(arr: np.ndarray) -> _Reading:
    background, ref = _background(arr)
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    reading = _Reading({key: None for key in ATTRIBUTES}, np.median(border, axis=0))
    out = reading.labels
    out["background"] = background
    diff = arr - ref
    far = np.linalg.norm(diff, axis=-1) > OBJECT_DIST
    if far.sum() < MIN_AREA:
        return reading
    inner = _erode(far)
    pixels = arr[inner] if inner.sum() >= 8 else arr[far]
    median = np.median(pixels, axis=0)
    reading.object_median = median
    dists = np.linalg.norm(_COLOUR_RGB - median, axis=1)
    k = int(np.argmin(dists))
    colour = _COLOUR_NAMES[k] if dists[k] < COLOUR_TOL else None
    if colour is not None:
        v = _COLOUR_RGB[k] - ref
        alpha = np.clip(diff @ v / float(v @ v), 0.0, 1.0)
        residual = np.linalg.norm(diff - alpha[..., None] * v, axis=-1)
        weights = np.where((residual < RESIDUAL_TOL) & (alpha >= ALPHA_MIN), alpha, 0.0).astype(np.float32)
    else:
        weights = far.astype(np.float32)
    area = float(weights.sum())
    if area < MIN_AREA:
        return reading
    centres = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    cx = float(weights.sum(axis=0) @ centres / area)
    cy = float(weights.sum(axis=1) @ centres / area)
    shape, iou, radius = _best_shape(weights, area, cx, cy)
    plausible = RADIUS_RANGE[0] <= radius <= RADIUS_RANGE[1]
    if colour is None and (iou < SHAPE_MIN_IOU or not plausible):
        return reading  # no recognisable object (e.g. noise filling the canvas)
    reading.found, reading.weights, reading.centre = True, weights, (cx, cy)
    out["colour"] = colour
    out["shape"] = shape if iou >= SHAPE_MIN_IOU else None
    out["position"] = _POS_NAMES[int(np.argmin(np.linalg.norm(_POS_XY - (cx, cy), axis=1)))]
    if plausible:
        out["size"] = "small" if radius < SIZE_THRESHOLD else "large"
    return reading


def describe(image: Image.Image | np.ndarray) -> dict[str, str | None]:
    """The judge's reading of the image: a value (or None) for each of ``ATTRIBUTES``."""
    return _measure(_as_array(image)).labels


def _closeness(distance: float, threshold: float) -> float:
    """1 at distance 0, 0.5 at the judge's decision threshold, 0 at twice it (linear)."""
    return float(min(max(1.0 - distance / (2.0 * threshold), 0.0), 1.0))


def grade(image: Image.Image | np.ndarray, expected: Mapping[str, object] | ShapeRecipe) -> dict[str, float]:
    """For each attribute in ``expected``, how close the image comes to it, from 0 to 1.

    A graded companion of :func:`judge` (which says right or wrong): each score is 1 for an exact
    match, 0.5 at the distance where the judge's decision flips, 0 at twice that distance.
    Colour and background: RGB distance of the measured median to the asked colour (thresholds
    ``COLOUR_TOL`` and ``BG_TOL``). Position: centroid distance to the asked anchor (threshold half
    the distance to the nearest other anchor). Size: ratio of the measured bounding radius to the
    asked one, on a log scale (threshold: the small/large boundary). Shape: soft IoU with the asked
    shape's template at the measured centroid and area (itself 0..1). Object attributes score 0
    when no object is found.
    """
    want = _expected(expected)
    reading = _measure(_as_array(image))
    scores: dict[str, float] = {}
    for key, value in want.items():
        if key == "background":
            target = np.asarray(BACKGROUNDS[value], dtype=np.float32) if value in BACKGROUNDS else None
            scores[key] = 0.0 if target is None else _closeness(
                float(np.linalg.norm(reading.border_median - target)), BG_TOL)
            continue
        if not reading.found:
            scores[key] = 0.0
        elif key == "colour":
            scores[key] = 0.0 if value not in COLOURS or reading.object_median is None else _closeness(
                float(np.linalg.norm(reading.object_median - np.asarray(COLOURS[value], np.float32))), COLOUR_TOL)
        elif key == "position":
            if value not in POSITIONS:
                scores[key] = 0.0
                continue
            anchor = np.asarray(POSITIONS[value], dtype=np.float32)
            others = np.linalg.norm(_POS_XY - anchor, axis=1)
            threshold = float(others[others > 0].min()) / 2
            scores[key] = _closeness(float(np.linalg.norm(anchor - reading.centre)), threshold)
        else:
            area = float(reading.weights.sum())
            cx, cy = reading.centre
            if key == "shape":
                scores[key] = _shape_iou(value, reading.weights, area, cx, cy) if value in SHAPES else 0.0
            elif key == "size":
                _, _, radius = _best_shape(reading.weights, area, cx, cy)
                if value not in SIZES or radius <= 0:
                    scores[key] = 0.0
                else:
                    threshold = abs(math.log(SIZE_THRESHOLD / SIZES[value]))
                    scores[key] = _closeness(abs(math.log(radius / SIZES[value])), threshold)
    return scores


def recipe_attributes(recipe: ShapeRecipe) -> dict[str, str]:
    """The five judged attributes of a recipe (jitter left out)."""
    return {key: getattr(recipe, key) for key in ATTRIBUTES}


def _expected(expected: Mapping[str, object] | ShapeRecipe) -> dict[str, str]:
    """Expected attributes, lower-cased; keys outside ``ATTRIBUTES`` (e.g. dx) are ignored."""
    if isinstance(expected, ShapeRecipe):
        return recipe_attributes(expected)
    return {k: str(v).lower() for k, v in expected.items() if k in ATTRIBUTES}


def judge(image: Image.Image | np.ndarray, expected: Mapping[str, object] | ShapeRecipe) -> dict[str, bool]:
    """For each attribute in ``expected``, whether the image shows it (None is never right)."""
    want = _expected(expected)
    seen = describe(image)
    return {key: seen[key] is not None and seen[key] == value for key, value in want.items()}


def score(images: Iterable[Image.Image | np.ndarray],
          expecteds: Iterable[Mapping[str, object] | ShapeRecipe]) -> dict[str, float]:
    """Per-attribute accuracy; an attribute counts only for images whose expectation has it."""
    return accuracy(judge, images, expecteds, ATTRIBUTES)

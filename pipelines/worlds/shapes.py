"""The Shapes world: one coloured shape on a plain background, with a caption.

Each image is 64x64 RGB and shows a single object described by a :class:`ShapeRecipe`:
colour (8 palette colours), shape (circle, square, triangle, diamond, star, cross), size
(small / large bounding radius), position (9 anchors with uniform jitter) and background
(white, black, gray). Shapes are drawn with PIL at 4x (256x256) and box-filtered down
(``Image.reduce(4)``), so edges are anti-aliased.

Geometry (canvas coordinates, 0..64, y downwards, pixel ``i`` covers ``[i, i+1)``):

- every shape is inscribed in its bounding circle of radius ``SIZES[size]`` (9 or 17 px)
  and has its centroid at the circle's centre (the triangle's vertices lie on the circle);
- anchors ``POSITIONS``: centre 32, edges 20 and 44 (e.g. "top left" = (20, 20),
  "bottom" = (32, 44)); jitter is uniform in ``[-JITTER, JITTER]`` = +-2 px per axis, so a
  large shape spans at most ``20 - 2 - 17 = 1`` .. ``44 + 2 + 17 = 63``: always on canvas.

Captions follow ``a [size] <colour> <shape> [position phrase] [on a <background> background]``;
the bracketed parts are dropped independently at random for training. The colour/shape
pairs in :data:`HOLDOUT_PAIRS` never occur in training data (``holdout="exclude"``); they
measure compositional generalisation. Nothing here imports torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4
JITTER = 2.0
ATTRIBUTES = ("colour", "shape", "size", "position", "background")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 215, 40),
    "green": (40, 170, 60), "cyan": (40, 200, 210), "blue": (40, 70, 220),
    "purple": (150, 60, 200), "pink": (240, 120, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: dict[str, float] = {"small": 9.0, "large": 17.0}
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (32.0, 32.0), "left": (20.0, 32.0), "right": (44.0, 32.0),
    "top": (32.0, 20.0), "bottom": (32.0, 44.0),
    "top left": (20.0, 20.0), "top right": (44.0, 20.0),
    "bottom left": (20.0, 44.0), "bottom right": (44.0, 44.0),
}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom",
    "top left": "in the top left", "top right": "in the top right",
    "bottom left": "in the bottom left", "bottom right": "in the bottom right",
}
HOLDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("orange", "cross"), ("cyan", "triangle"), ("pink", "diamond")}
)
HOLDOUT_MODES = ("exclude", "only", "include")
STAR_INNER = 0.45      # inner / outer radius of the 5-pointed star
CROSS_THICKNESS = 0.4  # arm thickness of the plus sign, as a fraction of the radius


@dataclass(frozen=True)
class ShapeRecipe:
    """Everything needed to draw (and caption) one image; ``dx``/``dy`` are the jitter in px."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    dx: float = 0.0
    dy: float = 0.0

    @property
    def is_holdout(self) -> bool:
        """Whether (colour, shape) is one of the compositional hold-out pairs."""
        return (self.colour, self.shape) in HOLDOUT_PAIRS

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the object in canvas pixels: the position anchor plus the jitter."""
        ax, ay = POSITIONS[self.position]
        return ax + self.dx, ay + self.dy

    @property
    def radius(self) -> float:
        """Bounding radius of the object in canvas pixels."""
        return SIZES[self.size]


@lru_cache(maxsize=None)
def unit_vertices(shape: str) -> tuple[tuple[float, float], ...]:
    """Polygon of ``shape`` inscribed in the unit circle around the origin (y downwards)."""
    if shape == "circle":
        n = 48
        return tuple((math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n))
    if shape == "square":
        s = math.sqrt(0.5)
        return ((-s, -s), (s, -s), (s, s), (-s, s))
    if shape == "diamond":
        return ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0))
    if shape == "triangle":  # pointing up; centroid = circumcentre
        return tuple((math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6))
    if shape == "star":
        return tuple(((1.0 if k % 2 == 0 else STAR_INNER) * math.cos(-math.pi / 2 + k * math.pi / 5),
                      (1.0 if k % 2 == 0 else STAR_INNER) * math.sin(-math.pi / 2 + k * math.pi / 5))
                     for k in range(10))
    if shape == "cross":  # plus sign whose arm corners lie on the unit circle
        h = CROSS_THICKNESS / 2
        a = math.sqrt(1 - h * h)
        return ((-h, -a), (h, -a), (h, -h), (a, -h), (a, h), (h, h),
                (h, a), (-h, a), (-h, h), (-a, h), (-a, -h), (-h, -h))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@lru_cache(maxsize=None)
def unit_area(shape: str) -> float:
    """Area of the unit ``shape`` (shoelace formula): the object's area is this times r**2."""
    v = unit_vertices(shape)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(v, v[1:] + v[:1]))) / 2


def _points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices in supersampled pixel coordinates (PIL puts pixel k's centre at k)."""
    s = SUPERSAMPLE
    return [(s * (cx + r * ux) - 0.5, s * (cy + r * uy) - 0.5) for ux, uy in unit_vertices(shape)]


def render(recipe: ShapeRecipe) -> Image.Image:
    """Draw ``recipe`` as a 64x64 RGB image (4x supersampled, box-filtered down)."""
    big = SUPERSAMPLE * IMAGE_SIZE
    img = Image.new("RGB", (big, big), BACKGROUNDS[recipe.background])
    cx, cy = recipe.centre
    ImageDraw.Draw(img).polygon(_points(recipe.shape, cx, cy, recipe.radius), fill=COLOURS[recipe.colour])
    return img.reduce(SUPERSAMPLE)


def render_array(recipe: ShapeRecipe) -> np.ndarray:
    """:func:`render` as a uint8 array of shape (64, 64, 3)."""
    return np.asarray(render(recipe), dtype=np.uint8)


def render_batch(recipes: list[ShapeRecipe]) -> np.ndarray:
    """Render many recipes into one uint8 array of shape (N, 64, 64, 3)."""
    out = np.empty((len(recipes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, recipe in enumerate(recipes):
        out[i] = render_array(recipe)
    return out


def coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Fraction (0..1, float32, 64x64) of each pixel that ``shape`` at (cx, cy), radius r covers.

    Drawn exactly like :func:`render` (same polygon, supersampling and box filter), so the
    judge's templates match the world's pixels.
    """
    big = SUPERSAMPLE * IMAGE_SIZE
    img = Image.new("L", (big, big), 0)
    ImageDraw.Draw(img).polygon(_points(shape, cx, cy, r), fill=255)
    return np.asarray(img.reduce(SUPERSAMPLE), dtype=np.float32) * (1 / 255)


def sample_recipe(rng: np.random.Generator, *, holdout: str = "exclude") -> ShapeRecipe:
    """A random recipe, uniform over each attribute, with jitter uniform in +-JITTER px.

    ``holdout``: "exclude" never gives a hold-out (colour, shape) pair (training data),
    "only" gives only hold-out pairs (uniform over the 4), "include" gives anything.
    """
    if holdout not in HOLDOUT_MODES:
        raise ValueError(f"holdout must be one of {HOLDOUT_MODES}, not {holdout!r}")
    colours, backgrounds, sizes, positions = list(COLOURS), list(BACKGROUNDS), list(SIZES), list(POSITIONS)
    if holdout == "only":
        pairs = sorted(HOLDOUT_PAIRS)
        colour, shape = pairs[int(rng.integers(len(pairs)))]
    else:
        while True:
            colour = colours[int(rng.integers(len(colours)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            if holdout == "include" or (colour, shape) not in HOLDOUT_PAIRS:
                break
    size = sizes[int(rng.integers(len(sizes)))]
    position = positions[int(rng.integers(len(positions)))]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    dx, dy = rng.uniform(-JITTER, JITTER, size=2)
    return ShapeRecipe(colour, shape, size, position, background, float(dx), float(dy))


def caption(recipe: ShapeRecipe, rng: np.random.Generator | None = None, drop_prob: float = 0.3) -> str:
    """``a [size] <colour> <shape> [position phrase] [on a <background> background]``.

    With ``rng`` None the full caption; otherwise size, position and background are each
    dropped independently with probability ``drop_prob`` (drawn in that order).
    """
    keep = [True, True, True] if rng is None else [bool(rng.random() >= drop_prob) for _ in range(3)]
    words = ["a"]
    if keep[0]:
        words.append(recipe.size)
    words += [recipe.colour, recipe.shape]
    if keep[1]:
        words.append(POSITION_PHRASES[recipe.position])
    if keep[2]:
        words.append(f"on a {recipe.background} background")
    return " ".join(words)


_SYNONYMS = {"grey": "gray", "centre": "center", "middle": "center", "big": "large", "tiny": "small",
             "upper": "top", "lower": "bottom", "plus": "cross", "rhombus": "diamond"}
_CORNER = re.compile(r"\b(top|bottom)[ -]?(left|right)\b")


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt states, by this world's vocabulary (case-insensitive).

    Tolerates punctuation and extra words; plural shapes and a few synonyms ("grey",
    "centre", "middle", "big", "upper left", ...) are understood. Only stated keys appear;
    corners ("top left") win over single edges ("top", "left").
    """
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", prompt.lower())]
    words = [w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words]
    words = ["cross" if w == "crosses" else w for w in words]
    text = " ".join(words)
    found: dict[str, str] = {}
    for key, vocab in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
        hit = next((w for w in words if w in vocab), None)
        if hit is not None:
            found[key] = hit
    corner = _CORNER.search(text)
    if corner:
        found["position"] = f"{corner.group(1)} {corner.group(2)}"
    else:
        hit = next((w for w in words if w in POSITIONS), None)
        if hit is not None:
            found["position"] = hit
    bg = re.search(r"\b(white|black|gray)\b(?= (?:background|backdrop)\b)", text)
    bg = bg or re.search(r"\b(white|black|gray)\b", text)
    if bg:
        found["background"] = bg.group(1)
    return found


def sample_dataset(seed: int, n: int, *, holdout: str = "exclude",
                   drop_prob: float = 0.3) -> list[tuple[ShapeRecipe, str]]:
    """``n`` (recipe, caption) pairs, deterministic by ``seed``; render images on demand."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        recipe = sample_recipe(rng, holdout=holdout)
        out.append((recipe, caption(recipe, rng, drop_prob)))
    return out


def eval_prompts(n_seen: int = 200, seed: int = 1234, *, per_holdout: int = 10) -> list[ShapeRecipe]:
    """Fixed evaluation recipes (jitter 0): ``n_seen`` seen combinations, then every hold-out
    pair ``per_holdout`` times, alternating sizes and spread over positions and backgrounds."""
    rng = np.random.default_rng(seed)
    seen = [replace(sample_recipe(rng, holdout="exclude"), dx=0.0, dy=0.0) for _ in range(n_seen)]
    sizes, positions, backgrounds = list(SIZES), list(POSITIONS), list(BACKGROUNDS)
    held = []
    for colour, shape in sorted(HOLDOUT_PAIRS):
        offset = int(rng.integers(len(positions)))
        for i in range(per_holdout):
            held.append(ShapeRecipe(colour, shape, sizes[i % len(sizes)],
                                    positions[(offset + i) % len(positions)],
                                    backgrounds[(offset + i) % len(backgrounds)]))
    return seen + held

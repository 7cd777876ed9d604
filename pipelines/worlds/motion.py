"""The Motion world (video): one Shapes-world object moving in a straight line, with a caption.

A clip is 8 to 16 frames of 64x64 RGB drawn with the Shapes renderer
(:func:`pipelines.worlds.shapes.render`), so every frame is a valid Shapes image. A
:class:`MotionRecipe` fixes colour, shape, background, direction (``left``, ``right``, ``up``,
``down`` or ``still``), the start centre, the distance travelled over the whole clip and the
bounding radius at the start and at the end (equal, or growing / shrinking between the Shapes
world's small and large radii). Frame ``i`` of ``F`` sits at fraction ``i / (F - 1)`` of the path,
so an 8-frame clip is every other frame of the 16-frame clip of the same recipe.

Geometry (canvas 0..64, y downwards, as in Shapes): the path runs along one axis; its length
is uniform in ``TRAVEL`` px, the cross-axis coordinate is one of the anchors 20 / 32 / 44 plus
jitter, and the start is drawn so that the whole object stays on the canvas in every frame.

Captions: ``a [size | growing | shrinking] <colour> <shape> moving <direction> [on a <background>
background]``, or ``... staying still ...`` for ``still``; the bracketed parts are dropped at
random for training. Nothing here imports torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipelines.worlds import shapes
from pipelines.worlds.shapes import BACKGROUNDS, COLOURS, IMAGE_SIZE, SHAPES, SIZES

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
# unit step of each direction in canvas coordinates (y downwards)
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0),
}
GROWTHS: tuple[str, ...] = ("none", "growing", "shrinking")
TRAVEL = (16.0, 26.0)        # px travelled over the whole clip (moving directions)
CROSS_ANCHORS = (20.0, 32.0, 44.0)
MARGIN = 1.0                 # px kept between the object's bounding circle and the canvas edge
MIN_FRAMES, MAX_FRAMES = 2, 32
DEFAULT_FRAMES = 16


@dataclass(frozen=True)
class MotionRecipe:
    """Everything needed to draw (and caption) one clip."""

    colour: str
    shape: str
    background: str
    direction: str
    start: tuple[float, float]   # centre in the first frame
    travel: float                # px along the direction over the whole clip (0 for "still")
    radius0: float               # bounding radius in the first frame
    radius1: float               # ... and in the last

    @property
    def growth(self) -> str:
        if self.radius1 > self.radius0:
            return "growing"
        return "shrinking" if self.radius1 < self.radius0 else "none"

    @property
    def size(self) -> str | None:
        """"small" / "large" when the size stays put, else None."""
        if self.growth != "none":
            return None
        return min(SIZES, key=lambda name: abs(SIZES[name] - self.radius0))

    def centre_at(self, u: float) -> tuple[float, float]:
        """Centre at fraction ``u`` (0..1) of the clip."""
        vx, vy = DIRECTION_VECTORS[self.direction]
        return self.start[0] + vx * self.travel * u, self.start[1] + vy * self.travel * u

    def radius_at(self, u: float) -> float:
        return self.radius0 + (self.radius1 - self.radius0) * u


def frame_fractions(frames: int) -> np.ndarray:
    """Where each of ``frames`` frames sits along the clip (0 .. 1)."""
    if frames < 1:
        raise ValueError(f"a clip needs at least 1 frame, not {frames}")
    return np.zeros(1) if frames == 1 else np.linspace(0.0, 1.0, frames)


def render_clip(recipe: MotionRecipe, frames: int = DEFAULT_FRAMES) -> np.ndarray:
    """The clip as uint8 (frames, 64, 64, 3)."""
    out = np.empty((frames, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, u in enumerate(frame_fractions(frames)):
        out[i] = _render_frame(recipe, float(u))
    return out


def _render_frame(recipe: MotionRecipe, u: float) -> np.ndarray:
    """Frame at fraction ``u``: drawn exactly as :func:`pipelines.worlds.shapes.render` draws (4x supersampled
    polygon, box-filtered down), at the frame's centre and radius."""
    from PIL import Image, ImageDraw

    cx, cy = recipe.centre_at(u)
    big = shapes.SUPERSAMPLE * IMAGE_SIZE
    img = Image.new("RGB", (big, big), BACKGROUNDS[recipe.background])
    ImageDraw.Draw(img).polygon(shapes._points(recipe.shape, cx, cy, recipe.radius_at(u)), fill=COLOURS[recipe.colour])
    return np.asarray(img.reduce(shapes.SUPERSAMPLE), dtype=np.uint8)


def sample_recipe(rng: np.random.Generator, *, growth_prob: float = 0.2, direction: str | None = None,
                  colour: str | None = None, shape: str | None = None, background: str | None = None,
                  size: str | None = None) -> MotionRecipe:
    """A random clip recipe; named attributes are fixed, the rest uniform.

    Growing / shrinking (each ``growth_prob / 2``) runs between the small and large radii; ``size``
    fixes a constant size (and rules growth out).
    """
    colour = colour or list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    background = background or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    direction = direction or DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    g = rng.random()
    small, large = SIZES["small"], SIZES["large"]
    if size is not None:
        r0 = r1 = SIZES[size]
    elif g < growth_prob / 2:
        r0, r1 = small, large
    elif g < growth_prob:
        r0, r1 = large, small
    else:
        r0 = r1 = small if rng.random() < 0.5 else large
    rmax = max(r0, r1)
    lo, hi = rmax + MARGIN, IMAGE_SIZE - rmax - MARGIN   # allowed centre range on both axes
    vx, vy = DIRECTION_VECTORS[direction]
    travel = 0.0 if direction == "still" else float(rng.uniform(*TRAVEL))
    travel = min(travel, hi - lo)
    cross = float(np.clip(CROSS_ANCHORS[int(rng.integers(3))] + rng.uniform(-2, 2), lo, hi))

    def along_start(v: float) -> float:
        # start so that start + v * travel stays inside [lo, hi]
        first, last = (lo, hi - travel) if v > 0 else (lo + travel, hi)
        return float(rng.uniform(first, last))

    if direction == "still":
        start = (float(np.clip(CROSS_ANCHORS[int(rng.integers(3))] + rng.uniform(-2, 2), lo, hi)), cross)
    elif vx != 0:
        start = (along_start(vx), cross)
    else:
        start = (cross, along_start(vy))
    return MotionRecipe(colour, shape, background, direction, start, travel, r0, r1)


def motion_phrase(direction: str) -> str:
    return "staying still" if direction == "still" else f"moving {direction}"


def caption(recipe: MotionRecipe, rng: np.random.Generator | None = None, drop_prob: float = 0.3) -> str:
    """``a [size|growing|shrinking] <colour> <shape> moving <direction> [on a <bg> background]``.

    With ``rng`` None the full caption; otherwise the size word and the background are each
    dropped independently with probability ``drop_prob``.
    """
    keep = [True, True] if rng is None else [bool(rng.random() >= drop_prob) for _ in range(2)]
    words = ["a"]
    size_word = recipe.size if recipe.growth == "none" else recipe.growth
    if keep[0] and size_word:
        words.append(size_word)
    words += [recipe.colour, recipe.shape, motion_phrase(recipe.direction)]
    if keep[1]:
        words.append(f"on a {recipe.background} background")
    return " ".join(words)


_MOVING = re.compile(r"\b(?:moving|going|travell?ing|drifting|sliding)\s+(?:to\s+the\s+)?"
                     r"(left|right|up|down|upwards|downwards|leftwards|rightwards)\b")
_STILL = re.compile(r"\b(?:staying|standing|sitting|holding)\s+still\b|\bstill\b|\bstatic\b|\bnot moving\b")


def parse_prompt(prompt: str) -> dict[str, str] | None:
    """The attributes a Motion prompt states, or None when it names no motion.

    Keys: ``direction`` (always), and when stated ``colour``, ``shape``, ``background``,
    ``size`` (small / large) or ``growth`` (growing / shrinking). Colour, shape and background
    words are read as the Shapes world reads them.
    """
    text = " ".join(re.findall(r"[a-z]+", prompt.lower()))
    moving = _MOVING.search(text)
    if moving:
        direction = moving.group(1).removesuffix("wards")
    elif _STILL.search(text):
        direction = "still"
    else:
        return None
    found = {k: v for k, v in shapes.parse_prompt(text).items() if k in ("colour", "shape", "background", "size")}
    # "moving left" is a direction here, not a Shapes position; drop a size the word "large" et al. did not state
    growth = re.search(r"\b(growing|shrinking)\b", text)
    if growth:
        found.pop("size", None)
        found["growth"] = growth.group(1)
    found["direction"] = direction
    return found


def sample_dataset(seed: int, n: int, *, drop_prob: float = 0.3,
                   growth_prob: float = 0.2) -> list[tuple[MotionRecipe, str]]:
    """``n`` (recipe, caption) pairs, deterministic by ``seed``; render clips on demand."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        recipe = sample_recipe(rng, growth_prob=growth_prob)
        out.append((recipe, caption(recipe, rng, drop_prob)))
    return out


def eval_prompts(n: int = 120, seed: int = 4321) -> list[tuple[MotionRecipe, str]]:
    """A fixed evaluation set: ``n`` (recipe, full caption) pairs cycling through the five
    directions, with colour, shape and background spread evenly (no growth)."""
    rng = np.random.default_rng(seed)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    out = []
    for i in range(n):
        recipe = sample_recipe(rng, growth_prob=0.0, direction=DIRECTIONS[i % len(DIRECTIONS)],
                               colour=colours[(i // len(DIRECTIONS)) % len(colours)],
                               shape=SHAPES[(i * 7 // len(DIRECTIONS)) % len(SHAPES)],
                               background=backgrounds[i % len(backgrounds)])
        out.append((recipe, caption(recipe)))
    return out


@lru_cache(maxsize=256)
def reference_clips(prompt: str, frames: int = DEFAULT_FRAMES, n: int = 8, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` ground-truth clips of what ``prompt`` states (unstated attributes random), or ()."""
    want = parse_prompt(prompt)
    if want is None:
        return ()
    rng = np.random.default_rng(seed)
    growth = want.get("growth")
    clips = []
    for _ in range(n):
        recipe = sample_recipe(rng, growth_prob=0.0 if growth is None else 1.0, direction=want["direction"],
                               colour=want.get("colour"), shape=want.get("shape"),
                               background=want.get("background"), size=want.get("size"))
        if growth is not None and recipe.growth != growth:
            recipe = MotionRecipe(recipe.colour, recipe.shape, recipe.background, recipe.direction, recipe.start,
                                  recipe.travel, recipe.radius1, recipe.radius0)
        clips.append(render_clip(recipe, frames))
    return tuple(clips)

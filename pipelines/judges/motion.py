"""Judge for the Motion world (video): the Shapes judge on every frame, plus the direction of the
object's centroid track, plus a temporal-consistency measure.

- colour / shape / background: the Shapes judge's reading of each frame; a clip has the
  attribute the majority of its frames show (frames where no object is found count as wrong).
- direction: a least-squares line through the centroids of the frames where an object is found
  (at least half of them); its displacement over the clip is ``still`` when shorter than
  ``STILL_PX``, else the dominant axis's direction (``right``/``left`` along x, ``down``/``up``
  along y) when that axis carries at least ``DOMINANCE`` times the other's displacement, else
  ``diagonal`` (which matches no prompt). ``None`` when too few frames show an object.
- temporal consistency (lower is smoother): the frame-difference agreement of the consistency
  loss in the seed chapter on video, ``mean_t mean_pixels (d_{t+1} - d_t)^2`` with
  ``d_t = frame_{t+1} - frame_t`` in 0..1 units. A shape gliding at constant speed scores low
  (consecutive differences nearly agree), flicker and jumps score high; a clip of fewer than
  3 frames scores 0. :func:`reference_consistency` gives the same measure on ground-truth clips
  of the same prompt, the yardstick for generated clips.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.judges import shapes as shapes_judge
from pipelines.worlds import motion

STILL_PX = 5.0        # a track shorter than this over the clip is "still" (moving clips travel >= 16 px)
DOMINANCE = 2.0       # dominant-axis displacement / other-axis displacement needed for a direction
ATTRIBUTES = ("colour", "shape", "background", "direction")


def _frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {arr.shape}")
    return arr


def track(frames: Any) -> list[tuple[float, float] | None]:
    """The object's centroid in each frame (None where the Shapes judge finds no object)."""
    out: list[tuple[float, float] | None] = []
    for frame in _frames(frames):
        reading = shapes_judge._measure(shapes_judge._as_array(frame))
        out.append((float(reading.centre[0]), float(reading.centre[1])) if reading.found else None)
    return out


def direction_of(points: list[tuple[float, float] | None]) -> str | None:
    """Direction of a centroid track (see the module docstring)."""
    idx = [i for i, p in enumerate(points) if p is not None]
    if len(points) < 2 or len(idx) < max(2, (len(points) + 1) // 2):
        return None
    u = np.asarray(idx, dtype=np.float64) / (len(points) - 1)
    xy = np.asarray([points[i] for i in idx], dtype=np.float64)
    slope = np.polyfit(u, xy, 1)[0]           # px per whole clip, (dx, dy)
    dx, dy = float(slope[0]), float(slope[1])
    if np.hypot(dx, dy) < STILL_PX:
        return "still"
    if abs(dx) >= DOMINANCE * abs(dy):
        return "right" if dx > 0 else "left"
    if abs(dy) >= DOMINANCE * abs(dx):
        return "down" if dy > 0 else "up"
    return "diagonal"


def describe_clip(frames: Any) -> dict[str, Any]:
    """Per-frame readings, the majority colour / shape / background, and the direction."""
    arr = _frames(frames)
    readings = [shapes_judge.describe(f) for f in arr]
    out: dict[str, Any] = {"frames": readings}
    for key in ("colour", "shape", "background"):
        votes = Counter(r[key] for r in readings)
        value, count = votes.most_common(1)[0]
        out[key] = value if count * 2 > len(readings) else None
    out["direction"] = direction_of(track(arr))
    return out


def judge(frames: Any, expected: Mapping[str, object] | motion.MotionRecipe) -> dict[str, bool]:
    """For each judged attribute in ``expected``: does the clip show it?

    Colour, shape and background hold when more than half of the frames show the expected value.
    """
    if isinstance(expected, motion.MotionRecipe):
        want = {"colour": expected.colour, "shape": expected.shape, "background": expected.background,
                "direction": expected.direction}
    else:
        want = {k: str(v).lower() for k, v in expected.items() if k in ATTRIBUTES}
    arr = _frames(frames)
    result: dict[str, bool] = {}
    readings = None
    for key, value in want.items():
        if key == "direction":
            result[key] = direction_of(track(arr)) == value
            continue
        if readings is None:
            readings = [shapes_judge.describe(f) for f in arr]
        result[key] = sum(r[key] == value for r in readings) * 2 > len(readings)
    return result


def judge_prompt(frames: Any, prompt: str) -> dict[str, Any] | None:
    """Judge a clip against a Motion-grammar prompt; None when the prompt states no motion.

    Returns a boolean per attribute the prompt states (of colour, shape, background, direction)
    and ``detected_direction``: what the track shows.
    """
    want = motion.parse_prompt(prompt)
    if want is None:
        return None
    arr = _frames(frames)
    result: dict[str, Any] = judge(arr, want)
    result["detected_direction"] = direction_of(track(arr))
    return result


def temporal_consistency(frames: Any) -> float:
    """Frame-difference agreement (lower is smoother); 0 for clips of fewer than 3 frames."""
    raw = _frames(frames)
    arr = raw.astype(np.float32)
    if raw.dtype.kind != "f" or float(arr.max(initial=0.0)) > 1.0:  # 0..255 pixels
        arr = arr / 255.0
    if len(arr) < 3:
        return 0.0
    d = np.diff(arr, axis=0)
    return float(np.mean((d[1:] - d[:-1]) ** 2))


def reference_consistency(prompt: str, frames: int = motion.DEFAULT_FRAMES) -> float | None:
    """Mean :func:`temporal_consistency` of ground-truth clips of ``prompt`` (None when the prompt
    is not in the Motion grammar)."""
    clips = motion.reference_clips(prompt, frames)
    if not clips:
        return None
    return float(np.mean([temporal_consistency(c) for c in clips]))


def score(clips: list[Any], expecteds: list[Mapping[str, object] | motion.MotionRecipe]) -> dict[str, float]:
    """Per-attribute accuracy over clips."""
    from pipelines.judges import accuracy

    return accuracy(judge, clips, expecteds, ATTRIBUTES)

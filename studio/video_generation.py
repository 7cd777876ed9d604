"""UI-free glue of the Video tab: form values -> request, trajectory pictures, the two measures, gallery rows.

The stored trajectory of a clip is one PNG sprite: row k is the strip of every frame's x0 estimate after step k
(frames left to right, each at most :data:`TRAJECTORY_TILE` pixels), so ``trajectory_frames`` = steps and the
Gallery tab cuts row k out for its step slider.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from PIL import Image

from .forms import number, whole_number
from .gallery import Gallery
from .generation import resolve_seed
from pipelines.text_limits import has_visible_text

if TYPE_CHECKING:  # pipelines.video imports torch: loaded where a request is built (the Video tab's build)
    from pipelines.video import VideoRequest, VideoResult

log = logging.getLogger(__name__)
TRAJECTORY_TILE = 64  # px: side of one frame in the stored trajectory (the builtin's frames are 64 x 64)
POSTER_MAX = 256  # px: the poster PNG (the gallery thumbnail) is at most this large


def build_video_request(prompt: Any, negative_prompt: Any, frames: Any, fps: Any, steps: Any, guidance: Any,
                        seed: Any, scheduler: Optional[str] = None) -> VideoRequest:
    """Form values -> a request with typed values (range checks happen in the pipeline, against the model).
    ``scheduler``: the model's ``default_settings.json`` choice (None: the model's own scheduler)."""
    from pipelines.video import VideoRequest

    if not has_visible_text(prompt):
        raise ValueError("Type a prompt first (for example: a red circle moving right).")
    return VideoRequest(
        prompt=prompt, negative_prompt=negative_prompt if isinstance(negative_prompt, str) else "",
        num_frames=whole_number(frames, "Frames"), fps=number(fps, "Frames per second"),
        num_inference_steps=whole_number(steps, "Steps"), guidance_scale=number(guidance, "Guidance scale"),
        seed=resolve_seed(seed), scheduler=scheduler or None)


def strip(images: Sequence[Image.Image]) -> Image.Image:
    """Pictures side by side, left to right."""
    w, h = images[0].size
    out = Image.new("RGB", (w * len(images), h))
    for k, im in enumerate(images):
        out.paste(im, (k * w, 0))
    return out


def wrap_strip(row: Image.Image, num_frames: int, columns: int = 8) -> Image.Image:
    """A strip of ``num_frames`` equal frames rewrapped into rows of ``columns`` (a long clip stays readable)."""
    if num_frames <= columns:
        return row
    w, h = row.width // num_frames, row.height
    rows = -(-num_frames // columns)
    sheet = Image.new("RGB", (w * columns, h * rows))
    for k in range(num_frames):
        sheet.paste(row.crop((k * w, 0, (k + 1) * w, h)), ((k % columns) * w, (k // columns) * h))
    return sheet


def _tile(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    return small


def trajectory_strips(model: Any, result: VideoResult, tile: int = TRAJECTORY_TILE) -> list[Image.Image]:
    """One strip per step: every frame's x0 estimate decoded (the model's preview decoder), left to right."""
    if result.pred_x0 is None:
        return []
    return [strip([_tile(im, tile) for im in model.decode_frames(x0)]) for x0 in result.pred_x0]  # x0: (C, F, h, w)


def stack_rows(rows: Sequence[Image.Image]) -> Image.Image:
    """Strips one under the other (row k = step k): the trajectory sprite stored in the gallery."""
    w, h = rows[0].size
    out = Image.new("RGB", (w, h * len(rows)))
    for k, row in enumerate(rows):
        out.paste(row, (0, k * h))
    return out


def sprite_row(sprite: Image.Image, num_rows: int, index: int) -> Image.Image:
    """Row ``index`` of a sprite made by :func:`stack_rows`."""
    if not 0 <= index < num_rows:
        raise ValueError(f"step {index + 1} is outside the trajectory's {num_rows} steps")
    h = sprite.height // num_rows
    return sprite.crop((0, index * h, sprite.width, (index + 1) * h))


def measure(frames: np.ndarray, prompt: str) -> dict[str, Any]:
    """The Motion judge's verdict (None when the prompt is not in its grammar) and the temporal-consistency measure
    of the clip beside that of ground-truth clips of the prompt. A judge that fails is reported, not raised."""
    out: dict[str, Any] = {"judge": None, "temporal_consistency": None, "reference_consistency": None}
    try:
        from pipelines.judges import motion as judge
    except ImportError as exc:  # the judge ships with the Motion world
        out["error"] = f"the Motion judge is not available ({exc})"
        return out
    try:
        out["temporal_consistency"] = float(judge.temporal_consistency(frames))
        verdict = judge.judge_prompt(frames, prompt)
        out["judge"] = None if verdict is None else {k: (bool(v) if isinstance(v, (bool, np.bool_)) else v)
                                                     for k, v in verdict.items()}
        if verdict is not None:
            ref = judge.reference_consistency(prompt, len(frames))
            out["reference_consistency"] = None if ref is None else float(ref)
    except Exception as exc:  # a measure must never lose the clip
        log.exception("measuring a clip failed")
        out["error"] = f"the judge failed on this clip ({type(exc).__name__}: {exc})"
    return out


def measures_text(metrics: dict[str, Any]) -> str:
    """The two measures as one line each, for beside the result."""
    lines = []
    verdict = metrics.get("judge")
    if metrics.get("error"):
        lines.append(f"⚠ {metrics['error']}")
    if verdict is None and not metrics.get("error"):
        lines.append("**Judge:** cannot score this prompt: it is not in the Motion grammar "
                     "(a <colour> <shape> moving <left|right|up|down> / staying still [on a <colour> background]).")
    elif verdict is not None:
        marks = ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in verdict.items() if isinstance(v, bool))
        seen = verdict.get("detected_direction")
        lines.append(f"**Judge:** {marks or 'nothing to check'} · direction seen: {seen or 'none (no object tracked)'}")
    tc, ref = metrics.get("temporal_consistency"), metrics.get("reference_consistency")
    if tc is not None:
        ref_text = f" (ground truth {ref:.4f})" if ref is not None else ""
        lines.append(f"**Temporal consistency** (frame-difference agreement, lower is smoother): {tc:.4f}{ref_text}")
    return "  \n".join(lines)


def save_video_result(gallery: Gallery, result: VideoResult, metrics: dict[str, Any],
                      strips: Sequence[Image.Image]) -> tuple[int, Optional[str]]:
    """One gallery row: the clip (MP4 with its recipe), the middle frame as poster PNG, the trajectory sprite, the
    measures in ``params["metrics"]``. Returns (id, a note when the clip could not be written as MP4)."""
    poster = _tile(Image.fromarray(result.frames[len(result.frames) // 2]), POSTER_MAX)
    params = {**result.params, "metrics": metrics}
    h, w = result.frames.shape[1:3]
    return gallery.save_video(
        result.frames, fps=result.fps, poster=poster, params=params,
        fields={"family": result.family, "model_id": result.model_id, "duration_s": result.seconds, "status": "ok",
                "width": int(w), "height": int(h), "scheduler": str(result.params.get("scheduler_used") or "")},
        trajectory=stack_rows(strips) if strips else None, trajectory_frames=len(strips))


class PreviewFiles:
    """Animated GIF previews written where Gradio may serve them (the system temp folder); files older than
    ``keep_s`` are removed when a new one is written, so the folder stays small."""

    def __init__(self, folder: Optional[Path] = None, keep_s: float = 600.0) -> None:
        import tempfile

        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / "studio-video-previews"
        self.keep_s = keep_s

    def write(self, data: bytes, suffix: str = "gif") -> str:
        import uuid

        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.folder.glob("*"):
            try:
                if now - old.stat().st_mtime > self.keep_s:
                    old.unlink()
            except OSError:
                pass
        path = self.folder / f"{uuid.uuid4().hex}.{suffix}"
        path.write_bytes(data)
        return str(path)

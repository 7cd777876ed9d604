"""Per-model default generation settings (``default_settings.json`` in a model folder).

Like InvokeAI's model "default settings": a model can say which guidance scale, step count and
scheduler suit it, and the UI starts from those when the model is picked. The right guidance is a
property of the model, not of the tool: SD 1.x works best near 7.5, while the tiny builtin
shapes-ldm over-guides there (its judge-measured accuracy peaks at low scales; see the README's
model section and ``python -m pipelines.evaluate shapes-ldm``). Models without the file use
:data:`FALLBACK` (the diffusers / A1111 conventions). diffusers ignores the extra file, so the
folder stays an ordinary diffusers folder.

Example file::

    {"guidance_scale": 2.0, "num_inference_steps": 25, "scheduler": "dpmpp_2m",
     "note": "judge accuracy peaks at guidance 2-3 (python -m pipelines.evaluate shapes-ldm)"}

A video model may add ``"num_frames"`` and ``"fps"`` (what the Video tab starts from), and
``"noise_correlation"``: the correlation of its frames' initial noise when it was trained on a mixed
noise prior (the studio then draws the noise the same way). An SD3-format flow model may add
``"max_sequence_length"``: the length of the T5 block of its prompt embeddings (all zeros when the folder has
no T5), which must be the length it was trained with; diffusers' default is 256.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FILENAME = "default_settings.json"
FALLBACK: dict[str, Any] = {"guidance_scale": 7.5, "num_inference_steps": 25, "scheduler": None,
                            "temperature": 1.0, "top_k": 0}  # the last two: token (autoregressive) models
# Video models may also set these (returned only when the file has them, so image models' settings stay as they were).
VIDEO_FALLBACK: dict[str, Any] = {"num_frames": 16, "fps": 8.0, "noise_correlation": 0.0}
FLOW_FALLBACK: dict[str, Any] = {"max_sequence_length": 256}  # StableDiffusion3Pipeline's own default


class DefaultSettingsError(ValueError):
    """``default_settings.json`` exists but is unreadable or holds an invalid value."""


def _check(path: Path, data: Any) -> dict[str, Any]:
    from pipelines.requests import MAX_GUIDANCE, MAX_STEPS
    from pipelines.schedulers import SCHEDULERS

    if not isinstance(data, dict):
        raise DefaultSettingsError(f"{path} must hold a JSON object.")
    known = sorted(FALLBACK) + sorted(VIDEO_FALLBACK) + sorted(FLOW_FALLBACK)
    unknown = sorted(set(data) - set(known) - {"note"})
    if unknown:
        raise DefaultSettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(known)}, note.")
    g = data.get("guidance_scale", FALLBACK["guidance_scale"])
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
        raise DefaultSettingsError(f"{path}: guidance_scale must be a number from 0 to {MAX_GUIDANCE} (got {g!r}).")
    steps = data.get("num_inference_steps", FALLBACK["num_inference_steps"])
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise DefaultSettingsError(f"{path}: num_inference_steps must be a whole number from 1 to {MAX_STEPS} "
                                   f"(got {steps!r}).")
    sched = data.get("scheduler", FALLBACK["scheduler"])
    if sched is not None and sched not in SCHEDULERS:
        raise DefaultSettingsError(f"{path}: scheduler {sched!r} is not one of {', '.join(SCHEDULERS)}.")
    temp = data.get("temperature", FALLBACK["temperature"])
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or not 0 < temp <= 10:
        raise DefaultSettingsError(f"{path}: temperature must be a number above 0 and at most 10 (got {temp!r}).")
    top_k = data.get("top_k", FALLBACK["top_k"])
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise DefaultSettingsError(f"{path}: top_k must be a whole number, 0 (off) or more (got {top_k!r}).")
    out = {"guidance_scale": float(g), "num_inference_steps": steps, "scheduler": sched,
           "temperature": float(temp), "top_k": top_k}
    if "num_frames" in data:
        frames = data["num_frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 1000:
            raise DefaultSettingsError(f"{path}: num_frames must be a whole number from 1 to 1000 (got {frames!r}).")
        out["num_frames"] = frames
    if "fps" in data:
        fps = data["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= 60:
            raise DefaultSettingsError(f"{path}: fps must be a number above 0 and at most 60 (got {fps!r}).")
        out["fps"] = float(fps)
    if "noise_correlation" in data:  # a video model trained on a mixed noise prior (see pipelines.video)
        rho = data["noise_correlation"]
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or not 0 <= rho < 1:
            raise DefaultSettingsError(f"{path}: noise_correlation must be a number from 0 to below 1 (got {rho!r}).")
        out["noise_correlation"] = float(rho)
    if "max_sequence_length" in data:  # an SD3-format flow model's T5 block (see pipelines.flow)
        length = data["max_sequence_length"]
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512:
            raise DefaultSettingsError(f"{path}: max_sequence_length must be a whole number from 1 to 512 "
                                       f"(got {length!r}).")
        out["max_sequence_length"] = length
    return out


def read_default_settings(folder: Path) -> dict[str, Any]:
    """The model's defaults merged over :data:`FALLBACK` (raises :class:`DefaultSettingsError`)."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return dict(FALLBACK)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DefaultSettingsError(f"{path} is not valid JSON ({exc}); fix or delete it.") from None
    return _check(path, data)


def write_default_settings(folder: Path, guidance_scale: float, num_inference_steps: int = 25,
                           scheduler: str | None = None, note: str = "", **token_sampling: Any) -> Path:
    """Write (validated) defaults into a model folder; returns the file. ``token_sampling``: ``temperature``
    and ``top_k`` of a token model, ``num_frames`` and ``fps`` of a video model, ``max_sequence_length`` of a
    flow model."""
    path = Path(folder) / FILENAME
    data: dict[str, Any] = {"guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps,
                            "scheduler": scheduler, **token_sampling}
    _check(path, data)
    if note:
        data["note"] = note
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path

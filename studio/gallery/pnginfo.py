"""PNG encoding with embedded generation parameters.

Two text chunks are written:

* ``parameters`` - the AUTOMATIC1111 layout understood by common PNG-info
  readers (prompt line, ``Negative prompt:`` line, comma separated settings);
* ``studio`` - ``json.dumps(params, sort_keys=True)`` for exact round trips.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDIO_KEY = "studio"
A1111_KEY = "parameters"

# (label, params key) pairs of the A1111 settings line, in order.
_SETTINGS: tuple[tuple[str, str], ...] = (
    ("Steps", "num_inference_steps"),
    ("Sampler", "scheduler"),
    ("CFG scale", "guidance_scale"),
    ("Seed", "seed"),
)


def _quote(value: Any) -> str:
    """Quote a settings value the way AUTOMATIC1111 does (only when needed)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_a1111(params: dict[str, Any]) -> str:
    """Build the AUTOMATIC1111 ``parameters`` text; missing keys are skipped."""
    lines: list[str] = []
    if params.get("prompt") is not None:
        lines.append(str(params["prompt"]))
    negative = params.get("negative_prompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    settings = [
        f"{label}: {_quote(params[key])}"
        for label, key in _SETTINGS
        if params.get(key) is not None
    ]
    if params.get("width") is not None and params.get("height") is not None:
        settings.append(f"Size: {params['width']}x{params['height']}")
    if params.get("model_id") is not None:
        settings.append(f"Model: {_quote(params['model_id'])}")
    if settings:
        lines.append(", ".join(settings))
    return "\n".join(lines)


def encode_png(image: Image.Image, params: dict[str, Any]) -> bytes:
    """Encode ``image`` as PNG bytes with ``parameters`` and ``studio`` text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, format_a1111(params))
    info.add_text(STUDIO_KEY, json.dumps(params, sort_keys=True, default=str))
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _read_text_chunks(data: bytes) -> dict[str, str]:
    """Decode the PNG and return its text chunks; ``ValueError`` if corrupt."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("Data is not a PNG file (bad signature).")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError("Data is not a PNG file.")
            image.load()
            return dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
        raise ValueError(f"Data is not a PNG file or is corrupt: {exc}") from exc


def read_png_params(data_or_path: bytes | Path) -> dict[str, Any] | None:
    """Return the parameter dict stored in the ``studio`` chunk, or None if absent.

    Raises ``ValueError`` for data that is not a (readable) PNG.
    """
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        data = bytes(data_or_path)
    else:
        data = Path(data_or_path).read_bytes()
    raw = _read_text_chunks(data).get(STUDIO_KEY)
    if raw is None:
        return None
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"The PNG 'studio' chunk is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise ValueError("The PNG 'studio' chunk does not contain a JSON object.")
    return params

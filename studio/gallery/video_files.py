"""Video files that carry their recipe: MP4 (H.264, written by imageio-ffmpeg's ffmpeg) with the parameters as
JSON in the ``comment`` metadata field, or, without an ffmpeg binary, an animated PNG with the same JSON in its
``studio`` text chunk (lossless, and browsers play it in an ``<img>``).

Reading the parameters back needs no ffmpeg: ffmpeg's MP4 muxer stores ``comment`` as an iTunes-style
``moov/udta/meta/ilst/©cmt`` atom, which :func:`read_mp4_comment` walks to in pure Python. Decoding the frames of
an MP4 (:func:`read_clip`) does need ffmpeg.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, PngImagePlugin

META_PREFIX = "studio:"  # the comment field holds "studio:" + JSON
PNG_KEY = "studio"  # the animated PNG's text chunk (as the still images')
FIX_FFMPEG = "pip install imageio-ffmpeg"
_CONTAINERS = {b"moov", b"udta", b"ilst", b"trak", b"mdia"}


class VideoFileError(ValueError):
    """A file that is not a clip this studio can read; the message says why."""


def find_ffmpeg() -> Optional[str]:
    """The ffmpeg binary imageio-ffmpeg uses (its bundled one, or ``IMAGEIO_FFMPEG_EXE``), or None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


@dataclass(frozen=True)
class EncodedClip:
    data: bytes
    suffix: str  # "mp4" or "png" (animated PNG)
    note: Optional[str] = None  # why it is not an MP4 and how to fix that


def _as_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got {arr.dtype} {arr.shape}")
    return arr


def _meta_json(params: Optional[dict[str, Any]]) -> str:
    return json.dumps(params or {}, sort_keys=True, default=str)


def encode_clip(frames: Any, fps: float, params: Optional[dict[str, Any]] = None) -> EncodedClip:
    """An MP4 of ``frames`` (F, H, W, 3) uint8 carrying ``params``; an animated PNG (with a note saying how to get
    MP4s) when no ffmpeg binary is found."""
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        note = (f"No ffmpeg was found, so the clip was saved as an animated PNG (with its parameters) instead of "
                f"an MP4. To get MP4 files: {FIX_FFMPEG}")
        return EncodedClip(animated_png_bytes(frames, fps, params), "png", note)
    return EncodedClip(mp4_bytes(frames, fps, params), "mp4")


def mp4_bytes(frames: Any, fps: float, params: Optional[dict[str, Any]] = None) -> bytes:
    """H.264 (yuv420p, CRF 17) in MP4, ``params`` as JSON in the comment field. Sides must be even."""
    import imageio_ffmpeg

    arr = _as_frames(frames)
    f, h, w, _ = arr.shape
    if h % 2 or w % 2:
        raise ValueError(f"MP4 (yuv420p) needs even frame sides, got {w}x{h}")
    fd, name = tempfile.mkstemp(suffix=".mp4", prefix="studio-clip-")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            name, (w, h), fps=float(fps), codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=2, quality=None, ffmpeg_log_level="error",
            output_params=["-crf", "17", "-movflags", "+faststart",
                           "-metadata", f"comment={META_PREFIX}{_meta_json(params)}"])
        writer.send(None)  # start ffmpeg
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return Path(name).read_bytes()
    finally:
        Path(name).unlink(missing_ok=True)


def animated_png_bytes(frames: Any, fps: float, params: Optional[dict[str, Any]] = None) -> bytes:
    """An animated PNG (APNG, looping) of the frames with ``params`` in its ``studio`` text chunk."""
    arr = _as_frames(frames)
    images = [Image.fromarray(frame) for frame in arr]
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, _meta_json(params))
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG", save_all=True, append_images=images[1:], duration=1000.0 / float(fps),
                   loop=0, pnginfo=info, default_image=False)
    return buffer.getvalue()


def gif_bytes(frames: Sequence[Image.Image] | np.ndarray, fps: float, scale: int = 1) -> bytes:
    """A looping GIF for previews (palette-quantised: for looking at, not for measuring)."""
    images = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in frames]
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000.0 / float(fps))), loop=0, disposal=1)
    return buffer.getvalue()


# -- reading -------------------------------------------------------------------------------------------------
def _atoms(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the MP4 atoms in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:  # 64-bit size
            if pos + 16 > end:
                return
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:  # to the end of the file
            size = end - pos
        if size < header or pos + size > end:
            raise VideoFileError("the MP4 is truncated or corrupt (an atom runs past the end of the file)")
        yield kind, pos + header, pos + size
        pos += size


def read_mp4_comment(data: bytes) -> Optional[str]:
    """The ``comment`` metadata of an MP4 (None if it has none); VideoFileError for a file that is not an MP4."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        raise VideoFileError("not an MP4 file (no ftyp atom at the start)")
    top = {kind: (a, b) for kind, a, b in _atoms(data, 0, len(data))}
    if b"moov" not in top:
        raise VideoFileError("the MP4 has no moov atom (it is truncated or was not finished)")
    a, b = top[b"moov"]
    for kind, a2, b2 in _atoms(data, a, b):
        if kind != b"udta":
            continue
        for kind3, a3, b3 in _atoms(data, a2, b2):
            if kind3 != b"meta":
                continue
            for kind4, a4, b4 in _atoms(data, a3 + 4, b3):  # meta is a full atom: 4 bytes of version/flags
                if kind4 != b"ilst":
                    continue
                for kind5, a5, b5 in _atoms(data, a4, b4):
                    if kind5 != b"\xa9cmt":
                        continue
                    for kind6, a6, b6 in _atoms(data, a5, b5):
                        if kind6 == b"data":
                            return data[a6 + 8:b6].decode("utf-8", errors="replace")  # 8: type and locale
    return None


def read_clip_params(data: bytes) -> Optional[dict[str, Any]]:
    """The studio's parameters from an MP4 or animated PNG made here (None when the file has none).
    Raises VideoFileError for a file that is neither."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        text = _png_text(data).get(PNG_KEY)
    else:
        comment = read_mp4_comment(data)
        text = comment[len(META_PREFIX):] if comment and comment.startswith(META_PREFIX) else None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _png_text(data: bytes) -> dict[str, str]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError, EOFError, struct.error) as exc:
        raise VideoFileError(f"the animated PNG is corrupt ({exc})") from None


def read_clip(path: Path) -> tuple[np.ndarray, float, Optional[dict[str, Any]]]:
    """(frames (F, H, W, 3) uint8, fps, parameters) of an MP4 (decoded by ffmpeg) or animated PNG made here."""
    data = Path(path).read_bytes()
    params = read_clip_params(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        with Image.open(io.BytesIO(data)) as image:
            frames, durations = [], []
            for k in range(getattr(image, "n_frames", 1)):
                image.seek(k)
                frames.append(np.asarray(image.convert("RGB")))
                durations.append(image.info.get("duration", 125) or 125)
        return np.stack(frames), 1000.0 / float(np.mean(durations)), params
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    except (RuntimeError, OSError, StopIteration) as exc:
        raise VideoFileError(f"ffmpeg could not decode the clip ({exc})") from None
    if not frames:
        raise VideoFileError("the clip holds no frames")
    return np.stack(frames), float(meta.get("fps") or 0.0), params


def clip_error(path: Path) -> Optional[str]:
    """None when ``path`` is a readable clip made here; else why it cannot be played (missing, corrupt)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "its video file is missing"
    except OSError as exc:
        return f"its video file cannot be read ({exc.strerror or exc})"
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        else:
            read_mp4_comment(data)
    except (VideoFileError, OSError, SyntaxError, EOFError, struct.error) as exc:
        return f"its video file cannot be played: {exc}"
    return None

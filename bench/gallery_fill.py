"""The gallery generator of the scale benchmark (``bench/gallery_scale.py``): fills a gallery with realistic rows,
fast.

Bulk ``INSERT``s through SQLAlchemy Core (executemany, 100k rows a transaction; the FTS5 triggers index the prompts
as they go) instead of a million ``Gallery.save_image`` calls. Prompts come from the worlds' caption grammars
(Shapes for images, Tones for sounds, Motion for clips) with optional style words (a Zipf tail: common and rare
words) and negative prompts; models, families, media types, seeds, steps, guidance, schedulers and dates (two
years, ids in time order) are spread out, ~2 % are favourites, ``params`` holds the recipe JSON a real row holds.
A few thousand real media files (PNG with its recipe, WebP thumbnail, trajectory sprites; WAV + spectrogram;
animated PNG + poster) are written by content hash, as the studio names them, and shared by many rows.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

BUILD_FORMAT = 1  # bump when the generator's rows change, so kept galleries are rebuilt
CHUNK = 20_000  # rows per executemany
TRANSACTION = 100_000  # rows per transaction
START = datetime(2024, 6, 1, tzinfo=timezone.utc)
SPAN = timedelta(days=730)

# model id, family, media type, weight (how often people use it)
MODELS: tuple[tuple[str, str, str, float], ...] = (
    ("builtin/shapes-ldm", "latent_diffusion", "image", 30),
    ("builtin/shapes-dit", "dit", "image", 12),
    ("builtin/shapes-flow", "flow_matching", "image", 10),
    ("builtin/shapes-vqgan", "vqgan_prior", "image", 6),
    ("local/ldm-2026-03-14", "latent_diffusion", "image", 8),
    ("local/dit-small-b", "dit", "image", 4),
    ("local/flow-tiny-7", "flow_matching", "image", 0.5),
    ("runwayml/stable-diffusion-v1-5", "latent_diffusion", "image", 8),
    ("stabilityai/sd-turbo", "latent_diffusion", "image", 5),
    ("builtin/tones-ldm", "audio_ldm", "audio", 6),
    ("builtin/motion-video", "text_to_video", "video", 4),
)
SCHEDULERS = ("ddim", "euler", "euler_a", "dpm++2m", "pndm", "heun")
STEPS = (10, 20, 25, 25, 30, 50)
GUIDANCES = (1.0, 2.0, 3.0, 5.0, 7.5, 7.5, 7.5, 10.0, 12.0)
NEGATIVES = ("blurry", "low quality", "blurry, low quality", "jpeg artifacts", "text, watermark", "noisy",
             "cropped", "dark")
# Style words appended to some prompts; their use falls off as a Zipf law, so the tail words are rare.
STYLES = tuple(
    "watercolor sketch neon pastel vintage glossy matte minimal bold soft sharp grainy retro futuristic"
    " cinematic dreamy moody vivid muted isometric flat shaded outlined pixelated mosaic stained woodcut"
    " charcoal ink gouache crayon chalk embroidered origami papercut clay bronze marble glass chrome velvet"
    " denim wicker porcelain ceramic lacquer enamel terracotta sandstone obsidian amber jade coral ivory"
    " ebony pewter copper brass tin lead quartz opal onyx topaz garnet beryl zircon spinel tourmaline"
    " peridot jasper agate chalcedony sardonyx carnelian bloodstone malachite azurite lapis turquoise"
    " rhodonite sodalite labradorite moonstone sunstone iolite kunzite morganite heliodor goshenite"
    " tanzanite benitoite taaffeite grandidierite painite musgravite jeremejevite poudretteite".split()
)
STYLE_P = np.array([1.0 / (k + 1) ** 1.2 for k in range(len(STYLES))])
STYLE_P /= STYLE_P.sum()
STYLE_SHARE = 0.25  # prompts with a style word


@dataclass(frozen=True)
class MediaItem:
    """One media file (plus thumbnail and maybe a trajectory sprite) that many rows share."""

    media_type: str
    recipe: Any
    media_path: str
    thumb_path: str
    trajectory_path: str | None
    trajectory_frames: int
    width: int
    height: int


def _write(root: Path, data: bytes, suffix: str) -> str:
    """Write ``data`` under its content-hash name (the store's own naming), without the store's fsync."""
    from studio.gallery.store import MediaStore

    rel = MediaStore.relative_path(data, suffix)
    target = root / rel
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return rel


def make_media(root: Path, n_files: int, seed: int = 0) -> list[MediaItem]:
    """``n_files`` real media items (85 % images, 9 % sounds, 6 % clips), written under ``root``."""
    from PIL import Image

    from pipelines.audio import log_mel, spectrogram_image, wav_bytes
    from pipelines.worlds import motion, shapes, tones
    from studio.gallery.pnginfo import encode_png
    from studio.gallery.service import make_thumbnail
    from studio.gallery.video_files import animated_png_bytes

    rng = np.random.default_rng(seed)
    items = []
    for k in range(n_files):
        kind = "image" if k % 100 < 85 else "audio" if k % 100 < 94 else "video"
        params = {"seed": int(rng.integers(2**31)), "bench": k}
        if kind == "image":
            recipe = shapes.sample_recipe(rng, holdout="include")
            image = shapes.render(recipe)
            params["prompt"] = shapes.caption(recipe)
            media = _write(root, encode_png(image, params), "png")
            thumb, suffix = make_thumbnail(image)
            frames, traj = 0, None
            if k % 2 == 0:  # half the images keep their trajectory: 2 rows (x_t, x0) of `frames` tiles
                frames = 10
                noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                arr = np.asarray(image, dtype=np.float32)
                tiles = [np.concatenate([((1 - t) * noise + t * arr), arr * (0.5 + 0.05 * i)], axis=0)
                         for i, t in enumerate(np.linspace(0, 1, frames))]
                sprite = Image.fromarray(np.clip(np.concatenate(tiles, axis=1), 0, 255).astype(np.uint8))
                buffer = __import__("io").BytesIO()
                sprite.save(buffer, format="PNG")
                traj = _write(root, buffer.getvalue(), "png")
            items.append(MediaItem(kind, recipe, media, _write(root, thumb, suffix), traj, frames, 64, 64))
        elif kind == "audio":
            recipe = tones.sample_recipe(rng)
            samples = tones.render(recipe)
            params["prompt"] = tones.caption(recipe)
            picture = spectrogram_image(log_mel(samples))
            thumb, suffix = make_thumbnail(picture)
            items.append(MediaItem(kind, recipe, _write(root, wav_bytes(samples, params), "wav"),
                                   _write(root, thumb, suffix), None, 0, picture.width, picture.height))
        else:
            recipe = motion.sample_recipe(rng)
            clip = motion.render_clip(recipe, frames=8)
            params["prompt"] = motion.caption(recipe)
            poster = Image.fromarray(clip[0])
            items.append(MediaItem(kind, recipe, _write(root, animated_png_bytes(clip, 8.0, params), "png"),
                                   _write(root, encode_png(poster, params), "png"), None, 0, 64, 64))
    return items


def _caption(item: MediaItem, rnd: random.Random) -> str:
    from pipelines.worlds import motion, shapes, tones

    world = {"image": shapes, "audio": tones, "video": motion}[item.media_type]
    return world.caption(item.recipe, rnd, 0.3)


def make_rows(items: list[MediaItem], n: int, seed: int = 0) -> Any:
    """Yield lists of up to ``CHUNK`` row dicts (column -> value), ``n`` rows in all, oldest first."""
    rnd = random.Random(seed)
    nprng = np.random.default_rng(seed)
    by_type = {t: [it for it in items if it.media_type == t] for t in ("image", "audio", "video")}
    models = [m for m in MODELS if by_type[m[2]]]
    weights = [m[3] for m in models]
    offsets = np.sort(nprng.uniform(0, SPAN.total_seconds(), n))
    styles = nprng.choice(len(STYLES), size=n, p=STYLE_P)
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        model_id, family, media_type, _ = rnd.choices(models, weights)[0]
        item = rnd.choice(by_type[media_type])
        prompt = _caption(item, rnd)
        if rnd.random() < STYLE_SHARE:
            prompt += f", {STYLES[styles[i]]}"
        negative = rnd.choice(NEGATIVES) if rnd.random() < 0.35 else ""
        seed_value = rnd.getrandbits(32)
        steps = rnd.choice(STEPS)
        guidance = rnd.choice(GUIDANCES) if rnd.random() < 0.7 else round(rnd.uniform(0, 15) * 2) / 2
        scheduler = rnd.choice(SCHEDULERS)
        created = START + timedelta(seconds=float(offsets[i]))
        params = {"prompt": prompt, "negative_prompt": negative, "num_inference_steps": steps,
                  "guidance_scale": guidance, "seed": seed_value, "height": item.height, "width": item.width,
                  "scheduler": scheduler, "num_images": 1, "guidance_rescale": 0.0, "guidance_interval": None,
                  "temperature": 1.0, "top_k": 0, "model_id": model_id, "family": family}
        chunk.append({
            "created_at": created, "media_type": media_type, "family": family,
            "model_id": model_id, "prompt": prompt, "negative_prompt": negative, "seed": seed_value,
            "steps": steps, "guidance": guidance, "scheduler": scheduler, "width": item.width,
            "height": item.height, "params": params, "duration_s": round(rnd.uniform(0.2, 30.0), 3),
            "media_path": item.media_path, "thumb_path": item.thumb_path,
            "trajectory_path": item.trajectory_path,
            "trajectory_frames": item.trajectory_frames if item.trajectory_path else 0,
            "status": "ok" if rnd.random() < 0.99 else "cancelled", "favourite": rnd.random() < 0.02,
            "tags": [], "group_id": None,
        })
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def fill(gallery: Any, rows: int, files: int = 3000, seed: int = 0, progress: Callable[[str], None] | None = None
         ) -> None:
    """Add ``rows`` rows (and ``files`` shared media items) to the empty ``gallery``, in bulk."""
    from sqlalchemy import insert

    from studio.gallery.models import Generation, PromptHistory

    t0 = time.perf_counter()
    items = make_media(gallery.root, min(files, max(rows, 1)), seed)
    if progress:
        progress(f"  {len(items)} media items written in {time.perf_counter() - t0:.1f} s")
    prompts: dict[str, list[Any]] = {}  # text -> [first_used, last_used, times]
    table = Generation.__table__
    done = 0
    with gallery.engine.connect() as conn:
        if conn.dialect.name == "sqlite":  # a throwaway build: no fsync per commit, a large page cache
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.exec_driver_sql("PRAGMA cache_size=-262144")
            conn.commit()
        transaction = conn.begin()
        for chunk in make_rows(items, rows, seed):
            conn.execute(insert(table), chunk)
            for r in chunk:
                seen = prompts.get(r["prompt"])
                if seen is None:
                    prompts[r["prompt"]] = [r["created_at"], r["created_at"], 1]
                else:
                    seen[1] = r["created_at"]
                    seen[2] += 1
            done += len(chunk)
            if done % TRANSACTION == 0 or done == rows:
                transaction.commit()
                transaction = conn.begin()
                if progress:
                    progress(f"  {done:,}/{rows:,} rows ({time.perf_counter() - t0:.0f} s)")
        history = [{"text": t, "first_used": a, "last_used": b, "times_used": c} for t, (a, b, c) in prompts.items()]
        for k in range(0, len(history), CHUNK):
            conn.execute(insert(PromptHistory.__table__), history[k:k + CHUNK])
        transaction.commit()
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA optimize")
            conn.commit()
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.commit()

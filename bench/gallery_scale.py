"""The gallery at 100k and 1M rows: page views, full-text search and the startup sweep.

    python -m bench.gallery_scale --rows 100000,1000000 [--gallery-root DIR] [--reps 200]

For each size, a generator fills a gallery (once: it is kept under ``$TMPDIR/studio-bench-gallery-<rows>`` and
reused while its ``bench-complete.json`` matches) with realistic rows, fast: bulk ``INSERT``s through SQLAlchemy
Core (executemany, 100k rows a transaction; the FTS5 triggers index the prompts as they go) instead of a million
``Gallery.save_image`` calls. Prompts come from the worlds' caption grammars (Shapes for images, Tones for sounds,
Motion for clips) with optional style words (a Zipf tail: common and rare words) and negative prompts; models,
families, media types, seeds, steps, guidance, schedulers and dates (two years, ids in time order) are spread
out, ~2 % are favourites, ``params`` holds the recipe JSON a real row holds. A few thousand real media files
(PNG with its recipe, WebP thumbnail, trajectory sprites; WAV + spectrogram; animated PNG + poster) are written
by content hash, as the studio names them, and shared by many rows.

Then it times, through the same calls the Gallery tab makes (``make_query`` from ``studio.tabs.gallery``, then
``Gallery.search`` and resolving each tile's thumbnail, as its ``load_page`` does), ``--reps`` repetitions of each
case (a case stops early after ``--budget-s`` seconds, with at least 20 reps), and prints p50/p95 per case and
size and whether each goal holds, for a new query (the gallery's kept query totals forgotten before each
repetition: this is what the goals are judged on) and again with the total kept (◀ Newer / Older ▶ through the
same result, a refresh) (issue 11: page p95 <= 10 ms at 100k and <= 30 ms at 1M rows; search p95 <= 50 ms
at 100k and <= 150 ms at 1M). Last it times what the studio does at launch: ``Gallery.open`` and the startup sweep
(``studio.gallery.reconcile.sweep``) on a gallery that has not changed since its last sweep, and after a session
that saved 50 images and deleted 10 of them (the goal: launch <= 8 s at 1M rows). Timings are printed, never
asserted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

BUILD_FORMAT = 1  # bump when the generator's rows change, so kept galleries are rebuilt
GOALS_MS = {"page": {100_000: 10.0, 1_000_000: 30.0}, "search": {100_000: 50.0, 1_000_000: 150.0}}
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


def build(root: Path, rows: int, files: int = 3000, seed: int = 0) -> tuple[Path, float | None]:
    """A filled gallery at ``root`` (reused when complete and made by this generator); returns (root, build s)."""
    from studio.gallery import Gallery

    marker = root / "bench-complete.json"
    want = {"format": BUILD_FORMAT, "rows": rows, "files": files, "seed": seed}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return root, None
        except ValueError:
            pass
    shutil.rmtree(root, ignore_errors=True)
    print(f"building a {rows:,}-row gallery in {root} ...", flush=True)
    t0 = time.perf_counter()
    with Gallery.open(root) as gallery:
        fill(gallery, rows, files, seed, progress=lambda s: print(s, flush=True))
    took = time.perf_counter() - t0
    marker.write_text(json.dumps(want))
    return root, took


# -- timing --------------------------------------------------------------------------------------------
def _filters(**changes: Any) -> dict[str, Any]:
    base = dict(text="", model_id="", family="", media_type="", g_min="", g_max="", date_from="", date_to="",
                favourites=False, page=1)
    return base | changes


def page_view(gallery: Any, values: dict[str, Any]) -> tuple[int, int]:
    """What the Gallery tab's ``load_page`` does for these form values; returns (tiles, total)."""
    from studio.tabs.gallery import PAGE_SIZE, make_query

    query = make_query(**values)
    rows, total = gallery.search(query)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    items = [(str(gallery.store.resolve(r.thumb_path or r.media_path)), f"#{r.id} {r.prompt[:60]}") for r in rows]
    _ = f"Page {query.page} of {pages} · {total} item{'s' if total != 1 else ''}"
    return len(items), total


def rarest_style(gallery: Any) -> str:
    """A style word few rows use (but some do)."""
    for word in reversed(STYLES):
        if page_view(gallery, _filters(text=word))[1] >= 5:
            return word
    return STYLES[-1]


def cases(gallery: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, goal kind, Gallery-tab form values) of every timed case."""
    from studio.tabs.gallery import PAGE_SIZE

    total = page_view(gallery, _filters())[1]
    last = max(1, math.ceil(total / PAGE_SIZE))
    second_model = "builtin/shapes-dit"
    rare = rarest_style(gallery)
    return [
        ("first page", "page", _filters()),
        ("page 2 (Older ▶)", "page", _filters(page=2)),
        ("page 500", "page", _filters(page=500)),
        (f"last page ({last})", "page", _filters(page=last)),
        (f"middle page ({last // 2})", "page", _filters(page=max(1, last // 2))),
        ("model + guidance 5-8", "page", _filters(model_id=second_model, g_min="5", g_max="8")),
        ("model + guidance, page 50", "page", _filters(model_id=second_model, g_min="5", g_max="8", page=50)),
        ("favourites only", "page", _filters(favourites=True)),
        ("rare model + favourites", "page", _filters(model_id="local/flow-tiny-7", favourites=True)),
        ("sounds, one month", "page", _filters(media_type="audio", date_from="2025-03-01", date_to="2025-03-31")),
        ("search 'red' (common)", "search", _filters(text="red")),
        ("search 'background' (most rows)", "search", _filters(text="background")),
        (f"search '{rare}' (rare)", "search", _filters(text=rare)),
        ("search 'zebra' (no match)", "search", _filters(text="zebra")),
        ("search 'large blue star'", "search", _filters(text="large blue star")),
        ("search 'blue cir' (typing)", "search", _filters(text="blue cir")),
        ("search 'red', page 100", "search", _filters(text="red", page=100)),
        ("search 'star' + model + guidance", "search",
         _filters(text="star", model_id=second_model, g_min="5", g_max="8")),
        ("search 'red circle' + favourites", "search", _filters(text="red circle", favourites=True)),
        # a common word with a filter that keeps most rows: the worst case for counting a new search
        ("search 'red' + images", "search", _filters(text="red", media_type="image")),
        ("search 'background' + images", "search", _filters(text="background", media_type="image")),
    ]


def time_case(gallery: Any, values: dict[str, Any], reps: int, budget_s: float, cold: bool
              ) -> tuple[list[float], int]:
    """Milliseconds of each repetition (at least 20, then until ``reps`` or ``budget_s``), and the total.
    ``cold``: forget the gallery's kept query totals before each (a new search); else keep them (paging through a
    result, a refresh after a delete)."""
    _, total = page_view(gallery, values)  # warm-up
    clear = getattr(getattr(gallery, "totals", None), "clear", lambda: None)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < reps and (len(times) < 20 or time.perf_counter() - started < budget_s):
        if cold:
            clear()
        t0 = time.perf_counter()
        page_view(gallery, values)
        times.append((time.perf_counter() - t0) * 1000)
    return times, total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def time_launch(root: Path) -> dict[str, float]:
    """Seconds of ``Gallery.open`` (which migrates a gallery made by an older studio) and of the startup sweep:
    a full one (the first launch after the upgrade, then weekly), one with nothing changed since the last, and
    one after a session that saved 50 images and deleted 10 of them."""
    import inspect

    from PIL import Image

    from studio.gallery import Gallery
    from studio.gallery.reconcile import sweep

    full = {"full": True} if "full" in inspect.signature(sweep).parameters else {}
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    gallery = Gallery.open(root)
    out["open (migrations included)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = sweep(gallery, **full)
    out["full sweep"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = sweep(gallery)
    out["sweep, nothing changed since the last"] = time.perf_counter() - t0
    rng = np.random.default_rng(int(time.time()))
    ids = [gallery.save_image(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                              params={"prompt": f"bench session {k}", "seed": k}, fields={"family": "bench"})
           for k in range(50)]
    for gen_id in ids[:10]:
        gallery.delete(gen_id)
    t0 = time.perf_counter()
    after = sweep(gallery)
    out["sweep after a session (50 saves, 10 deletes)"] = time.perf_counter() - t0
    for gen_id in ids[10:]:  # leave the kept gallery as it was built
        gallery.delete(gen_id)
    sweep(gallery)
    gallery.close()
    for report in (first, again, after):
        if not report.clean:
            print(f"  note: {report.summary()}")
    return out


LAUNCH_GOAL_S = 8.0  # the studio's launch at 1M rows; the sweep is the gallery's share of it


def _emit_results(rows: int, results: dict[str, list[tuple[float, str]]], launch: dict[str, float]) -> None:
    """Headline figures as ``BENCH-RESULT`` lines for ``python -m bench`` (when its ``bench.report`` is there)."""
    try:
        from bench.report import emit
    except ImportError:
        return
    for kind, found in results.items():
        goal = GOALS_MS[kind].get(rows)
        worst, name = max(found)
        emit("gallery_scale", f"{rows:,} rows: {kind} p95, worst of {len(found)} cases ({name})", worst, "ms",
             None if goal is None else f"<= {goal:g}", None if goal is None else worst <= goal)
        if goal is not None:
            emit("gallery_scale", f"{rows:,} rows: {kind} cases within the p95 goal", sum(p <= goal for p, _ in found),
                 f"of {len(found)}")
    if launch:
        startup = launch["open (migrations included)"] + launch["sweep, nothing changed since the last"]
        emit("gallery_scale", f"{rows:,} rows: Gallery.open + startup sweep", startup, "s",
             f"<= {LAUNCH_GOAL_S:g}" if rows >= 1_000_000 else None,
             startup <= LAUNCH_GOAL_S if rows >= 1_000_000 else None)
        emit("gallery_scale", f"{rows:,} rows: full sweep", launch["full sweep"], "s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated gallery sizes")
    parser.add_argument("--gallery-root", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder that keeps the built galleries (studio-bench-gallery-<rows>)")
    parser.add_argument("--files", type=int, default=3000, help="distinct media items shared by the rows")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=15.0, help="at most this long per case (>= 20 reps)")
    parser.add_argument("--no-launch", action="store_true", help="skip timing Gallery.open and the startup sweep")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.rows.split(",") if s.strip()]

    from studio.gallery import Gallery

    summary: list[str] = []
    for rows in sizes:
        root, took = build(args.gallery_root / f"studio-bench-gallery-{rows}", rows, args.files)
        print(f"\n== {rows:,} rows: {root} ({'built in %.0f s' % took if took else 'reused'}, "
              f"{(root / 'gallery.db').stat().st_size / 2**20:.0f} MiB database)", flush=True)
        launch = {} if args.no_launch else time_launch(root)
        with Gallery.open(root) as gallery:
            print(f"{'case':<40} {'rows':>9} {'reps':>5} {'p50 ms':>8} {'p95 ms':>8}  goal (new query)   "
                  f"{'kept total: p50':>15} {'p95':>7}")
            results: dict[str, list[tuple[float, str]]] = {}
            for name, kind, values in cases(gallery):
                times, total = time_case(gallery, values, args.reps, args.budget_s, cold=True)
                warm, _ = time_case(gallery, values, args.reps, args.budget_s, cold=False)
                p50, p95 = statistics.median(times), percentile(times, 95)
                goal = GOALS_MS[kind].get(rows)
                verdict = "" if goal is None else f"{'ok' if p95 <= goal else 'MISSED'} (p95 <= {goal:g})"
                print(f"{name:<40} {total:>9,} {len(times):>5} {p50:>8.2f} {p95:>8.2f}  {verdict:<18} "
                      f"{statistics.median(warm):>15.2f} {percentile(warm, 95):>7.2f}", flush=True)
                results.setdefault(kind, []).append((p95, name))
        for name, seconds in launch.items():
            print(f"launch: {name:<48} {seconds:8.2f} s")
        parts = []
        for kind, found in results.items():
            goal = GOALS_MS[kind].get(rows)
            met = "" if goal is None else f"{sum(p <= goal for p, _ in found)}/{len(found)} within {goal:g} ms, "
            worst = max(found)
            parts.append(f"{kind}: {met}worst p95 {worst[0]:.1f} ms ({worst[1]})")
        _emit_results(rows, results, launch)
        line = f"{rows:,} rows: " + "; ".join(parts)
        if launch:
            line += (f"; launch: open {launch['open (migrations included)']:.2f} s + sweep "
                     f"{launch['sweep, nothing changed since the last']:.2f} s "
                     f"(full sweep {launch['full sweep']:.2f} s)")
        summary.append(line)
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()

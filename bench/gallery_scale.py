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
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gallery_fill import BUILD_FORMAT, MODELS, STYLES, fill  # the generator (bench/gallery_fill.py)

__all__ = [  # MODELS and fill: the generator's, still importable from here
    "BUILD_FORMAT",
    "GOALS_MS",
    "LAUNCH_GOAL_S",
    "MODELS",
    "STYLES",
    "build",
    "cases",
    "fill",
    "main",
    "page_view",
    "percentile",
    "rarest_style",
    "time_case",
    "time_launch",
]

GOALS_MS = {"page": {100_000: 10.0, 1_000_000: 30.0}, "search": {100_000: 50.0, 1_000_000: 150.0}}


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

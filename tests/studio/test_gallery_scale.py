"""The scale benchmark's generator (``bench/gallery_scale.py``) makes rows the gallery can page, search, count
and sweep like its own: checked on a small gallery (timings are the benchmark's business, never asserted here)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench import gallery_scale
from studio.gallery import Gallery, GalleryQuery
from studio.gallery.models import GalleryChange, Generation, GenerationCount, PromptHistory
from studio.gallery.reconcile import sweep

ROWS, FILES = 3000, 100


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "gallery"
    with Gallery.open(root) as g:
        gallery_scale.fill(g, ROWS, FILES, seed=1)
    g = Gallery.open(root)
    yield g
    g.close()


def test_rows_look_like_real_ones(filled: Gallery) -> None:
    with filled.session() as s:
        rows = list(s.scalars(select(Generation).order_by(Generation.id)))
        history = {p.text: p.times_used for p in s.scalars(select(PromptHistory))}
    assert len(rows) == ROWS == filled.count()
    models = {m[0]: m[1:3] for m in gallery_scale.MODELS}
    for r in rows:
        assert (r.family, r.media_type) == models[r.model_id]
        assert r.params["prompt"] == r.prompt and r.params["seed"] == r.seed and r.params["model_id"] == r.model_id
        assert r.status in ("ok", "cancelled") and r.created_at.tzinfo is not None
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)  # saved in time order
    assert {r.media_type for r in rows} == {"image", "audio", "video"}
    assert 0.005 < sum(r.favourite for r in rows) / ROWS < 0.05
    assert len({r.model_id for r in rows}) >= 8 and len({r.guidance for r in rows}) > 10
    assert len({r.media_path for r in rows}) <= FILES < ROWS  # files shared by content hash
    assert history == Counter(r.prompt for r in rows)
    assert any("background" in r.prompt for r in rows) and any(r.negative_prompt for r in rows)


def test_files_are_the_studio_s_own(filled: Gallery) -> None:
    rows = filled.search(GalleryQuery(media_type="image", page_size=50))[0]
    assert filled.image_error(rows[0].id) is None  # a PNG carrying its recipe, as the studio saves it
    sound = filled.search(GalleryQuery(media_type="audio"))[0][0]
    assert filled.sound_error(sound.id) is None
    clip = filled.search(GalleryQuery(media_type="video"))[0][0]
    assert filled.video_error(clip.id) is None
    for r in rows:
        assert filled.store.exists(r.thumb_path)
        assert r.trajectory_path is None or filled.store.exists(r.trajectory_path)
    report = sweep(filled, full=True)
    assert report.clean, report.summary()
    with filled.session() as s:
        assert s.scalar(select(func.count()).select_from(GalleryChange)) == 0  # the sweep read the journal


def test_the_gallery_pages_searches_and_counts_them(filled: Gallery) -> None:
    rows, total = filled.search(GalleryQuery())
    assert total == ROWS and [r.id for r in rows] == list(range(ROWS, ROWS - 24, -1))
    last, _ = filled.search(GalleryQuery(page=(ROWS + 23) // 24))
    assert [r.id for r in last] == list(range(ROWS % 24 or 24, 0, -1))
    rows, total = filled.search(GalleryQuery(text="background"))
    assert 0 < total < ROWS and all("background" in r.prompt for r in rows)
    rare = gallery_scale.rarest_style(filled)
    assert 0 < filled.search(GalleryQuery(text=rare))[1] < total
    with filled.session() as s:
        counted = s.scalar(select(func.sum(GenerationCount.n)))
        favourites = s.scalar(select(func.count()).select_from(Generation).where(Generation.favourite.is_(True)))
    assert counted == ROWS and filled.search(GalleryQuery(favourites_only=True))[1] == favourites


def test_build_reuses_a_complete_gallery(tmp_path: Path, monkeypatch) -> None:
    root, took = gallery_scale.build(tmp_path / "g", 200, files=20)
    assert took is not None and json.loads((root / "bench-complete.json").read_text())["rows"] == 200
    monkeypatch.setattr(gallery_scale, "fill", lambda *a, **k: pytest.fail("rebuilt a complete gallery"))
    assert gallery_scale.build(tmp_path / "g", 200, files=20) == (root, None)

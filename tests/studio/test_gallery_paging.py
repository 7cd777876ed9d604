"""Gallery paging and totals at scale: every page of every kind of query (filters, dates, text, text with filters,
in both of the full-text search's join shapes) against a brute-force answer; totals from the trigger-kept counts
and the kept-total cache following inserts, deletes and favourites; a search's last word spelled out as the
index's terms."""
from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from studio.gallery import Gallery, GalleryQuery, add_generation
from studio.gallery import repository
from studio.gallery.models import Generation, GenerationCount
from studio.gallery.repository import fts_match_expression, prefix_terms

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
MODELS = ("m/alpha", "m/beta", "m/gamma")
WORDS = ("red", "reddish", "redwood", "blue", "green", "circle", "star", "square", "on", "a", "white", "background")
N = 160


def in_text(expression: str) -> str:
    """``expression`` searched in the prompt columns only (the index's third column holds facet terms)."""
    return "{prompt negative_prompt} : (" + expression + ")"


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))


@pytest.fixture()
def gallery(tmp_path: Path):
    """N rows with spread-out models, media, guidance, favourites, dates (in id order) and prompts."""
    rng = random.Random(3)
    g = Gallery.open(tmp_path / "gallery")
    with g.session() as s:
        for i in range(N):
            add_generation(
                s, created_at=T0 + timedelta(hours=i), prompt=_prompt(rng),
                negative_prompt=rng.choice(["", "blurry", "green"]), model_id=rng.choice(MODELS),
                family=rng.choice(["ldm", "dit"]), media_type=rng.choice(["image", "image", "audio"]),
                guidance=rng.choice([1.0, 3.0, 5.0, 7.5, 10.0]), favourite=rng.random() < 0.2, params={},
                media_path=f"media/00/{i}.png")
    yield g
    g.close()


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _text_match(row: Generation, text: str, dialect: str) -> bool:
    words = text.split()
    if not words:
        return True
    if dialect != "sqlite":  # ILIKE: every word inside the prompt or the negative prompt
        return all(w.lower() in row.prompt.lower() or w.lower() in row.negative_prompt.lower() for w in words)
    tokens = set(_tokens(row.prompt)) | set(_tokens(row.negative_prompt))
    *whole, last = words
    return all(w in tokens for w in whole) and any(t.startswith(last) for t in tokens)


def _expected(g: Gallery, q: GalleryQuery) -> list[int]:
    with g.session() as s:
        rows = list(s.scalars(select(Generation)))
    dialect = g.engine.dialect.name
    keep = [r for r in rows if _text_match(r, q.text, dialect)
            and (not q.model_id or r.model_id == q.model_id) and (not q.family or r.family == q.family)
            and (not q.media_type or r.media_type == q.media_type)
            and (q.guidance_min is None or r.guidance >= q.guidance_min)
            and (q.guidance_max is None or r.guidance <= q.guidance_max)
            and (q.created_after is None or r.created_at >= q.created_after)
            and (q.created_before is None or r.created_at < q.created_before)
            and (not q.favourites_only or r.favourite)]
    return sorted((r.id for r in keep), reverse=True)


def _all_pages(g: Gallery, q: GalleryQuery) -> tuple[list[int], set[int]]:
    """Ids of every page in order (and one page past the end), and the totals reported."""
    ids, totals, page = [], set(), 1
    while True:
        rows, total = g.search(GalleryQuery(**{**q.__dict__, "page": page}))
        totals.add(total)
        if not rows:
            return ids, totals
        ids += [r.id for r in rows]
        page += 1


QUERIES = [
    {},
    {"model_id": "m/beta"},
    {"favourites_only": True},
    {"model_id": "m/alpha", "guidance_min": 3.0, "guidance_max": 7.5},
    {"media_type": "audio", "created_after": T0 + timedelta(hours=30), "created_before": T0 + timedelta(hours=120)},
    {"family": "dit", "favourites_only": True, "created_after": T0 + timedelta(hours=10)},
    {"text": "red"},
    {"text": "re"},
    {"text": "blue sta"},
    {"text": "green", "model_id": "m/gamma"},
    {"text": "circle", "favourites_only": True, "guidance_min": 5.0},
    {"text": "background", "created_before": T0 + timedelta(hours=100), "media_type": "image"},
    {"text": "nothing-like-this"},
    # equality filters only: answered by the index's facet terms alone (0005)
    {"text": "red", "media_type": "image"},
    {"text": "star", "family": "dit", "model_id": "m/alpha", "favourites_only": True},
    {"text": "backg", "model_id": "m/beta", "media_type": "audio"},
]


@pytest.mark.parametrize("small_match", [0, 10**9], ids=["filters-as-a-set", "row-lookups"])
@pytest.mark.parametrize("page_size", [7, 24])
@pytest.mark.parametrize("kwargs", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
def test_every_page_agrees_with_brute_force(gallery: Gallery, monkeypatch, kwargs, page_size, small_match) -> None:
    monkeypatch.setattr(repository, "SMALL_MATCH", small_match)
    q = GalleryQuery(page_size=page_size, **kwargs)
    expected = _expected(gallery, q)
    ids, totals = _all_pages(gallery, q)
    assert ids == expected  # newest (highest id) first, no row twice or left out, both halves of the pages
    assert totals == {len(expected)}
    gallery.totals.clear()
    assert _all_pages(gallery, q) == (ids, totals)  # the same without the kept totals


def _counts_agree(g: Gallery) -> None:
    """``generation_counts`` (kept by triggers) equals a GROUP BY over the rows."""
    key = (Generation.model_id, Generation.family, Generation.media_type, Generation.favourite, Generation.guidance)
    with g.session() as s:
        grouped = {tuple(r[:-1]): r[-1] for r in s.execute(select(*key, func.count()).group_by(*key))}
        kept = {(c.model_id, c.family, c.media_type, c.favourite, c.guidance): c.n
                for c in s.scalars(select(GenerationCount)) if c.n}
    assert kept == grouped


def test_totals_follow_inserts_deletes_and_favourites(gallery: Gallery) -> None:
    favourites = GalleryQuery(favourites_only=True)
    beta = GalleryQuery(model_id="m/beta", guidance_max=5.0)
    base_all, base_fav, base_beta = gallery.count(), gallery.search(favourites)[1], gallery.search(beta)[1]
    assert gallery.search(GalleryQuery())[1] == base_all == N
    ids = [r.id for r in gallery.search(GalleryQuery(model_id="m/beta", favourites_only=False, page_size=200))[0]]
    target = next(i for i in ids if not gallery.get(i).favourite)
    assert gallery.set_favourite(target, True)
    assert gallery.search(favourites)[1] == base_fav + 1
    with gallery.session() as s:
        add_generation(s, model_id="m/beta", guidance=1.0, favourite=True, prompt="new", params={},
                       media_path="media/00/new.png")
    assert gallery.search(favourites)[1] == base_fav + 2
    assert gallery.search(beta)[1] == base_beta + 1
    assert gallery.search(GalleryQuery())[1] == gallery.count() == N + 1
    gallery.delete(target)
    assert gallery.search(favourites)[1] == base_fav + 1
    assert gallery.search(GalleryQuery())[1] == gallery.count() == N
    with gallery.session() as s:  # a change to a counted column moves the row between counts
        s.get(Generation, next(i for i in ids if i != target)).model_id = "m/other"
    assert gallery.search(GalleryQuery(model_id="m/other"))[1] == 1
    _counts_agree(gallery)
    for q in (favourites, beta, GalleryQuery(model_id="m/other"), GalleryQuery(text="red", favourites_only=True),
              GalleryQuery(text="red", model_id="m/other"), GalleryQuery(text="red", model_id="m/beta")):
        assert gallery.search(q)[1] == len(_expected(gallery, q))


def test_kept_totals_are_forgotten_when_another_process_changes_the_gallery(gallery: Gallery) -> None:
    q = GalleryQuery(text="star", model_id="m/alpha")
    before = gallery.search(q)[1]
    assert gallery.search(q)[1] == before  # now kept
    other = Gallery.open(gallery.root)  # another studio process on the same gallery
    try:
        with other.session() as s:
            add_generation(s, model_id="m/alpha", prompt="a star", params={}, media_path="media/00/x.png")
    finally:
        other.close()
    assert gallery.search(q)[1] == before + 1


def test_a_search_s_last_word_becomes_the_index_terms_it_starts(gallery: Gallery, monkeypatch) -> None:
    if gallery.engine.dialect.name != "sqlite":
        pytest.skip("the FTS5 index is SQLite's")
    with gallery.session() as s:
        assert prefix_terms(s, "red") == ["red", "reddish", "redwood"]
        assert prefix_terms(s, "zz") == []
        assert fts_match_expression(s, "blue re") == in_text('"blue" AND ("red" OR "reddish" OR "redwood")')
        assert fts_match_expression(s, "Circle") == in_text('"circle"')
        # no such term: matches nothing, as "zebra"* would
        assert fts_match_expression(s, "zebra") == in_text('"zebra"')
        assert fts_match_expression(s, "blue rö") == in_text('"blue" AND "rö"*')  # not plain ASCII: FTS5 folds it
        assert fts_match_expression(s, "robot_arm") == in_text('"robot_arm"*')
        monkeypatch.setattr(repository, "MAX_PREFIX_TERMS", 2)
        assert prefix_terms(s, "red") is None
        assert fts_match_expression(s, "re") == in_text('"re"*')


def test_the_scale_migration_goes_down_and_up_on_a_gallery_with_rows(gallery: Gallery) -> None:
    """0004 on a gallery an older studio filled: counts from the rows already there, then kept by its triggers;
    its downgrade leaves the 0003 schema (and a gallery that upgrades again)."""
    from alembic import command
    from sqlalchemy import inspect, insert

    from studio.gallery.migrate import alembic_config, current_revision, upgrade_to_head

    cfg = alembic_config()
    with gallery.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0003")
    assert current_revision(gallery.engine) == "0003"
    tables = set(inspect(gallery.engine).get_table_names())
    assert not tables & {"generation_counts", "gallery_changes", "gallery_state", "gallery_counters"}
    indexes = {i["name"] for i in inspect(gallery.engine).get_indexes("generations")}
    assert "ix_generations_created_at" in indexes and "ix_generations_media_path" not in indexes
    with gallery.engine.begin() as connection:  # a row saved by the older studio
        connection.execute(insert(Generation.__table__).values(
            created_at=T0, model_id="m/old", prompt="an old red fox", params={}, tags=[],
            media_path="media/00/old.png"))
    upgrade_to_head(gallery.engine)
    gallery.totals.clear()
    _counts_agree(gallery)
    assert gallery.search(GalleryQuery(model_id="m/old"))[1] == 1
    assert gallery.search(GalleryQuery())[1] == gallery.count() == N + 1
    assert [r.prompt for r in gallery.search(GalleryQuery(text="fox"))[0]] == ["an old red fox"]
    assert gallery.search(GalleryQuery(text="fox", model_id="m/old", media_type="image"))[1] == 1  # facets (0005)
    assert gallery.search(GalleryQuery(text="fox", model_id="m/alpha"))[1] == 0
    with gallery.session() as s:
        add_generation(s, model_id="m/old", prompt="new", params={}, media_path="media/00/new.png")
    assert gallery.search(GalleryQuery(model_id="m/old"))[1] == 2
    _counts_agree(gallery)


def test_facet_terms_match_only_their_filter_values(gallery: Gallery) -> None:
    """A filter value with any characters is one exact facet term; user words never match facet terms; the
    index's integrity check passes after facet changes."""
    if gallery.engine.dialect.name != "sqlite":
        pytest.skip("the FTS5 index is SQLite's")
    from studio.gallery.query import facet_terms

    odd = "local/ünïcode model (v2) \"quoted\""
    with gallery.session() as s:
        for model in (odd, odd + " copy", "m/alpha"):
            add_generation(s, model_id=model, family="text_to_video", media_type="video", prompt="a zebra crossing",
                           params={}, media_path=f"media/00/{model}.png")
    assert gallery.search(GalleryQuery(text="zebra", model_id=odd))[1] == 1
    assert gallery.search(GalleryQuery(text="zebra", family="text_to_video"))[1] == 3
    assert gallery.search(GalleryQuery(text="zebra", family="text"))[1] == 0  # whole values, not their words
    for term in facet_terms(GalleryQuery(model_id=odd, media_type="video", favourites_only=True)):
        assert gallery.search(GalleryQuery(text=term))[1] == 0  # typed as a word: searched in the prompts only
    row = gallery.search(GalleryQuery(text="zebra", model_id="m/alpha"))[0][0]
    assert gallery.set_favourite(row.id, True)
    assert [r.id for r in gallery.search(GalleryQuery(text="zebra", favourites_only=True))[0]] == [row.id]
    assert gallery.integrity_check() == "ok"

"""Gallery search tests: FTS5 words/prefix, filters, paging, hostile input, LIKE path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from studio.gallery import Gallery, GalleryQuery, Generation, add_generation, distinct_values
from studio.gallery.query import escape_like, fts5_expression
from studio.gallery.repository import search_generations_like

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
ROWS = [
    # prompt, negative, model, family, media, guidance, favourite
    ("a red fox in the snow", "blurry", "sd15", "latent_diffusion", "image", 7.5, True),
    ("a blue whale singing", "", "sd15", "latent_diffusion", "image", 3.0, False),
    ("red sunset over the sea", "low quality", "sdxl", "latent_diffusion", "image", 5.0, False),
    ("rain sounds at 100% volume", "", "audioldm", "audio_diffusion", "audio", 2.5, True),
    ("dancing robot_arm", "", "zeroscope", "video_diffusion", "video", 9.0, False),
    ("fox cub sleeping", "", "sdxl", "latent_diffusion", "image", 12.0, False),
]
HOSTILE = [
    '"',
    "'; DROP TABLE generations; --",
    "a OR b NEAR(",
    "*",
    "^",
    "prompt:red",
    "🦊🔥",
    "שלום עולם",
    "مرحبا",
    "\u202eevil\u202c",
    "red\x00\x07\x1b[31m",
    "\ud800 lone surrogate",
    "x" * 100_000,
    "fox " * 25_000,
    "NEAR(red fox, 2)",
    '"unterminated',
    "(((",
    "col:",
    "- NOT AND OR",
    "%_\\",
]


@pytest.fixture()
def gallery(tmp_path: Path):
    """A gallery with six rows, one hour apart (row i at T0 + i hours)."""
    gal = Gallery.open(tmp_path / "gallery")
    with gal.session() as session:
        for i, (prompt, neg, model, family, media, guidance, fav) in enumerate(ROWS):
            add_generation(
                session,
                created_at=T0 + timedelta(hours=i),
                prompt=prompt,
                negative_prompt=neg,
                model_id=model,
                family=family,
                media_type=media,
                guidance=guidance,
                favourite=fav,
                params={"prompt": prompt},
                media_path=f"media/00/{i}.png",
            )
    yield gal
    gal.close()


def in_text(expression: str) -> str:
    """``expression`` searched in the prompt columns only (the index's third column holds facet terms)."""
    return "{prompt negative_prompt} : (" + expression + ")"


def _prompts(gal: Gallery, **kwargs) -> list[str]:
    """Prompts of the first page for a query built from ``kwargs``."""
    rows, _ = gal.search(GalleryQuery(**kwargs))
    return [r.prompt for r in rows]


def test_newest_first_and_total(gallery: Gallery) -> None:
    rows, total = gallery.search(GalleryQuery())
    assert total == len(ROWS)
    assert [r.prompt for r in rows] == [r[0] for r in reversed(ROWS)]


def test_word_and_prefix_search(gallery: Gallery) -> None:
    assert _prompts(gallery, text="fox") == ["fox cub sleeping", "a red fox in the snow"]
    assert _prompts(gallery, text="red fo") == ["a red fox in the snow"]
    assert _prompts(gallery, text="RED") == ["red sunset over the sea", "a red fox in the snow"]
    assert _prompts(gallery, text="whal") == ["a blue whale singing"]
    assert _prompts(gallery, text="quality") == ["red sunset over the sea"]  # negative prompt
    assert _prompts(gallery, text="fox whale") == []
    assert _prompts(gallery, text="   ") == _prompts(gallery)


def test_filters(gallery: Gallery) -> None:
    assert _prompts(gallery, model_id="sdxl") == ["fox cub sleeping", "red sunset over the sea"]
    assert _prompts(gallery, family="audio_diffusion") == ["rain sounds at 100% volume"]
    assert _prompts(gallery, media_type="video") == ["dancing robot_arm"]
    assert _prompts(gallery, media_type="") == _prompts(gallery)
    assert _prompts(gallery, guidance_min=5.0, guidance_max=9.0) == [
        "dancing robot_arm",
        "red sunset over the sea",
        "a red fox in the snow",
    ]
    assert _prompts(gallery, guidance_min=10) == ["fox cub sleeping"]
    assert _prompts(gallery, favourites_only=True) == [
        "rain sounds at 100% volume",
        "a red fox in the snow",
    ]
    assert _prompts(gallery, text="fox", model_id="sd15") == ["a red fox in the snow"]


def test_date_filters(gallery: Gallery) -> None:
    after = T0 + timedelta(hours=4)
    assert _prompts(gallery, created_after=after) == ["fox cub sleeping", "dancing robot_arm"]
    assert _prompts(gallery, created_before=T0 + timedelta(hours=1)) == ["a red fox in the snow"]
    naive = (T0 + timedelta(hours=1)).replace(tzinfo=None)
    cet = timezone(timedelta(hours=1))
    assert _prompts(gallery, created_after=naive, created_before=T0.astimezone(cet) + timedelta(hours=3)) == [
        "red sunset over the sea",
        "a blue whale singing",
    ]


def test_paging(gallery: Gallery) -> None:
    seen: list[str] = []
    for page in (1, 2, 3):
        rows, total = gallery.search(GalleryQuery(page=page, page_size=2))
        assert total == 6 and len(rows) == 2
        seen += [r.prompt for r in rows]
    assert seen == [r[0] for r in reversed(ROWS)]
    rows, total = gallery.search(GalleryQuery(page=9, page_size=2))
    assert rows == [] and total == 6
    rows, total = gallery.search(GalleryQuery(text="red", page=2, page_size=1))
    assert [r.prompt for r in rows] == ["a red fox in the snow"] and total == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"page": 0}, "Page must be 1"),
        ({"page_size": 0}, "Page size"),
        ({"page_size": 201}, "Page size"),
        ({"guidance_min": float("nan")}, "finite"),
        ({"guidance_max": float("inf")}, "finite"),
        ({"guidance_min": 5, "guidance_max": 1}, "swap"),
        ({"created_after": T0, "created_before": T0 - timedelta(days=1)}, "swap"),
        ({"page": 1.5}, "whole number"),
    ],
)
def test_query_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GalleryQuery(**kwargs)


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_never_raises(gallery: Gallery, text: str) -> None:
    before = gallery.count()
    rows, total = gallery.search(GalleryQuery(text=text))
    assert total == len(rows) <= len(ROWS)
    with gallery.session() as session:
        like_rows, like_total = search_generations_like(session, GalleryQuery(text=text))
    assert like_total == len(like_rows)
    assert gallery.count() == before
    assert gallery.integrity_check() == "ok"


def test_fts5_expression_is_quoted() -> None:
    assert fts5_expression("red fox") == in_text('"red" AND "fox"*')
    assert fts5_expression('say "hi"') == in_text('"say" AND """hi"""*')
    assert fts5_expression("a OR b NEAR(") == in_text('"a" AND "OR" AND "b" AND "NEAR("*')
    assert fts5_expression("* ^ \"") is None
    assert fts5_expression("") is None


def test_like_path_matches_fts_for_words(gallery: Gallery) -> None:
    with gallery.session() as session:
        rows, total = search_generations_like(session, GalleryQuery(text="FOX", model_id="sd15"))
        assert [r.prompt for r in rows] == ["a red fox in the snow"] and total == 1
        rows, _ = search_generations_like(session, GalleryQuery(text="100%"))
        assert [r.prompt for r in rows] == ["rain sounds at 100% volume"]
        rows, _ = search_generations_like(session, GalleryQuery(text="%"))
        assert [r.prompt for r in rows] == ["rain sounds at 100% volume"]
        rows, _ = search_generations_like(session, GalleryQuery(text="t_e"))
        assert rows == []  # '_' is literal, not a wildcard
        rows, _ = search_generations_like(session, GalleryQuery(text="robot_"))
        assert [r.prompt for r in rows] == ["dancing robot_arm"]
        rows, _ = search_generations_like(session, GalleryQuery(text="low qual"))
        assert [r.prompt for r in rows] == ["red sunset over the sea"]
    assert escape_like("50%_a\\b") == "50\\%\\_a\\\\b"


def test_symbol_only_text_uses_like_on_sqlite(gallery: Gallery) -> None:
    assert _prompts(gallery, text="%") == ["rain sounds at 100% volume"]
    assert _prompts(gallery, text="🦊") == []


def test_fts_follows_updates_and_deletes(gallery: Gallery) -> None:
    fox_id = gallery.search(GalleryQuery(text="snow"))[0][0].id
    with gallery.session() as session:
        session.get(Generation, fox_id).prompt = "a grey wolf"
    assert _prompts(gallery, text="snow") == []
    assert _prompts(gallery, text="wolf") == ["a grey wolf"]
    gallery.delete(fox_id)
    assert _prompts(gallery, text="wolf") == []
    assert gallery.integrity_check() == "ok"


def test_distinct_values(gallery: Gallery) -> None:
    with gallery.session() as session:
        assert distinct_values(session, "model_id") == ["audioldm", "sd15", "sdxl", "zeroscope"]
        assert distinct_values(session, "media_type") == ["audio", "image", "video"]
        with pytest.raises(ValueError, match="use one of"):
            distinct_values(session, "prompt")
    assert gallery.distinct_values("family")[0] == "audio_diffusion"

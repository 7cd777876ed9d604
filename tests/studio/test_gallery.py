"""Gallery service, migrations, PNG info and prompt-history tests."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect, text

from studio.gallery import (
    Gallery,
    GalleryError,
    GalleryQuery,
    encode_png,
    read_png_params,
)
from studio.gallery.migrate import current_revision, head_revision, upgrade_to_head
from studio.gallery.service import make_engine

PARAMS = {
    "prompt": "a red fox in the snow",
    "negative_prompt": "blurry",
    "num_inference_steps": 20,
    "scheduler": "euler",
    "guidance_scale": 7.5,
    "seed": 42,
    "width": 64,
    "height": 48,
    "model_id": "my-model",
}
FIELDS = {"family": "latent_diffusion", "duration_s": 1.25, "tags": ["fox", "snow"]}


@pytest.fixture()
def gallery(tmp_path: Path):
    """A fresh gallery in a temporary folder."""
    gal = Gallery.open(tmp_path / "gallery")
    yield gal
    gal.close()


def _image(colour: str = "red", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A plain test image."""
    return Image.new("RGB", size, colour)


def test_migration_creates_tables_and_fts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    assert current_revision(engine) is None
    upgrade_to_head(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"generations", "prompt_history", "alembic_version"} <= tables
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT name FROM sqlite_master")).scalars())
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        fks = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
    assert {"generations_fts", "generations_fts_ai", "generations_fts_ad", "generations_fts_au"} <= names
    assert mode == "wal" and fks == 1
    columns = {c["name"] for c in inspect(engine).get_columns("generations")}
    assert {"params", "trajectory_frames", "favourite", "tags", "media_path"} <= columns
    indexed = {i["column_names"][0] for i in inspect(engine).get_indexes("generations")}
    assert {"created_at", "media_type", "family", "model_id", "guidance", "favourite"} <= indexed
    assert {"embeddings", "projections"} <= tables  # the Embedding Map caches (0003)
    by_name = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("generations")}
    assert by_name["ix_generations_media_path"] == ["media_path"]  # file reference checks (0004)
    assert by_name["ix_generations_thumb_path"] == ["thumb_path"]
    assert by_name["ix_generations_trajectory_path"] == ["trajectory_path"]
    assert by_name["ix_generations_model_id_guidance"] == ["model_id", "guidance"]
    assert {"gallery_changes", "gallery_state"} <= tables  # the startup sweep's journal and checkpoint (0004)
    assert {"generations_changes_ai", "generations_changes_ad", "generations_changes_au"} <= names
    assert "generations_fts_source" in names  # the index reads prompts and facet terms from it (0005)
    assert current_revision(engine) == head_revision() == "0005"
    engine.dispose()


def test_open_is_idempotent_and_survives_restart(tmp_path: Path) -> None:
    root = tmp_path / "g"
    with Gallery.open(root) as gal:
        gen_id = gal.save_image(_image(), params=PARAMS, fields=FIELDS)
        assert current_revision(gal.engine) == head_revision()
    with Gallery.open(root) as gal:  # simulated restart, migration runs again
        assert gal.count() == 1
        assert gal.get(gen_id).prompt == PARAMS["prompt"]
        assert current_revision(gal.engine) == head_revision()
        assert gal.integrity_check() == "ok"


def test_save_image_round_trip(gallery: Gallery) -> None:
    sprite = Image.new("RGB", (32, 8), "blue")
    gen_id = gallery.save_image(
        _image(), params=PARAMS, fields=FIELDS, trajectory=sprite, trajectory_frames=4
    )
    row = gallery.get(gen_id)
    assert row is not None
    assert (row.media_type, row.family, row.model_id) == ("image", "latent_diffusion", "my-model")
    assert (row.prompt, row.negative_prompt) == (PARAMS["prompt"], "blurry")
    assert (row.seed, row.steps, row.guidance, row.scheduler) == (42, 20, 7.5, "euler")
    assert (row.width, row.height, row.duration_s) == (64, 48, 1.25)
    assert row.params == PARAMS
    assert row.status == "ok" and row.favourite is False
    assert row.tags == ["fox", "snow"]
    assert row.trajectory_frames == 4
    assert row.created_at.tzinfo is not None
    for rel in (row.media_path, row.thumb_path, row.trajectory_path):
        assert rel and gallery.store.resolve(rel).is_file()
    assert row.media_path.startswith("media/") and row.media_path.endswith(".png")
    digest = Path(row.media_path).stem
    assert len(digest) == 64 and row.media_path.split("/")[1] == digest[:2]
    with Image.open(gallery.store.resolve(row.thumb_path)) as thumb:
        assert max(thumb.size) <= 256
    path, media_type = gallery.read_media(gen_id)
    assert media_type == "image" and path == gallery.store.resolve(row.media_path)
    with Image.open(path) as img:
        assert img.text["parameters"].startswith("a red fox in the snow\nNegative prompt: blurry\n")
        assert "Steps: 20, Sampler: euler, CFG scale: 7.5, Seed: 42, Size: 64x48, Model: my-model" in img.text["parameters"]
    assert read_png_params(path) == PARAMS
    assert read_png_params(path.read_bytes()) == PARAMS


def test_large_image_thumbnail(gallery: Gallery) -> None:
    gen_id = gallery.save_image(_image("green", (600, 300)), params={"prompt": "wide"}, fields={})
    row = gallery.get(gen_id)
    with Image.open(gallery.store.resolve(row.thumb_path)) as thumb:
        assert thumb.size == (256, 128)
    assert (row.width, row.height) == (600, 300)


def test_read_media_unknown_id(gallery: Gallery) -> None:
    with pytest.raises(KeyError):
        gallery.read_media(999)


def test_pnginfo_edge_cases() -> None:
    data = encode_png(_image(), {"prompt": "only prompt", "seed": 1})
    with Image.open(io.BytesIO(data)) as img:
        assert img.text["parameters"] == "only prompt\nSeed: 1"
    assert read_png_params(data) == {"prompt": "only prompt", "seed": 1}
    plain = io.BytesIO()
    _image().save(plain, format="PNG")
    assert read_png_params(plain.getvalue()) is None
    with pytest.raises(ValueError, match="not a PNG"):
        read_png_params(b"GIF89a not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        read_png_params(data[:60])
    unicode = encode_png(_image(), {"prompt": "renard 🦊 שלום"})
    assert read_png_params(unicode) == {"prompt": "renard 🦊 שלום"}


def test_delete_removes_row_and_files(gallery: Gallery) -> None:
    gen_id = gallery.save_image(_image(), params=PARAMS, fields=FIELDS, trajectory=_image("blue"))
    row = gallery.get(gen_id)
    files = [gallery.store.resolve(p) for p in (row.media_path, row.thumb_path, row.trajectory_path)]
    assert gallery.delete(gen_id) is True
    assert gallery.get(gen_id) is None and gallery.count() == 0
    assert not any(f.exists() for f in files)
    assert gallery.delete(gen_id) is False
    assert gallery.integrity_check() == "ok"


def test_delete_keeps_shared_file(gallery: Gallery) -> None:
    first = gallery.save_image(_image(), params=PARAMS, fields=FIELDS)
    second = gallery.save_image(_image(), params=PARAMS, fields=FIELDS)
    a, b = gallery.get(first), gallery.get(second)
    assert a.media_path == b.media_path and first != second
    gallery.delete(first)
    assert gallery.store.resolve(b.media_path).is_file()
    assert gallery.store.resolve(b.thumb_path).is_file()
    gallery.delete(second)
    assert not gallery.store.resolve(b.media_path).exists()


def test_failed_insert_removes_new_files(gallery: Gallery) -> None:
    with pytest.raises(ValueError):
        gallery.save_image(_image("purple"), params=PARAMS, fields={"media_type": "hologram"})
    keep = gallery.save_image(_image(), params=PARAMS, fields=FIELDS)
    with pytest.raises(ValueError):
        gallery.save_image(_image(), params=PARAMS, fields={"status": "weird"})
    assert gallery.count() == 1
    row = gallery.get(keep)
    assert gallery.store.resolve(row.media_path).is_file()
    stored = sorted(p for p in (gallery.root / "media").rglob("*") if p.is_file())
    assert stored == sorted([gallery.store.resolve(row.media_path), gallery.store.resolve(row.thumb_path)])


def test_favourite_toggle(gallery: Gallery) -> None:
    gen_id = gallery.save_image(_image(), params=PARAMS, fields=FIELDS)
    assert gallery.set_favourite(gen_id, True) is True
    assert gallery.get(gen_id).favourite is True
    assert gallery.set_favourite(gen_id, False) is True
    assert gallery.get(gen_id).favourite is False
    assert gallery.set_favourite(12345, True) is False


def test_prompt_history_counts(gallery: Gallery) -> None:
    for prompt in ("cat", "dog", "cat", "cat"):
        gallery.save_image(_image(), params={"prompt": prompt}, fields={})
    prompts = gallery.recent_prompts()
    assert [p.text for p in prompts] == ["cat", "dog"]
    assert {p.text: p.times_used for p in prompts} == {"cat": 3, "dog": 1}
    cat = prompts[0]
    assert cat.first_used <= cat.last_used
    assert len(gallery.recent_prompts(limit=1)) == 1


def test_integrity_check_and_count(gallery: Gallery) -> None:
    assert gallery.integrity_check() == "ok" and gallery.count() == 0
    gallery.save_image(_image(), params=PARAMS, fields=FIELDS)
    assert gallery.integrity_check() == "ok" and gallery.count() == 1


def test_unwritable_root_under_file(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(GalleryError, match="is not writable.*--gallery-dir"):
        Gallery.open(blocker / "gallery")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores chmod")
def test_unwritable_root_chmod(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(GalleryError, match="not writable"):
            Gallery.open(locked)
    finally:
        locked.chmod(0o700)


def test_corrupt_database_raises_gallery_error(tmp_path: Path) -> None:
    root = tmp_path / "g"
    root.mkdir()
    (root / "gallery.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match="not a database"):
        Gallery.open(root)


def test_explicit_db_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with Gallery.open(tmp_path / "media-root", db_url=url) as gal:
        gal.save_image(_image(), params=PARAMS, fields=FIELDS)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM generations")).scalar() == 1
    engine.dispose()
    assert not (tmp_path / "media-root" / "gallery.db").exists()


def test_audio_is_saved_as_a_wav_carrying_its_parameters(tmp_path: Path) -> None:
    import numpy as np

    from pipelines import audio
    from pipelines.worlds import tones

    y = tones.render(tones.sample_recipe(np.random.default_rng(0)))
    picture = audio.spectrogram_image(audio.log_mel(y))
    params = {"prompt": "a low sine tone rising", "seed": 3, "guidance_scale": 2.5}
    with Gallery.open(tmp_path / "g") as gal:
        gen_id = gal.save_audio(y, spectrogram=picture, params=params, fields={"family": "audio_ldm"})
        row = gal.get(gen_id)
        assert row.media_type == "audio" and row.prompt == "a low sine tone rising" and row.seed == 3
        path, media_type = gal.read_media(gen_id)
        assert media_type == "audio" and path.suffix == ".wav"
        samples, rate, found = audio.read_wav(path.read_bytes())
        assert rate == 16_000 and found == params and len(samples) == len(y)
        assert gal.store.exists(row.thumb_path)
        assert gal.delete(gen_id) and not path.exists() and not gal.store.exists(row.thumb_path)


def test_a_corrupt_wav_is_reported_for_its_row_and_the_rest_works(tmp_path: Path) -> None:
    import numpy as np

    from pipelines import audio
    from pipelines.worlds import tones

    y = tones.render(tones.sample_recipe(np.random.default_rng(1)))
    picture = audio.spectrogram_image(audio.log_mel(y))
    with Gallery.open(tmp_path / "g") as gal:
        good = gal.save_audio(y, spectrogram=picture, params={"prompt": "a high sine tone", "seed": 1},
                              fields={"family": "audio_ldm"})
        bad = gal.save_audio(y, spectrogram=picture, params={"prompt": "a low saw tone", "seed": 2},
                             fields={"family": "audio_ldm"})
        gal.read_media(bad)[0].write_bytes(b"RIFF\x00\x00 this is not a wave file")
        assert gal.sound_error(good) is None
        message = gal.sound_error(bad)
        assert message is not None and "cannot be played" in message
        assert gal.sound_error(10_000) == "gallery item #10000 does not exist"
        assert {r.id for r in gal.search(GalleryQuery())[0]} == {good, bad}  # the listing still works
        samples, rate, params = audio.read_wav(gal.read_media(good)[0].read_bytes())
        assert params["prompt"] == "a high sine tone" and len(samples) == len(y)

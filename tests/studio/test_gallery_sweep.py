"""The startup sweep at scale: a full sweep once, then incremental ones that look only at media folders whose
mtime changed and at the rows the ``gallery_changes`` journal names, and still find everything a full sweep finds
(orphans of a killed save or delete, temporary files, files removed by hand, rows added with a missing file)."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from studio.gallery import Gallery, add_generation
from studio.gallery import reconcile
from studio.gallery.models import GalleryChange, GalleryState
from studio.gallery.reconcile import sweep
from studio.gallery.repository import delete_generation

HOUR = 3600


def _image(k: int) -> Image.Image:
    rng = random.Random(k)
    return Image.new("RGB", (8, 8), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))


def _save(g: Gallery, k: int, **fields) -> int:
    return g.save_image(_image(k), params={"prompt": f"item {k}", "seed": k}, fields={"status": "ok", **fields})


def _age(root: Path, seconds: float = HOUR) -> None:
    """Make every file and folder under the gallery's media look ``seconds`` old (as after a restart)."""
    then = time.time() - seconds
    for path in sorted((root / "media").rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (then, then))
    os.utime(root / "media", (then, then))


@pytest.fixture()
def gallery(tmp_path: Path):
    """A gallery with 12 items, swept once (full) with every folder settled, so the next sweep is incremental."""
    g = Gallery.open(tmp_path / "gallery")
    for k in range(12):
        _save(g, k)
    _age(g.root)
    first = sweep(g)
    assert first.mode == "full" and first.clean
    yield g
    g.close()


def _journal_size(g: Gallery) -> int:
    with g.session() as s:
        return int(s.scalar(select(func.count()).select_from(GalleryChange)))


def _full_agrees(g: Gallery, report: reconcile.SweepReport) -> None:
    """A full sweep right after ``report``'s finds nothing left to remove and the same missing rows."""
    full = sweep(g, full=True)
    assert full.mode == "full"
    assert full.removed_files == [] and full.removed_temp == [], full.summary()
    assert full.missing_media == report.missing_media


def test_nothing_changed_lists_no_folder(gallery: Gallery) -> None:
    report = sweep(gallery)
    assert report.mode == "incremental" and report.clean and report.listed_dirs == 0
    assert _journal_size(gallery) == 0


def test_the_journal_notes_inserts_and_deletes_and_the_sweep_clears_it(gallery: Gallery) -> None:
    new = _save(gallery, 100)
    gallery.delete(new)
    with gallery.session() as s:
        ops = [(c.gen_id, c.op, c.media_path is not None) for c in s.scalars(select(GalleryChange))]
    assert ops == [(new, "i", False), (new, "d", True)]
    report = sweep(gallery)
    assert report.mode == "incremental" and report.clean
    assert _journal_size(gallery) == 0


def test_a_save_killed_before_its_row_leaves_files_the_next_sweep_removes(gallery: Gallery) -> None:
    rel = gallery.store.save_bytes(b"a killed save's picture", "png")  # files first, then the process died
    temp = gallery.root / rel.rsplit("/", 1)[0] / ".tmp-killed"
    temp.write_bytes(b"half")
    report = sweep(gallery)
    assert report.mode == "incremental" and 1 <= report.listed_dirs <= 2
    assert report.removed_files == [rel[len("media/"):]]
    assert report.removed_temp == [temp.relative_to(gallery.root / "media").as_posix()]
    assert not (gallery.root / rel).exists() and not temp.exists()
    _full_agrees(gallery, report)


def test_a_delete_killed_before_its_files_leaves_orphans_the_journal_finds(gallery: Gallery) -> None:
    keep = _save(gallery, 200)
    twin = _save(gallery, 200)  # the same picture: both rows share its files
    victim = gallery.get(3)
    _age(gallery.root)
    assert sweep(gallery).clean  # settles the folders the two saves changed
    with gallery.session() as s:  # the row is deleted and committed; the process dies before removing files
        delete_generation(s, victim.id)
        delete_generation(s, twin)
    report = sweep(gallery)
    assert report.mode == "incremental" and report.listed_dirs == 0  # no folder changed: the journal told
    expected = sorted(p[len("media/"):] for p in (victim.media_path, victim.thumb_path))
    assert report.removed_files == expected and report.missing_media == []
    assert gallery.store.exists(gallery.get(keep).media_path)  # still used by the other row: kept
    _full_agrees(gallery, report)


def test_files_removed_by_hand_are_reported_every_time_until_they_are_back(gallery: Gallery) -> None:
    row = gallery.get(5)
    path = gallery.root / row.media_path
    data = path.read_bytes()
    path.unlink()
    report = sweep(gallery)
    assert report.mode == "incremental" and report.missing_media == [row.id]
    assert report.listed_dirs == 1
    _age(gallery.root)  # (changes every folder's mtime: the next sweep lists them all and trusts them)
    assert sweep(gallery).missing_media == [row.id]
    again = sweep(gallery)
    assert again.missing_media == [row.id] and again.listed_dirs == 0
    path.write_bytes(data)
    assert sweep(gallery).clean


def test_a_row_added_with_a_missing_file_is_reported(gallery: Gallery) -> None:
    folder = gallery.get(1).media_path.rsplit("/", 1)[0]  # a folder the checkpoint trusts
    with gallery.session() as s:
        gen = add_generation(s, prompt="no file", media_path=f"{folder}/{'0' * 64}.png", params={})
        odd = add_generation(s, prompt="elsewhere", media_path="elsewhere/x.png", params={})
    report = sweep(gallery)
    assert report.mode == "incremental" and report.missing_media == [gen.id, odd.id]
    assert report.listed_dirs == 0
    again = sweep(gallery)  # rows outside the media/<folder>/ layout are checked every time
    assert again.missing_media == [gen.id, odd.id]
    _full_agrees(gallery, again)


def test_a_removed_folder_reports_its_rows(gallery: Gallery) -> None:
    row = gallery.get(7)
    folder = gallery.root / row.media_path.rsplit("/", 1)[0]
    users = [r.id for r in (gallery.get(i) for i in range(1, 13)) if r.media_path.startswith(
        row.media_path.rsplit("/", 1)[0] + "/")]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    report = sweep(gallery)
    assert report.mode == "incremental" and report.missing_media == sorted(users)
    _full_agrees(gallery, report)


def test_full_sweeps_when_forced_stale_or_moved(gallery: Gallery, monkeypatch) -> None:
    assert sweep(gallery, full=True).mode == "full"
    assert sweep(gallery).mode == "incremental"
    with gallery.session() as s:
        state = s.get(GalleryState, "sweep")
        state.value = {**state.value, "full_at": time.time() - reconcile.FULL_EVERY_S - 1}
    assert sweep(gallery).mode == "full"
    with gallery.session() as s:
        state = s.get(GalleryState, "sweep")
        state.value = {**state.value, "root": "/somewhere/else"}
    assert sweep(gallery).mode == "full"
    monkeypatch.setattr(reconcile, "JOURNAL_LIMIT", 2)
    for k in range(3):
        _save(gallery, 300 + k)
    assert sweep(gallery).mode == "full"


def test_a_folder_changed_just_before_the_sweep_is_looked_at_again(tmp_path: Path) -> None:
    with Gallery.open(tmp_path / "g") as g:
        _save(g, 1)
        assert sweep(g).mode == "full"  # its folders were modified within RACY_S: not trusted yet
        again = sweep(g)
        assert again.mode == "incremental" and again.listed_dirs >= 2 and again.clean


def test_many_changed_folders_are_read_in_bulk(gallery: Gallery, monkeypatch) -> None:
    monkeypatch.setattr(reconcile, "RANGE_DIRS", 0)
    orphan = gallery.store.save_bytes(b"bulk orphan", "png")
    gone = gallery.get(2)
    (gallery.root / gone.media_path).unlink()
    report = sweep(gallery)
    assert report.mode == "incremental"
    assert report.removed_files == [orphan[len("media/"):]] and report.missing_media == [gone.id]
    _full_agrees(gallery, report)


def test_random_damage_incremental_sweeps_find_what_a_full_sweep_would(gallery: Gallery) -> None:
    rng = random.Random(5)
    for round_ in range(6):
        for step in range(8):
            action = rng.choice(["save", "delete", "killed_delete", "orphan", "temp", "unlink", "restore"])
            ids = [r.id for r, in _all_rows(gallery)]
            if action == "save" or not ids:
                _save(gallery, rng.randrange(40))  # small range: rows often share files
            elif action == "delete":
                gallery.delete(rng.choice(ids))
            elif action == "killed_delete":
                with gallery.session() as s:
                    delete_generation(s, rng.choice(ids))
            elif action == "orphan":
                gallery.store.save_bytes(f"orphan {round_} {step}".encode(), "webp")
            elif action == "temp":
                shard = rng.choice([p for p in (gallery.root / "media").iterdir() if p.is_dir()])
                (shard / f".tmp-{round_}-{step}").write_bytes(b"x")
            elif action == "unlink":
                row = gallery.get(rng.choice(ids))
                (gallery.root / row.media_path).unlink(missing_ok=True)
            else:
                for r, in _all_rows(gallery):
                    if not gallery.store.exists(r.media_path):
                        gallery.store.save_bytes(_image_bytes_of(gallery, r), "png")
        if round_ % 2:
            _age(gallery.root)
        report = sweep(gallery)
        assert report.mode == "incremental"
        _full_agrees(gallery, report)


def _all_rows(g: Gallery):
    from studio.gallery.models import Generation

    with g.session() as s:
        return list(s.execute(select(Generation)).all())


def _image_bytes_of(g: Gallery, row) -> bytes:
    """The PNG bytes a save of this row's picture wrote (same picture and params: same content hash)."""
    from studio.gallery import encode_png

    k = row.params["seed"]
    return encode_png(_image(k), row.params)

"""Guidance Explorer glue: form checks, a sweep saved as one gallery group and reopened, exports, and
the gallery migration that adds groups to an existing gallery."""
import csv
import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import inspect, text

from pipelines.guidance_sweep import run_sweep, summarise
from pipelines.metrics import ClipScorer
from studio.gallery import Gallery
from studio.gallery.migrate import alembic_config, upgrade_to_head
from studio.gallery.service import make_engine
from studio.sweeps import (SWEEP_KIND, build_sampler_spec, build_sweep_spec, export_files, group_data, load_group,
                           metrics_csv, save_cell, start_group)


@pytest.mark.parametrize("scales, seeds, message", [
    ("", "0", "at least one scale"), ("1, two", "0", "'two' is not a number"),
    ("1,2,3,4,5,6,7,8,9", "0,1,2,3,4,5,6,7", "= 72 cells; a sweep holds at most 64 cells"),
    ("1", "x", "is not a seed"),
])
def test_bad_sweep_forms_are_refused_with_the_reason(scales, seeds, message):
    with pytest.raises(ValueError, match=message):
        build_sweep_spec("local/tiny-sd", "a red circle", "", scales, seeds, 2, "ddim")


def test_sweep_form_options():
    with pytest.raises(ValueError, match="Pick a model"):
        build_sweep_spec("", "a red circle", "", "1", "0", 2, "ddim")
    with pytest.raises(ValueError, match="Type a prompt"):
        build_sweep_spec("m", "  ", "", "1", "0", 2, "ddim")
    with pytest.raises(ValueError, match="start < end"):
        build_sweep_spec("m", "p", "", "1", "0", 2, "ddim", 0, 80, 20)
    spec = build_sweep_spec("m", "p", "", "1, 7.5", "0, 1", 2, "model default", 0.7, 20, 80, True)
    assert spec.scheduler is None and spec.num_cells == 8
    assert [v.name for v in spec.variants] == ["CFG", "CFG, rescale 0.7, interval 20–80%"]
    assert spec.row_labels()[2] == "CFG, rescale 0.7, interval 20–80% · seed 0"
    # 8 x 4 x 2 = 64 fits; one more scale does not
    build_sweep_spec("m", "p", "", "1,2,3,4,5,6,7,8", "0,1,2,3", 2, "ddim", 0.7, 0, 100, True)
    with pytest.raises(ValueError, match="x 2 guidance variants = 72 cells"):
        build_sweep_spec("m", "p", "", "1,2,3,4,5,6,7,8,9", "0,1,2,3", 2, "ddim", 0.7, 0, 100, True)
    with pytest.raises(ValueError, match="Tick at least one scheduler"):
        build_sampler_spec("m", "p", "", 0, 2.0, [], "4, 8")


def test_a_sweep_is_one_gallery_group_that_reopens_and_exports(tiny_sd, tmp_path):
    gallery = Gallery.open(tmp_path / "g")
    try:
        spec = build_sweep_spec("local/tiny-sd", "a red circle on a white background", "", "1, 4", "3, 4", 2, "ddim")
        group_id = start_group(gallery, SWEEP_KIND, spec)
        cells = list(run_sweep(tiny_sd, spec.prompt, spec.scales, spec.seeds, steps=2, scheduler="ddim",
                               scorer=ClipScorer.builtin()))
        ids = [save_cell(gallery, c, group_id) for c in cells]
        gallery.update_group(group_id, data=group_data(spec, cells, ids, summarise(cells)), status="done")

        group, saved = load_group(gallery, group_id)
        assert group.kind == SWEEP_KIND and group.status == "done" and len(saved) == 4
        assert [s.metrics["gallery_id"] for s in saved] == ids
        for cell, s in zip(cells, saved):
            assert np.array_equal(np.asarray(cell.image), np.asarray(s.image))
            assert s.metrics["clip_score"] == pytest.approx(cell.clip_score)
        assert [p["scale"] for p in group.data["points"]] == [1.0, 4.0]
        row = gallery.get(ids[3])
        assert row.group_id == group_id and (row.seed, row.guidance, row.steps) == (4, 4.0, 2)
        assert row.params["group"] == {"id": group_id, "cell": 3, "row": 1, "column": 1, "variant": "CFG"}

        png, path_csv = export_files(tmp_path / "out", group_id, [s.image for s in saved],
                                     [s.metrics for s in saved], spec.row_labels(), spec.column_labels(), "t")
        grid = Image.open(png)
        assert grid.width > 2 * 128 and grid.height > 2 * 128
        rows = list(csv.DictReader(io.StringIO(path_csv.read_text())))
        assert [(int(r["seed"]), float(r["scale"])) for r in rows] == [(3, 1.0), (3, 4.0), (4, 1.0), (4, 4.0)]
        assert float(rows[1]["clip_score"]) == pytest.approx(cells[1].clip_score, abs=1e-4)
        assert metrics_csv([]).startswith("index,")

        gallery.delete(ids[0])  # a deleted member leaves a hole, not an error
        _, saved = load_group(gallery, group_id)
        assert saved[0].image is None and saved[1].image is not None
        with pytest.raises(KeyError):
            load_group(gallery, 999)
    finally:
        gallery.close()


def test_groups_migration_keeps_an_existing_gallery(tmp_path):
    from alembic import command

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO generations (created_at, media_type, family, model_id, prompt, negative_prompt, seed, steps,"
            " guidance, scheduler, width, height, params, duration_s, media_path, trajectory_frames, status,"
            " favourite, tags) VALUES ('2026-01-01 00:00:00', 'image', 'x', 'm', 'an old red fox', '', 1, 2, 3.0,"
            " 'ddim', 8, 8, '{}', 0.1, 'media/aa/old.png', 0, 'ok', 0, '[]')"))
    upgrade_to_head(engine)
    assert "generation_groups" in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT prompt, group_id FROM generations")).one() == ("an old red fox", None)
        # the full-text index still follows the table
        found = connection.execute(text("SELECT rowid FROM generations_fts WHERE generations_fts MATCH 'fox'")).all()
    assert len(found) == 1
    engine.dispose()

"""Gallery backup: export (rows as JSON lines plus media) and import into an empty gallery round-trip every
field of every row, the groups and the prompt history, and the media bytes; bad imports are refused whole."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from studio.gallery import Gallery
from studio.gallery.backup import BackupError, export_gallery, import_gallery
from studio.gallery.models import GenerationGroup

from .conftest import ROOT


@pytest.fixture()
def filled(tmp_path):
    g = Gallery.open(tmp_path / "src")
    group = g.create_group(kind="guidance_sweep", title="a sweep", model_id="local/m", prompt="a red circle",
                           data={"scales": [1, 4], "note": "ünïcödé 🙂"})
    ids = []
    for k, colour in enumerate(["red", "blue", "green"]):
        ids.append(g.save_image(Image.new("RGB", (16, 16), colour),
                                params={"prompt": f"a {colour} circle مرحبا", "seed": k, "guidance_scale": 1.5 * k,
                                        "num_inference_steps": 3, "model_id": "local/m", "scheduler": "ddim"},
                                fields={"media_type": "image", "family": "latent_diffusion", "status": "ok",
                                        "tags": ["a", f"step:{k}"], "group_id": group if k < 2 else None},
                                trajectory=Image.new("RGB", (48, 16), colour), trajectory_frames=3))
    g.set_favourite(ids[1], True)
    yield g, ids, group
    g.close()


def _snapshot(g: Gallery) -> dict:
    with g.session() as s:
        from sqlalchemy import select

        from studio.gallery.models import Generation, PromptHistory
        gens = [r.to_dict() for r in s.scalars(select(Generation).order_by(Generation.id))]
        groups = [{c.key: getattr(r, c.key) for c in r.__table__.columns}
                  for r in s.scalars(select(GenerationGroup).order_by(GenerationGroup.id))]
        prompts = [{c.key: getattr(r, c.key) for c in r.__table__.columns}
                   for r in s.scalars(select(PromptHistory).order_by(PromptHistory.id))]
    files = {r[c]: g.store.resolve(r[c]).read_bytes() for r in gens for c in ("media_path", "thumb_path",
                                                                             "trajectory_path") if r[c]}
    return {"generations": gens, "groups": groups, "prompts": prompts, "files": files}


def test_export_then_import_round_trips_every_field(filled, tmp_path):
    g, ids, group = filled
    counts = export_gallery(g, tmp_path / "backup")
    assert counts["generations"] == 3 and counts["generation_groups"] == 1 and counts["files"] == 9
    lines = (tmp_path / "backup" / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["prompt"] == "a red circle مرحبا"  # plain JSON lines anyone can read
    with Gallery.open(tmp_path / "dst") as new:
        import_gallery(new, tmp_path / "backup")
        assert _snapshot(new) == _snapshot(g)
        assert [m.id for m in new.group_members(group)] == ids[:2]
        assert new.integrity_check() == "ok"
        with pytest.raises(BackupError, match="not empty"):
            import_gallery(new, tmp_path / "backup")


def test_bad_imports_are_refused_whole(filled, tmp_path):
    g, _ids, _group = filled
    export_gallery(g, tmp_path / "backup")
    with pytest.raises(BackupError, match="not empty"):
        export_gallery(g, tmp_path / "backup")
    victim = next((tmp_path / "backup" / "media").rglob("*.png"))
    victim.unlink()
    with Gallery.open(tmp_path / "dst") as new:
        with pytest.raises(BackupError, match="lacks 1 media file"):
            import_gallery(new, tmp_path / "backup")
        assert new.count() == 0 and not [p for p in (tmp_path / "dst").rglob("*.png")]
        with pytest.raises(BackupError, match="not a gallery export"):
            import_gallery(new, tmp_path)


def test_the_command_line_round_trip(filled, tmp_path):
    g, _ids, _group = filled
    run = lambda *a: subprocess.run([sys.executable, "-m", "studio.gallery.backup", *map(str, a)], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
    out = run("export", "--gallery-dir", tmp_path / "src", tmp_path / "b")
    assert out.returncode == 0 and "3 generations" in out.stdout, out.stderr
    assert run("import", "--gallery-dir", tmp_path / "c", tmp_path / "b").returncode == 0
    again = run("import", "--gallery-dir", tmp_path / "c", tmp_path / "b")
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    with Gallery.open(tmp_path / "c") as c:
        assert _snapshot(c) == _snapshot(g)

"""Crash safety: a process saving generations is killed (SIGKILL) at random points; after each "restart" the
database passes SQLite's integrity check and, once the startup sweep has run, every row has its files and every
gallery file has its row; no saved row is lost or duplicated."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from studio.gallery import Gallery
from studio.gallery.reconcile import sweep

from .conftest import ROOT

TOTAL = 20
WORKER = r'''
import sys, numpy as np
from pathlib import Path
from PIL import Image
from studio.gallery import Gallery
g = Gallery.open(Path(sys.argv[1]))
start = g.count()
rng = np.random.default_rng(start)
for k in range(start, int(sys.argv[2])):
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sprite = Image.fromarray(rng.integers(0, 255, (64, 64 * 20, 3), dtype=np.uint8))
    gid = g.save_image(img, params={"prompt": f"crash test {k}", "seed": k, "model_id": "test/crash"},
                       fields={"media_type": "image", "family": "latent_diffusion", "status": "ok"},
                       trajectory=sprite, trajectory_frames=20)
    print("saved", gid, flush=True)
'''


def check(root: Path, sweep_first: bool = True) -> list[str]:
    """Reopen as a restarted studio does (``sweep_first``: run its startup sweep; False: a restarted studio has
    already run it); returns the saved prompts."""
    with Gallery.open(root) as g:
        with g.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        if sweep_first:
            report = sweep(g)
            assert not report.missing_media, report.summary()
            assert sweep(g).clean  # a second sweep finds nothing: the first one reconciled everything
        with g.session() as s:
            rows = s.execute(text("SELECT prompt, media_path, thumb_path, trajectory_path FROM generations")).all()
        referenced = {p for r in rows for p in r[1:] if p}
        on_disk = {p.relative_to(root).as_posix() for p in (root / "media").rglob("*") if p.is_file()}
        assert referenced <= on_disk, "a row without its file"
        assert on_disk <= referenced, f"a file without its row: {sorted(on_disk - referenced)[:3]}"
        return [r[0] for r in rows]


def test_sigkill_at_random_points_during_20_saves_loses_and_breaks_nothing(tmp_path):
    root = tmp_path / "gallery"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    kills, mid_run = 0, 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(TOTAL)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt < 6:  # kill the first runs at random points while they save (a save takes ~20 ms)
            first = proc.stdout.readline()  # wait for the run's first save, however slow the start-up
            time.sleep(rng.uniform(0.0, 0.25))
            if first and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        prompts = check(root)
        assert len(prompts) == len(set(prompts)), "a duplicated row"
        if proc.returncode == -signal.SIGKILL and 0 < len(prompts) < TOTAL:
            mid_run += 1
        if proc.returncode == 0 and len(prompts) == TOTAL:
            break
    assert kills >= 3 and mid_run >= 2, (kills, mid_run)
    assert sorted(prompts, key=lambda p: int(p.split()[-1])) == [f"crash test {k}" for k in range(TOTAL)]


def test_the_sweep_removes_only_what_the_gallery_left_and_reports_missing_files(tmp_path):
    from PIL import Image

    root = tmp_path / "gallery"
    with Gallery.open(root) as g:
        keep = g.save_image(Image.new("RGB", (8, 8), "red"), params={"prompt": "kept"}, fields={"status": "ok"})
        gone = g.save_image(Image.new("RGB", (8, 8), "blue"), params={"prompt": "file lost"}, fields={"status": "ok"})
        (root / g.get(gone).media_path).unlink()
        orphan = root / "media" / "ab" / ("ab" + "0" * 62 + ".png")
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"left by a killed save")
        temp = root / "media" / "ab" / ".tmp-x1y2"
        temp.write_bytes(b"half")
        mine = root / "media" / "notes.txt"  # not a gallery-written name: left alone
        mine.write_text("a person's file")
        report = sweep(g)
        assert report.removed_files == [orphan.relative_to(root / "media").as_posix()]
        assert report.removed_temp == ["ab/.tmp-x1y2"] and report.missing_media == [gone]
        assert "removed 1 media file" in report.summary() and f"#{gone}" in report.summary()
        assert not orphan.exists() and not temp.exists() and mine.exists()
        assert g.get(keep) is not None and g.get(gone) is not None  # rows are never dropped by the sweep
        assert g.store.exists(g.get(keep).media_path)


def test_killing_the_studio_during_generations_then_restarting_keeps_the_gallery_whole(tiny_models_dir, tmp_path):
    """The real studio process, SIGKILLed at random points while API clients generate; after each restart its
    startup sweep has reconciled rows and files (and printed what it did)."""
    import threading

    from gradio_client import Client

    from .conftest import StudioProcess

    gallery_dir = tmp_path / "gallery"
    rng = random.Random(11)
    saved: set[str] = set()
    kills = 0
    for round_ in range(8):
        studio = StudioProcess(tiny_models_dir, gallery_dir).start()
        assert "gallery check:" in studio.read_log()
        check(gallery_dir, sweep_first=False)  # the studio's own startup sweep already made rows and files agree
        stop = threading.Event()

        def generate() -> None:
            client = Client(studio.url, verbose=False)
            while not stop.is_set() and len(saved) < TOTAL:
                prompt = f"killed studio {round_} {len(saved)} {rng.random():.6f}"
                try:
                    status = client.predict("local/tiny-sd", prompt, "", 2, 5.0, 1, 16, 16, "ddim", 1,
                                            api_name="/generate")[0]
                except Exception:
                    return  # the studio died under us
                if status.startswith("Done"):
                    saved.add(prompt)

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        if round_ < 4:
            time.sleep(rng.uniform(0.5, 3.0))
            studio.proc.send_signal(signal.SIGKILL)
            studio.proc.wait(timeout=30)
            kills += 1
        worker.join(timeout=300)
        stop.set()
        studio.stop()
        prompts = check(gallery_dir)  # integrity ok, rows and files agree (after the sweep)
        assert saved <= set(prompts), "a generation reported as saved was lost"
        assert len(prompts) == len(set(prompts))
        if len(saved) >= TOTAL and round_ >= 4:
            break
    assert kills == 4 and len(saved) >= TOTAL

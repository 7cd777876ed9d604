"""Path traversal against the running studio's file route (Gradio's CVE-2023-51449 class of bug): only files under
the gallery's media folder are served; every other path, however spelled, is refused (the test plants a secret
beside the gallery, the gallery database itself, and symlinks inside the media folder that point out of it)."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def planted(studio):
    gallery = Path(studio.gallery_dir).resolve()
    media = gallery / "media"
    media.mkdir(parents=True, exist_ok=True)
    secret = gallery.parent / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    inside = media / "ok.txt"
    inside.write_text("MEDIA-CONTENT")
    (media / "link-to-secret.txt").unlink(missing_ok=True)
    os.symlink(secret, media / "link-to-secret.txt")
    if not (media / "link-to-parent").exists():
        os.symlink(gallery.parent, media / "link-to-parent")
    return {"gallery": gallery, "media": media, "secret": secret, "inside": inside}


def traversal_forms(p: dict) -> list[str]:
    secret, gallery, media = p["secret"], p["gallery"], p["media"]
    db = gallery / "gallery.db"
    rel = os.path.relpath(secret, media)  # ../../secret.txt
    return [
        str(secret), str(db), "/etc/passwd", "/etc/hostname",
        f"{media}/{rel}", f"{media}/../../secret.txt", f"{media}/../gallery.db",
        f"{media}/%2e%2e/%2e%2e/secret.txt", f"{media}/..%2f..%2fsecret.txt", f"{media}/%252e%252e/secret.txt",
        f"{media}/..\\..\\secret.txt", f"{media}/....//....//secret.txt", f"{media}/./../../secret.txt",
        f"{media}//../../secret.txt", f"{media}/link-to-secret.txt", f"{media}/link-to-parent/secret.txt",
        f"{media}/link-to-parent/gallery/gallery.db", "../../secret.txt", "media/../../secret.txt",
        f"{str(secret).replace('/', '%2f')}", f"file://{secret}", f"{media}/ok.txt%00/../../../secret.txt",
    ]


def test_media_files_are_served(studio, planted):
    status, body = fetch(studio.url + "gradio_api/file=" + str(planted["inside"]))
    assert status == 200 and body == b"MEDIA-CONTENT"


def test_no_traversal_form_reads_outside_the_media_folder(studio, planted):
    forms = traversal_forms(planted)
    assert len(forms) >= 20
    leaks = []
    for form in forms:
        for prefix in ("gradio_api/file=", "file="):
            status, body = fetch(studio.url + prefix + form)
            if b"TOP-SECRET-CONTENT" in body or b"SQLite format" in body or b"root:" in body:
                leaks.append((prefix + form, status))
    assert not leaks, leaks

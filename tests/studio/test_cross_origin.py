"""Cross-site request forgery: a page on another site cannot start jobs, delete gallery items or change anything
in a running studio (studio.origin_guard refuses state-changing requests from another origin with 403, before
any handler runs); the studio's own page and non-browser clients keep working."""
from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from studio.origin_guard import same_site

EVIL = "http://evil.example"


@pytest.mark.parametrize("origin, host, ok", [
    ("http://127.0.0.1:7860", "127.0.0.1:7860", True), ("http://localhost:7860", "localhost:7860", True),
    ("http://127.0.0.1:7860/some/page?x=1", "127.0.0.1:7860", True), ("https://studio.lan", "studio.lan:443", True),
    ("http://127.0.0.1:7861", "127.0.0.1:7860", False), ("http://localhost:7860", "127.0.0.1:7860", False),
    ("http://evil.example", "127.0.0.1:7860", False), ("null", "127.0.0.1:7860", False),
    ("file:///home/x.html", "127.0.0.1:7860", False), ("http://127.0.0.1:7860.evil.example", "127.0.0.1:7860", False),
    ("", "127.0.0.1:7860", False), ("http://[::1]:7860", "[::1]:7860", True),
])
def test_same_site(origin, host, ok):
    assert same_site(origin, host) is ok


def post(url: str, payload: dict, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def rows(gallery_dir: Path) -> list[int]:
    with sqlite3.connect(f"file:{gallery_dir / 'gallery.db'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT id FROM generations ORDER BY id")]


def test_another_site_cannot_start_jobs_or_delete_items(studio):
    client = Client(studio.url, verbose=False)  # no Origin header: a script on this machine, allowed
    client.predict("local/tiny-sd", "a red circle", "", 2, 7.5, 3, 16, 16, "ddim", 1, api_name="/generate")
    before = rows(Path(studio.gallery_dir))
    victim = before[-1]
    base = studio.url.rstrip("/")
    attacks = [
        ("/gradio_api/call/delete", {"data": [victim]}),
        ("/gradio_api/call/generate", {"data": ["local/tiny-sd", "pwned", "", 2, 7.5, 1, 16, 16, "ddim", 1]}),
        ("/gradio_api/call/start_training", {"data": ["ldm-fresh", "shapes", "evil", 5, 2, 0.001, 0.9, 0.1, 0, ""]}),
        ("/gradio_api/queue/join", {"data": [victim], "fn_index": 0, "session_hash": "evil"}),
    ]
    for path, payload in attacks:
        for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/page.html"},
                        {"Origin": "http://127.0.0.1:1"}):
            status, body = post(base + path, payload, headers)
            assert status == 403, (path, headers, status, body[:200])
            assert "Cross-site request refused" in body
    assert rows(Path(studio.gallery_dir)) == before  # nothing deleted, nothing generated
    # the studio's own page (same origin) still works
    status, body = post(base + "/gradio_api/call/cancel", {"data": []}, {"Origin": base})
    assert status == 200 and "event_id" in body

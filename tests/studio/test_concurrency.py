"""Concurrent users: 4 sessions each generate 10 times at once through the running studio (one model queue per
device): 40 new rows, none lost or duplicated, every file present, and the gallery keeps answering meanwhile.
(How fast it answers is measured by ``python -m bench.concurrency``, not asserted here.)"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from gradio_client import Client
from sqlalchemy import text

from studio.gallery import Gallery

USERS, EACH = 4, 10


def test_four_sessions_generating_ten_times_at_once_keep_every_row(studio):
    with Gallery.open(studio.gallery_dir) as g:
        before = g.count()
    clients = [Client(studio.url, verbose=False) for _ in range(USERS)]
    done = threading.Event()
    browsed: list[int] = []

    def user(u: int) -> list[int]:
        ids = []
        for k in range(EACH):
            status, _p, _imgs, params, *_ = clients[u].predict(
                "local/tiny-sd", f"concurrency user {u} run {k}", "", 2, 5.0, 1000 * u + k, 16, 16, "ddim", 1,
                api_name="/generate")
            assert status.startswith("Done"), status
            ids += params["gallery_ids"]
        return ids

    def browse() -> None:
        viewer = Client(studio.url, verbose=False)
        while not done.is_set():
            items, info, *_ = viewer.predict("", "", "", "", "", "", "", "", False,
                                             api_name="/gallery_search")
            browsed.append(len(items))

    browser = threading.Thread(target=browse, daemon=True)
    browser.start()
    with ThreadPoolExecutor(USERS) as pool:
        results = list(pool.map(user, range(USERS)))
    done.set()
    browser.join(timeout=60)
    ids = [i for r in results for i in r]
    assert len(ids) == USERS * EACH == len(set(ids))
    assert browsed, "the gallery answered while the jobs ran"
    with Gallery.open(studio.gallery_dir) as g:
        assert g.count() == before + USERS * EACH
        with g.session() as s:
            prompts = [r[0] for r in s.execute(text("SELECT prompt FROM generations WHERE prompt LIKE "
                                                    "'concurrency user %'")).all()]
        assert sorted(prompts) == sorted(f"concurrency user {u} run {k}" for u in range(USERS) for k in range(EACH))
        for i in ids:
            row = g.get(i)
            assert g.store.exists(row.media_path) and g.store.exists(row.thumb_path)
        assert g.integrity_check() == "ok"

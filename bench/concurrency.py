"""Gallery browsing while users generate: ``python -m bench.concurrency [--users 4] [--each 10] [--model ID]``.

Starts a real studio (``launch.py``, its own gallery in a temporary folder), then times the Gallery's page query
(``/gallery_search`` over Gradio's HTTP API as the page calls it, one request at a time) twice: with nothing running, and while
``--users`` sessions each generate ``--each`` images at once (the builtin shapes-ldm at its defaults, or
``--model``). Prints the medians and p95s and their ratio. Model work goes through one queue per device; gallery
reads skip that queue (``concurrency_limit=None``), so they should not wait behind the jobs (goal: p95 under
200 ms while jobs run, issue 10).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(gallery: Path, models: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--gallery-dir", str(gallery),
           "--models-dir", str(models), "--no-browser", "--no-hf-cache", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the studio did not start in 120 s")


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--each", type=int, default=10)
    parser.add_argument("--model", default="builtin/shapes-ldm")
    parser.add_argument("--idle-queries", type=int, default=60)
    args = parser.parse_args(argv)
    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    (tmp / "models").mkdir()
    proc, url = _start(tmp / "gallery", tmp / "models")
    try:
        query = ("", "", "", "", "", "", "", "", False)
        seed_client = Client(url, verbose=False)
        for k in range(8):  # a gallery with a few pages' worth of rows to page through
            seed_client.predict(args.model, f"warm-up {k}", "", 2, 2.0, k, 64, 64, "dpmpp_2m", 4, api_name="/generate")

        def timed() -> float:
            """One page query over Gradio's HTTP API (post, then read the answer's event stream); the browser's
            own path, without gradio_client's download of every thumbnail into a local file."""
            t0 = time.perf_counter()
            req = urllib.request.Request(url + "gradio_api/call/gallery_search", method="POST",
                                         data=json.dumps({"data": list(query)}).encode(),
                                         headers={"Content-Type": "application/json"})
            event = json.loads(urllib.request.urlopen(req, timeout=60).read())["event_id"]
            body = urllib.request.urlopen(f"{url}gradio_api/call/gallery_search/{event}", timeout=60).read()
            if b"event: complete" not in body:
                raise RuntimeError(f"gallery query failed: {body[:300]!r}")
            return time.perf_counter() - t0

        idle = [timed() for _ in range(args.idle_queries)]
        clients = [Client(url, verbose=False) for _ in range(args.users)]
        done = threading.Event()
        busy: list[float] = []

        def user(u: int) -> None:
            for k in range(args.each):
                clients[u].predict(args.model, f"user {u} run {k}", "", 15, 2.0, 100 * u + k, 64, 64, "dpmpp_2m", 1,
                                   api_name="/generate")

        def browse() -> None:
            while not done.is_set():
                busy.append(timed())

        t0 = time.perf_counter()
        browser = threading.Thread(target=browse)
        browser.start()
        with ThreadPoolExecutor(args.users) as pool:
            list(pool.map(user, range(args.users)))
        done.set()
        browser.join()
        jobs_s = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{args.users} users x {args.each} generations of {args.model} in {jobs_s:.1f} s; gallery page query "
          f"over HTTP (one at a time):")
    print(f"  idle:      n={len(idle):4d}  median {1000 * statistics.median(idle):7.1f} ms  p95 {1000 * _p95(idle):7.1f} ms")
    print(f"  jobs busy: n={len(busy):4d}  median {1000 * statistics.median(busy):7.1f} ms  p95 {1000 * _p95(busy):7.1f} ms")
    print(f"  ratio busy/idle: median {statistics.median(busy) / statistics.median(idle):.2f}x, "
          f"p95 {_p95(busy) / _p95(idle):.2f}x")


if __name__ == "__main__":
    main()

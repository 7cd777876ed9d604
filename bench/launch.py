"""Launch to UI ready: ``python -m bench.launch [--runs 5] [--browser] [--compare DIR]``.

Starts the real studio (``launch.py --no-browser --no-hf-cache --device cpu``, a fresh gallery in a temporary folder
each run, no user models) ``--runs`` times and times, from the moment the process is started:

- **ready**: ``GET /`` answers 200 (the page, with the Blocks config in it);
- **config**: ``GET /config`` answers 200 (the config the front end fetches);
- **rendered** (with ``--browser``): Debian's Chromium (through Playwright, already running before the studio starts)
  shows the Generate button, i.e. the page a person sees is built.

Prints the median and p95 of each and the issue's goal (issue 11: launch to ready <= 8 s on 2 CPU cores). With
``--compare DIR`` (another checkout, e.g. ``git archive OLD | tar -x -C DIR``) the two are launched in alternation and
the ratio of their medians is printed: on a shared machine only such interleaved ratios are steady.
:func:`start_studio` is shared with ``bench.first_image``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.report import emit

ROOT = Path(__file__).resolve().parent.parent
GOAL_READY_S = 8.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Studio:
    proc: subprocess.Popen
    url: str
    started: float  # time.perf_counter() just before the process was started
    folder: Path
    ready_s: float = 0.0  # start -> GET / answered 200

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)


def terminate(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Stop a studio process: SIGTERM, then SIGKILL after ``timeout`` seconds (also used by the test fixtures)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return response.status == 200
    except OSError:
        return False


def start_studio(root: Path = ROOT, extra_args: Sequence[str] = (), timeout: float = 120.0,
                 log: Path | None = None) -> Studio:
    """The real studio of checkout ``root`` on a free port with a fresh temporary gallery; returns once ``GET /``
    answers 200."""
    folder = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    (folder / "models").mkdir()
    port = free_port()
    cmd = [sys.executable, str(Path(root) / "launch.py"), "--port", str(port), "--gallery-dir", str(folder / "gallery"),
           "--models-dir", str(folder / "models"), "--no-browser", "--no-hf-cache", "--device", "cpu", *extra_args]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    out = open(log, "w") if log else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    studio = Studio(proc, f"http://127.0.0.1:{port}/", started, folder)
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            studio.stop()
            raise SystemExit(f"the studio exited with {proc.returncode} (run with a log to see why)")
        if _answers(studio.url):
            studio.ready_s = time.perf_counter() - started
            return studio
        time.sleep(0.02)
    studio.stop()
    raise SystemExit(f"the studio did not answer in {timeout:.0f} s")


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def summary(name: str, values: list[float], goal: float | None = None) -> str:
    text = (f"{name:<28} median {statistics.median(values):6.2f} s   p95 {p95(values):6.2f} s   "
            f"(n={len(values)}: {', '.join(f'{v:.2f}' for v in values)})")
    if goal is not None:
        text += f"   goal <= {goal:g} s: {'met' if statistics.median(values) <= goal else 'NOT met'}"
    return text


def open_browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport={"width": 1400, "height": 1400})


def time_launch(root: Path, page=None) -> dict[str, float]:
    """One launch of the studio in ``root``: seconds from process start to ready, config and (with a page)
    rendered."""
    studio = start_studio(root)
    try:
        times = {"ready": studio.ready_s}
        while not _answers(studio.url + "config"):
            time.sleep(0.02)
        times["config"] = time.perf_counter() - studio.started
        if page is not None:
            page.goto(studio.url)
            page.locator("#generate-button").wait_for(state="visible", timeout=60_000)
            times["rendered"] = time.perf_counter() - studio.started
        return times
    finally:
        studio.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true",
                        help="also time the page rendered in Chromium (Generate button visible)")
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR",
                        help="another checkout (e.g. git archive of the old commit) launched in alternation; "
                             "prints both and the ratio")
    args = parser.parse_args(argv)
    roots = {"this checkout": ROOT} | ({f"compare ({args.compare})": args.compare} if args.compare else {})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    playwright = browser = page = None
    if args.browser:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        browser, page = open_browser(playwright)
    try:
        for run in range(args.runs):
            for name, root in roots.items():  # interleaved, so both see the same load on the machine
                times = time_launch(root, page)
                results[name].append(times)
                print(f"run {run + 1} {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()), flush=True)
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
    print(f"\nLaunch to ready, {args.runs} runs each (python launch.py --no-browser --no-hf-cache --device cpu, "
          f"{os.cpu_count()} CPU cores):")
    for name, runs in results.items():
        print(name)
        print("  " + summary("start -> GET / 200 (ready)", [r["ready"] for r in runs], GOAL_READY_S))
        print("  " + summary("start -> GET /config 200", [r["config"] for r in runs]))
        if page is not None:
            print("  " + summary("start -> page rendered", [r["rendered"] for r in runs]))
    this = results["this checkout"]
    ready = statistics.median(r["ready"] for r in this)
    emit("launch", "start -> GET / 200 (ready), median", ready, "s", f"<= {GOAL_READY_S:g}", ready <= GOAL_READY_S)
    if page is not None:
        rendered = statistics.median(r["rendered"] for r in this)
        emit("launch", "start -> page rendered in Chromium, median", rendered, "s")
    if args.compare:
        other = statistics.median(r["ready"] for r in results[f"compare ({args.compare})"])
        print(f"ready: this checkout / compare = {ready / other:.2f}")
        emit("launch", "ready, this checkout / compare", ready / other, "x")


if __name__ == "__main__":
    main()

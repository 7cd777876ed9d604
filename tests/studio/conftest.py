"""A real studio process on a free port, serving the tiny models (for API and browser tests)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.launch import terminate

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StudioProcess:
    def __init__(self, models_dir: Path, gallery_dir: Path):
        self.models_dir, self.gallery_dir = models_dir, gallery_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = None

    def start(self, timeout: float = 120) -> "StudioProcess":
        self.log = open(self.gallery_dir.parent / f"studio-{self.port}.log", "w")
        cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(self.port), "--models-dir", str(self.models_dir),
               "--gallery-dir", str(self.gallery_dir), "--no-browser", "--no-hf-cache", "--device", "cpu"]
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studio exited with {self.proc.returncode}: {self.read_log()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"studio did not start in {timeout}s: {self.read_log()}")

    def read_log(self) -> str:
        self.log.flush()
        return (self.gallery_dir.parent / f"studio-{self.port}.log").read_text()[-3000:]

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


@pytest.fixture(scope="session")
def studio(tiny_models_dir, tmp_path_factory):
    proc = StudioProcess(tiny_models_dir, tmp_path_factory.mktemp("studio") / "gallery").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on loopback (Debian's binaries; .ci/run installs them)."""
    from tests.postgres import PostgresServer

    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


CHROMIUM = shutil.which("chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]


@pytest.fixture()
def page():
    """A page in Debian's Chromium driven by Playwright (never ``playwright install``)."""
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        yield page
        browser.close()


@pytest.fixture(scope="module")
def tiny_services(tiny_models_dir, tmp_path_factory):
    """The studio's services over the tiny models (no builtin models), with a gallery of their own per module."""
    from studio.services import build_services
    from studio.settings import Settings

    tmp = tmp_path_factory.mktemp("services")
    built = build_services(Settings(models_dir=tiny_models_dir, gallery_dir=tmp / "gallery",
                                    builtin_models_dir=tmp / "no-builtin", use_hf_cache=False, device="cpu"))
    yield built
    built.close()

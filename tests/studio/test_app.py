"""The app builds with and without models; Cancel through the API stops a run and saves nothing."""
import time

import gradio as gr
import pytest
from gradio_client import Client

from studio.app import build_app
from studio.gallery import Gallery
from studio.services import build_services
from studio.settings import Settings


def _api_names(demo: gr.Blocks) -> set[str]:
    return {dep.get("api_name") for dep in demo.config["dependencies"]}


@pytest.mark.parametrize("with_models", [False, True])
def test_app_builds(tmp_path, tiny_models_dir, with_models):
    settings = Settings(models_dir=tiny_models_dir if with_models else tmp_path / "none",
                        gallery_dir=tmp_path / "gallery", builtin_models_dir=tmp_path / "no-builtin",
                        use_hf_cache=False, device="cpu")
    services = build_services(settings)
    try:
        demo = build_app(services)
        assert {"generate", "cancel", "gallery_search", "recall", "delete"} <= _api_names(demo)
        assert (services.default_model_id() is not None) == with_models
    finally:
        services.close()


def test_cancel_stops_the_run_and_saves_nothing(studio):
    client = Client(studio.url, verbose=False)
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        job = client.submit("local/tiny-sd", "a red circle", "", 150, 7.5, 3, 256, 256, "ddim", 2,
                            api_name="/generate")
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until denoising has begun
            outputs = job.outputs()
            if outputs and str(outputs[-1][0]).startswith("Denoising"):
                break
            time.sleep(0.05)
        assert client.predict(api_name="/cancel").startswith("Cancelling")
        status = job.result()[0]
        assert status.startswith("Cancelled after") and "of 150 steps" in status
        steps_done = int(status.split()[2])
        assert 1 <= steps_done < 150
        assert gallery.count() == before and gallery.integrity_check() == "ok"
    finally:
        gallery.close()


def _launch(*args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, str(root / "launch.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=root)


def test_launch_help_documents_every_option():
    out = _launch("--help").stdout
    for option in ("--host", "--port", "--models-dir", "--gallery-dir", "--db-url", "--device", "--no-browser"):
        assert option in out
    assert "127.0.0.1" in out


def test_unwritable_gallery_folder_exits_with_a_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _launch("--gallery-dir", str(blocker / "gallery"), "--no-browser", "--no-hf-cache")
    assert result.returncode == 2
    assert "not writable" in result.stderr and "--gallery-dir" in result.stderr
    assert "Traceback" not in result.stderr


def _component(demo: gr.Blocks, label: str) -> dict:
    return next(c["props"] for c in demo.config["components"] if c.get("props", {}).get("label") == label)


def test_generate_tab_starts_from_the_model_default_settings(tmp_path, tiny_sd_dir):
    import shutil

    from pipelines.default_settings import write_default_settings
    from studio.tabs.generate import model_defaults

    models = tmp_path / "models"
    shutil.copytree(tiny_sd_dir, models / "tiny-sd")
    write_default_settings(models / "tiny-sd", 2.5, 12, "euler")
    shutil.copytree(tiny_sd_dir, models / "tiny-sd-bad")
    (models / "tiny-sd-bad" / "default_settings.json").write_text('{"guidance_scale": "lots"}')
    settings = Settings(models_dir=models, gallery_dir=tmp_path / "gallery", builtin_models_dir=tmp_path / "none",
                        use_hf_cache=False, device="cpu")
    services = build_services(settings)
    try:
        assert services.default_model_id() == "local/tiny-sd"
        demo = build_app(services)
        assert _component(demo, "Guidance scale")["value"] == 2.5
        assert _component(demo, "Steps")["value"] == 12
        assert _component(demo, "Scheduler")["value"] == "euler"
        defaults, problem = model_defaults(services, "local/tiny-sd-bad")
        assert defaults["guidance_scale"] == 7.5 and "guidance_scale must be" in problem
    finally:
        services.close()

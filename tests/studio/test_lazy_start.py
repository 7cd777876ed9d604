"""Nothing heavy at import time: `import studio.app` loads Gradio but not torch, diffusers, transformers or
open_clip (the tabs import them where they build or run; launch.py warms the default model in the background)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "umap", "sklearn")


def _loaded_after(code: str) -> dict[str, bool]:
    """Which of HEAVY are in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False",
                                  HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_app_loads_no_model_library():
    loaded = _loaded_after("import studio.app\nimport launch")
    assert not any(loaded.values()), {m for m, v in loaded.items() if v}


def test_building_the_app_loads_no_model_no_clip_and_no_umap(tmp_path):
    """Building the UI does import torch, diffusers and (through diffusers' model classes) transformers: the Inside
    the Model tab draws its first forward-process view with diffusers' schedulers while it is built, and the Audio
    and Video forms take their limits and defaults from pipelines.audio_ldm and pipelines.video. It loads no model,
    no CLIP (open_clip) and no UMAP: those come on first use or in launch.py's background warm-up."""
    code = f"""
from pathlib import Path
from studio.app import build_app
from studio.services import build_services
from studio.settings import Settings
services = build_services(Settings(models_dir=Path({str(tmp_path / 'models')!r}),
                                   gallery_dir=Path({str(tmp_path / 'gallery')!r}), use_hf_cache=False, device="cpu"))
build_app(services)
assert not any(services.models.is_loaded(e.id) for e in services.registry.entries()), "a model was loaded"
"""
    loaded = _loaded_after(code)
    assert not loaded["open_clip"] and not loaded["umap"] and not loaded["sklearn"], loaded

"""Start-up settings of the studio, built once by ``launch.py``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # interface to bind; 127.0.0.1 keeps the studio private to this machine
    port: int = 7860  # TCP port of the web UI
    models_dir: Path = Path("models")  # the user's own diffusers model folders
    gallery_dir: Path = Path("gallery")  # media files and (by default) the SQLite database
    db_url: Optional[str] = None  # any SQLAlchemy URL; None: sqlite file inside gallery_dir
    runs_dir: Optional[Path] = None  # Train-tab runs; None: runs/ beside gallery_dir
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto (float16 on a GPU, float32 on the CPU) | float32 | float16 | bfloat16
    compile: str = "off"  # off | a torch.compile mode for each model's denoiser
    open_browser: bool = True  # open a browser tab once the server is up
    builtin_models_dir: Optional[Path] = None  # None: the repo's assets/models
    hf_cache_dir: Optional[Path] = None  # None: huggingface_hub's default cache
    use_hf_cache: bool = True  # list models found in the Hugging Face cache

    @property
    def training_runs_dir(self) -> Path:
        """Where the Train tab keeps its runs."""
        return Path(self.runs_dir) if self.runs_dir is not None else Path(self.gallery_dir).parent / "runs"

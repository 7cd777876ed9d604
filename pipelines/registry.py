"""The model registry: an explicit list of where models come from and which family runs them.

Sources, scanned on request (never at import):

- ``builtin``: folders under ``assets/models/`` shipped with the repo;
- ``user``: folders under the user's models directory (``--models-dir``);
- ``hf-cache``: snapshots in the Hugging Face cache, read with ``local_files_only`` semantics
  (the registry only reads folders; it never makes a network call).

A model is a diffusers folder: ``model_index.json`` plus one folder per component. The
pipeline class named in ``model_index.json`` decides the family through
:data:`PIPELINE_FAMILIES`. Only safetensors weights are loaded: pickle files can run code.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUILTIN_MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"

# diffusers pipeline class -> studio family. Explicit: a folder of another class is skipped.
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionPipeline": "latent_diffusion",
    "DiTPipeline": "dit",
    "StableDiffusion3Pipeline": "flow_matching",
    "VQGANTokenPriorPipeline": "vqgan_prior",
    "AudioLDMPipeline": "audio_ldm",
    "TextToVideoSDPipeline": "text_to_video",  # ModelScope style: a UNet3DConditionModel
    "AnimateDiffPipeline": "text_to_video",  # an image UNet + a MotionAdapter
}
# What a family makes (families not named here make images).
FAMILY_MEDIA: dict[str, str] = {"audio_ldm": "audio", "text_to_video": "video"}

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_ID_SAFE = re.compile(r"[^A-Za-z0-9._/-]+")


class ModelLoadError(ValueError):
    """A model folder cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class ModelEntry:
    id: str  # stable id shown in the UI and stored in the gallery, e.g. "builtin/shapes-ldm"
    family: str  # studio family, e.g. "latent_diffusion"
    path: Path  # the diffusers folder (the one holding model_index.json)
    source: str  # "builtin", "user" or "hf-cache"
    pipeline_class: str  # the diffusers pipeline class named in model_index.json

    @property
    def media(self) -> str:
        return FAMILY_MEDIA.get(self.family, "image")

    @property
    def label(self) -> str:
        return f"{self.id}  [{self.family}, {self.source}]"


def read_model_index(folder: Path) -> dict:
    index_file = folder / "model_index.json"
    try:
        return json.loads(index_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{index_file} is missing: a diffusers model folder needs model_index.json.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index_file} is not valid JSON ({exc}); restore or re-save the model.") from None


def _entry_for(folder: Path, model_id: str, source: str) -> ModelEntry | None:
    try:
        index = read_model_index(folder)
    except ModelLoadError as exc:
        log.warning("skipping %s: %s", folder, exc)
        return None
    cls = index.get("_class_name", "")
    family = PIPELINE_FAMILIES.get(cls)
    if family is None:
        log.info("skipping %s: pipeline class %r has no studio family yet", folder, cls)
        return None
    return ModelEntry(id=model_id, family=family, path=folder, source=source, pipeline_class=cls)


def _scan_folder_tree(root: Path, prefix: str, source: str) -> list[ModelEntry]:
    """Model folders directly under ``root`` or one level deeper (``root/org/name``)."""
    if not root.is_dir():
        return []
    found = []
    for index in sorted(root.glob("*/model_index.json")) + sorted(root.glob("*/*/model_index.json")):
        rel = index.parent.relative_to(root).as_posix()
        entry = _entry_for(index.parent, f"{prefix}/{_ID_SAFE.sub('-', rel)}", source)
        if entry:
            found.append(entry)
    return found


def _scan_hf_cache(cache_dir: Path) -> list[ModelEntry]:
    """Snapshots of model repos in a Hugging Face hub cache (``models--org--name/snapshots/rev``)."""
    if not cache_dir.is_dir():
        return []
    found = []
    for repo_dir in sorted(cache_dir.glob("models--*")):
        repo_id = repo_dir.name[len("models--"):].replace("--", "/")
        snapshot = _cached_snapshot(repo_dir)
        if snapshot is None:
            continue
        entry = _entry_for(snapshot, f"hf/{repo_id}", "hf-cache")
        if entry:
            found.append(entry)
    return found


def _cached_snapshot(repo_dir: Path) -> Path | None:
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if (snapshot / "model_index.json").is_file():
            return snapshot
    snapshots = sorted(p.parent for p in repo_dir.glob("snapshots/*/model_index.json"))
    return snapshots[-1] if snapshots else None


def default_hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


class ModelRegistry:
    """Lists models from the builtin folder, the user's models folder and the HF cache."""

    def __init__(
        self,
        builtin_dir: Path | None = BUILTIN_MODELS_DIR,
        user_dir: Path | None = None,
        hf_cache_dir: Path | None = None,
    ):
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self.hf_cache_dir = hf_cache_dir
        self._entries: dict[str, ModelEntry] | None = None

    def refresh(self) -> list[ModelEntry]:
        """Scan all sources again (new folders appear without a restart)."""
        entries: list[ModelEntry] = []
        if self.builtin_dir is not None:
            entries += _scan_folder_tree(self.builtin_dir, "builtin", "builtin")
        if self.user_dir is not None:
            entries += _scan_folder_tree(self.user_dir, "local", "user")
        if self.hf_cache_dir is not None:
            entries += _scan_hf_cache(self.hf_cache_dir)
        self._entries = {e.id: e for e in entries}
        return list(self._entries.values())

    def entries(self, media: str | None = "image") -> list[ModelEntry]:
        """The models that make ``media`` ("image", "audio", "video"; None: every model)."""
        if self._entries is None:
            self.refresh()
        return [e for e in self._entries.values() if media is None or e.media == media]

    def get(self, model_id: str) -> ModelEntry:
        if self._entries is None or model_id not in self._entries:
            self.refresh()
        try:
            return self._entries[model_id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none found"
            raise ModelLoadError(f"Unknown model id {model_id!r}. Known models: {known}.") from None

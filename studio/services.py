"""The services every tab receives: built once in ``launch.py``, never at import time."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.devices import DeviceSpec, resolve_device
from pipelines.families import ModelCache
from pipelines.registry import BUILTIN_MODELS_DIR, ModelRegistry, default_hf_cache

from .gallery import Gallery
from .jobs import JobRegistry
from .settings import Settings
from .training import TrainingManager

log = logging.getLogger(__name__)
DEFAULT_MODEL_ID = "builtin/shapes-ldm"


@dataclass
class Services:
    settings: Settings
    device: DeviceSpec
    registry: ModelRegistry
    models: ModelCache
    gallery: Gallery
    jobs: JobRegistry
    training: TrainingManager

    def default_model_id(self) -> str | None:
        ids = [e.id for e in self.registry.entries()]
        if DEFAULT_MODEL_ID in ids:
            return DEFAULT_MODEL_ID
        return ids[0] if ids else None

    def close(self) -> None:
        self.gallery.close()


def build_services(settings: Settings) -> Services:
    """Open the gallery (raises GalleryError) and set up the registry and model cache."""
    device = resolve_device(settings.device, settings.dtype, settings.compile)
    gallery = Gallery.open(Path(settings.gallery_dir), settings.db_url)
    hf_cache = settings.hf_cache_dir or (default_hf_cache() if settings.use_hf_cache else None)
    registry = ModelRegistry(
        builtin_dir=settings.builtin_models_dir or BUILTIN_MODELS_DIR,
        user_dir=Path(settings.models_dir),
        hf_cache_dir=hf_cache,
    )
    return Services(settings=settings, device=device, registry=registry,
                    models=ModelCache(registry, device), gallery=gallery, jobs=JobRegistry(),
                    training=TrainingManager(settings.training_runs_dir, Path(settings.models_dir)))


def warm_up_default_model(services: Services) -> float | None:
    """Load the Generate tab's default model into the model cache ahead of the first click; the seconds it took
    (None: no model, or it failed to load, which is logged and said again when the model is used).

    ``launch.py`` runs this in a background thread once the server answers, so the page never waits for it. It
    loads through :class:`~pipelines.families.ModelCache`, whose lock serialises loading: a click that comes
    while it runs waits for this load instead of starting a second one. Inside that lock it runs the model's
    ``warm_up()`` once (a 2-step generation at its native size, where the family has one): the first run's
    one-time costs (kernel set-up, lazy imports) are paid before anyone clicks; nothing is saved.
    """
    from pipelines.registry import ModelLoadError

    model_id = services.default_model_id()
    if model_id is None:
        return None
    started = time.perf_counter()
    try:
        services.models.get(model_id, warm_up=True)
    except ModelLoadError as exc:
        log.warning("warm-up: %s", exc)
        return None
    return time.perf_counter() - started

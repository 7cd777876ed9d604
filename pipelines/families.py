"""Which class runs which family, and a small cache of loaded models per device."""
from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from .devices import DeviceSpec, compile_denoiser
from .registry import ModelEntry, ModelLoadError, ModelRegistry

log = logging.getLogger(__name__)

# family -> "module:Class" (imported on first use so that listing models stays cheap)
FAMILY_CLASSES: dict[str, str] = {
    "latent_diffusion": "pipelines.latent_diffusion:LatentDiffusion",
    "dit": "pipelines.dit:DiT",
    "flow_matching": "pipelines.flow:FlowMatching",
    "vqgan_prior": "pipelines.token_prior:VQGANTokenPrior",
    "audio_ldm": "pipelines.audio_ldm:AudioLDM",
    "text_to_video": "pipelines.video:TextToVideo",
}

# families that draw tokens (temperature and top-k apply; steps = trajectory checkpoints)
TOKEN_FAMILIES = ("vqgan_prior",)


def family_class(family: str):
    try:
        module_name, cls_name = FAMILY_CLASSES[family].split(":")
    except KeyError:
        raise ModelLoadError(f"No pipeline runs family {family!r} yet.") from None
    return getattr(importlib.import_module(module_name), cls_name)


def load_model(entry: ModelEntry, device: DeviceSpec) -> Any:
    return family_class(entry.family).load(entry, device)


class ModelCache:
    """Keeps the last ``max_loaded`` models in memory; loading is serialised by a lock."""

    def __init__(self, registry: ModelRegistry, device: DeviceSpec, max_loaded: int = 2):
        self.registry, self.device, self.max_loaded = registry, device, max_loaded
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, warm_up: bool = False) -> Any:
        """The loaded model (loading it first). ``warm_up``: after loading, run the model's ``warm_up()`` (a tiny
        generation that pays the first run's one-time costs) while still holding the lock, so a request that
        comes meanwhile waits for a model that is ready instead of paying them itself."""
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            entry = self.registry.get(model_id)
            model = load_model(entry, self.device)
            compile_denoiser(model, self.device)  # --compile: compiled in place (the warm-up run compiles it)
            if warm_up and hasattr(model, "warm_up"):
                try:
                    model.warm_up()
                except Exception as exc:  # noqa: BLE001 - a failed warm-up leaves a usable model
                    # (a real request that fails the same way says why)
                    log.warning("warm-up run of %s failed: %s", model_id, exc)
            self._loaded[model_id] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return model

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._loaded.pop(model_id, None)

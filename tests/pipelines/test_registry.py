"""The registry finds models in a models folder and in a Hugging Face cache; unsafe or broken
folders are refused with a message naming the file."""
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from pipelines.devices import resolve_device
from pipelines.families import ModelCache
from pipelines.latent_diffusion import LatentDiffusion
from pipelines.model_files import check_model_folder
from pipelines.registry import ModelLoadError, ModelRegistry
from pipelines.requests import ImageRequest


def _as_hf_cache(src: Path, cache: Path, repo_id: str) -> Path:
    """Lay ``src`` out as huggingface_hub does: blobs by hash, snapshot of symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_finds_models_folder_and_hf_cache(tiny_sd_dir, tiny_models_dir, tmp_path):
    cache = tmp_path / "hub"
    snapshot = _as_hf_cache(tiny_sd_dir, cache, "someone/tiny-sd")
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir, hf_cache_dir=cache)
    by_id = {e.id: e for e in registry.entries()}
    assert {"local/tiny-sd", "local/tiny-sd-v", "hf/someone/tiny-sd"} <= set(by_id)
    assert by_id["local/tiny-sd"].source == "user" and by_id["local/tiny-sd"].path == tiny_sd_dir
    hf = by_id["hf/someone/tiny-sd"]
    assert (hf.source, hf.family, hf.path) == ("hf-cache", "latent_diffusion", snapshot)
    model = LatentDiffusion.load(hf, resolve_device("cpu"))
    result = model.generate(ImageRequest("a red circle", num_inference_steps=2, capture_trajectory=False))
    assert result.images[0].size == (16, 16)


def test_builtin_folder_and_refresh(tiny_sd_dir, tmp_path):
    builtin = tmp_path / "assets"
    registry = ModelRegistry(builtin_dir=builtin, user_dir=None)
    assert registry.entries() == []
    shutil.copytree(tiny_sd_dir, builtin / "shapes")
    assert registry.get("builtin/shapes").source == "builtin"  # found without a restart


def test_unknown_id_lists_known_models(tiny_models_dir):
    registry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir)
    with pytest.raises(ModelLoadError, match="Unknown model id 'nope'.*local/tiny-sd"):
        registry.get("nope")


def test_folder_of_unknown_pipeline_class_is_skipped(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "SomethingElsePipeline"}')
    assert ModelRegistry(builtin_dir=None, user_dir=tmp_path).entries() == []


def test_pickle_only_checkpoint_is_refused(model_copy):
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match=r"diffusion_pytorch_model\.bin.*pickle.*safetensors only"):
        check_model_folder(model_copy)
    cache = ModelCache(ModelRegistry(builtin_dir=None, user_dir=model_copy.parent), resolve_device("cpu"))
    with pytest.raises(ModelLoadError, match="pickle"):
        cache.get("local/broken")


@pytest.mark.parametrize("protocol", ["zip", 2, 4, 5])
def test_a_pickle_renamed_to_safetensors_is_refused_by_its_contents(model_copy, tmp_path, protocol):
    """The format is read from the file, not its name: a PyTorch checkpoint (zip) or a bare pickle stream saved
    as ``*.safetensors`` is refused as a pickle, and nothing in it is ever unpickled."""
    import pickle

    import torch

    marker = tmp_path / "unpickled.txt"
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    payload = {"weight": torch.zeros(2), "evil": _Trap(str(marker))}
    if protocol == "zip":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(ModelLoadError, match=r"not a safetensors file but a pickle"):
        check_model_folder(model_copy)
    cache = ModelCache(ModelRegistry(builtin_dir=None, user_dir=model_copy.parent), resolve_device("cpu"))
    with pytest.raises(ModelLoadError, match="pickle"):
        cache.get("local/broken")
    assert not marker.exists()


class _Trap:
    """Unpickling this writes a file: proof that a loader ran pickle code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("ran",))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "vae"),
        (lambda d: (d / "unet" / "config.json").write_text("{not json"), "unet/config.json"),
        (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 10),
         "unet/diffusion_pytorch_model.safetensors"),
        (lambda d: _truncate(d / "text_encoder" / "model.safetensors"), "text_encoder/model.safetensors"),
        (lambda d: shutil.rmtree(d / "tokenizer"), "tokenizer"),
        (lambda d: (d / "model_index.json").write_text("[1,"), "model_index.json"),
    ],
)
def test_broken_folder_message_names_the_file(model_copy, damage, named):
    damage(model_copy)
    with pytest.raises(ModelLoadError, match=named.replace(".", r"\.")):
        check_model_folder(model_copy)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("model_id", ["local/tiny-sd", "local/tiny-sd3"])
def test_a_warm_up_load_runs_a_tiny_generation_inside_the_cache_lock(tiny_models_dir, monkeypatch, model_id):
    """``get(..., warm_up=True)`` loads and runs the model's 2-step warm-up before handing it out (a diffusion
    model with its default-settings scheduler, a flow model with its own); a plain ``get`` does not."""
    runs: list[ImageRequest] = []
    original = LatentDiffusion.generate

    def spy(self, req, *args, **kwargs):
        runs.append(req)
        return original(self, req, *args, **kwargs)

    monkeypatch.setattr(LatentDiffusion, "generate", spy)
    cache = ModelCache(ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir), resolve_device("cpu"))
    model = cache.get(model_id, warm_up=True)
    assert [(r.num_inference_steps, r.capture_trajectory) for r in runs] == [(2, True)]
    assert cache.get(model_id, warm_up=True) is model and len(runs) == 1  # loaded once, warmed once
    cache.forget(model_id)
    cache.get(model_id)
    assert len(runs) == 1


def test_a_failed_warm_up_still_hands_out_the_model(tiny_models_dir, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(LatentDiffusion, "warm_up", broken)
    cache = ModelCache(ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir), resolve_device("cpu"))
    model = cache.get("local/tiny-sd", warm_up=True)
    assert isinstance(model, LatentDiffusion) and "no kernels today" in caplog.text
    assert len(model.generate(ImageRequest("a red circle", num_inference_steps=2, seed=1)).images) == 1

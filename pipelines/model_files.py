"""Checks a diffusers model folder before loading, so that a broken or unsafe folder gives a
message naming the file instead of a stack trace deep inside a library."""
from __future__ import annotations

import json
from pathlib import Path

from .registry import PICKLE_SUFFIXES, ModelLoadError, read_model_index

# Components that hold no weights (their folder holds configs or vocabularies only).
_CONFIG_ONLY = ("scheduler", "tokenizer", "feature_extractor", "image_processor", "tokenizer_2", "tokenizer_3")


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is corrupt (not valid JSON: {exc}); restore it or re-save the model.") from None


# What a file starts with when it is really a pickle: PyTorch's zip checkpoint, or a bare pickle stream
# (protocol 2 to 5), whatever its name says.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc}).") from None
    if head.startswith(_PICKLE_MAGIC):
        raise ModelLoadError(
            f"{path} is not a safetensors file but a pickle (a PyTorch checkpoint) under a .safetensors name. "
            "Pickles can run arbitrary code when loaded, so the studio refuses it (the format is read from the "
            "file's contents, not its name); convert the model on a machine you trust.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"{path} is corrupt or truncated ({exc}); restore it or re-save the model.") from None
    if not keys:
        raise ModelLoadError(f"{path} holds no tensors; restore it or re-save the model.")


def _check_weights(folder: Path, name: str) -> None:
    weights = sorted(folder.glob("*.safetensors"))
    if weights:
        for path in weights:
            _check_safetensors(path)
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{folder / pickles[0]}: the {name} weights exist only as a pickle file. Pickle files can run "
            "arbitrary code when loaded, so the studio loads safetensors only. Convert the model on a "
            "machine you trust (load it with diffusers and call save_pretrained(..., safe_serialization=True)) "
            "or download its safetensors variant."
        )
    raise ModelLoadError(f"{folder}: no weights file (*.safetensors) for component {name!r}; the model is incomplete.")


def check_model_folder(folder: Path) -> dict:
    """Validate every component named in ``model_index.json``; return the index.

    Raises :class:`ModelLoadError` naming the missing, corrupt or pickle-only file.
    """
    index = read_model_index(folder)
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        comp = folder / name
        if not comp.is_dir():
            raise ModelLoadError(f"{comp} is missing: model_index.json lists component {name!r}.")
        configs = sorted(comp.glob("*config*.json"))
        if not configs and name not in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            raise ModelLoadError(f"{comp}: no config file for component {name!r}; the model is incomplete.")
        for cfg in configs:
            _check_json(cfg)
        if name.startswith("tokenizer"):
            _check_tokenizer(comp)
        elif name not in _CONFIG_ONLY:
            _check_weights(comp, name)
    return index


def _check_tokenizer(folder: Path) -> None:
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise ModelLoadError(f"{folder}: the tokenizer needs vocab.json and merges.txt (or tokenizer.json).")
    for name in ("vocab.json", "tokenizer.json"):
        if (folder / name).is_file():
            _check_json(folder / name)


def native_image_size(folder: Path) -> int | None:
    """A model folder's native image side in pixels (UNet, transformer or token prior), read from configs
    (no loading)."""
    try:  # token prior: grid cells x the VQGAN's downsampling
        prior = json.loads((folder / "prior" / "config.json").read_text(encoding="utf-8"))
        vq = json.loads((folder / "vqvae" / "config.json").read_text(encoding="utf-8"))
        return int(prior["grid_size"]) * 2 ** (len(vq["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for denoiser in ("unet", "transformer"):
        try:
            net = json.loads((folder / denoiser / "config.json").read_text(encoding="utf-8"))
            vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
            return int(net["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def class_labels(folder: Path) -> list[str] | None:
    """A class-conditional model's label names from ``model_index.json``'s ``id2label`` (each comma-separated
    name counts, as ``DiTPipeline`` reads them), sorted; None when the folder has none."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    id2label = index.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    return sorted({name.strip() for value in id2label.values() for name in str(value).split(",") if name.strip()})


def guidance_note(folder: Path) -> str | None:
    """Why a model folder has no classifier-free guidance to study (None: it has, or unknown), from configs.

    A UNet with ``time_cond_proj_dim`` (LCM-style guidance distillation) takes the scale as an
    input: diffusers then runs no unconditional branch, so there is nothing to sweep or decompose.
    """
    try:
        unet = json.loads((Path(folder) / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if unet.get("time_cond_proj_dim") is not None:
        return ("This model has no classifier-free guidance: it is guidance-distilled (its UNet takes the scale as "
                "an input, time_cond_proj_dim), so there are no unconditional and conditional predictions to "
                "mix, sweep or decompose. Pick a model with guidance.")
    return None

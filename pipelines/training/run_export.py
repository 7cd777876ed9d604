"""A stopped or finished run's checkpoint as a model folder the registry lists (:func:`export_run`): what the Train
tab does when a run ends, for every target that makes a generator.

- ``ldm``: a ``StableDiffusionPipeline`` of the run's EMA UNet on the base model's other parts
  (:func:`pipelines.training.ldm_export.export_pipeline`).
- ``flow``: a ``StableDiffusion3Pipeline`` folder of the EMA transformer, the run's text tower and the VAE.
- ``dit``: a ``DiTPipeline`` folder (``id2label`` included) of the EMA transformer and the VAE.
- ``vae``: the base ``StableDiffusionPipeline`` with the run's VAE (a decoder fine-tune keeps the encoder and its
  latent space, so the base UNet still fits; a VAE trained from scratch is refused: its latents are another space).

Each is written beside ``out`` and swapped in whole (the registry never sees half a folder). Returns ``out``.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from pipelines.training import common

KINDS = ("ldm", "flow", "dit", "vae")


def _staged(out: Path, write: Callable[[Path], None]) -> Path:
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return common.swap_in(tmp, out)


def export_flow(run_dir: Path, out: Path, vae_dir: Path) -> Path:
    from pipelines.training.flow import export_pack

    return _staged(out, lambda tmp: export_pack(run_dir, tmp, Path(vae_dir), Path(run_dir) / "text"))


def export_dit(run_dir: Path, out: Path, vae_dir: Path) -> Path:
    from pipelines.training.dit import export_pack, export_transformer

    def write(tmp: Path) -> None:
        transformer = Path(run_dir) / "transformer.export"
        shutil.rmtree(transformer, ignore_errors=True)
        export_transformer(run_dir, transformer)
        try:
            export_pack(transformer, vae_dir, tmp)
        finally:
            shutil.rmtree(transformer, ignore_errors=True)

    return _staged(out, write)


def export_decoder(run_dir: Path, out: Path, base: Path) -> Path:
    """The ``base`` pipeline with the VAE of ``<run-dir>/checkpoint.pt`` (a ``--finetune-decoder`` run)."""
    from diffusers import AutoencoderKL

    run_dir, base = Path(run_dir), Path(base)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    vae = AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True, dtype=torch.float32)
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    vae.load_state_dict(state["model"])
    if any(not torch.equal(v, vae.encoder.state_dict()[k]) for k, v in encoder_before.items()):
        raise ValueError(f"{run_dir} changed the encoder of {base / 'vae'}: its latents are another space than the "
                         "base UNet's, so it cannot be exported onto that pipeline (train with --finetune-decoder)")

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(base / part, tmp / part)
        if (base / "default_settings.json").is_file():
            shutil.copy2(base / "default_settings.json", tmp / "default_settings.json")
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps({"vae_step": int(state["step"]), "base": str(base),
                                                       "run_dir": str(run_dir)}, indent=2))
        shutil.copy2(base / "model_index.json", tmp / "model_index.json")  # last: now it lists as a model

    return _staged(out, write)


def export_run(kind: str, run_dir: Path, out: Path, vae_dir: Path, base: Path) -> Path:
    """Export ``run_dir`` (a run of ``kind``, one of :data:`KINDS`) to the model folder ``out``."""
    if kind == "ldm":
        from pipelines.training.ldm_export import export_pipeline

        return export_pipeline(run_dir, out, base=base)
    if kind == "flow":
        return export_flow(run_dir, out, vae_dir)
    if kind == "dit":
        return export_dit(run_dir, out, vae_dir)
    if kind == "vae":
        return export_decoder(run_dir, out, base)
    raise ValueError(f"unknown export kind {kind!r}; one of {', '.join(KINDS)}")


def checkpoint_step(run_dir: Path) -> int:
    """The step ``<run-dir>/checkpoint.pt`` holds."""
    return int(torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])

"""Export an LDM run (:mod:`pipelines.training.ldm`): :func:`export_unet` (its EMA UNet as a diffusers folder),
:func:`export_pipeline` (a complete ``StableDiffusionPipeline`` folder on a base model's other parts, refused with
:class:`ExportError` when the run does not fit that base) and :func:`cli`
(``python -m pipelines.training.ldm export RUN_DIR OUT [--base DIR] [--raw]``)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.training import common, latents as lat

BASE_LDM = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-ldm"  # the shipped model


def export_unet(run_dir: Path, out: Path, use_ema: bool = True) -> Path:
    """Save the (EMA) UNet of ``<run-dir>/checkpoint.pt`` as a diffusers folder."""
    from diffusers import UNet2DConditionModel

    unet, state = common.trained_model(UNet2DConditionModel, run_dir, "unet_config", use_ema)
    unet.save_pretrained(out, safe_serialization=True)
    common.write_training_info(out, state, "unet_config")
    return Path(out)


class ExportError(ValueError):
    """A run that cannot be exported onto the given base model (the reason says what differs)."""


def _run_record(run_dir: Path) -> dict[str, Any]:
    """The run's record (step, text/vae hashes, scaling factor...): its checkpoint's, else its exported UNet's."""
    if (run_dir / "checkpoint.pt").is_file():
        state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        return {"step": int(state["step"]), **{k: v for k, v in state["extra"].items() if k != "unet_config"}}
    info = run_dir / "unet" / "training.json"
    if info.is_file():
        return json.loads(info.read_text())
    raise ExportError(f"{run_dir} has neither checkpoint.pt nor an exported unet/ (has the run saved a checkpoint?)")


def _safetensors_dtype(folder: Path) -> torch.dtype:
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return torch.float32
    with safe_open(str(files[0]), "pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys()}
    return {"F16": torch.float16, "BF16": torch.bfloat16}.get(kinds.pop(), torch.float32) if len(kinds) == 1 else (
        torch.float32)


def export_pipeline(run_dir: Path, out: Path, base: Path = BASE_LDM, use_ema: bool = True) -> Path:
    """Write a complete diffusers ``StableDiffusionPipeline`` folder to ``out``: the run's (EMA) UNet plus the
    ``base`` folder's vae, text_encoder, tokenizer, scheduler, model_index.json and default_settings.json.

    The run must have been trained on the base's text encoder (``text_hash``) and latent scale
    (``scaling_factor``), else :class:`ExportError` says so. The UNet is stored in the base UNet's dtype (fp16
    for the shipped model; diffusers loads it as fp32). Written to ``<out>.tmp`` (``model_index.json`` last)
    and renamed into place, so a model list never sees half a folder; an existing ``out`` is replaced.
    """
    from diffusers import UNet2DConditionModel

    run_dir, out, base = Path(run_dir), Path(out), Path(base)
    missing = [p for p in ("model_index.json", "vae", "text_encoder", "tokenizer", "scheduler", "unet")
               if not (base / p).exists()]
    if missing:
        raise ExportError(f"base {base} is not a StableDiffusionPipeline folder (missing {', '.join(missing)})")
    record = _run_record(run_dir)
    base_text = lat.file_hash(base / "text_encoder")
    base_info = json.loads((base / "training.json").read_text()) if (base / "training.json").is_file() else {}
    if record.get("text_hash") is None or record["text_hash"] not in (base_text, base_info.get("text_hash")):
        raise ExportError(f"{run_dir} was trained on another text encoder (text_hash {record.get('text_hash')}) "
                          f"than {base} ({base_text}): its UNet would be conditioned on the wrong prompt "
                          "embeddings. Train with that folder's text encoder (the default --clip-dir does for "
                          "the shipped shapes-ldm), or export onto the base it was trained for (--base)")
    base_scale = float(json.loads((base / "vae" / "config.json").read_text()).get("scaling_factor", 0.18215))
    if "scaling_factor" in record and abs(float(record["scaling_factor"]) - base_scale) > 1e-6 * max(1, base_scale):
        raise ExportError(f"{run_dir} was trained on latents scaled by {record['scaling_factor']}, but {base}/vae "
                          f"scales by {base_scale}: train on that VAE's latents (--vae-dir {base / 'vae'})")
    if record.get("vae_hash") and record["vae_hash"] not in (lat.file_hash(base / "vae"), base_info.get("vae_hash")):
        warnings.warn(f"{run_dir}'s latents came from another VAE file (vae_hash {record['vae_hash']}) than "
                      f"{base}/vae; its images decode right only if the two share the encoder's latent space",
                      stacklevel=2)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(base / part, tmp / part)
        if (base / "default_settings.json").is_file():
            shutil.copy2(base / "default_settings.json", tmp / "default_settings.json")
        if (run_dir / "checkpoint.pt").is_file():
            export_unet(run_dir, tmp / "unet", use_ema=use_ema)
        else:  # a finished run whose checkpoint was removed: its exported (EMA) UNet
            shutil.copytree(run_dir / "unet", tmp / "unet")
        dtype = _safetensors_dtype(base / "unet")
        if dtype != torch.float32:
            UNet2DConditionModel.from_pretrained(tmp / "unet", torch_dtype=dtype, use_safetensors=True).save_pretrained(
                tmp / "unet", safe_serialization=True)
        step = int(record.pop("step", 0))
        info = {"ldm_step": step, **record, "base": str(base), "run_dir": str(run_dir), "weights": (
            "ema" if use_ema else "raw")}
        (tmp / "training.json").write_text(json.dumps(info, indent=2))
        shutil.copy2(base / "model_index.json", tmp / "model_index.json")  # last: now it lists as a model
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return common.swap_in(tmp, out)


def cli(argv: Sequence[str] | None = None) -> Path:
    """``python -m pipelines.training.ldm export RUN_DIR OUT [--base DIR] [--raw]``."""
    p = argparse.ArgumentParser(prog="python -m pipelines.training.ldm",
                                description="Tools for latent-diffusion runs (training: python -m pipelines.train ldm)")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a run's EMA UNet + a base model's other parts as a "
                                      "StableDiffusionPipeline folder")
    e.add_argument("run_dir", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--base", type=Path, default=BASE_LDM,
                   help=f"where the vae, text encoder, tokenizer and scheduler come from (default {BASE_LDM})")
    e.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA average")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = export_pipeline(args.run_dir, args.out, base=args.base, use_ema=not args.raw)
    except ExportError as exc:
        raise SystemExit(f"export refused: {exc}") from None
    info = json.loads((out / "training.json").read_text())
    print(f"wrote {out} (LDM step {info['ldm_step']}, base {args.base})")
    return out


if __name__ == "__main__":
    cli()

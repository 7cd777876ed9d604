"""Assemble the builtin ``shapes-ldm`` Stable Diffusion folder: ``python -m pipelines.builtin_ldm``.

The folder is an ordinary diffusers ``StableDiffusionPipeline`` save (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models"): the trained ``AutoencoderKL``
(``runs/vae/out``), the EMA weights of the trained UNet (``runs/ldm/checkpoint.pt``), the exact
text encoder + tokenizer the UNet was trained on (``runs/ldm/text``, exported from shapes-clip),
and a DPM-Solver++ 2M scheduler with the training schedule (scaled_linear 0.00085-0.012, 1000
steps). The UNet and text encoder are stored in fp16 (half the size; diffusers and transformers
load them as fp32 on the CPU); the VAE stays fp32, as its fp16 rounding cost ~0.5 dB of PSNR.
The new folder is written next to the old one and swapped in, so readers never see half a model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.clip_vocab import compact_tokenizer
from pipelines.registry import BUILTIN_MODELS_DIR
from pipelines.training import common

MODEL_DIR = BUILTIN_MODELS_DIR / "shapes-ldm"
CLIP_DIR = BUILTIN_MODELS_DIR.parent / "clip" / "shapes-clip"


def make_scheduler() -> Any:
    """DPM-Solver++ 2M (Lu et al. 2022) over the training noise schedule (same betas as SD)."""
    from diffusers import DPMSolverMultistepScheduler

    from pipelines.training.ldm import SCHEDULER_CFG

    cfg = {k: v for k, v in SCHEDULER_CFG.items() if k != "clip_sample"}
    return DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)


def build_pipeline(vae_dir: Path, ldm_run_dir: Path, use_ema: bool = True) -> Any:
    """A fp32 ``StableDiffusionPipeline`` from the trained parts (no safety checker)."""
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines.training.ldm import export_unet

    if not (Path(ldm_run_dir) / "checkpoint.pt").is_file():  # only the exported (EMA) UNet of a finished run
        unet = UNet2DConditionModel.from_pretrained(Path(ldm_run_dir) / "unet")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            unet = UNet2DConditionModel.from_pretrained(export_unet(ldm_run_dir, Path(tmp) / "unet", use_ema=use_ema))
    text = Path(ldm_run_dir) / "text"
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True),
        text_encoder=CLIPTextModel.from_pretrained(text / "text_encoder", dtype=torch.float32, use_safetensors=True),
        tokenizer=CLIPTokenizer.from_pretrained(text / "tokenizer"), unet=unet, scheduler=make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def check_text_encoder(ldm_run_dir: Path, clip_dir: Path = CLIP_DIR) -> str:
    """Whether the UNet's text encoder is the shipped shapes-clip's (a message; never raises)."""
    from pipelines import mini_clip
    from pipelines.training.latents import file_hash

    if not clip_dir.is_dir():
        return f"warning: {clip_dir} does not exist; cannot check the text encoder"
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mini_clip.export_sd_text_parts(clip_dir, Path(tmp))
        same = file_hash(Path(tmp) / "text_encoder") == file_hash(Path(ldm_run_dir) / "text" / "text_encoder")
    return "text encoder matches the shipped shapes-clip" if same else (
        f"WARNING: the UNet was trained on another text encoder than {clip_dir}")


def assemble(vae_dir: Path = Path("runs/vae/out"), ldm_run_dir: Path = Path("runs/ldm"), out: Path = MODEL_DIR,
             dtype: torch.dtype = torch.float16, default_guidance: float | None = None,
             default_steps: int = 25) -> Path:
    """Write the SD folder to ``out`` (atomically replacing an old one); returns ``out``."""
    pipe = build_pipeline(vae_dir, ldm_run_dir)
    pipe.unet.to(dtype)
    pipe.text_encoder.to(dtype)
    out = Path(out)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    compact_tokenizer(tmp / "tokenizer")  # vocab.json + merges.txt: loads in a quarter of the time
    # transformers loads with dtype "auto" (the config's dtype): ask for fp32 so a plain
    # from_pretrained gives one dtype for all parts (diffusers models load fp32 by default).
    te_cfg = tmp / "text_encoder" / "config.json"
    te_cfg.write_text(json.dumps({**json.loads(te_cfg.read_text()), "dtype": "float32"}, indent=2))
    (tmp / "training.json").write_text(json.dumps(_training_info(ldm_run_dir), indent=2))
    if default_guidance is not None:
        from pipelines.default_settings import write_default_settings

        write_default_settings(tmp, default_guidance, default_steps, "dpmpp_2m",
                               note="chosen from the judge's guidance curve: python -m pipelines.evaluate shapes-ldm")
    return common.swap_in(tmp, out)


def _training_info(ldm_run_dir: Path) -> dict[str, Any]:
    if not (Path(ldm_run_dir) / "checkpoint.pt").is_file():
        info = json.loads((Path(ldm_run_dir) / "unet" / "training.json").read_text())
        return {"ldm_step": int(info.pop("step")), **info}
    state = torch.load(Path(ldm_run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    extra = {k: v for k, v in state["extra"].items() if k != "unet_config"}
    return {"ldm_step": int(state["step"]), **extra}


def folder_mb(folder: Path) -> float:
    """Size of every file under ``folder`` in MB."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m pipelines.builtin_ldm", description=__doc__.splitlines()[0])
    p.add_argument("--vae-dir", type=Path, default=Path("runs/vae/out"))
    p.add_argument("--run-dir", type=Path, default=Path("runs/ldm"))
    p.add_argument("--out", type=Path, default=MODEL_DIR)
    p.add_argument("--default-guidance", type=float, default=None,
                   help="write default_settings.json with this guidance scale (the Generate tab's default)")
    p.add_argument("--default-steps", type=int, default=25, help="with --default-guidance: the default step count")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = assemble(args.vae_dir, args.run_dir, args.out, default_guidance=args.default_guidance,
                   default_steps=args.default_steps)
    print(check_text_encoder(args.run_dir))
    info = _training_info(args.run_dir)
    init = info.get("init_from")
    started = f" (continued from the {init['step']}-step weights in init_from)" if isinstance(init, dict) else ""
    print(f"wrote {out} ({folder_mb(out):.1f} MB), LDM step {info['ldm_step']}{started}")
    return out


if __name__ == "__main__":
    main()

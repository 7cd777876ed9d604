"""Sample grids of an LDM run's EMA weights (``--sample-every``): :class:`SampleGrids` draws them with the run's
own ``StableDiffusionPipeline`` and writes ``<run-dir>/samples/step_000200.png`` + a ``samples.jsonl`` record;
:func:`sample_grid` lays images and prompts out as one picture. Used by :mod:`pipelines.training.ldm`."""
from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.training import common
from pipelines.training.monitor import SampleLog

SAMPLE_PROMPTS: tuple[str, ...] = (
    "a red circle", "a blue square", "a green triangle", "a yellow star",
    "a large purple diamond on a black background", "a small orange circle in the top left",
    "a pink cross on a gray background", "a cyan square at the bottom")


def add_sample_arguments(parser: argparse.ArgumentParser, sampler: str = "DPM-Solver++", steps: int = 10,
                         guidance: float = 2.0, prompts: Sequence[str] = SAMPLE_PROMPTS,
                         what: str = "prompts") -> None:
    """``--sample-every --sample-prompts --sample-steps --sample-guidance --sample-seed`` (the sample grids)."""
    parser.add_argument("--sample-every", type=int, default=0,
                        help="steps between sample grids of the EMA weights (0: off); also one at the end")
    parser.add_argument("--sample-prompts", type=str, default="|".join(prompts),
                        help=f"'|'-separated {what} of the sample grids")
    parser.add_argument("--sample-steps", type=int, default=steps, help=f"{sampler} steps of the sample grids")
    parser.add_argument("--sample-guidance", type=float, default=guidance, help="guidance scale of the sample grids")
    parser.add_argument("--sample-seed", type=int, default=0, help="grid entry i uses seed sample-seed + i")


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=width) or [""]


def sample_grid(images: Sequence[Any], prompts: Sequence[str], title: str = "", cols: int = 4,
                tile: int = 128) -> Any:
    """One PIL image: ``images`` (upscaled to ``tile`` px, nearest) in rows of ``cols``, each prompt below its
    image, ``title`` on top."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    line_h, pad = 12, 4
    chars = max(8, tile // 6)
    label_lines = max(len(_wrap(p, chars)) for p in prompts) if prompts else 1
    cell_h = tile + pad + label_lines * line_h + pad
    head = line_h + 2 * pad if title else 0
    grid = Image.new("RGB", (cols * tile + (cols + 1) * pad, head + rows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        r, c = divmod(i, cols)
        x, y = pad + c * (tile + pad), head + pad + r * cell_h
        grid.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        for j, line in enumerate(_wrap(prompt, chars)):
            draw.text((x, y + tile + pad + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid


class SampleGrids:
    """Sample grids of a run's EMA weights: ``<run-dir>/samples/step_000200.png`` + a ``samples.jsonl`` record.

    Each grid is the run's own ``StableDiffusionPipeline`` (its VAE ``--vae-dir``, its text encoder, a copy of
    the UNet holding the EMA weights, DPM-Solver++ 2M) at 64x64, prompt ``i`` with seed ``sample-seed + i`` (a
    CPU generator, as the studio draws it), ``--sample-steps`` steps at guidance ``--sample-guidance``; the
    global RNG states are restored afterwards, so sampling never changes training. A resumed run drops the
    records after the step it resumed from; a fresh one starts the file anew.
    """

    def __init__(self, run_dir: Path, vae_dir: Path, text_dir: Path, unet_cfg: dict[str, Any],
                 args: argparse.Namespace, device: torch.device, resume_step: int | None = None) -> None:
        self.run_dir, self.vae_dir, self.text_dir, self.cfg = Path(run_dir), Path(vae_dir), Path(text_dir), unet_cfg
        self.prompts = [p.strip() for p in str(args.sample_prompts).split("|") if p.strip()] or list(SAMPLE_PROMPTS)
        self.steps, self.guidance = int(args.sample_steps), float(args.sample_guidance)
        self.seed = int(args.sample_seed)
        self.device = device
        self.log = SampleLog(self.run_dir, resume_step=resume_step)
        self.pipe: Any = None

    def _pipeline(self) -> Any:
        if self.pipe is None:
            from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer

            from pipelines.builtin_ldm import make_scheduler

            self.pipe = StableDiffusionPipeline(
                vae=AutoencoderKL.from_pretrained(self.vae_dir, use_safetensors=True),
                text_encoder=CLIPTextModel.from_pretrained(self.text_dir / "text_encoder", dtype=torch.float32,
                                                           use_safetensors=True),
                tokenizer=CLIPTokenizer.from_pretrained(self.text_dir / "tokenizer"),
                unet=UNet2DConditionModel(**self.cfg), scheduler=make_scheduler(), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False).to(self.device)
            self.pipe.set_progress_bar_config(disable=True)
        return self.pipe

    @torch.no_grad()
    def __call__(self, step: int, model: torch.nn.Module, ema: common.EMA) -> Path:
        pipe = self._pipeline()
        pipe.unet.load_state_dict(model.state_dict())  # non-float buffers, then the averaged weights
        ema.copy_to(pipe.unet)
        pipe.unet.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            images = pipe(prompt=list(self.prompts), num_inference_steps=self.steps, guidance_scale=self.guidance,
                          height=64, width=64,
                          generator=[torch.Generator().manual_seed(self.seed + i) for i in range(len(self.prompts))]
                          ).images
        title = f"step {step}  EMA  {self.steps} DPM-Solver++ steps  guidance {self.guidance:g}"
        record = {"prompts": list(self.prompts), "seed": self.seed,
                  "seeds": [self.seed + i for i in range(len(self.prompts))], "num_inference_steps": self.steps,
                  "guidance_scale": self.guidance, "height": 64, "width": 64, "weights": "ema"}
        return self.log.write(step, sample_grid(images, self.prompts, title), record)

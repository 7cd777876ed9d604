"""The Motion latent pool of ``python -m pipelines.train motion``: Motion-world clips encoded by the VAE, their
recipe codes, the captions a pool row can get, the caption table encoded once by the text tower, and the text
tower itself when the run trains it (``--text-lr-scale``)."""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.training import common, latents as lat

_SIZE_CODES = ("small", "large", "growing", "shrinking")


def recipe_codes(recipe: Any) -> list[int]:
    from pipelines.worlds import motion, shapes

    size = recipe.size if recipe.growth == "none" else recipe.growth
    return [list(shapes.COLOURS).index(recipe.colour), shapes.SHAPES.index(recipe.shape),
            list(shapes.BACKGROUNDS).index(recipe.background), motion.DIRECTIONS.index(recipe.direction),
            _SIZE_CODES.index(size)]


def caption_from_codes(codes: Any, rng: np.random.Generator | None, drop_prob: float) -> str:
    """The Motion caption of a pool row (size word and background dropped at random)."""
    from pipelines.worlds import motion, shapes

    c, s, b, d, z = (int(v) for v in codes)
    size = _SIZE_CODES[z]
    r0, r1 = {"small": (9.0, 9.0), "large": (17.0, 17.0), "growing": (9.0, 17.0), "shrinking": (17.0, 9.0)}[size]
    recipe = motion.MotionRecipe(list(shapes.COLOURS)[c], shapes.SHAPES[s], list(shapes.BACKGROUNDS)[b],
                                 motion.DIRECTIONS[d], (32.0, 32.0), 0.0, r0, r1)
    return motion.caption(recipe, rng, drop_prob)


def captions_for(codes: Any) -> list[str]:
    """Every caption pool rows with these codes can get (size word / background kept or dropped), plus ""."""
    out = {""}
    for row in {tuple(int(v) for v in c) for c in codes}:
        for keep in itertools.product((True, False), repeat=2):
            flags = iter(keep)

            class _Keep:  # replays the keep flags through motion.caption's own logic
                @staticmethod
                def random() -> float:
                    return 1.0 if next(flags) else 0.0

            out.add(caption_from_codes(row, _Keep(), 0.5))  # type: ignore[arg-type]
    return sorted(out)


def _render_chunk(args: tuple[list[Any], int]) -> np.ndarray:
    from pipelines.worlds import motion

    recipes, frames = args
    return np.stack([motion.render_clip(r, frames) for r in recipes])


@torch.no_grad()
def build_pool(vae_dir: Path, out: Path, n: int, frames: int, seed: int, growth_prob: float,
               device: torch.device | str = "cpu", workers: int = 0, chunk: int = 32) -> Path:
    """Encode ``n`` Motion clips with the VAE (posterior mean, scaled, fp16) + their recipe codes."""
    import contextlib
    import multiprocessing

    from diffusers import AutoencoderKL

    from pipelines.training.vae import to_tensor
    from pipelines.worlds import motion

    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval().to(device)
    factor = float(vae.config.scaling_factor)
    rng = np.random.default_rng(seed)
    recipes = [motion.sample_recipe(rng, growth_prob=growth_prob) for _ in range(n)]
    jobs = [(recipes[i:i + chunk], frames) for i in range(0, n, chunk)]
    out_lat = []
    bar = common.progress(n, desc="clip latents")
    with contextlib.ExitStack() as stack:
        renders = (stack.enter_context(multiprocessing.get_context("fork").Pool(workers)).imap(_render_chunk, jobs)
                   if workers > 0 else map(_render_chunk, jobs))
        for clips in renders:
            b = len(clips)
            x = to_tensor(clips.reshape(b * frames, *clips.shape[2:])).to(device)
            z = (vae.encode(x).latent_dist.mean * factor).half().cpu()
            out_lat.append(z.reshape(b, frames, *z.shape[1:]))
            bar.update(b)
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"latents": torch.cat(out_lat), "codes": torch.tensor([recipe_codes(r) for r in recipes],
                                                                     dtype=torch.int16),
                "scaling_factor": factor, "seed": seed, "frames": frames, "vae_hash": lat.file_hash(vae_dir)}, tmp)
    tmp.replace(out)
    return out


class CaptionTable(lat.CaptionTable):
    """The Motion grammar's captions, encoded once by the frozen text tower."""

    @classmethod
    def build_motion(cls, text_dir: Path, tokenizer_dir: Path, cache: Path, codes: Any) -> "CaptionTable":
        """The captions of pool rows with ``codes`` (reloaded from ``cache`` when it has them all)."""
        key = lat.file_hash(text_dir)
        captions = captions_for(codes)
        if cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
            if state.get("text_hash") == key and set(captions) <= set(state["captions"]):
                return cls(list(state["captions"]), state["embeddings"])
        table = cls(captions, lat.encode_prompts(text_dir, tokenizer_dir, captions))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"text_hash": key, "captions": captions, "embeddings": table.embeddings}, cache)
        return table


# ---------------------------------------------------------------- the text tower (--text-lr-scale)

TEXT_TOWER = "text_tower"  # the trained text encoder rides on the model (one state, optimizer, EMA, checkpoint)


def attach_text_tower(model: torch.nn.Module, text_dir: Path) -> torch.nn.Module:
    """Hang ``text_dir``'s ``CLIPTextModel`` on ``model`` as ``model.text_tower`` (``--text-lr-scale`` > 0)."""
    from transformers import CLIPTextModel

    model.add_module(TEXT_TOWER, CLIPTextModel.from_pretrained(text_dir, dtype=torch.float32, use_safetensors=True))
    return getattr(model, TEXT_TOWER)


def caption_ids(table: CaptionTable, tokenizer_dir: Path) -> torch.Tensor:
    """Token ids (N, L) of the caption table's rows, padded as the pipeline pads a prompt."""
    from transformers import CLIPTokenizer

    return lat.prompt_ids(CLIPTokenizer.from_pretrained(tokenizer_dir), table.captions)


def check_text_source(args: argparse.Namespace, base: Path, run_dir: Path, train_text: bool) -> None:
    """Refuse a run whose text tower would silently change: resuming a run with the tower trained (or frozen)
    the other way, or a frozen-tower run from a pack whose tower was trained (its captions were encoded by
    the base's tower, and the pack would ship the base's)."""
    ckpt = run_dir / "checkpoint.pt"
    if args.resume and ckpt.is_file():
        trained_before = bool(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["extra"]
                              .get("text_trained"))
        if trained_before != train_text:
            raise SystemExit("this run was trained with the text tower " + ("trained: resume with --text-lr-scale > 0"
                             if trained_before else "frozen: resume without --text-lr-scale"))
    elif (args.init is not None and not train_text
          and lat.file_hash(Path(args.init) / "text_encoder") != lat.file_hash(base / "text_encoder")):
        raise SystemExit(f"--init {args.init}: its text tower differs from {base}'s (it was trained); "
                         "continue with --text-lr-scale > 0")

"""Distil a tiny autoencoder for live previews: ``python -m pipelines.train taesd``.

TAESD (Bohan 2023, "Tiny AutoEncoder for Stable Diffusion"; diffusers' ``AutoencoderTiny``) is a
small convolutional encoder/decoder trained to reproduce a big VAE: its decoder turns the
diffusion model's latents into pictures in a fraction of the VAE's time, which is what a live
x0 preview at every step needs (AUTOMATIC1111 and ComfyUI preview with TAESD). Here the
teacher is a builtin ``AutoencoderKL`` (default: shapes-ldm's): the student's decoder learns
``D_teacher(z / scaling_factor)`` for model-space latents ``z`` of Shapes renders and of those
latents with a little noise added (x0 estimates early in a run are not clean latents), and its
encoder learns the teacher's ``E(x).mode() * scaling_factor``. Saved in diffusers' AutoencoderTiny
format (``config.json`` + safetensors), the layout :func:`pipelines.previews.find_taesd` finds
in ``<model>/taesd``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training import common

TAESD_CFG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    # 16 channels: a 16x16x4 -> 64x64 preview decode costs about a quarter of the teacher's (batch 1, CPU)
    "encoder_block_out_channels": [16, 16, 16], "num_encoder_blocks": [1, 2, 2],  # two stride-2 stages: 4x
    # two 2x upsamples: 4x. One block at 16 and at 32 px: a live preview at every step costs 1.2-1.5 ms of a
    # 25 ms step inside the sampling loop (3 + 2 blocks: 2.1 ms) for 31.2 dB against the VAE (3 + 2: 32.1 dB).
    "decoder_block_out_channels": [16, 16, 16], "num_decoder_blocks": [1, 1, 0],
    "latent_magnitude": 3, "latent_shift": 0.5, "scaling_factor": 1.0,
}
EVAL_SEED = 424_242


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=3000, batch_size=64, lr=2e-3, checkpoint_every=500)
    parser.add_argument("--teacher", type=Path, default=Path("assets/models/shapes-ldm/vae"),
                        help="the AutoencoderKL folder to distil")
    parser.add_argument("--pool", type=int, default=8192, help="Shapes renders encoded once for training")
    parser.add_argument("--noise-max", type=float, default=0.5,
                        help="a noised copy of each latent gets N(0, s^2) noise, s uniform in [0, this]")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--decoder-blocks", default=None,
                        help="blocks of the decoder's three stages, e.g. 1,0,0 (default: "
                             f"{','.join(map(str, TAESD_CFG['num_decoder_blocks']))}); fewer decode faster")


def config(args: argparse.Namespace) -> dict[str, Any]:
    """The AutoencoderTiny config for ``args`` (``TAESD_CFG`` with ``--decoder-blocks`` applied)."""
    cfg = dict(TAESD_CFG)
    if getattr(args, "decoder_blocks", None):
        try:
            blocks = [int(b) for b in str(args.decoder_blocks).split(",")]
        except ValueError:
            blocks = []
        if len(blocks) != 3 or min(blocks) < 0:
            raise SystemExit(f"--decoder-blocks wants three counts >= 0 like 1,0,0 (got {args.decoder_blocks!r})")
        cfg["num_decoder_blocks"] = blocks
    return cfg


def _renders(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 64, 64) Shapes renders in [-1, 1]."""
    from pipelines.worlds import shapes

    rng = np.random.default_rng(seed)
    recipes = [shapes.sample_recipe(rng, holdout="include") for _ in range(n)]
    arr = shapes.render_batch(recipes)  # (n, 64, 64, 3) uint8
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def _encode(teacher: Any, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    sf = teacher.config.scaling_factor
    return torch.cat([teacher.encode(images[i:i + chunk]).latent_dist.mode() * sf
                      for i in range(0, len(images), chunk)])  # (n, 4, 16, 16), model space


@torch.no_grad()
def _targets(teacher: Any, z: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The teacher's decodes of model-space latents as uint8 (n, 3, 64, 64) (a pool of them stays small)."""
    sf = teacher.config.scaling_factor
    out = [((teacher.decode(z[i:i + chunk] / sf).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
           for i in range(0, len(z), chunk)]
    return torch.cat(out)


def build_pool(teacher: Any, n: int, seed: int, noise_max: float) -> dict[str, torch.Tensor]:
    """Renders, their latents, a noised copy of each latent (x0 estimates early in a run are not clean
    latents; noise s ~ U[0, noise_max]) and the teacher's decodes of both."""
    x = _renders(n, seed)  # (n, 3, 64, 64)
    z = _encode(teacher, x)  # (n, 4, 16, 16)
    g = torch.Generator().manual_seed(seed)
    zn = z + torch.rand(n, 1, 1, 1, generator=g) * noise_max * torch.randn(z.shape, generator=g)
    return {"x": x, "z": z, "zn": zn, "t": _targets(teacher, z), "tn": _targets(teacher, zn)}


def _batch(pool: dict[str, torch.Tensor], rng: np.random.Generator, size: int):
    """Images with their latents (for the encoder) and, for the decoder, half clean and half noised latents
    with the teacher's decodes in [-1, 1]."""
    idx = torch.from_numpy(rng.integers(0, len(pool["x"]), size))
    half = size // 2
    z = torch.cat([pool["z"][idx[:half]], pool["zn"][idx[half:]]])
    target = torch.cat([pool["t"][idx[:half]], pool["tn"][idx[half:]]]).float() / 127.5 - 1
    return pool["x"][idx], pool["z"][idx], z, target


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean())
    return 10 * float(np.log10(1 / max(mse, 1e-12)))


@torch.no_grad()
def evaluate(student: Any, teacher: Any, n: int = 256) -> dict[str, float]:
    """Decoder PSNR against the teacher's decode of held-out latents, and the speed ratio of the two decoders."""
    x = _renders(n, EVAL_SEED)
    z = _encode(teacher, x)
    sf = teacher.config.scaling_factor
    want = teacher.decode(z / sf).sample
    got = student.decode(z).sample
    times = {"teacher": [], "student": []}
    for _ in range(20):  # batch 1, as a live preview decodes
        for name, fn in (("teacher", lambda: teacher.decode(z[:1] / sf)), ("student", lambda: student.decode(z[:1]))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"decoder_psnr_db": psnr(got, want), "encoder_mse": float((student.encode(x).latents - z).pow(2).mean()),
            "teacher_decode_ms": med["teacher"] * 1e3, "student_decode_ms": med["student"] * 1e3}


def main(args: argparse.Namespace) -> Path:
    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    teacher = AutoencoderKL.from_pretrained(args.teacher).eval().requires_grad_(False)
    cfg = config(args)
    student = AutoencoderTiny(**cfg)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    ckpt = common.Checkpointer(args.run_dir, args.checkpoint_every)
    state = ckpt.load(student, opt) if args.resume else None
    step = state["step"] if state else 0
    from pipelines.training.latents import file_hash

    key = f"{file_hash(Path(args.teacher))[:12]}-{args.pool}-{args.seed}-{args.noise_max:g}"
    pool_file = Path(args.run_dir) / f"pool-{key}.pt"  # renders, latents and teacher decodes, reused on resume
    if pool_file.is_file():
        pool = torch.load(pool_file, weights_only=True)
    else:
        print(f"encoding and decoding {args.pool} renders with the teacher ...", flush=True)
        pool = build_pool(teacher, args.pool, args.seed, args.noise_max)
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)
        torch.save(pool, pool_file)
    log = common.LossLog(Path(args.run_dir) / "loss.jsonl", resume_step=step if state else None)
    stop = min(args.steps, args.stop_at or args.steps)
    bar = common.progress(stop, step, "taesd")
    while step < stop:
        x, x_latents, z, target = _batch(pool, common.step_rng(args.seed, step), args.batch_size)
        common.set_lr(opt, common.cosine_lr(step, args.lr, args.steps, args.warmup))
        dec = _decoder_loss(student, z, target)
        enc = F.mse_loss(student.encode(x).latents, x_latents)
        loss = dec + enc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        common.clip_grad(student.parameters(), 1.0)
        opt.step()
        step += 1
        log.log(step, loss=float(loss.detach()), decoder=float(dec.detach()), encoder=float(enc.detach()))
        bar.update(1)
        if ckpt.due(step) or step == stop:
            ckpt.save(step, student, opt, extra={"config": cfg})
    bar.close()
    out = Path(args.out or Path(args.run_dir) / "taesd")
    student.eval()
    metrics = evaluate(student, teacher)
    tmp = out.with_name(out.name + ".tmp")
    student.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_info.json").write_text(json.dumps({"steps": step, "teacher": str(args.teacher), **metrics},
                                                       indent=2))
    common.swap_in(tmp, out)
    print(json.dumps(metrics, indent=2))
    return out


def _decoder_loss(student: Any, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    got = student.decode(z).sample  # (B, 3, 64, 64)
    return F.l1_loss(got, target) + F.mse_loss(got, target)

"""Train the shapes-vqgan tokenizer: ``python -m pipelines.train vqgan``.

VQ-VAE / VQGAN (van den Oord et al. 2017, "Neural Discrete Representation Learning"; Esser et al.
2021, "Taming Transformers for High-Resolution Image Synthesis"): a diffusers ``VQModel`` encodes a
64x64 Shapes render to a 16x16 grid, snaps each cell to the nearest of ``--codebook`` learned vectors
(its token id) and decodes the grid back to pixels. Loss: L1 + L2 reconstruction, the quantizer's
codebook + commitment terms (diffusers' ``VectorQuantizer``, straight-through gradients), and from
``--disc-start`` on an adversarial term from a small PatchGAN discriminator (Isola et al. 2017) with
the hinge loss, which sharpens edges where L1/L2 alone blur. No perceptual (LPIPS) loss: it would need
downloaded VGG weights. A token prior (a small autoregressive transformer over the 256 ids) is trained
on the exported tokenizer's grids in a second step.

Batches are rendered from ``(seed, step)``, so a resumed run sees exactly the same data.
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
from pipelines.training.vae import EVAL_SEED, render_renders, to_tensor


def vq_config(widths: tuple[int, ...] = (32, 64, 64), codebook: int = 256, dim: int = 4) -> dict[str, Any]:
    return {"in_channels": 3, "out_channels": 3, "sample_size": 64, "latent_channels": dim, "vq_embed_dim": dim,
            "num_vq_embeddings": codebook, "block_out_channels": list(widths), "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths), "norm_num_groups": 8,
            "mid_block_add_attention": False}


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN: a logit per overlapping patch (16x16 of them for a 64x64 image)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 4, 2, 1), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(width, 2 * width, 4, 2, 1), torch.nn.GroupNorm(8, 2 * width), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * width, 2 * width, 3, 1, 1), torch.nn.GroupNorm(8, 2 * width), torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=8000, batch_size=32, lr=1e-3, checkpoint_every=200)
    parser.add_argument("--widths", type=str, default="32,64,64")
    parser.add_argument("--codebook", type=int, default=256, help="codebook size (token vocabulary)")
    parser.add_argument("--dim", type=int, default=4, help="codebook vector size")
    parser.add_argument("--disc-start", type=int, default=2000, help="step at which the adversarial loss starts")
    parser.add_argument("--disc-weight", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--restart-every", type=int, default=100,
                        help="steps between dead-code restarts (0: off)")


def restart_dead_codes(vq: Any, usage: torch.Tensor, latents: torch.Tensor, generator: torch.Generator) -> int:
    """Codebook restart (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021): every code unused since the
    last restart is moved onto a random encoder output of the current batch, so the codebook stays in use
    instead of collapsing onto a few dozen vectors. Returns how many codes moved."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    vectors = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    picks = torch.randint(len(vectors), (len(dead),), generator=generator)
    with torch.no_grad():
        vq.quantize.embedding.weight[dead] = vectors[picks] + 1e-3 * torch.randn(len(dead), vectors.shape[1],
                                                                                 generator=generator)
    return len(dead)


def tokenize(vq: Any, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Token grids (N, h, w) int64 of uint8 renders."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            h = vq.encode(to_tensor(images[i:i + batch_size]).to(vq.device)).latents
            _, _, (_, _, ids) = vq.quantize(h)
            out.append(ids.reshape(len(h), h.shape[-2], h.shape[-1]))
    return torch.cat(out)


@torch.no_grad()
def evaluate(vq: Any, n: int = 512) -> dict[str, float]:
    """PSNR (dB, uint8 scale) of encode -> quantize -> decode on held-out renders, and codebook use."""
    vq.eval()
    images = render_renders(EVAL_SEED, n)
    scores, used = [], set()
    for i in range(0, n, 128):
        x = to_tensor(images[i:i + 128])
        recon = vq(x).sample.clamp(-1, 1)
        mse = ((((recon + 1) * 127.5).round() - (x + 1) * 127.5) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        scores += (10 * torch.log10(255.0 ** 2 / mse)).tolist()
    used.update(tokenize(vq, images).flatten().tolist())
    return {"psnr": float(np.mean(scores)), "codes_used": float(len(used))}


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the tokenizer to ``--out`` (default ``<run-dir>/vqgan``) with its metrics."""
    from diffusers import VQModel

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = vq_config(tuple(int(w) for w in args.widths.split(",")), args.codebook, args.dim)
    vq = VQModel(**cfg).train()
    disc = PatchDiscriminator().train()
    opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    ckpt_d = common.Checkpointer(run_dir, every=args.checkpoint_every, filename="discriminator.pt")
    start = 0
    if args.resume:
        state = ckpt.load(vq, opt)
        ckpt_d.load(disc, opt_d)
        start = int(state["step"]) if state else 0
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"vq": cfg, "args": {k: str(v) for k, v in vars(args).items()}},
                                                    indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    bar = common.progress(args.steps, initial=start, desc="vqgan")
    usage = torch.zeros(args.codebook, dtype=torch.long)  # code counts since the last restart
    t0 = time.time()
    for step in range(start, stop):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
        common.set_lr(opt, lr)
        common.set_lr(opt_d, lr)
        x = to_tensor(render_renders(int(common.step_rng(args.seed, step).integers(2**62)), args.batch_size))
        h = vq.encode(x).latents
        quant, commit, (_, _, ids) = vq.quantize(h)  # what vq(x) does, keeping the ids
        recon = vq.decode(quant, force_not_quantize=True).sample
        usage += torch.bincount(ids.flatten(), minlength=len(usage))
        l1, l2 = F.l1_loss(recon, x), F.mse_loss(recon, x)
        loss = l1 + l2 + commit
        adversarial = step >= args.disc_start
        parts = {"l1": l1.item(), "l2": l2.item(), "commit": commit.item()}
        if adversarial:
            g_loss = -disc(recon).mean()  # hinge generator loss
            loss = loss + args.disc_weight * g_loss
            parts["g"] = g_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        common.clip_grad(vq.parameters(), 1.0)
        opt.step()
        if adversarial:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            parts["d"] = d_loss.item()
        if args.restart_every and (step + 1) % args.restart_every == 0 and step + 1 < args.disc_start:
            parts["restarted"] = restart_dead_codes(vq, usage, h, torch.Generator().manual_seed(args.seed + step))
            usage.zero_()
        log.log(step + 1, loss=loss.item(), lr=lr, **parts)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if ckpt.due(step + 1) or step + 1 == stop:
            ckpt.save(step + 1, vq, opt)
            ckpt_d.save(step + 1, disc, opt_d)
    bar.close()
    result: dict[str, float] = {"steps_done": float(stop), "train_seconds": time.time() - t0}
    if stop < args.steps:
        print(f"stopped at step {stop}/{args.steps}; resume with --resume")
        return result
    result |= evaluate(vq)
    out_dir = Path(args.out) if args.out is not None else run_dir / "vqgan"
    vq.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result

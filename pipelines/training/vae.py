"""Train the shapes-ldm autoencoder: ``python -m pipelines.train vae``.

A small diffusers ``AutoencoderKL`` (Kingma & Welling 2014, "Auto-Encoding Variational Bayes";
used as the first stage of latent diffusion, Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models") maps a 64x64x3 Shapes render to a 16x16x4 latent (two 2x
downsamples). The loss is L1 + L2 reconstruction plus a tiny KL term (weight ~1e-6, the
"KL-reg" variant of LDM), so the latent space stays close to deterministic but smooth.

After training, ``scaling_factor`` in the saved config is set to 1 / std of the latents of a few
thousand renders, so that the diffusion model sees unit-variance latents (as SD's 0.18215).
Batches are rendered from ``(seed, step)``, so a resumed run sees exactly the same data.

For a UI (the studio's Train tab) the run folder holds ``status.json`` and honours ``stop.request``
(:class:`pipelines.training.monitor.RunMonitor`); ``--sample-every N`` adds a grid of reconstructions of 8
fixed held-out renders every N steps and at the last step (``samples/step_000200.png`` + ``samples.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training import common
from pipelines.training.monitor import RunMonitor

VAE_CFG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
TINY_CFG: dict[str, Any] = {**VAE_CFG, "block_out_channels": [8, 16, 32], "norm_num_groups": 8}
EVAL_SEED = 987_654  # held-out renders for PSNR: a seed no trainer uses
SAMPLE_N = 8  # renders in a --sample-every grid: the first 8 of the final PSNR set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """VAE defaults (2400 steps of batch 16 at lr 1.5e-3: 33 dB) and options."""
    parser.set_defaults(steps=2400, batch_size=16, lr=1.5e-3, checkpoint_every=200)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tiny", action="store_true", help="tiny config (tests)")
    parser.add_argument("--widths", type=str, default=None, help="block_out_channels, e.g. 16,32,64")
    parser.add_argument("--sample-posterior", action="store_true", help="decode z ~ q(z|x), not its mean")
    parser.add_argument("--scale-samples", type=int, default=2048, help="renders used to measure latent std")
    parser.add_argument("--finetune-decoder", type=Path, default=None,
                        help="fine-tune only the decoder of this trained VAE (encoder, latent space and "
                             "scaling factor stay exactly as they are, so an LDM trained on it stays valid)")
    parser.add_argument("--grad-weight", type=float, default=0.0,
                        help="weight of an L1 loss on image gradients (sharpens edges, thin arms, star points)")
    parser.add_argument("--sample-every", type=int, default=0,
                        help="steps between grids of reconstructions of 8 held-out renders (0: off); "
                             "also one at the end")


def create_vae(cfg: dict[str, Any] | None = None, seed: int | None = None) -> Any:
    """A randomly initialised ``AutoencoderKL``."""
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderKL(**(cfg or VAE_CFG))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def sample_recipes(seed: int, n: int, holdout: str = "exclude") -> list[Any]:
    """``n`` Shapes recipes sampled with ``seed`` (those :func:`render_renders` draws)."""
    from pipelines.worlds import shapes

    rng = np.random.default_rng(seed)
    return [shapes.sample_recipe(rng, holdout=holdout) for _ in range(n)]


def render_renders(seed: int, n: int, holdout: str = "exclude") -> np.ndarray:
    """``n`` Shapes renders (uint8) from recipes sampled with ``seed``."""
    from pipelines.worlds import shapes

    return shapes.render_batch(sample_recipes(seed, n, holdout))


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of a (N, C, H, W) batch."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_loss(vae: Any, x: torch.Tensor, kl_weight: float, sample: bool = False,
             grad_weight: float = 0.0, decoder_only: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + L2 reconstruction, plus ``kl_weight`` * KL(q(z|x) || N(0, I)).

    By default the decoder reconstructs from the posterior *mean* (what the LDM is trained on and
    what ``psnr`` measures). Decoding reparameterised samples (``sample=True``) starts with unit
    posterior noise that a 1e-6 KL barely pushes down; measured here: a 20 dB plateau by step 390.
    """
    with torch.set_grad_enabled(not decoder_only and torch.is_grad_enabled()):
        posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample() if sample else posterior.mean).sample
    l1, l2 = F.l1_loss(recon, x), F.mse_loss(recon, x)
    loss = l1 + l2
    parts = {"l1": l1.item(), "l2": l2.item()}
    if not decoder_only:  # the KL term only shapes the encoder
        kl = posterior.kl().mean() / x[0].numel()  # per-pixel, as the reconstruction terms
        loss = loss + kl_weight * kl * x[0].numel()
        parts["kl"] = kl.item()
    if grad_weight > 0:
        grad = sum(F.l1_loss(a, b) for a, b in zip(image_gradients(recon), image_gradients(x)))
        loss = loss + grad_weight * grad
        parts["grad"] = float(grad.detach())
    return loss, parts


@torch.no_grad()
def encode_latents(vae: Any, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Unscaled posterior means (N, 4, 16, 16) of uint8 renders."""
    out = [vae.encode(to_tensor(images[i:i + batch_size])).latent_dist.mean for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode(mean(encode(x)))`` of a [-1, 1] batch on the uint8 scale (rounded floats, N x 3 x H x W) and
    each image's PSNR (dB)."""
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    rec = ((recon + 1) * 127.5).round()
    mse = ((rec - (x + 1) * 127.5) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return rec, 10 * torch.log10(255.0 ** 2 / mse)


@torch.no_grad()
def psnr(vae: Any, images: np.ndarray, batch_size: int = 128) -> float:
    """Mean PSNR (dB, uint8 scale) of ``decode(mean(encode(x)))`` over ``images``."""
    vae.eval()
    scores = []
    for i in range(0, len(images), batch_size):
        scores += reconstruct(vae, to_tensor(images[i:i + batch_size]))[1].tolist()
    return float(np.mean(scores))


class ReconstructionGrids:
    """``--sample-every``: the originals of :data:`SAMPLE_N` fixed held-out renders (the first ones of the final
    PSNR set, seed :data:`EVAL_SEED`) in one row, their reconstructions by the live weights below, the mean PSNR
    of those renders in the title; written through ``monitor.samples``. The VAE is run in eval mode without
    gradients and every module's train/eval mode is restored afterwards; the torch RNG is forked, so a grid
    never changes training."""

    def __init__(self, seed: int = EVAL_SEED, n: int = SAMPLE_N) -> None:
        from pipelines.worlds import shapes

        recipes = sample_recipes(seed, n)
        self.seed, self.captions = seed, [shapes.caption(r) for r in recipes]
        self.images = shapes.render_batch(recipes)

    def measure(self, vae: Any) -> tuple[np.ndarray, list[float]]:
        """(uint8 reconstructions (N, H, W, 3), per-image PSNR) of the fixed renders."""
        modes = [(m, m.training) for m in vae.modules()]
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                vae.eval()
                rec, scores = reconstruct(vae, to_tensor(self.images))
        finally:
            for module, training in modes:
                module.training = training
        return rec.permute(0, 2, 3, 1).to(torch.uint8).numpy(), [float(s) for s in scores]

    def __call__(self, monitor: RunMonitor, step: int, vae: Any) -> Path:
        from PIL import Image

        from pipelines.training.ldm_samples import sample_grid

        recons, scores = self.measure(vae)
        mean = float(np.mean(scores))
        pictures: Sequence[Any] = [Image.fromarray(a) for a in (*self.images, *recons)]
        labels = [*self.captions, *(f"{s:.1f} dB" for s in scores)]
        title = (f"step {step}  top: {len(scores)} held-out renders, below: their reconstructions "
                 f"(live weights)  PSNR {mean:.2f} dB")
        record = {"prompts": list(self.captions), "psnr": mean, "psnr_each": [round(s, 3) for s in scores],
                  "kind": "reconstructions", "seed": self.seed, "weights": "live"}
        return monitor.samples.write(step, sample_grid(pictures, labels, title, cols=len(scores)), record)


def measure_scaling_factor(vae: Any, n: int, seed: int) -> float:
    """1 / std of the latents of ``n`` renders (LDM's unit-variance rescaling)."""
    return float(1.0 / encode_latents(vae, render_renders(seed, n)).std())


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train, export to ``--out`` (default ``<run-dir>/out``) with the measured scaling factor."""
    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    cfg = TINY_CFG if args.tiny else VAE_CFG
    if args.widths:
        widths = [int(w) for w in args.widths.split(",")]
        cfg = {**cfg, "block_out_channels": widths, "norm_num_groups": min(32, widths[0] // 2)}
    if args.finetune_decoder is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.finetune_decoder, use_safetensors=True, dtype=torch.float32)
        cfg = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        for module in (vae.encoder, vae.quant_conv):
            if module is not None:
                module.requires_grad_(False)
        vae.train()
        vae.encoder.eval()
    else:
        vae = create_vae(cfg, seed=args.seed).train()
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    ckpt = common.Checkpointer(args.run_dir, every=args.checkpoint_every)
    start = 0
    if args.resume:
        state = ckpt.load(vae, optimizer)
        start = int(state["step"]) if state else 0
    log = common.LossLog(Path(args.run_dir) / "loss.jsonl", resume_step=start if args.resume else None)
    (Path(args.run_dir) / "config.json").write_text(json.dumps({"vae": cfg, "args": {
        k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    monitor = RunMonitor(Path(args.run_dir), args.steps, args.batch_size, start, stop, resume=args.resume)
    with monitor.failures():  # an exception marks status.json "failed"
        return _train(args, vae, optimizer, ckpt, log, monitor, start, stop)


def _train(args: argparse.Namespace, vae: Any, optimizer: torch.optim.Optimizer, ckpt: common.Checkpointer,
           log: common.LossLog, monitor: RunMonitor, start: int, stop: int) -> dict[str, float]:
    """The loop from ``start`` (checkpoint, stop request, sample grids), then the export."""
    grids = ReconstructionGrids() if args.sample_every > 0 else None
    bar = common.progress(args.steps, initial=start, desc="vae")
    t0 = time.time()
    for step in range(start, stop):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
        common.set_lr(optimizer, lr)
        x = to_tensor(render_renders(int(common.step_rng(args.seed, step).integers(2**62)), args.batch_size))
        loss, parts = vae_loss(vae, x, args.kl_weight, args.sample_posterior, args.grad_weight,
                               decoder_only=args.finetune_decoder is not None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        common.clip_grad([p for p in vae.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        log.log(step + 1, loss=loss.item(), lr=lr, **parts)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
        stop = monitor.after_step(step + 1, loss.item(), stop)  # a stop request makes this the last step
        if ckpt.due(step + 1) or step + 1 == stop:
            ckpt.save(step + 1, vae, optimizer)
        if grids is not None and monitor.sample_due(step + 1, stop, args.sample_every):
            grids(monitor, step + 1, vae)
        if step + 1 >= stop:
            break
    bar.close()
    result: dict[str, float] = {"steps_done": float(stop), "train_seconds": time.time() - t0}
    if common.stopped_early(stop, args):  # "stopped at step N/M; resume with --resume"
        monitor.end(stop)
        return result
    vae.eval()
    if args.finetune_decoder is None:
        factor = measure_scaling_factor(vae, 64 if args.tiny else args.scale_samples, args.seed + 1)
        vae.register_to_config(scaling_factor=factor)
    else:  # same encoder, same latents: the LDM's scaling factor stays
        factor = float(vae.config.scaling_factor)
    out = Path(args.out) if args.out is not None else Path(args.run_dir) / "out"
    vae.save_pretrained(out, safe_serialization=True)
    result.update(scaling_factor=factor, psnr=psnr(vae, render_renders(EVAL_SEED, 64 if args.tiny else 512)))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    monitor.end(stop)  # "finished" once exported
    return result


def evaluate_main(args: argparse.Namespace) -> dict[str, float]:
    """``python -m pipelines.evaluate shapes-vae``: PSNR of the shipped (or ``--weights``) VAE."""
    from diffusers import AutoencoderKL

    from pipelines.registry import BUILTIN_MODELS_DIR

    torch.set_num_threads(args.threads)
    folder = Path(args.weights) if args.weights is not None else BUILTIN_MODELS_DIR / "shapes-ldm" / "vae"
    vae = AutoencoderKL.from_pretrained(folder, use_safetensors=True, dtype=torch.float32).eval()
    seed = EVAL_SEED if args.seed is None else args.seed
    result = {"psnr_db": psnr(vae, render_renders(seed, args.n, holdout="include")), "n": float(args.n)}
    print(json.dumps(result))
    return result

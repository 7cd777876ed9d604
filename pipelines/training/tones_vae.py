"""Train the mel-spectrogram autoencoder of tones-ldm: ``python -m pipelines.train tones_vae``.

As AudioLDM's first stage (Liu et al. 2023, "AudioLDM: Text-to-Audio Generation with Latent Diffusion
Models"): a diffusers ``AutoencoderKL`` with one input channel reads a log-mel spectrogram as an image,
(1, 128 frames, 128 mel bands), and maps it to an 8 x 16 x 16 latent (three 2x downsamplings); the decoder
writes log-mel values back, which the Griffin-Lim vocoder inverts. Loss: L1 + L2 reconstruction on the
log-mel divided by :data:`LOSS_SCALE` (log magnitudes span about -11.5 to +2.5), plus a tiny KL term
(weight 1e-6, LDM's "KL-reg"). Batches are drawn from the cached clip pool of
:mod:`pipelines.training.tones_data` by ``(seed, step)``, so a resumed run sees the same data.

At the end, ``scaling_factor`` is set to 1 / std of the latents of 1,024 pool clips (unit-variance
latents for the diffusion model) and the round trip is judged: 48 evaluation clips (one per waveform x
pitch x rhythm) -> mel -> VAE -> Griffin-Lim -> the Tones judge, written to ``<out>/metrics.json``.
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

from pipelines.training import common, tones_data as data

LOSS_SCALE = 4.0
VAE_CFG: dict[str, Any] = {
    "in_channels": 1, "out_channels": 1, "latent_channels": 8, "sample_size": data.FRAMES,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "mid_block_add_attention": False,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=1200, batch_size=12, lr=2e-3, checkpoint_every=100)
    parser.add_argument("--pool-path", type=Path, default=Path("runs/tones/pool.pt"), help="cached clip pool")
    parser.add_argument("--pool", type=int, default=6000, help="clips in the pool")
    parser.add_argument("--pool-seed", type=int, default=1234)
    parser.add_argument("--widths", type=str, default="8,16,32,64", help="block_out_channels")
    parser.add_argument("--latent-channels", type=int, default=8)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-clips", type=int, default=48, help="clips judged after the round trip (0: none)")


def vae_config(args: argparse.Namespace) -> dict[str, Any]:
    widths = [int(w) for w in args.widths.split(",")]
    return {**VAE_CFG, "block_out_channels": widths, "latent_channels": args.latent_channels,
            "norm_num_groups": min(8, widths[0]), "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths)}


def to_input(mels: torch.Tensor) -> torch.Tensor:
    """(B, frames, n_mels) log-mel -> (B, 1, frames, n_mels) float32, AudioLDM's VAE layout."""
    return mels.float().unsqueeze(1)


def vae_loss(vae: Any, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + L2 of the posterior-mean reconstruction (in log-mel / LOSS_SCALE units) + ``kl_weight`` * KL."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.mean).sample
    a, b = recon / LOSS_SCALE, x / LOSS_SCALE
    l1, l2 = F.l1_loss(a, b), F.mse_loss(a, b)
    kl = posterior.kl().mean()
    return l1 + l2 + kl_weight * kl, {"l1": l1.item(), "l2": l2.item(), "kl": kl.item() / x[0].numel()}


@torch.no_grad()
def encode(vae: Any, mels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unscaled posterior means (N, C, 16, 16) of (N, frames, n_mels) mels."""
    return torch.cat([vae.encode(to_input(mels[i:i + batch_size])).latent_dist.mean
                      for i in range(0, len(mels), batch_size)])


@torch.no_grad()
def round_trip_scores(vae: Any, n: int = 48) -> dict[str, float]:
    """The Tones judge on evaluation clips after mel -> VAE -> Griffin-Lim (the ceiling the LDM can reach)."""
    from pipelines.audio import griffin_lim
    from pipelines.judges import tones as judge
    from pipelines.worlds import tones

    recipes, clips = data.eval_clips(n)
    mels = torch.from_numpy(np.stack([data.clip_mel(c) for c in clips]))
    recon = vae.decode(encode(vae, mels)).sample[:, 0].numpy()
    sounds = [griffin_lim(m.T, n_samples=tones.N_SAMPLES, cfg=data.MEL, n_iter=data.GL_ITERATIONS) for m in recon]
    scores = judge.score(sounds, recipes)
    scores["mel_l1"] = float(np.abs(recon - mels.numpy()).mean())
    return scores


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (resumably); export to ``--out`` (default ``<run-dir>/out``) with the measured scaling factor."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    pool = data.load_pool(args.pool_path, args.pool, args.pool_seed)
    mels = pool["mels"]
    cfg = vae_config(args)
    vae = AutoencoderKL(**cfg).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    run_dir = Path(args.run_dir)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    start = 0
    if args.resume:
        state = ckpt.load(vae, optimizer)
        start = int(state["step"]) if state else 0
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"vae": cfg, "params": sum(p.numel() for p in vae.parameters()),
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    bar = common.progress(args.steps, initial=start, desc="tones-vae")
    t0 = time.time()
    for step in range(start, stop):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
        common.set_lr(optimizer, lr)
        rows = common.step_rng(args.seed, step).integers(len(mels), size=args.batch_size)
        loss, parts = vae_loss(vae, to_input(mels[torch.from_numpy(rows)]), args.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        common.clip_grad(vae.parameters(), 1.0)
        optimizer.step()
        log.log(step + 1, loss=loss.item(), lr=lr, **parts)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
        if ckpt.due(step + 1) or step + 1 == stop:
            ckpt.save(step + 1, vae, optimizer, extra={"vae_config": json.dumps(cfg)})
    bar.close()
    result: dict[str, Any] = {"steps_done": stop, "train_seconds": time.time() - t0}
    if common.stopped_early(stop, args):
        return result
    vae.eval()
    factor = float(1.0 / encode(vae, mels[:1024]).std())
    vae.register_to_config(scaling_factor=factor)
    out = Path(args.out) if args.out is not None else run_dir / "out"
    vae.save_pretrained(out, safe_serialization=True)
    result["scaling_factor"] = factor
    if args.eval_clips > 0:
        result["round_trip"] = round_trip_scores(vae, args.eval_clips)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result

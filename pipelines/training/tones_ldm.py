"""Train the builtin text-to-audio model, tones-ldm: ``python -m pipelines.train tones_ldm``.

AudioLDM (Liu et al. 2023) in miniature, in ``AudioLDMPipeline``'s own format: a diffusers
``UNet2DConditionModel`` denoises the 8 x 16 x 16 latents of the mel VAE (:mod:`.tones_vae`), conditioned
the way AudioLDM's is: the text encoder's projected, L2-normalised embedding (the tiny CLAP of
:mod:`.tones_clap`) enters as a class embedding (``class_embed_type="simple_projection"``, concatenated to
the timestep embedding, ``class_embeddings_concat=True``), and the transformer blocks, given no encoder
states, attend to the latent itself (``cross_attention_dim`` = each block's width, as AudioLDM's).

Training is DDPM (Ho et al. 2020) on AudioLDM's noise schedule (scaled_linear betas 0.0015-0.0195, 1000 steps;
at t = 999 sqrt(alpha_bar) = 0.012, so no offset noise is needed) with the v objective (``v = alpha * eps -
sigma * x0``; Salimans & Ho 2022), weighted by Min-SNR-gamma (Hang et al. 2023; ``min(SNR, gamma) / (SNR + 1)``
for v). Why v and not AudioLDM's epsilon: with alpha_T = 0.012 an epsilon model's x0 estimate at high noise is
its error times 1 / 0.012, and measured here a small epsilon model sampled latents of std 4-6 (the data's is
1) with every sampler tried (DDIM, DPM-Solver++, UniPC, Euler), judged near chance after 1,100 steps; a v
model predicts x0 directly where the noise dominates. ``--prediction-type epsilon`` trains the other way.
Captions are re-sampled every step from each clip's recipe with loudness and
rhythm dropped at ``--drop-prob``, and replaced by "" at ``--uncond-prob`` so the same network learns the
unconditional score for classifier-free guidance (Ho & Salimans 2022). AdamW, warm-up + cosine LR, gradient
clipping at 1, EMA of the weights (what ships). Latents of the clip pool are computed once
(``<run-dir>/latents.pt``) and every caption's embedding once (``<run-dir>/captions.pt``), exactly as the
pipeline computes it. Each step's batch is a function of ``(seed, step)``: ``--resume`` continues an
interrupted run exactly; ``--stop-at`` and ``--time-budget`` as for the other targets.

At the end the EMA UNet is exported, and the whole model folder is assembled in ``<run-dir>/pack``: VAE,
text encoder, tokenizer, UNet, a DPM-Solver++ 2M scheduler on the training schedule, the Griffin-Lim
vocoder's config and ``default_settings.json``. ``python -m pipelines.training.ship <run-dir>/pack
assets/models/tones-ldm`` ships it (fp16 weights).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training import common, tones_data as data
from pipelines.training.latents import file_hash
from pipelines.training.ldm import min_snr_weights

ACCELERATED = True  # understands --device and --time-budget (not --workers)
SCHEDULER_CFG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.0015, "beta_end": 0.0195,
                                 "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


def unet_config(widths: tuple[int, ...], layers: int, embed_dim: int, latent_channels: int, heads: int = 4,
                latent_size: int = data.FRAMES // 8) -> dict:
    """Plain ResNet blocks at 16 x 16, self-attention blocks below; the prompt as a class embedding."""
    n = len(widths)
    return {"sample_size": latent_size, "in_channels": latent_channels, "out_channels": latent_channels,
            "block_out_channels": list(widths), "layers_per_block": layers,
            "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
            "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
            "cross_attention_dim": list(widths), "attention_head_dim": heads, "norm_num_groups": min(32, widths[0]),
            "class_embed_type": "simple_projection", "projection_class_embeddings_input_dim": embed_dim,
            "class_embeddings_concat": True}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=3600, batch_size=64, lr=1e-3, checkpoint_every=200)
    parser.add_argument("--vae-dir", type=Path, default=Path("runs/tones-vae/out"))
    parser.add_argument("--text-dir", type=Path, default=Path("runs/tones-clap/out"),
                        help="folder with text_encoder/ and tokenizer/ (python -m pipelines.train tones_clap)")
    parser.add_argument("--pool-path", type=Path, default=Path("runs/tones/pool.pt"))
    parser.add_argument("--pool", type=int, default=6000)
    parser.add_argument("--pool-seed", type=int, default=1234)
    parser.add_argument("--widths", type=str, default="32,64,128")
    parser.add_argument("--layers", type=int, default=1, help="ResNet layers per UNet block")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3, help="loudness / rhythm phrase dropping")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--min-lr-ratio", type=float, default=0.05)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR weighting (0: plain MSE)")
    parser.add_argument("--prediction-type", choices=("v_prediction", "epsilon"), default="v_prediction",
                        help="what the UNet predicts (see the module notes)")
    parser.add_argument("--init-unet", type=Path, default=None,
                        help="start a fresh run (new schedule) from these UNet weights (a diffusers folder of the same shape)")
    parser.add_argument("--default-steps", type=int, default=20, help="default_settings.json of the packed folder")
    parser.add_argument("--default-guidance", type=float, default=2.5)
    parser.add_argument("--pack-only", action="store_true",
                        help="train nothing: export <run-dir>/checkpoint.pt and pack it again (e.g. new defaults)")


@torch.no_grad()
def caption_table(text_dir: Path, cache: Path) -> tuple[dict[str, int], torch.Tensor]:
    """Every caption's unit-norm embedding (N, dim), as ``AudioLDMPipeline._encode_prompt`` computes it with
    the saved (fp32-loaded) text encoder; cached by the encoder's weights."""
    from transformers import ClapTextModelWithProjection, RobertaTokenizer

    from pipelines.training.tones_clap import encode_text

    key = file_hash(text_dir / "text_encoder")
    if cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        if state["text_hash"] == key:
            return {c: i for i, c in enumerate(state["captions"])}, state["embeddings"]
    encoder = ClapTextModelWithProjection.from_pretrained(text_dir / "text_encoder", dtype=torch.float32).eval()
    tokenizer = RobertaTokenizer.from_pretrained(text_dir / "tokenizer")
    captions = data.all_captions()
    embeddings = encode_text(encoder, tokenizer, captions)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"text_hash": key, "captions": captions, "embeddings": embeddings}, cache)
    return {c: i for i, c in enumerate(captions)}, embeddings


@torch.no_grad()
def latent_pool(vae_dir: Path, pool: dict[str, Any], cache: Path) -> tuple[torch.Tensor, float]:
    """``scaling_factor * mean(E(mel))`` (N, C, 16, 16) of every pool clip, cached by the VAE's weights."""
    from diffusers import AutoencoderKL

    from pipelines.training.tones_vae import encode

    key = file_hash(vae_dir)
    if cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        if state["vae_hash"] == key and len(state["latents"]) == len(pool["mels"]):
            return state["latents"], float(state["scaling_factor"])
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval()
    factor = float(vae.config.scaling_factor)
    latents = (encode(vae, pool["mels"]) * factor).half()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"vae_hash": key, "latents": latents, "scaling_factor": factor}, cache)
    return latents, factor


def step_batch(args: argparse.Namespace, step: int, recipes: torch.Tensor, rows_of: dict[str, int],
               shape: tuple[int, ...], T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool rows, caption-table rows, noise and timesteps of one step: a function of (seed, step) alone."""
    from pipelines.worlds import tones

    rng = common.step_rng(args.seed, step)
    rows = rng.integers(len(recipes), size=args.batch_size)
    captions = []
    for r in rows:
        text = tones.caption(data.tensor_to_recipe(recipes[r]), rng, args.drop_prob)
        captions.append("" if rng.random() < args.uncond_prob else text)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    noise = torch.randn((args.batch_size, *shape), generator=gen)
    t = torch.randint(0, T, (args.batch_size,), generator=gen)
    return torch.from_numpy(rows), torch.tensor([rows_of[c] for c in captions]), noise, t


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (resumably); export the EMA UNet to ``<run-dir>/unet`` and the model folder to ``<run-dir>/pack``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if args.workers:
        raise SystemExit("tones_ldm prepares its (small) batches in the main process: leave out --workers")
    if args.pack_only:
        state = torch.load(Path(args.run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
        for key, folder in (("text_hash", Path(args.text_dir) / "text_encoder"), ("vae_hash", Path(args.vae_dir))):
            if state["extra"].get(key) != file_hash(folder):
                raise SystemExit(f"{folder} is not the {key[:-5]} this run was trained with")
        export_unet(Path(args.run_dir), Path(args.run_dir) / "unet")
        return {"pack": str(pack(Path(args.run_dir), Path(args.vae_dir), Path(args.text_dir), args.default_guidance,
                                 args.default_steps))}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    pool = data.load_pool(args.pool_path, args.pool, args.pool_seed)
    latents_all, factor = latent_pool(Path(args.vae_dir), pool, run_dir / "latents.pt")
    rows_of, table = caption_table(Path(args.text_dir), run_dir / "captions.pt")
    cfg = unet_config(tuple(int(w) for w in args.widths.split(",")), args.layers, int(table.shape[1]),
                      int(latents_all.shape[1]), args.heads, int(latents_all.shape[2]))
    unet = UNet2DConditionModel(**cfg).train()
    n_params = sum(p.numel() for p in unet.parameters())
    sched_cfg = {**SCHEDULER_CFG, "prediction_type": args.prediction_type}
    sched = DDPMScheduler(**sched_cfg)
    alphas = sched.alphas_cumprod.float().to(device)
    optimizer = torch.optim.AdamW(common.decay_groups(unet, 0.01), lr=args.lr, betas=(0.9, 0.999))
    ema = common.EMA(unet, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra: dict[str, Any] = {"unet_config": json.dumps(cfg), "text_hash": file_hash(Path(args.text_dir) / "text_encoder"),
                             "vae_hash": file_hash(Path(args.vae_dir)), "scaling_factor": factor,
                             "prediction_type": args.prediction_type}
    start = 0
    if args.init_unet is not None and not (args.resume and ckpt.path.is_file()):
        common.init_from_export(unet, UNet2DConditionModel, args.init_unet, cfg, "--init-unet", "--widths", extra)
        ema = common.EMA(unet, decay=args.ema_decay)
    if args.resume:
        state = ckpt.load(unet, optimizer, ema)
        if state is not None:
            start = int(state["step"])
            for key in ("text_hash", "vae_hash"):
                if state["extra"].get(key) != extra[key]:
                    raise SystemExit(f"the checkpoint in {run_dir} was trained on another {key[:-5]}: start afresh")
            trained_as = state["extra"].get("prediction_type", "epsilon")
            if trained_as != args.prediction_type:
                raise SystemExit(f"the checkpoint in {run_dir} predicts {trained_as}: resume with --prediction-type "
                                 f"{trained_as}, or start a new run from its weights with --init-unet")
            extra = {**state["extra"], **extra}
    unet.to(device)
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    latents_dev, table_dev = latents_all.to(device), table.to(device)
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"unet": cfg, "params": n_params, "scheduler": sched_cfg,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    bar = common.progress(args.steps, initial=start, desc=f"tones-ldm {n_params / 1e6:.1f}M")
    t0 = time.time()
    shape = tuple(latents_all.shape[1:])
    step = start
    while step < stop:
        rows, cap_rows, noise, t = step_batch(args, step, pool["recipes"], rows_of, shape,
                                              sched.config.num_train_timesteps)
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        x0 = latents_dev[rows.to(device)].float()
        noise, t = noise.to(device), t.to(device)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=None,
                    class_labels=table_dev[cap_rows.to(device)]).sample
        target = noise if args.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        weights = min_snr_weights(alphas, t, args.snr_gamma)
        if args.prediction_type == "v_prediction" and args.snr_gamma > 0:  # Min-SNR for v: min(SNR, gamma) / (SNR + 1)
            snr = alphas[t] / (1 - alphas[t])
            weights = weights * snr / (snr + 1)
        loss = (per * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = common.clip_grad(unet.parameters(), 1.0)
        optimizer.step()
        ema.decay = min(args.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
        ema.update(unet)
        log.log(step + 1, loss=loss.item(), mse=per.mean().item(), lr=lr, grad_norm=gnorm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
        step += 1
        stop = common.fit_budget(budget, step, args, bar, extra, stop)
        if ckpt.due(step) or step == stop:
            ema.decay = args.ema_decay
            ckpt.save(step, unet, optimizer, ema, extra=extra)
    bar.close()
    result: dict[str, Any] = {"steps_done": stop, "train_seconds": time.time() - t0, "params": n_params}
    if common.stopped_early(stop, args):
        return result
    export_unet(run_dir, run_dir / "unet")
    pack(run_dir, Path(args.vae_dir), Path(args.text_dir), args.default_guidance, args.default_steps)
    print(json.dumps(result))
    return result


def export_unet(run_dir: Path, out: Path) -> Path:
    """Save the EMA UNet of ``<run-dir>/checkpoint.pt`` as a diffusers folder."""
    from diffusers import UNet2DConditionModel

    unet, state = common.trained_model(UNet2DConditionModel, run_dir, "unet_config")
    unet.save_pretrained(out, safe_serialization=True)
    common.write_training_info(out, state, "unet_config")
    return out


def pack(run_dir: Path, vae_dir: Path, text_dir: Path, guidance: float, steps: int) -> Path:
    """``<run-dir>/pack``: the complete ``AudioLDMPipeline`` folder, Griffin-Lim vocoder and default settings."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import ClapTextModelWithProjection, RobertaTokenizer

    from pipelines.audio_ldm import GriffinLimVocoder
    from pipelines.default_settings import write_default_settings

    out = Path(run_dir) / "pack"
    shutil.rmtree(out, ignore_errors=True)
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    prediction = state["extra"].get("prediction_type", "epsilon")
    vocoder = GriffinLimVocoder(sampling_rate=16_000, n_fft=data.MEL.n_fft, hop_length=data.MEL.hop,
                                n_mels=data.MEL.n_mels, fmin=data.MEL.fmin, fmax=data.MEL.fmax, floor=data.MEL.floor,
                                n_iter=data.GL_ITERATIONS)
    pipe = AudioLDMPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True),
        text_encoder=ClapTextModelWithProjection.from_pretrained(text_dir / "text_encoder"),
        tokenizer=RobertaTokenizer.from_pretrained(text_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(Path(run_dir) / "unet", use_safetensors=True),
        scheduler=DPMSolverMultistepScheduler(**{**SCHEDULER_CFG, "prediction_type": prediction},
                                              algorithm_type="dpmsolver++", solver_order=2),
        vocoder=vocoder)
    pipe.save_pretrained(out, safe_serialization=True)
    write_default_settings(out, guidance_scale=guidance, num_inference_steps=steps, scheduler="dpmpp_2m",
                           note="the folder's own scheduler; chosen from python -m pipelines.evaluate tones-ldm")
    info = {"unet": json.loads((Path(run_dir) / "unet" / "training.json").read_text())}
    for name, folder in (("vae", vae_dir), ("text_encoder", text_dir)):
        metrics = Path(folder) / "metrics.json"
        if metrics.is_file():
            info[name] = json.loads(metrics.read_text())
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out

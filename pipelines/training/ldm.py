"""Train the shapes-ldm denoiser: ``python -m pipelines.train ldm``.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"): a diffusers ``UNet2DConditionModel`` denoises 16x16x4 VAE latents, conditioned through
cross-attention on the frozen shapes-clip text encoder's per-token hidden states. Training is
DDPM's epsilon objective (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") on SD's
schedule (scaled_linear betas 0.00085-0.012, 1000 steps), weighted per timestep by Min-SNR-gamma
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"; weight
``min(SNR, gamma) / SNR``), which leaves the optimum unchanged but spends less capacity on
near-clean timesteps. Captions are dropped to "" with probability ``--uncond-prob`` so one network
also models the unconditional score for classifier-free guidance (Ho & Salimans 2022). AdamW with
warm-up + cosine LR, gradient clipping, and an EMA of the weights (what ships).

Offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): SD's schedule never reaches zero
SNR (at t=999, sqrt(alpha_bar) = 0.068), and on 16x16x4 latents the mean of the noisy latent
still tells the background's brightness at t=999, so a model trained on plain Gaussian noise
learns to read the background from the noise instead of the prompt and, sampling from pure
noise, paints everything mid-gray (measured: background 44% at guidance 7.5 after 1,400 steps).
Adding ``offset * N(0, 1)`` per sample and channel to the noise removes that shortcut; sampling
is unchanged, so every scheduler still applies.

Inputs come from :mod:`pipelines.training.latents`: a cached latent pool with recipes (captions
re-sampled each step with attribute dropping) and a table of every caption's embedding.

On a GPU (``--device cuda``) the pool and the caption table live on the device, ``--workers``
processes prepare each step's batch (:class:`StepBatches`, a function of ``(seed, step)`` alone,
so CPU and GPU runs see the same data), and ``--time-budget`` fits the cosine schedule into a
lease of fixed length. ``--init-unet`` starts a new schedule from trained weights (a second,
lower-LR stage, or a fine-tune of the shipped model: ``--init-unet assets/models/shapes-ldm/unet``; the UNet's
widths, layers and text-time embedding are then read from that folder's config unless given).

Scale-out with Hugging Face ``accelerate`` (:mod:`pipelines.training.accel`): the same command runs as one
plain process (today's numerics, bit for bit) or under ``accelerate launch`` (one process per GPU; or CPU
processes over gloo: ``accelerate launch --cpu --num_processes 2 -m pipelines.train ldm``, spread to two ranks
by :mod:`pipelines.training.cpu_launch`, or ``--multi_gpu --num_processes 2 ... --device cpu``).
Each process draws its own batches, from ``step_rng(seed, step, stream=rank * grad_accum + micro)`` (stream 0,
rank 0's only micro-batch, is the single-process batch), so one optimisation step sees a global batch of
``--batch-size x processes x --grad-accum`` samples; the LR is not rescaled for you. ``--mixed-precision
bf16|fp16`` (fp16 on GPUs only), ``--grad-accum N`` through ``accelerator.accumulate``. Checkpoints: the main
process writes ``checkpoint.pt`` as before (weights, EMA, optimizer, record: what ``--resume``,
:func:`export_unet` and ``pipelines.builtin_ldm`` read) and every process takes part in
``accelerator.save_state`` into ``<run-dir>/accelerate_state`` (+ RNG of every rank, GradScaler); a resume by a
run of the same shape reloads that, any other (e.g. 2 processes -> 1) falls back to ``checkpoint.pt``.

For a UI (the studio's Train tab): ``status.json`` (state, step, samples/s, ETA), ``stop.request`` (checkpoint
and stop after the current step), sample grids of the EMA weights every ``--sample-every`` steps
(``samples/step_000200.png`` + ``samples.jsonl``; :mod:`pipelines.training.ldm_samples`), and
:func:`export_pipeline` / ``python -m pipelines.training.ldm export RUN_DIR OUT`` to turn a run into a complete
``StableDiffusionPipeline`` folder (:mod:`pipelines.training.ldm_export`). Both are re-exported here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.training import accel, common, latents as lat
# Re-exported: the sample grids and the export used to live here (``from pipelines.training.ldm import ...``).
from pipelines.training.ldm_export import (BASE_LDM, ExportError, _run_record, _safetensors_dtype,  # noqa: F401
                                           cli, export_pipeline, export_unet)
from pipelines.training.ldm_batches import StepBatches, sample_captions  # noqa: F401
from pipelines.training.ldm_samples import (SAMPLE_PROMPTS, SampleGrids, _wrap, add_sample_arguments,  # noqa: F401
                                           sample_grid)

SCHEDULER_CFG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                 "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
                                 "prediction_type": "epsilon"}


def unet_config(widths: tuple[int, ...] = (32, 64, 128), cross_dim: int = 128, heads: int = 4,
                layers: int = 1, text_time: bool = True) -> dict[str, Any]:
    """UNet: plain ResNet blocks at 16x16, cross-attention at 8x8 and 4x4 (and in the middle).

    ``text_time`` adds diffusers' ``addition_embed_type="text"``: an attention-pooled summary of the
    prompt's token states (``TextTimeEmbedding``, as in unCLIP/Kandinsky) is added to the timestep
    embedding, so every ResNet block, the 16x16 ones included, sees the prompt's global attributes
    (colour, background). It is computed from ``encoder_hidden_states`` alone, so the stock
    ``StableDiffusionPipeline`` drives it unchanged.
    """
    n = len(widths)
    cfg = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": list(widths),
           "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
           "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
           "layers_per_block": layers, "cross_attention_dim": cross_dim, "attention_head_dim": heads,
           "norm_num_groups": min(32, widths[0])}
    if text_time:
        cfg.update(addition_embed_type="text", addition_embed_type_num_heads=heads)
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """LDM defaults (batch 128, lr 1e-3, checkpoints every 200 steps) and options."""
    parser.set_defaults(steps=6000, batch_size=128, lr=1e-3, checkpoint_every=200)
    parser.add_argument("--vae-dir", type=Path, default=None,
                        help="VAE of the latent pool and of the sample grids (default: the --init-unet folder's "
                             "sibling vae/ when it has one, else runs/vae/out)")
    parser.add_argument("--clip-dir", type=Path, default=Path("assets/clip/shapes-clip"))
    parser.add_argument("--random-text", action="store_true", help="random-weight text encoder (tests)")
    parser.add_argument("--retarget-text", action="store_true",
                        help="resume a run trained on another text encoder (re-export it from --clip-dir)")
    parser.add_argument("--latents", type=Path, default=None, help="latent pool (default <run-dir>/latents.pt)")
    parser.add_argument("--pool", type=int, default=50_000, help="renders in the latent pool")
    parser.add_argument("--widths", type=str, default=None,
                        help="UNet block widths (default: --init-unet's, else 32,64,128)")
    parser.add_argument("--layers", type=int, default=None,
                        help="ResNet layers per UNet block (default: --init-unet's, else 1)")
    parser.add_argument("--no-text-time", action="store_true", default=None,
                        help="cross-attention only, no pooled-text embedding (default: as --init-unet, else off)")
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3, help="per-attribute caption dropping")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--min-lr-ratio", type=float, default=0.05)
    parser.add_argument("--offset-noise", type=float, default=0.2,
                        help="per-sample, per-channel constant added to the noise (0: off)")
    parser.add_argument("--init-unet", type=Path, default=None,
                        help="start a fresh run from these UNet weights (a diffusers folder of the same shape)")
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR weighting (0: plain MSE)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                        help="autocast through accelerate (default no, or accelerate launch's --mixed_precision); "
                             "fp16 needs a GPU")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches per optimisation step (global batch = batch-size x processes x this)")
    add_sample_arguments(parser)


def prepare_text(args: argparse.Namespace) -> Path:
    """Export the frozen text encoder + tokenizer to ``<run-dir>/text`` (the exact files that ship)."""
    from pipelines import mini_clip

    folder = Path(args.run_dir) / "text"
    if getattr(args, "retarget_text", False):
        shutil.rmtree(folder, ignore_errors=True)
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        return folder
    if args.random_text:
        mini_clip.export_text_encoder(mini_clip.create_model(seed=args.seed), folder / "text_encoder",
                                      tokenizer_dir=folder / "tokenizer")
    else:
        mini_clip.export_sd_text_parts(Path(args.clip_dir), folder)
    return folder


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR(t), gamma) / SNR(t)`` for the epsilon objective (ones when gamma <= 0)."""
    if gamma <= 0:
        return torch.ones(len(t), device=t.device)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


ACCELERATED = True  # understands --device, --workers and --time-budget


def resolve_shape(args: argparse.Namespace) -> None:
    """Fill ``--widths``, ``--layers``, ``--no-text-time`` (and ``--vae-dir``) left unset: from the ``--init-unet``
    folder's config (so a fine-tune of the shipped UNet needs no shape flags), else the defaults."""
    init_cfg: dict[str, Any] = {}
    if args.init_unet is not None:
        cfg_file = Path(args.init_unet) / "config.json"
        if not cfg_file.is_file():
            raise SystemExit(f"--init-unet {args.init_unet}: no config.json (a diffusers UNet folder is needed)")
        init_cfg = json.loads(cfg_file.read_text())
    if args.widths is None:
        args.widths = ",".join(str(w) for w in init_cfg.get("block_out_channels", (32, 64, 128)))
    if args.layers is None:
        args.layers = int(init_cfg.get("layers_per_block", 1))
    if args.no_text_time is None:
        args.no_text_time = bool(init_cfg) and init_cfg.get("addition_embed_type") != "text"
    args.heads = int(init_cfg["attention_head_dim"]) if isinstance(init_cfg.get("attention_head_dim"), int) else 4
    if args.vae_dir is None:
        sibling = Path(args.init_unet).parent / "vae" if args.init_unet is not None else None
        args.vae_dir = sibling if sibling is not None and (sibling / "config.json").is_file() else Path("runs/vae/out")


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the EMA UNet to ``--out`` (default ``<run-dir>/unet``) at the end.

    Under ``accelerate launch`` every process runs this; only the main one writes logs, samples and exports.
    ``<run-dir>/status.json`` follows the run (``failed`` on an exception, which is re-raised).
    """
    resolve_shape(args)
    accelerator, fresh = accel.make_accelerator(args.device, args.mixed_precision, args.grad_accum)
    main_proc = accelerator.is_main_process
    status = accel.StatusFile(Path(args.run_dir), args.steps,
                              args.batch_size * accelerator.num_processes * max(1, args.grad_accum),
                              enabled=main_proc, processes=accelerator.num_processes)
    ok = False
    try:
        result = _train(args, accelerator, status)
        ok = True
        return result
    except BaseException as exc:
        if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            status.update("failed", force=True, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        accel.release(accelerator, fresh, ok)


def _train(args: argparse.Namespace, accelerator: Any, status: accel.StatusFile) -> dict[str, float]:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    main_proc, n_proc, accum = accelerator.is_main_process, accelerator.num_processes, max(1, args.grad_accum)
    torch.set_num_threads(args.threads)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pool_path = Path(args.latents) if args.latents is not None else run_dir / "latents.pt"
    with accelerator.main_process_first():  # the main process exports/encodes/caches, then the others read
        text = prepare_text(args) if main_proc else run_dir / "text"
        table = lat.CaptionTable.build(text / "text_encoder", text / "tokenizer", cache=run_dir / "captions.pt")
        if main_proc and not pool_path.is_file():
            lat.build_latent_pool(Path(args.vae_dir), pool_path, args.pool, seed=args.seed + 10_000,
                                  device=device, workers=args.workers)
    pool = lat.load_latent_pool(pool_path)
    latents_all = pool["latents"].to(device)
    embeddings = table.embeddings.to(device)
    cfg = unet_config(tuple(int(w) for w in args.widths.split(",")), cross_dim=int(table.embeddings.shape[-1]),
                      heads=args.heads, layers=args.layers, text_time=not args.no_text_time)
    unet = UNet2DConditionModel(**cfg).train()
    n_params = sum(p.numel() for p in unet.parameters())
    noise_sched = DDPMScheduler(**SCHEDULER_CFG)
    alphas = noise_sched.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(common.decay_groups(unet, 0.01), lr=args.lr, betas=(0.9, 0.999))
    ema = common.EMA(unet, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"unet_config": json.dumps(cfg), "text_hash": lat.file_hash(text / "text_encoder"),
             "vae_hash": str(pool.get("vae_hash", "")), "scaling_factor": float(pool["scaling_factor"])}
    start, state, accel_dir = 0, None, None
    if args.init_unet is not None and not (args.resume and ckpt.path.is_file()):
        common.init_from_export(unet, UNet2DConditionModel, args.init_unet, cfg, "--init-unet",
                                "--widths, --layers, --no-text-time", extra)
        ema = common.EMA(unet, decay=args.ema_decay)
    if args.resume and ckpt.path.is_file():
        state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
        start = int(state["step"])
        accel_dir = accel.matching_state(accelerator, run_dir, start)
        if accel_dir is None:  # no accelerate state of this run's shape: the portable checkpoint.pt
            ckpt.load(unet, optimizer, ema)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    model = accelerator.unwrap_model(unet)  # the plain module: EMA, checkpoints, samples
    if accel_dir is not None:
        accel.load_state(accelerator, accel_dir, ema)
        if main_proc:
            print(f"resumed step {start} from {accel_dir}")
    if state is not None:
        if state["extra"].get("text_hash") != extra["text_hash"]:
            if not args.retarget_text:
                raise RuntimeError("checkpoint was trained on another text encoder: start a fresh run, "
                                   "or continue on the new one with --retarget-text")
            extra["retargeted_at"] = start  # new conditioning from here on: restart the average
            ema.load_state_dict(common.EMA(model, decay=args.ema_decay).state_dict())
        extra = {**{k: v for k, v in state["extra"].items() if k in ("retargeted_at", "init_from")}, **extra}
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    alphas_dev = alphas.to(device)
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None) if main_proc else None
    samples = (SampleGrids(run_dir, Path(args.vae_dir), text, cfg, args, device,
                           resume_step=start if args.resume else None)
               if main_proc and args.sample_every > 0 else None)
    if main_proc:
        (run_dir / "config.json").write_text(json.dumps(
            {"unet": cfg, "params": n_params, "scheduler": SCHEDULER_CFG, "processes": n_proc,
             "global_batch": args.batch_size * n_proc * accum, "mixed_precision": str(accelerator.mixed_precision),
             "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    data = StepBatches(pool, table.rows, args, noise_sched.config.num_train_timesteps,
                       rank=accelerator.process_index, accum=accum)
    batches = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start * accum, stop * accum),
                                          num_workers=args.workers, pin_memory=device.type == "cuda",
                                          prefetch_factor=4 if args.workers > 0 else None)
    bar = (common.progress(args.steps, initial=start, desc=f"ldm {n_params / 1e6:.1f}M") if main_proc
           else accel.NullBar())
    status.steps, status.stop_at = args.steps, stop
    status.mark(start)
    status.update("running", force=True)
    t0 = time.time()
    step, budget_synced, stop_file = start, args.time_budget is None, False
    micro_batches = iter(batches)
    while step < stop:
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        losses, mses, gnorm = [], [], 0.0
        for _ in range(accum):
            rows, cap_rows, noise, t = next(micro_batches)
            with accelerator.accumulate(unet):
                x0 = latents_all[rows.to(device)].float()
                cond = embeddings[cap_rows.to(device)]
                noise, t = noise.to(device, non_blocking=True), t.to(device, non_blocking=True)
                pred = unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample.float()
                per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
                loss = (per * min_snr_weights(alphas_dev, t, args.snr_gamma)).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    gnorm = float(accelerator.clip_grad_norm_(unet.parameters(), 1.0))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            mses.append(per.detach().mean())
        if main_proc:
            ema.decay = min(args.ema_decay, (1 + step) / (10 + step))  # EMA warm-up (ships early checkpoints)
            ema.update(model)
        # one device sync for the log and the bar (averaged over micro-batches and processes)
        loss_value, mse_value = accelerator.reduce(torch.stack([torch.stack(losses).mean(),
                                                                torch.stack(mses).mean()]), "mean").tolist()
        step += 1
        if log is not None:
            log.log(step, loss=loss_value, mse=mse_value, lr=lr, grad_norm=gnorm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        stop = common.fit_budget(budget, step, args, bar, extra, stop)
        if not budget_synced and budget.decided is not None:  # every rank stops where the main one decided
            args.steps, stop = accel.broadcast_ints(accelerator, [args.steps, stop])
            budget_synced = True
        if step < stop and accel.stop_requested(accelerator, run_dir):
            stop, stop_file = step, True
        if ckpt.due(step) or step == stop:
            ema.decay = args.ema_decay
            if main_proc:
                ckpt.save(step, model, optimizer, ema, extra=extra)
            accel.save_state(accelerator, run_dir, step, ema if main_proc else None)
        if samples is not None and (step % args.sample_every == 0 or step == stop):  # and at every end
            samples(step, model, ema)
        status.steps, status.stop_at, status.loss = args.steps, stop, loss_value
        status.mark(step)
        status.update("running")
    bar.close()
    if main_proc and (stop_file or (run_dir / accel.STOP_FILE).exists()):
        accel.clear_stop_request(run_dir)  # served (also when the run ended anyway)
    result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params),
              "processes": float(n_proc), "global_batch": float(args.batch_size * n_proc * accum)}
    if stop < args.steps:
        if main_proc:
            common.stopped_early(stop, args)  # "stopped at step N/M; resume with --resume"
        status.update("stopped", force=True)
    else:
        if main_proc:
            export_unet(run_dir, Path(args.out) if args.out is not None else run_dir / "unet")
            print(json.dumps(result))
        status.update("finished", force=True)
    accelerator.wait_for_everyone()  # the others wait for the main process's export
    return result


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a (resumed) optimizer's state tensors to ``device``."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)


if __name__ == "__main__":
    cli()

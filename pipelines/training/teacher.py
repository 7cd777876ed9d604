"""Teacher targets for the DiT trainer (``--teacher DIR``): distil a trained latent-diffusion model.

The epsilon objective regresses the network onto the noise that was actually drawn; the best any model can
do is E[noise | x_t, label], and the gap between the two is pure gradient noise, largest at the mid noise
levels where a shape is decided. A trained denoiser of the same latent space (the shipped ``shapes-ldm``,
whose shapes judge at 99.9%) is an estimate of that expectation, so its prediction on the same ``x_t`` is a
far quieter target (knowledge distillation of a denoiser, Luhman & Luhman 2021; here across architectures,
UNet -> transformer, the data still the training pool's latents).

The two models have different noise schedules (DiT: linear betas 1e-4..0.02; shapes-ldm: scaled-linear
0.00085..0.012) but both are variance-preserving, ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``, so the same
``x_t`` is a valid input of the teacher at the (fractional) timestep with the same ``a``; the teacher's
epsilon there is the student's target. Student timesteps noisier than the teacher's last one (DiT's
``t`` above about 730) keep the drawn noise as their target (there ``x_t`` is nearly all noise and the
target's own noise is small anyway). The label's prompt is ``"a <class name>"`` ("a red circle"), the null
class the empty prompt, as the teacher's classifier-free-guidance branch was trained.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", type=Path, default=None,
                        help="a trained latent-diffusion folder of the same VAE (e.g. assets/models/shapes-ldm): its "
                             "epsilon on the same x_t is the target (distillation) instead of the drawn noise")
    parser.add_argument("--teacher-mix", type=float, default=1.0,
                        help="with --teacher: target = mix x teacher + (1 - mix) x drawn noise")


def record(args: argparse.Namespace) -> dict[str, Any] | None:
    """What the checkpoint and the export's training.json record of the teacher (None: none)."""
    if args.teacher is None:
        return None
    return {"folder": str(args.teacher), "mix": float(args.teacher_mix)}


def check_folder(folder: Path, mix: float) -> None:
    """Refuse (SystemExit with the reason) a ``--teacher`` that is not a latent-diffusion folder, or a bad mix."""
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (Path(folder) / part).is_dir():
            raise SystemExit(f"--teacher {folder}: no {part}/ folder; give a latent-diffusion model folder "
                             "such as assets/models/shapes-ldm")
    if not 0.0 < mix <= 1.0:
        raise SystemExit(f"--teacher-mix {mix}: it must be in (0, 1]")


def log_snr(alphas_cumprod: torch.Tensor) -> np.ndarray:
    a = alphas_cumprod.double().numpy()
    return np.log(a / (1.0 - a))


def timestep_map(student_alphas: torch.Tensor, teacher_alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each student timestep: the teacher's fractional timestep of equal SNR, and whether the teacher's
    schedule reaches that SNR at all (False for student timesteps noisier than the teacher's last)."""
    student, teacher = log_snr(student_alphas), log_snr(teacher_alphas)  # both decrease with t
    mapped = np.interp(-student, -teacher, np.arange(len(teacher), dtype=np.float64))
    reach = (student >= teacher[-1]) & (student <= teacher[0])
    return torch.from_numpy(mapped).float(), torch.from_numpy(reach)


class Teacher:
    """A frozen ``UNet2DConditionModel`` + its text tower's prompt embeddings, giving a student's targets:
    :meth:`epsilon_targets` on a variance-preserving schedule (``student_alphas``), :meth:`velocity_targets` on
    the rectified-flow line. ``prompts``: one embedding row each (plus a last row for the empty prompt, unless
    ``prompts`` holds "" already); ``embeddings`` reuses rows encoded before (a cached caption table)."""

    def __init__(self, folder: Path, prompts: Sequence[str], device: torch.device, mix: float = 1.0,
                 student_alphas: torch.Tensor | None = None, embeddings: torch.Tensor | None = None) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        from pipelines.training.latents import encode_prompts

        folder = Path(folder)
        check_folder(folder, mix)
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise SystemExit(f"--teacher {folder}: its scheduler predicts {config['prediction_type']}, not epsilon")
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32,
                                                         use_safetensors=True).eval().requires_grad_(False).to(device)
        self.alphas = DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")}
                                                ).alphas_cumprod
        self.log_snr = log_snr(self.alphas)
        if student_alphas is not None:
            mapped, reach = timestep_map(student_alphas.cpu(), self.alphas)
            self.mapped, self.reach = mapped.to(device), reach.to(device)
        prompts = list(prompts)
        if "" not in prompts:
            prompts.append("")
        self.null_row = prompts.index("")
        self.embeddings = (embeddings if embeddings is not None
                           else encode_prompts(folder / "text_encoder", folder / "tokenizer", prompts)).to(device)
        self.mix, self.device = float(mix), device

    @torch.no_grad()
    def epsilon_targets(self, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor,
                        noise: torch.Tensor) -> torch.Tensor:
        """The epsilon target of each sample at student timestep ``t``: the teacher's prediction (mixed with
        ``noise``) where its schedule reaches ``t``, the drawn ``noise`` elsewhere. ``rows``: prompt rows."""
        target = noise.clone()
        use = self.reach[t]
        if bool(use.any()):
            eps = self.unet(x_t[use], self.mapped[t[use]], encoder_hidden_states=self.embeddings[rows[use]]).sample
            target[use] = self.mix * eps.float() + (1.0 - self.mix) * noise[use]
        return target

    @torch.no_grad()
    def velocity_targets(self, x_s: torch.Tensor, s: torch.Tensor, rows: torch.Tensor, noise: torch.Tensor,
                         x0: torch.Tensor) -> torch.Tensor:
        """The velocity target ``eps - x0`` of each sample on the line ``x_s = (1 - s) x0 + s eps``, from the
        teacher's estimates: ``x_s / r`` (``r = sqrt((1 - s)^2 + s^2)``) is its variance-preserving input at
        SNR ((1 - s) / s)^2, and ``x_s = (1 - s) x0_hat + s eps_hat`` gives ``v = (eps_hat - x_s) / (1 - s)``.
        Where that SNR is outside the teacher's schedule, the drawn ``noise - x0``."""
        target = noise - x0
        snr = 2.0 * (torch.log1p(-s.double().clamp(max=1 - 1e-6)) - torch.log(s.double().clamp(min=1e-6)))
        use = (snr <= float(self.log_snr[0])) & (snr >= float(self.log_snr[-1]))
        if bool(use.any()):
            steps = np.interp(-snr[use].cpu().numpy(), -self.log_snr, np.arange(len(self.log_snr), dtype=np.float64))
            sv = s[use].view(-1, 1, 1, 1).float()
            r = ((1 - sv) ** 2 + sv ** 2).sqrt()
            eps = self.unet(x_s[use] / r, torch.from_numpy(steps).float().to(x_s.device),
                            encoder_hidden_states=self.embeddings[rows[use]]).sample.float()
            target[use] = self.mix * (eps - x_s[use]) / (1 - sv) + (1.0 - self.mix) * target[use]
        return target

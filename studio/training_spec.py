"""What the Train tab can start: the targets (:data:`TARGETS`), the form's values (:class:`TrainSpec`) and the
trainer command line they make, and the "more options" allow-list (:func:`parse_extra`). The runs themselves are
:mod:`studio.training`'s."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipelines.registry import BUILTIN_MODELS_DIR

BASE_LDM = BUILTIN_MODELS_DIR / "shapes-ldm"
BUILTIN_CLIP = BUILTIN_MODELS_DIR.parent / "clip" / "shapes-clip"


class TrainingError(ValueError):
    """A run that cannot be started, stopped or resumed, with the reason a person can act on."""


@dataclass(frozen=True)
class Target:
    label: str
    target: str                             # pipelines.train target
    export: Optional[str] = None            # a pipelines.training.run_export kind: a stopped run becomes a model
    base_args: tuple[str, ...] = ()
    ema_flag: Optional[str] = "--ema-decay"     # the trainer's flag for the form's EMA decay (None: not used)
    dropout_flag: Optional[str] = "--uncond-prob"   # ... for its caption (or label) dropout
    out_dir: Optional[str] = None           # --out inside the run folder (a trainer whose default --out is shipped)
    family: str = "latent_diffusion"        # the gallery family of its sample grids
    defaults: tuple[int, int, float] = (200, 16, 1e-4)  # steps, batch size, learning rate the form offers
    objective: str = ""                     # one line for the tab


_VAE = str(BASE_LDM / "vae")
TARGETS: dict[str, Target] = {
    "ldm-finetune": Target("Latent diffusion: fine-tune the builtin shapes-ldm", "ldm", "ldm",
                           ("--init-unet", str(BASE_LDM / "unet"), "--vae-dir", _VAE, "--pool", "4000",
                            "--warmup", "20"),
                           objective="ε-prediction (DDPM) of the UNet, Min-SNR weighted, from the shipped weights"),
    "ldm-fresh": Target("Latent diffusion: a fresh UNet (in shapes-ldm's VAE latent space)", "ldm", "ldm",
                        ("--vae-dir", _VAE, "--pool", "4000", "--warmup", "50"),
                        objective="ε-prediction (DDPM) of a new UNet, Min-SNR weighted"),
    "flow-fresh": Target("Flow matching: a fresh rectified-flow transformer (SD3 format, shapes-ldm's latents)",
                         "flow", "flow", ("--vae-dir", _VAE, "--clip-dir", str(BUILTIN_CLIP), "--pool", "4000",
                                          "--warmup", "50", "--hidden", "96", "--layers", "4"),
                         family="flow_matching", defaults=(1000, 32, 3e-4),
                         objective="velocity v = noise − x₀ on the straight line x_t = (1−t)·x₀ + t·noise "
                                   "(logit-normal t, as SD3)"),
    "dit-fresh": Target("DiT: a fresh class-conditional Diffusion Transformer (DiTPipeline format)", "dit", "dit",
                        ("--vae-dir", _VAE, "--pool", "4000", "--warmup", "50", "--hidden", "128", "--layers", "4"),
                        family="dit", defaults=(1000, 32, 3e-4),
                        objective="ε-prediction on DiT's schedule, labels (colour shape) dropped for guidance"),
    "vae-decoder": Target("VAE: fine-tune the builtin's decoder (its latent space stays; exports shapes-ldm with it)",
                          "vae", "vae", ("--finetune-decoder", _VAE, "--warmup", "20"), ema_flag=None,
                          dropout_flag=None, family="vae", defaults=(200, 16, 1e-4),
                          objective="reconstruction (L1 + MSE) of Shapes renders through the frozen encoder"),
    "vae-fresh": Target("VAE: a fresh autoencoder (reconstruction grids; the weights stay in the run folder)", "vae",
                        None, ("--warmup", "50"), ema_flag=None, dropout_flag=None, family="vae",
                        defaults=(1000, 16, 1.5e-3),
                        objective="reconstruction (L1 + MSE) of Shapes renders plus a small KL term on the latents"),
    "clip-lit": Target("mini-CLIP: a fresh image tower against the builtin's locked text tower (LiT)", "clip", None,
                       ("--lock-text-from", str(BUILTIN_CLIP), "--warmup", "50"), ema_flag="--ema", dropout_flag=None,
                       out_dir="clip", family="clip", defaults=(300, 64, 1.5e-3),
                       objective="contrastive (InfoNCE) matching of renders to the shipped text tower's captions"),
    "clip-fresh": Target("mini-CLIP: a fresh text-image model (zero-shot grids; the weights stay in the run folder)",
                         "clip", None, ("--warmup", "50"), ema_flag="--ema", dropout_flag=None, out_dir="clip",
                         family="clip", defaults=(300, 64, 1.5e-3),
                         objective="contrastive (InfoNCE) matching of renders and captions"),
}
WORLDS = ("shapes",)  # the image targets all train on the procedural Shapes world
# trainer flags the tab's "more options" box may pass (never where files go: --run-dir, --out, --latents, ...)
EXTRA_FLAGS = ("--pool", "--widths", "--layers", "--hidden", "--head-dim", "--warmup", "--seed", "--threads",
               "--snr-gamma", "--offset-noise", "--drop-prob", "--min-lr-ratio", "--checkpoint-every", "--grad-accum",
               "--mixed-precision", "--no-text-time", "--sample-prompts", "--sample-steps", "--sample-guidance",
               "--kl-weight", "--grad-weight", "--vision-width")


def parse_extra(text: str) -> tuple[str, ...]:
    """The "more options" box: ``--flag value`` pairs from :data:`EXTRA_FLAGS` only (no shell, no paths)."""
    import shlex

    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise TrainingError(f"More options: {exc}.") from None
    for w in words:
        if w.startswith("--") and w.split("=", 1)[0] not in EXTRA_FLAGS:
            raise TrainingError(f"More options: {w.split('=', 1)[0]} is not allowed here; allowed: "
                                f"{', '.join(EXTRA_FLAGS)}.")
    if words and not words[0].startswith("--"):
        raise TrainingError(f"More options must start with a --flag (got {words[0]!r}).")
    return tuple(words)


@dataclass
class TrainSpec:
    """What the tab's form asks for."""

    target: str = "ldm-finetune"
    name: str = ""
    world: str = "shapes"
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    sample_every: int = 50
    checkpoint_every: int = 50
    extra: tuple[str, ...] = ()   # more trainer flags (tests: tiny pools and widths)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise TrainingError(f"Unknown training target {self.target!r}; choose one of {', '.join(TARGETS)}.")
        if self.world not in WORLDS:
            raise TrainingError(f"Unknown world {self.world!r}; image training uses: {', '.join(WORLDS)}.")
        checks = [(1 <= self.steps <= 1_000_000, "Steps must be a whole number from 1 to 1,000,000."),
                  (1 <= self.batch_size <= 4096, "Batch size must be from 1 to 4096."),
                  (0 < self.lr <= 1.0, "Learning rate must be above 0 and at most 1."),
                  (0.0 <= self.ema_decay < 1.0, "EMA decay must be from 0 up to (not including) 1."),
                  (0.0 <= self.caption_dropout <= 1.0, "Caption dropout is a probability, from 0 to 1."),
                  (0 <= self.sample_every <= 1_000_000, "Sample every must be 0 (off) or a positive number of steps."),
                  (1 <= self.checkpoint_every <= 1_000_000, "Checkpoint every must be at least 1 step.")]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    def argv(self, run_dir: Path) -> list[str]:
        """The trainer's command line (the form's EMA and dropout only where the target has them)."""
        t = TARGETS[self.target]
        argv = [t.target, "--run-dir", str(run_dir), *t.base_args, "--steps", str(int(self.steps)),
                "--batch-size", str(int(self.batch_size)), "--lr", repr(float(self.lr))]
        if t.ema_flag:
            argv += [t.ema_flag, repr(float(self.ema_decay))]
        if t.dropout_flag:
            argv += [t.dropout_flag, repr(float(self.caption_dropout))]
        if t.out_dir:
            argv += ["--out", str(run_dir / t.out_dir)]
        return argv + ["--sample-every", str(int(self.sample_every)),
                       "--checkpoint-every", str(int(self.checkpoint_every)), *self.extra]

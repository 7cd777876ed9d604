"""Shared training helpers: seeding, resumable checkpoints, LR schedule, EMA, progress, loss log.

Checkpoints are our own files, written atomically (temp file + ``os.replace``) and read back with
``torch.load(weights_only=True)``: they hold only tensors and plain Python containers (the numpy
RNG state is stored as a tensor), so no pickled objects are ever executed. Trainers should derive
each step's data from ``(seed, step)`` so that a resumed run sees the same batches as an
uninterrupted one; the RNG states saved here cover any other randomness.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's global and torch's RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """An independent numpy Generator for one (seed, step, stream): resumable data sampling."""
    return np.random.default_rng([seed, step, stream])


def get_rng_states() -> dict[str, Any]:
    """Python, numpy (global) and torch CPU RNG states, in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def cosine_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to ``min_ratio * base_lr`` (Loshchilov & Hutter 2017)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (stateless schedule: resume-safe)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (no-op if <= 0); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if max_norm <= 0:
        return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params]))) if params else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices, not biases, norms, embeddings' positions or scalars (as open_clip's main)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale", "positional_embedding"))
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Modules a trainer hangs on a network for training only (prefix of their state-dict keys -> the option that
# adds them): kept in checkpoints, never in exports or sample grids (:func:`network_state`).
TRAINING_ONLY: dict[str, str] = {"repa_head.": "--repa-weight", "motion_aux_head.": "--motion-aux-weight"}


def network_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the keys of :data:`TRAINING_ONLY` modules: what the exported network holds."""
    return {k: v for k, v in state.items() if not k.startswith(tuple(TRAINING_ONLY))}


class EMA:
    """Exponential moving average of a model's floating-point state (Polyak averaging)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        state = model.state_dict()
        keys = [k for k in self.shadow if k in state]
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].detach().float() for k in keys],
                             1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the averaged weights into ``model`` (in place)."""
        state = model.state_dict()
        for k, v in self.shadow.items():
            if k not in state and k.startswith(tuple(TRAINING_ONLY)):
                continue  # a sample network without the training-only head
            state[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


class TimeBudget:
    """Fit a run into ``seconds`` of wall clock: time a few steps, then cut the total step count.

    Used by ``--time-budget``: the caller asks :meth:`total` after every step; once ``probe``
    steps (after ``skip`` warm-up steps) have been timed it returns the number of steps that fit
    (never more than asked), so a cosine schedule computed from it ends when the time does.
    """

    def __init__(self, seconds: float | None, start_step: int, probe: int = 50, skip: int = 10) -> None:
        self.seconds, self.start, self.probe, self.skip = seconds, start_step, probe, skip
        self.t_begin = time.time()
        self.t_skip: float | None = None
        self.decided: int | None = None

    def total(self, steps_done: int, total: int) -> int:
        if self.seconds is None or self.decided is not None:
            return min(total, self.decided) if self.decided is not None else total
        now = time.time()
        if steps_done == self.start + self.skip:
            self.t_skip = now
        elif self.t_skip is not None and steps_done >= self.start + self.skip + self.probe:
            per_step = (now - self.t_skip) / (steps_done - self.start - self.skip)
            fits = steps_done + int(max(0.0, self.seconds - (now - self.t_begin)) / per_step)
            self.decided = max(steps_done, min(total, fits))
            return self.decided
        return total


def fit_budget(budget: "TimeBudget", steps_done: int, args: Any, bar: Any, extra: dict[str, Any], stop: int) -> int:
    """After ``steps_done`` steps: when ``--time-budget`` cuts the run, shorten ``args.steps`` (so the cosine
    schedule ends on time), the bar and the checkpoint's record; returns the (new) step to stop after."""
    fitted = budget.total(steps_done, args.steps)
    if fitted >= args.steps:
        return stop
    print(f"time budget: {fitted} steps fit (asked {args.steps})")
    args.steps = bar.total = extra["steps"] = fitted
    return min(stop, fitted)


def stopped_early(stop: int, args: Any) -> bool:
    """True (and says how to go on) when the run stopped before its last step (``--stop-at``)."""
    if stop < args.steps:
        print(f"stopped at step {stop}/{args.steps}; resume with --resume")
        return True
    return False


def load_trained(model: torch.nn.Module, state: dict[str, Any], use_ema: bool = True) -> torch.nn.Module:
    """Load a checkpoint's weights into ``model``, then its EMA average over them (what ships)."""
    model.load_state_dict(network_state(state["model"]))
    if use_ema and state.get("ema") is not None:
        model.load_state_dict(network_state(dict(state["ema"]["shadow"])), strict=False)
    return model


def trained_model(model_cls: Any, run_dir: Path, config_key: str, use_ema: bool = True) -> tuple[Any, dict[str, Any]]:
    """The network of ``<run-dir>/checkpoint.pt`` (built from the config stored under ``config_key``, its EMA
    weights loaded unless ``use_ema`` is False) and the checkpoint's state."""
    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = model_cls(**json.loads(state["extra"][config_key]))
    return load_trained(model, state, use_ema), state


def write_training_info(out: Path, state: dict[str, Any], config_key: str, step_key: str = "step") -> None:
    """``<out>/training.json``: the exported checkpoint's step and its record (minus the network config)."""
    info = {step_key: int(state["step"]), **{k: v for k, v in state["extra"].items() if k != config_key}}
    (Path(out) / "training.json").write_text(json.dumps(info, indent=2))


class Checkpointer:
    """Save every ``every`` steps to ``run_dir/checkpoint.pt`` (atomic); resume with weights_only loading."""

    def __init__(self, run_dir: Path, every: int = 100, filename: str = "checkpoint.pt") -> None:
        self.run_dir, self.every = Path(run_dir), every
        self.path = self.run_dir / filename

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` completed steps."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             ema: EMA | None = None, extra: dict[str, Any] | None = None) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"step": step, "model": model.state_dict(), "rng": get_rng_states(),
                 "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "ema": ema.state_dict() if ema is not None else None, "extra": extra or {}}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        return self.path

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             ema: EMA | None = None, restore_rng: bool = True,
             config: tuple[str, dict[str, Any]] | list[tuple[str, dict[str, Any]]] | None = None
             ) -> dict[str, Any] | None:
        """Restore into the given objects; returns the checkpoint (``["step"]``...) or None if absent.

        ``config=(key, cfg)`` (or a list of them): the run's model config, stored as JSON under ``extra[key]``; a
        checkpoint of another architecture is refused with both configs' differences instead of a state-dict
        error, and so is one that has a :data:`TRAINING_ONLY` module the model lacks, or the reverse."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for key, cfg in [config] if isinstance(config, tuple) else (config or []):
            if key not in state["extra"]:
                continue
            saved = json.loads(state["extra"][key])
            diff = {k: (saved.get(k), v) for k, v in cfg.items() if saved.get(k) != v}
            if diff:
                raise SystemExit(f"{self.path} holds another architecture (saved, asked): "
                                 + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in sorted(diff.items()))
                                 + "; resume with the run's own options or use another --run-dir")
        for prefix, option in TRAINING_ONLY.items():
            saved_has = any(k.startswith(prefix) for k in state["model"])
            if saved_has != any(k.startswith(prefix) for k in model.state_dict()):
                raise SystemExit(f"{self.path} was trained {'with' if saved_has else 'without'} {option}; resume "
                                 f"{'with' if saved_has else 'without'} it (the run's own options) or use another "
                                 "--run-dir")
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if restore_rng:
            set_rng_states(state["rng"])
        return state


class LossLog:
    """Append-only JSONL log (one object per step) in the run folder.

    A fresh run truncates it; a resumed run keeps only the records up to the resumed step, so the
    log of an interrupted-and-resumed run reads like that of an uninterrupted one.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.start = time.time()

    def log(self, step: int, **values: float) -> None:
        record = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def progress(total: int, initial: int = 0, desc: str = "train") -> Any:
    """A tqdm bar over steps; updates rarely when stderr is not a terminal (log files)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, unit="step",
                mininterval=0.5 if interactive else 30.0)


def add_patch_argument(parser: Any) -> None:
    parser.add_argument("--patch-size", type=int, default=2,
                        help="latent cells per image token side: 2 cuts the 16x16 latent into 64 tokens, 1 into 256 "
                             "(four times the tokens: finer detail, slower steps)")


def check_patch_size(patch_size: int, sample_size: int) -> int:
    if patch_size < 1 or sample_size % patch_size:
        raise SystemExit(f"--patch-size {patch_size}: it must be a divisor of the latent size {sample_size}")
    return patch_size


def init_from_export(model: Any, cls: Any, folder: Path, cfg: dict[str, Any], flag: str, hint: str,
                     extra: dict[str, Any], omit: tuple[str, ...] = ()) -> None:
    """Start ``model`` from the exported weights in ``folder`` (``--init-unet`` / ``--init-transformer``): its
    config must equal ``cfg`` (else SystemExit naming ``flag`` and the options to check, ``hint``); records
    where it came from (its training.json less ``omit``) in ``extra["init_from"]``. The caller makes a new EMA."""
    init = cls.from_pretrained(folder, use_safetensors=True)
    if any(json.dumps(init.config.get(k)) != json.dumps(v) for k, v in cfg.items()):
        raise SystemExit(f"{flag} {folder}: its config differs from this run's (check {hint})")
    model.load_state_dict(init.state_dict())
    info = Path(folder) / "training.json"
    extra["init_from"] = ({k: v for k, v in json.loads(info.read_text()).items() if k not in omit}
                          if info.is_file() else str(folder))


def swap_in(tmp: Path, out: Path) -> Path:
    """Replace the folder ``out`` by the finished folder ``tmp`` (the old one moved aside first, then removed),
    so readers see the old model or the new one, never half of either."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


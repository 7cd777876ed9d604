"""Hugging Face ``accelerate`` plumbing for the trainers, and the files a UI reads and writes in a run folder.

A trainer that uses :func:`make_accelerator` runs unchanged as a plain ``python -m pipelines.train ...``
(one process, no process group: exactly today's numerics) or under ``accelerate launch`` (one process per
GPU, or CPU processes talking over gloo). The accelerator is created from the trainer's own flags
(``--device``, ``--mixed-precision``, ``--grad-accum``); what ``accelerate launch`` says (world size, rank,
its ``--mixed_precision`` when the trainer's flag is left unset) comes in through the environment.

Run-folder files (only the main process writes them):

``status.json``      ``{"state": "running"|"stopped"|"finished"|"failed", "step", "steps", "samples_per_s",
                     "eta_s", "pid", "updated"}`` (+ ``stop_at``, ``processes``, ``loss``, ``error``),
                     replaced atomically (temp file + ``os.replace``): :class:`StatusFile`
``stop.request``     any content: asks the run to checkpoint and stop at the end of its current step
                     (:func:`stop_requested`; the trainer deletes it when it has stopped)
``accelerate_state/`` ``Accelerator.save_state`` (model, optimizer, GradScaler, every rank's RNG) plus
                     ``ema.pt`` and ``meta.json``; written to ``accelerate_state.tmp`` and swapped in
                     (:func:`save_state`), reloaded only by a run of the same shape (:func:`matching_state`)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from pipelines.training.cpu_launch import UNSPREAD_NOTE

STATE_DIR = "accelerate_state"
STOP_FILE = "stop.request"
STATUS_FILE = "status.json"


def make_accelerator(device: str, mixed_precision: str | None = None, grad_accum: int = 1) -> tuple[Any, bool]:
    """An ``accelerate.Accelerator`` for ``--device`` (cpu / cuda / cuda:N); returns it and whether this call
    created accelerate's process-wide state (then :func:`release` clears it again, so a later run in the same
    Python process may use other settings).

    ``mixed_precision`` None takes ``accelerate launch --mixed_precision`` (``no`` outside a launch). fp16
    needs a GPU: on the CPU accelerate would silently skip it, so it is refused there with a clear message.
    """
    from accelerate import Accelerator
    from accelerate.state import PartialState

    dev = torch.device(device)
    if mixed_precision is None:
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mixed_precision == "fp16" and dev.type == "cpu":
        raise SystemExit("--mixed-precision fp16 needs a GPU; on the CPU use bf16 (or no)")
    if dev.type == "cuda" and dev.index is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(dev)  # a single process on cuda:N (a launch gives each rank its own GPU)
    fresh = not PartialState._shared_state
    accelerator = Accelerator(cpu=dev.type == "cpu", mixed_precision=mixed_precision,
                              gradient_accumulation_steps=max(1, int(grad_accum)))
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "MASTER_ADDR" in os.environ
            and accelerator.num_processes == 1 and accelerator.is_main_process):
        print(UNSPREAD_NOTE)
    return accelerator, fresh


def release(accelerator: Any, fresh: bool, ok: bool = True) -> None:
    """End of a run: close the process group of a launch that went well (after a failure on one rank a
    collective could hang: the launcher then ends the others); clear the state a plain run created."""
    if accelerator.num_processes > 1:
        if ok:
            accelerator.end_training()
        return
    if fresh:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def broadcast_ints(accelerator: Any, values: list[int]) -> list[int]:
    """The main process's ``values`` on every process (as given when there is one process)."""
    if accelerator.num_processes == 1:
        return list(values)
    from accelerate.utils import broadcast

    t = torch.tensor(values, dtype=torch.int64, device=accelerator.device)
    return [int(v) for v in broadcast(t, from_process=0).tolist()]


def stop_requested(accelerator: Any, run_dir: Path) -> bool:
    """Whether ``<run-dir>/stop.request`` exists (as the main process sees it, so all ranks agree)."""
    seen = int(accelerator.is_main_process and (Path(run_dir) / STOP_FILE).exists())
    return bool(broadcast_ints(accelerator, [seen])[0])


def clear_stop_request(run_dir: Path) -> None:
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` next to ``path`` and ``os.replace`` it in (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class StatusFile:
    """``<run-dir>/status.json`` for a UI: state, step/steps, samples/s (over the last ~50 steps), ETA, pid.

    ``samples_per_step`` is the global batch (``--batch-size`` x processes x ``--grad-accum``). ``update`` is
    cheap to call every step: it writes at most once per ``every_s`` seconds (and always on a state change);
    with ``enabled`` False (non-main ranks) nothing is written.
    """

    def __init__(self, run_dir: Path, steps: int, samples_per_step: int, enabled: bool = True,
                 every_s: float = 1.0, processes: int = 1) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled, self.every_s = enabled, every_s
        self.steps, self.samples_per_step, self.processes = int(steps), int(samples_per_step), processes
        self.step = 0
        self.stop_at: int | None = None
        self.loss: float | None = None
        self._times: deque[tuple[float, int]] = deque(maxlen=50)
        self._written = 0.0
        self._state = ""
        if enabled and self.path.is_file():  # a failure before the first step keeps the last known step
            try:
                self.step = int(json.loads(self.path.read_text()).get("step", 0))
            except (OSError, ValueError):
                pass

    def mark(self, step: int) -> None:
        """Note that ``step`` steps are done now (the rate is measured between marks)."""
        self.step = int(step)
        self._times.append((time.time(), self.step))

    def rate(self) -> float | None:
        """Steps per second over the recent marks (None before two marks)."""
        if len(self._times) < 2:
            return None
        (t0, s0), (t1, s1) = self._times[0], self._times[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def update(self, state: str = "running", force: bool = False, **extra: Any) -> None:
        if not self.enabled:
            return
        now = time.time()
        if not force and state == self._state and now - self._written < self.every_s:
            return
        rate = self.rate()
        target = self.stop_at if self.stop_at is not None else self.steps
        data: dict[str, Any] = {
            "state": state, "step": self.step, "steps": self.steps,
            "samples_per_s": round(rate * self.samples_per_step, 3) if rate else None,
            "eta_s": round(max(0, target - self.step) / rate, 1) if rate and state == "running" else (
                0.0 if state == "finished" else None),
            "pid": os.getpid(), "updated": now, "processes": self.processes}
        if self.stop_at is not None and self.stop_at < self.steps:
            data["stop_at"] = self.stop_at
        if self.loss is not None:
            data["loss"] = round(self.loss, 6)
        data.update(extra)
        write_json_atomic(self.path, data)
        self._written, self._state = now, state


class NullBar:
    """Stands in for the progress bar on non-main ranks."""

    total = 0

    def update(self, *_: Any, **__: Any) -> None:
        pass

    def set_postfix(self, *_: Any, **__: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _shape(accelerator: Any) -> dict[str, Any]:
    return {"processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": str(accelerator.mixed_precision)}


def save_state(accelerator: Any, run_dir: Path, step: int, ema: Any | None = None) -> Path:
    """``accelerator.save_state`` into ``<run-dir>/accelerate_state`` (all ranks call it), plus the EMA as
    ``ema.pt`` and ``meta.json`` (step, process count, precision); written beside it and swapped in."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / STATE_DIR, run_dir / (STATE_DIR + ".tmp"), run_dir / (STATE_DIR + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank's RNG file is in place
    if accelerator.is_main_process:
        if ema is not None:
            torch.save(ema.state_dict(), tmp / "ema.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": int(step), **_shape(accelerator)}, indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def matching_state(accelerator: Any, run_dir: Path, step: int) -> Path | None:
    """``<run-dir>/accelerate_state`` when it holds ``step`` and was saved by a run of this shape (same process
    count, distributed type and precision: accelerate's files are only meant to be reloaded so); else None."""
    folder = Path(run_dir) / STATE_DIR
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    same = meta.get("step") == int(step) and all(meta.get(k) == v for k, v in _shape(accelerator).items())
    return folder if same else None


def load_state(accelerator: Any, folder: Path, ema: Any | None = None) -> None:
    """``accelerator.load_state`` (weights_only loading of model, optimizer, RNG) and the EMA (in place)."""
    accelerator.load_state(str(folder))
    if ema is not None and (Path(folder) / "ema.pt").is_file():
        ema.load_state_dict(torch.load(Path(folder) / "ema.pt", map_location="cpu", weights_only=True))

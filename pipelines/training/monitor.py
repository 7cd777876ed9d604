"""The run-folder files a UI follows, for single-process trainers (flow, DiT, VAE, mini-CLIP).

The latent-diffusion trainer writes them through accelerate (:mod:`pipelines.training.accel`); the others use
:class:`RunMonitor`, which writes the same files, so the studio's Train tab reads every target alike:

``status.json``    state, step, steps, samples/s, ETA, loss (:class:`accel.StatusFile`)
``stop.request``   asks the run to checkpoint and stop at the end of its current step (deleted once served)
``samples.jsonl``  one record per sample grid, ``samples/step_000200.png`` (:class:`SampleLog`)

Usage in a training loop::

    monitor = RunMonitor(run_dir, args.steps, args.batch_size, start, stop, resume=args.resume)
    with monitor.failures():                 # an exception marks the run "failed" (and is re-raised)
        for step in range(start, stop):
            ...
            stop = monitor.after_step(step + 1, loss_value, stop)   # a stop request ends the run here
            if ckpt.due(step + 1) or step + 1 == stop: ckpt.save(...)
            if monitor.sample_due(step + 1, stop, args.sample_every):
                monitor.samples.write(step + 1, grid_image, {"prompts": [...], ...})
            if step + 1 >= stop: break
        monitor.end(stop)                    # "stopped" (before --steps) or "finished"
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

from pipelines.training import accel


class SampleLog:
    """``<run-dir>/samples/step_NNNNNN.png`` + one ``samples.jsonl`` record each. A resumed run keeps the records
    up to the step it resumed from; a fresh one starts the file anew."""

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "samples.jsonl"
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if line.strip() and int(json.loads(line).get("step", 0)) <= resume_step:
                        kept.append(line)
                except ValueError:
                    continue
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, image: Any, record: dict[str, Any]) -> Path:
        """Save the PIL ``image`` as this step's grid (atomically) and append ``{"step", "path", **record}``."""
        rel = Path("samples") / f"step_{int(step):06d}.png"
        out = self.run_dir / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.png")
        image.save(tmp)
        tmp.replace(out)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "path": rel.as_posix(), **record, "time": time.time()}) + "\n")
        return out


class RunMonitor:
    """``status.json``, ``stop.request`` and the sample log of one single-process run (see the module docstring)."""

    def __init__(self, run_dir: Path, steps: int, samples_per_step: int, start: int, stop: int,
                 resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.steps = int(steps)
        self.status = accel.StatusFile(self.run_dir, steps, samples_per_step)
        self.samples = SampleLog(self.run_dir, resume_step=start if resume else None)
        self.status.stop_at = stop
        self.status.mark(start)
        self.status.update("running", force=True)
        self.stop_requested = False

    def after_step(self, step: int, loss: Optional[float], stop: int) -> int:
        """Record that ``step`` steps are done; returns the step to stop at (``step`` itself once a stop was
        requested through ``stop.request``, else ``stop`` unchanged)."""
        if step < stop and (self.run_dir / accel.STOP_FILE).exists():
            stop, self.stop_requested = step, True
        self.status.stop_at, self.status.loss = stop, loss
        self.status.mark(step)
        self.status.update("running")
        return stop

    def end_of_step(self, step: int, loss: float, stop: int, args: Any, ckpt: Any, model: Any, optimizer: Any,
                    ema: Any, extra: dict[str, Any], grids: Optional[Callable[..., Any]] = None) -> int:
        """The tail of an EMA trainer's step (flow, DiT): :meth:`after_step`, then the checkpoint when due or at the
        last step (with the EMA's full ``args.ema_decay``), then a grid when due; returns the step to stop at."""
        stop = self.after_step(step, loss, stop)
        if ckpt.due(step) or step == stop:
            ema.decay = args.ema_decay
            ckpt.save(step, model, optimizer, ema, extra=extra)
        if grids is not None and self.sample_due(step, stop, args.sample_every):
            grids(step, model, ema)
        return stop

    def finish(self, stop: int, args: Any, result: dict[str, float], export: Callable[[], Any]) -> dict[str, float]:
        """After the loop: ``export()`` unless the run stopped early (then say how to resume), then :meth:`end`."""
        from pipelines.training import common

        if not common.stopped_early(stop, args):
            export()
            print(json.dumps(result))
        self.end(stop)
        return result

    @staticmethod
    def sample_due(step: int, stop: int, every: int) -> bool:
        """A grid every ``every`` steps (0: never) and at the last step of the run, however it ends."""
        return every > 0 and (step % every == 0 or step == stop)

    def end(self, stop: int) -> str:
        """The run ended at ``stop``: "stopped" before ``steps`` (resume later), else "finished"."""
        accel.clear_stop_request(self.run_dir)
        state = "stopped" if stop < self.steps else "finished"
        self.status.update(state, force=True)
        return state

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Mark the run "failed" with the error when the block raises (a clean ``SystemExit`` is not a failure)."""
        try:
            yield
        except BaseException as exc:
            if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
                self.status.update("failed", force=True, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise

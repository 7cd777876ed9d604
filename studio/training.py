"""Training runs started from the Train tab: each one a separate process, its whole state in its run folder.

A run is ``python -m pipelines.train <target> --run-dir RUNS/<name> ...`` (the same command line as by hand),
started in its own process session, so the studio stays responsive and a crash of the run never takes the
studio down. Everything the tab shows is read back from files the trainer writes into the run folder:

``job.json``        what was started (target, argv, pid, when) and by whom (written here)
``status.json``     state, step, steps, samples/s, ETA (written by the trainer)
``loss.jsonl``      one record per step (the live loss curve)
``samples.jsonl``   one record per sample grid (``samples/step_000200.png``)
``stop.request``    asks the trainer to checkpoint and stop at the end of its current step
``train.log``       the process's output (its last lines are shown; a traceback ends up here)

So a page reload, or a restart of the studio, reconnects to a run that is still going: the pid in
``job.json`` is checked against the live process (and its command line, against pid reuse). When a latent
diffusion run stops or finishes, its EMA weights are exported as a ``StableDiffusionPipeline`` folder into the
user's models folder (``<name>-step<N>``), which the Generate tab then lists without a restart; so are flow and DiT
runs (as SD3 / DiT pipeline folders) and VAE decoder fine-tunes (shapes-ldm with the new decoder); a mini-CLIP
run's weights stay in its folder (so do a fresh VAE's). Every sample grid also goes to the gallery, tagged with the
run and step.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .training_spec import (BASE_LDM, EXTRA_FLAGS, TARGETS, WORLDS, Target, TrainingError,  # noqa: F401
                            TrainSpec, parse_extra)

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
LOG_TAIL_LINES = 12


@dataclass
class RunState:
    """A run as the tab shows it (read from its folder)."""

    name: str
    target: str = ""
    state: str = "unknown"        # running | stopping | stopped | finished | failed | crashed | unknown
    step: int = 0
    steps: int = 0
    samples_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    alive: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    exported: Optional[str] = None  # model id in the registry

    @property
    def can_resume(self) -> bool:
        return not self.alive and self.state in ("stopped", "crashed", "failed") and self.step < max(self.steps, 1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _pid_runs(pid: int, run_dir: Path) -> bool:
    """Is ``pid`` alive and the trainer of ``run_dir`` (not a recycled pid)?"""
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return str(run_dir) in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
    return True  # no /proc (macOS): trust the pid


class TrainingManager:
    """Starts, stops, resumes and reads training runs under ``runs_dir``."""

    def __init__(self, runs_dir: Path, models_dir: Path, python: str = sys.executable) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.python = python
        self._procs: dict[str, subprocess.Popen] = {}

    # -- runs ----------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise TrainingError("A run name is 1 to 48 letters, digits, '.', '_' or '-', starting with a letter or "
                                f"digit (got {str(name)[:60]!r}).")
        return self.runs_dir / name

    def runs(self) -> list[str]:
        """Runs started from the studio, newest first."""
        if not self.runs_dir.is_dir():
            return []
        jobs = [(p.stat().st_mtime, p.parent.name) for p in self.runs_dir.glob("*/job.json")]
        return [name for _, name in sorted(jobs, reverse=True)]

    def active(self) -> Optional[str]:
        """The newest run that is still going (what the tab reconnects to after a reload)."""
        return next((n for n in self.runs() if self.state(n).alive), None)

    # -- control -------------------------------------------------------------------------------
    def start(self, spec: TrainSpec) -> str:
        spec.validate()
        name = spec.name.strip() or time.strftime(f"{spec.target}-%Y%m%d-%H%M%S")
        run_dir = self.run_dir(name)
        if (run_dir / "job.json").exists():
            raise TrainingError(f"A run named {name!r} exists already: resume it, or choose another name.")
        argv = spec.argv(run_dir)
        self._check_argv(argv)
        run_dir.mkdir(parents=True, exist_ok=True)
        job = {"name": name, "target": spec.target, "argv": argv, "spec": spec.__dict__ | {"extra": list(spec.extra)},
               "started": time.time()}
        self._spawn(name, job, argv)
        return name

    def stop(self, name: str) -> str:
        run_dir = self.run_dir(name)
        if not self.state(name).alive:
            return f"Run {name!r} is not running."
        (run_dir / "stop.request").write_text(str(time.time()))
        return f"Stopping {name!r}: it saves a checkpoint at the end of its current step, then stops."

    def resume(self, name: str) -> str:
        run_dir = self.run_dir(name)
        job = _read_json(run_dir / "job.json")
        if not job:
            raise TrainingError(f"No run named {name!r} under {self.runs_dir}.")
        st = self.state(name)
        if st.alive:
            raise TrainingError(f"Run {name!r} is still running.")
        if not (run_dir / "checkpoint.pt").is_file():
            raise TrainingError(f"Run {name!r} has no checkpoint to resume from (it stopped before its first one).")
        if st.state == "finished":
            raise TrainingError(f"Run {name!r} finished all {st.steps} steps; start a new run to train further.")
        argv = [a for a in job["argv"] if a != "--resume"] + ["--resume"]
        (run_dir / "stop.request").unlink(missing_ok=True)
        job.update(argv=argv, resumed=time.time())
        self._spawn(name, job, argv)
        return f"Resumed {name!r} from step {st.step}."

    def _check_argv(self, argv: list[str]) -> None:
        """The trainer's own parser vets the command line before any process starts."""
        from pipelines import train

        try:
            train.parse_args(argv)
        except SystemExit as exc:  # argparse already wrote why to stderr
            raise TrainingError(f"The trainer refused the options {' '.join(argv[1:])!r} (exit {exc.code}).") from None

    def _spawn(self, name: str, job: dict[str, Any], argv: list[str]) -> None:
        run_dir = self.run_dir(name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with (run_dir / "train.log").open("ab") as out:
            proc = subprocess.Popen([self.python, "-m", "pipelines.train", *argv], cwd=str(REPO_ROOT), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self._procs[name] = proc
        _write_json(run_dir / "job.json", {**job, "pid": proc.pid})

    # -- reading -------------------------------------------------------------------------------
    def state(self, name: str) -> RunState:
        run_dir = self.run_dir(name)
        job = _read_json(run_dir / "job.json")
        status = _read_json(run_dir / "status.json")
        proc = self._procs.get(name)
        if proc is not None and proc.pid == job.get("pid"):
            alive = proc.poll() is None
            code = proc.returncode
        else:
            alive = bool(job.get("pid")) and _pid_runs(int(job["pid"]), run_dir)
            code = None
        losses = [(int(r["step"]), float(r["loss"])) for r in _read_jsonl(run_dir / "loss.jsonl")
                  if "step" in r and "loss" in r]
        state = str(status.get("state", "starting" if alive else "unknown"))
        if alive and (run_dir / "stop.request").exists():
            state = "stopping"
        elif not alive and state in ("running", "starting", "unknown") and job:
            state = "failed" if code not in (None, 0) else "crashed"  # died without saying so
        exported = _read_json(run_dir / "export.json").get("model_id")
        return RunState(name=name, target=str(job.get("target", "")), state=state,
                        step=int(status.get("step", losses[-1][0] if losses else 0)),
                        steps=int(status.get("steps", job.get("spec", {}).get("steps", 0))),
                        samples_per_s=status.get("samples_per_s"), eta_s=status.get("eta_s"), alive=alive,
                        losses=losses, samples=_read_jsonl(run_dir / "samples.jsonl"),
                        log_tail=self.log_tail(name), exported=exported)

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.run_dir(name) / "train.log"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 16_000))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        # progress bars rewrite one line with \r: keep each line's last state
        out = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
        return "\n".join([line for line in out if line.strip()][-lines:])

    # -- results -------------------------------------------------------------------------------
    def export(self, name: str) -> Optional[str]:
        """Export a stopped/finished run of a generator target (latent diffusion, flow, DiT, a VAE decoder) to the
        models folder (once per checkpoint step); returns the model id (``local/<folder>``) or None when there is
        nothing (new) to export."""
        st = self.state(name)
        target = TARGETS.get(st.target)
        run_dir = self.run_dir(name)
        if target is None or not target.export or st.alive or not (run_dir / "checkpoint.pt").is_file():
            return None
        record = _read_json(run_dir / "export.json")
        exported = (self.models_dir / record.get("folder", "-")).is_dir()
        if exported and record.get("step") == st.step:  # the tab asks every poll: answer without the checkpoint
            return None
        from pipelines.training.run_export import checkpoint_step, export_run

        step = checkpoint_step(run_dir)
        if exported and record.get("step") == step:
            return None
        folder = f"{name}-step{step}"
        export_run(target.export, run_dir, self.models_dir / folder, vae_dir=BASE_LDM / "vae", base=BASE_LDM)
        model_id = f"local/{folder}"
        _write_json(run_dir / "export.json", {"step": step, "folder": folder, "model_id": model_id,
                                              "exported": time.time()})
        return model_id

    def import_samples(self, name: str, gallery: Any) -> list[int]:
        """Save the run's sample grids that are not in the gallery yet (tagged ``training``, ``run:<name>``,
        ``step:<N>``); returns the new row ids."""
        run_dir = self.run_dir(name)
        done_path = run_dir / "gallery.json"
        done = _read_json(done_path)
        imported = set(done.get("steps", []))
        ids = []
        from PIL import Image

        for rec in _read_jsonl(run_dir / "samples.jsonl"):
            step = int(rec.get("step", -1))
            path = Path(rec.get("path", ""))
            path = path if path.is_absolute() else run_dir / path
            if step in imported or not path.is_file():
                continue
            with Image.open(path) as im:
                grid = im.convert("RGB")
            prompts = [str(p) for p in rec.get("prompts", [])]
            params = {"prompt": " | ".join(prompts), "model_id": f"run/{name}", "seed": int(rec.get("seed", 0)),
                      "num_inference_steps": int(rec.get("num_inference_steps", 0)),
                      "guidance_scale": float(rec.get("guidance_scale", 0.0)), "run": name, "train_step": step}
            target = TARGETS.get(str(_read_json(run_dir / "job.json").get("target", "")))
            ids.append(gallery.save_image(grid, params=params, fields={
                "media_type": "image", "family": target.family if target else "latent_diffusion", "status": "ok",
                "tags": ["training", f"run:{name}", f"step:{step}"]}))
            imported.add(step)
            _write_json(done_path, {"steps": sorted(imported)})
        return ids

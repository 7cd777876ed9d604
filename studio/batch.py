"""Guidance sweeps and prompt batches from the command line, split across processes by Hugging Face accelerate
and merged into one gallery group.

    python -m studio.batch --model builtin/shapes-ldm --prompt "a red circle" --scales 1,3,5 --seeds 0,1
    python -m studio.batch --model builtin/shapes-ldm --prompts-file prompts.txt --seeds 0,1,2
    accelerate launch --cpu --num_processes 2 -m studio.batch ...     # two CPU processes over gloo
    accelerate launch --multi_gpu --num_processes 2 -m studio.batch ... --device cuda   # one process per GPU

A sweep's cells are planned exactly as the Guidance Explorer plans them (rows = seeds, columns = scales); a prompt
batch's rows are the prompts and its columns the seeds. ``PartialState.split_between_processes`` hands each
process a contiguous share of the cells; each process loads the model once and makes its share. Every cell
carries its own seed (the noise is drawn on the CPU from it), so a cell's pixels do not depend on which process
made it.

The merge: every process sends its finished cells (or its error) to the others with one ``gather_object``
collective; then the main process alone writes the gallery, in cell order, exactly as the Guidance Explorer saves
a sweep (:func:`studio.sweeps.start_group` / :func:`~studio.sweeps.save_cell` / ``update_group``), so the
Explorer's saved-sweeps list reopens it (:func:`studio.sweeps.load_group`) and the Gallery lists every cell.
Why one writer and no staging folder: SQLite allows one writer at a time, and its WAL mode needs shared memory on
one host (not a network file system), so writers on several ranks would contend or break; group ids and row order
would depend on timing; and a rank that failed half-way would leave a half-saved group. The collective needs no
folder that every rank can see and leaves nothing to clean up after a crash, and a rank's error travels in the
same collective, so every rank agrees on the outcome and none waits forever. Nothing is written until every cell
is there exactly once; if saving fails, the rows and the group saved so far are deleted again.

Exit status: 0 saved; 2 bad input (nothing generated, nothing saved); 1 generation or saving failed (nothing
saved). Only the main process prints.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from pipelines.default_settings import DefaultSettingsError, read_default_settings
from pipelines.devices import DeviceSpec, resolve_device
from pipelines.guidance_sweep import (DEFAULT_SCALES, DEFAULT_SEEDS, PLAIN_CFG, PlannedCell, SweepCell, run_plan,
                                      format_table, parse_seeds, summarise, sweep_plan)
from pipelines.model_files import guidance_note
from pipelines.registry import BUILTIN_MODELS_DIR, ModelLoadError, ModelRegistry, default_hf_cache
from pipelines.requests import ImageRequest, validate_image_request
from pipelines.schedulers import SCHEDULERS
from pipelines.text_limits import has_visible_text
from pipelines.training.cpu_launch import UNSPREAD_NOTE, exit_process, spread_cpu_launch

from .forms import number
from .gallery import Gallery, GalleryError
from .sweeps import BATCH_KIND, MODEL_DEFAULT, SWEEP_KIND, build_sweep_spec, group_data, save_cell, start_group

MAX_BATCH_CELLS = 256  # every cell travels to every process once before the merge


class BatchFailed(Exception):
    """A rank could not make its cells, or the merge could not save them (exit status 1)."""


@dataclass(frozen=True)
class PromptBatchSpec:
    """A validated prompt batch: rows = prompts, columns = seeds, one guidance scale."""

    model_id: str
    prompts: list[str]
    negative_prompt: str
    seeds: list[int]
    steps: int
    scheduler: Optional[str]
    guidance: float

    @property
    def prompt(self) -> str:
        return self.prompts[0]

    @property
    def num_cells(self) -> int:
        return len(self.prompts) * len(self.seeds)

    def row_labels(self) -> list[str]:
        return [p if len(p) <= 60 else p[:59] + "…" for p in self.prompts]

    def column_labels(self) -> list[str]:
        return [f"seed {s}" for s in self.seeds]

    def settings(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "negative_prompt": self.negative_prompt, "seeds": self.seeds,
                "steps": self.steps, "scheduler": self.scheduler, "guidance": self.guidance,
                "rows": self.row_labels(), "columns": self.column_labels()}

    def plan(self) -> list[PlannedCell]:
        return [PlannedCell(r, c, PLAIN_CFG.name,
                            ImageRequest(prompt=p, negative_prompt=self.negative_prompt, num_inference_steps=self.steps,
                                         guidance_scale=self.guidance, seed=seed, scheduler=self.scheduler,
                                         capture_trajectory=False))
                for r, p in enumerate(self.prompts) for c, seed in enumerate(self.seeds)]


@dataclass(frozen=True)
class BatchJob:
    kind: str  # SWEEP_KIND or BATCH_KIND
    spec: Any  # SweepSpec or PromptBatchSpec
    plan: list[PlannedCell]  # row-major; cell i is plan[i]


def read_prompts(path: Path) -> list[str]:
    """One prompt per line (blank lines and lines starting with ``#`` are skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read the prompts file {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if has_visible_text(p) and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"The prompts file {path} has no prompts: write one prompt per line.")
    return prompts


def build_job(args: argparse.Namespace, registry: ModelRegistry) -> BatchJob:
    """Arguments -> a validated job (ValueError / ModelLoadError / DefaultSettingsError say what to change)."""
    entry = registry.get(args.model)
    defaults = read_default_settings(entry.path)
    steps = args.steps if args.steps is not None else defaults["num_inference_steps"]
    scheduler = args.scheduler if args.scheduler is not None else defaults["scheduler"]
    if args.prompts_file is not None:
        if args.scales is not None:
            raise ValueError("A prompt batch uses one guidance scale: give --guidance (default: the model's), "
                             "not --scales.")
        guidance = number(args.guidance, "--guidance") if args.guidance is not None else defaults["guidance_scale"]
        if scheduler not in (None, MODEL_DEFAULT) and scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        spec = PromptBatchSpec(args.model, read_prompts(args.prompts_file), args.negative_prompt,
                               parse_seeds(args.seeds), steps, None if scheduler == MODEL_DEFAULT else scheduler,
                               float(guidance))
        if spec.num_cells > MAX_BATCH_CELLS:
            raise ValueError(f"{len(spec.prompts)} prompts x {len(spec.seeds)} seeds = {spec.num_cells} cells; a batch "
                             f"holds at most {MAX_BATCH_CELLS}. Split the prompts file.")
        job = BatchJob(BATCH_KIND, spec, spec.plan())
    else:
        if args.guidance is not None:
            raise ValueError("A guidance sweep takes its scales from --scales, not --guidance.")
        note = guidance_note(entry.path)
        if note:
            raise ValueError(note)
        scales = args.scales if args.scales is not None else ",".join(f"{s:g}" for s in DEFAULT_SCALES)
        spec = build_sweep_spec(args.model, args.prompt, args.negative_prompt, scales, args.seeds, steps, scheduler)
        job = BatchJob(SWEEP_KIND, spec, sweep_plan(spec.prompt, spec.scales, spec.seeds,
                                                    negative_prompt=spec.negative_prompt, steps=spec.steps,
                                                    scheduler=spec.scheduler, variants=spec.variants))
    for planned in job.plan:
        validate_image_request(planned.request)
    return job


# -- one rank's share ------------------------------------------------------------------------------------

def run_share(model: Any, share: Sequence[tuple[int, PlannedCell]], scorer: Any) -> list[SweepCell]:
    """Make the cells ``(index, planned)`` of this rank, with the Explorer's per-cell metrics; ``index`` is the
    cell's place in the whole plan."""
    cells = []
    for index, planned in share:
        (cell,) = run_plan(model, [planned], planned.request.prompt, scorer, None, None)
        if cell.embedding is not None:
            cell.embedding = cell.embedding.detach().cpu()
        cells.append(replace(cell, index=index))
    return cells


def load_scorer() -> Any:
    """The shipped mini-CLIP for CLIP scores and diversity (None when its folder is missing)."""
    from pipelines.metrics import BUILTIN_CLIP_DIR, ClipScorer

    return ClipScorer.builtin() if (BUILTIN_CLIP_DIR / "open_clip_config.json").is_file() else None


def load_model(registry: ModelRegistry, model_id: str, device: DeviceSpec, sweep: bool) -> Any:
    from pipelines.families import load_model as load

    model = load(registry.get(model_id), device)
    if sweep and not getattr(model, "supports_guidance", False):
        raise ValueError(f"Model `{model_id}` has no classifier-free guidance to sweep.")
    return model


# -- the merge (main process only) ------------------------------------------------------------------------

def merged_cells(payloads: Sequence[dict], n: int) -> list[SweepCell]:
    """All ranks' cells in plan order; BatchFailed unless each of the ``n`` cells is there exactly once."""
    cells = sorted((c for p in payloads for c in p["cells"]), key=lambda c: c.index)
    if [c.index for c in cells] != list(range(n)):
        raise BatchFailed(f"the ranks returned cells {[c.index for c in cells]}, expected 0..{n - 1} once each")
    return cells


def _delete_group(gallery: Gallery, group_id: int, ids: Sequence[int]) -> None:
    from studio.gallery.models import GenerationGroup

    for gen_id in ids:
        gallery.delete(gen_id)
    with gallery.session() as session:
        group = session.get(GenerationGroup, group_id)
        if group is not None:
            session.delete(group)


def save_merged(gallery: Gallery, job: BatchJob, cells: Sequence[SweepCell]) -> int:
    """One gallery group holding ``cells`` (in order), saved as the Guidance Explorer saves a sweep; all or
    nothing. Returns the group id."""
    spec = job.spec
    if job.kind == SWEEP_KIND:
        group_id = start_group(gallery, SWEEP_KIND, spec)
    else:
        title = f"prompt batch: {len(spec.prompts)} x {len(spec.seeds)} · {spec.prompt[:60]}"
        group_id = gallery.create_group(kind=BATCH_KIND, title=title, model_id=spec.model_id,
                                        prompt="\n".join(spec.prompts),
                                        data={"settings": spec.settings(), "cells": [], "points": []})
    ids: list[int] = []
    try:
        for cell in cells:
            ids.append(save_cell(gallery, cell, group_id))
        if job.kind == SWEEP_KIND:
            data = group_data(spec, cells, ids, summarise(cells))
        else:
            data = {"settings": spec.settings(), "points": [],
                    "cells": [c.metrics() | {"prompt": job.plan[c.index].request.prompt, "gallery_id": gid}
                              for c, gid in zip(cells, ids)]}
        gallery.update_group(group_id, data=data, status="done")
    except BaseException:
        _delete_group(gallery, group_id, ids)
        raise
    return group_id


# -- processes ------------------------------------------------------------------------------------------

def _start_state(device: DeviceSpec) -> tuple[Any, bool]:
    """accelerate's process state (one process outside ``accelerate launch``) and whether this call made it."""
    from accelerate.state import PartialState

    fresh = not PartialState._shared_state
    state = PartialState(cpu=device.device == "cpu")
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "MASTER_ADDR" in os.environ
            and state.num_processes == 1):
        print(UNSPREAD_NOTE)
    return state, fresh


def _end_state(state: Any, fresh: bool) -> None:
    if state.num_processes > 1:
        state.destroy_process_group()
    elif fresh:
        from accelerate.state import PartialState

        PartialState._reset_state()  # a later run in this Python process may use other settings


def _from_main(state: Any, value: Any) -> Any:
    """The main process's ``value`` on every process."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _gather(state: Any, payload: dict) -> list[dict]:
    """Every rank's payload on every rank (rank order)."""
    if state.num_processes == 1:
        return [payload]
    from accelerate.utils import gather_object

    return gather_object([payload])


def _make_share(state: Any, job: BatchJob, registry: ModelRegistry, device: DeviceSpec) -> dict:
    """This rank's cells and timings, or the error that stopped it (never raised: the other ranks must hear)."""
    with state.split_between_processes(list(enumerate(job.plan))) as share:
        share = list(share)
    payload: dict[str, Any] = {"rank": state.process_index, "indices": [i for i, _ in share], "cells": [],
                               "load_s": 0.0, "generate_s": 0.0, "error": None}
    try:
        started = time.perf_counter()
        model = load_model(registry, job.spec.model_id, device, job.kind == SWEEP_KIND) if share else None
        scorer = load_scorer() if share else None
        payload["load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        payload["cells"] = run_share(model, share, scorer)
        payload["generate_s"] = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - reported by the main process, then every rank exits 1
        payload["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        payload["cells"] = []
    return payload


def _summary(job: BatchJob, state: Any, payloads: Sequence[dict], group_id: int, gallery: Gallery,
             cells: Sequence[SweepCell], wall: float) -> str:
    spec = job.spec
    what = (f"guidance sweep · {len(spec.scales)} scales x {len(spec.seeds)} seeds" if job.kind == SWEEP_KIND
            else f"prompt batch · {len(spec.prompts)} prompts x {len(spec.seeds)} seeds · guidance {spec.guidance:g}")
    backend = f", {state.backend}" if getattr(state, "backend", None) else ""
    kind = getattr(state.distributed_type, "value", state.distributed_type)
    lines = [f"{what} · {spec.model_id} · {len(job.plan)} cells · {spec.steps} steps · {state.num_processes} "
             f"process{'es' if state.num_processes > 1 else ''} ({kind}{backend})"]
    for p in payloads:
        lines.append(f"rank {p['rank']}: {len(p['indices'])} cells {p['indices']} · model load {p['load_s']:.2f} s "
                     f"· generate {p['generate_s']:.2f} s")
    if job.kind == SWEEP_KIND:
        lines.append(format_table(summarise(cells)))
    lines.append(f"saved {len(cells)} cells as gallery group #{group_id} ({job.kind}) in {gallery.root} · "
                 f"wall {wall:.2f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin/shapes-ldm", help="model id (as the studio lists it)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", default="a red triangle on a white background", help="the sweep's prompt")
    what.add_argument("--prompts-file", type=Path, default=None, help="a prompt batch: one prompt per line")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--scales", default=None, help="sweep: comma-separated guidance scales (default: "
                        + ",".join(f"{s:g}" for s in DEFAULT_SCALES) + ")")
    parser.add_argument("--guidance", default=None, help="prompt batch: the guidance scale (default: the model's)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default_settings.json")
    parser.add_argument("--scheduler", default=None, help="default: the model's default scheduler")
    parser.add_argument("--gallery-dir", type=Path, default=Path("gallery"))
    parser.add_argument("--db-url", default=None, help="any SQLAlchemy URL (default: SQLite in --gallery-dir)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--no-hf-cache", action="store_true", help="do not list models in the Hugging Face cache")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the job; return the exit status (see the module docstring)."""
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    main_env = os.environ.get("RANK", "0") == "0"  # before the process group exists
    registry = ModelRegistry(builtin_dir=BUILTIN_MODELS_DIR, user_dir=args.models_dir,
                             hf_cache_dir=None if args.no_hf_cache else default_hf_cache())
    try:
        job = build_job(args, registry)
        device = resolve_device(args.device)
    except (ValueError, ModelLoadError, DefaultSettingsError) as exc:
        if main_env:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    spread = spread_cpu_launch("studio.batch", list(sys.argv[1:] if argv is None else argv))
    if spread is not None:  # `accelerate launch --cpu --num_processes N`: the N ranks did the job
        return spread
    state, fresh = _start_state(device)
    gallery = None
    try:
        problem = None
        if state.is_main_process:
            try:
                gallery = Gallery.open(args.gallery_dir, args.db_url)
            except GalleryError as exc:
                problem = str(exc)
        problem = _from_main(state, problem)
        if problem is not None:
            if state.is_main_process:
                print(f"error: {problem}", file=sys.stderr)
            return 2
        payloads = _gather(state, _make_share(state, job, registry, device))
        outcome: Any = None
        if state.is_main_process:
            try:
                failed: dict[str, list[int]] = {}
                for p in payloads:
                    if p["error"]:
                        failed.setdefault(p["error"], []).append(p["rank"])
                if failed:
                    raise BatchFailed("; ".join(f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {e}"
                                                for e, r in failed.items()))
                cells = merged_cells(payloads, len(job.plan))
                group_id = save_merged(gallery, job, cells)
                print(_summary(job, state, payloads, group_id, gallery, cells, time.perf_counter() - started))
                outcome = group_id
            except Exception as exc:  # noqa: BLE001 - every rank learns the outcome below
                print(f"error: nothing saved: {exc}", file=sys.stderr)
                outcome = None
        outcome = _from_main(state, outcome)
        return 0 if outcome is not None else 1
    finally:
        if gallery is not None:
            gallery.close()
        _end_state(state, fresh)


if __name__ == "__main__":
    exit_process(main())

"""One guidance sweep (``python -m studio.batch``) in one process vs split across processes by ``accelerate launch``.

Runs the variants interleaved (rotating the order each round, so drifting machine load hits them alike), each in
a fresh gallery, and prints median wall seconds of the whole command (start-up, imports, model load, sweep, save)
and of the generation alone (the slowest rank's), with the ratios to one process on one thread:

    python -m bench.sweep_split                              # builtin/shapes-ldm, 4 scales x 4 seeds, 2 rounds
    python -m bench.sweep_split --processes 2 --rounds 3 --scales 1,2,3,5,7.5,10 --seeds 0,1,2,3

CPU ranks run over gloo (``accelerate launch --multi_gpu ... --device cpu``) with one thread each; ``--threaded``
adds a "1 process, N threads" row that gives the single process the same cores (on cores other jobs share, extra
threads oversubscribe them and that row can be many times slower). On GPUs pass
``--device cuda`` (one process per GPU). Numbers are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(processes: int, sweep: list[str], config: Path) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "studio.batch", *sweep]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "studio.batch", *sweep]


def _run(processes: int, threads: int, sweep: list[str], work: Path, config: Path) -> tuple[float, float]:
    """(wall seconds of the command, generation seconds of its slowest rank)."""
    gallery = Path(tempfile.mkdtemp(dir=work)) / "gallery"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(_command(processes, [*sweep, "--gallery-dir", str(gallery)], config), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    generate = [float(s) for s in re.findall(r"· generate ([\d.]+) s", proc.stdout)]
    if len(generate) != processes:
        raise SystemExit(f"expected {processes} rank lines in:\n{proc.stdout}")
    return wall, max(generate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin/shapes-ldm")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--prompt", default="a red triangle on a white background")
    parser.add_argument("--scales", default="1,2,3,5")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default_settings.json")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threaded", action="store_true",
                        help="also time one process with --processes threads (the same cores; slow on busy cores)")
    args = parser.parse_args()

    sweep = ["--model", args.model, "--models-dir", str(args.models_dir), "--prompt", args.prompt,
             "--scales", args.scales, "--seeds", args.seeds, "--device", args.device, "--no-hf-cache"]
    if args.steps is not None:
        sweep += ["--steps", str(args.steps)]
    n = args.processes
    variants = {"1 process, 1 thread": (1, 1), f"{n} processes (accelerate), 1 thread each": (n, 1)}
    if args.threaded:
        variants[f"1 process, {n} threads"] = (1, n)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    with tempfile.TemporaryDirectory(prefix="sweep-split-") as tmp:
        work = Path(tmp)
        config = work / "accelerate.yaml"
        config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                          f"num_processes: {n}\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\n"
                          "dynamo_config: {}\n")
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(_run(*variants[name], sweep, work, config))
                print(f"round {r + 1}: {name}: wall {times[name][-1][0]:.1f} s, generate {times[name][-1][1]:.1f} s",
                      flush=True)
    cells = len(args.scales.split(",")) * len(args.seeds.split(","))
    base_wall = statistics.median(w for w, _ in times[names[0]])
    base_gen = statistics.median(g for _, g in times[names[0]])
    print(f"\nmodel {args.model}, {cells} cells, steps {args.steps or 'model default'}, device {args.device}, "
          f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds")
    print(f"{'variant':42s} {'wall s':>8s} {'ratio':>6s} {'generate s':>11s} {'ratio':>6s}")
    for name, values in times.items():
        wall = statistics.median(w for w, _ in values)
        gen = statistics.median(g for _, g in values)
        print(f"{name:42s} {wall:8.1f} {wall / base_wall:6.2f} {gen:11.2f} {gen / base_gen:6.2f}")


if __name__ == "__main__":
    main()

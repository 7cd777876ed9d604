"""``accelerate launch`` of a module on N CPU processes, every setting passed, offline (shared by the tests).

Its own config file (no ``accelerate config``, no user default config). ``--multi_gpu`` starts the processes
through torchrun; with the module's ``--device cpu`` they are CPU ranks over gloo. With ``cpu=True`` the command
is ``accelerate launch --cpu --num_processes N`` (accelerate starts one process; the module spreads it to N,
see ``pipelines.training.cpu_launch``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(config: Path, module: str, *argv: str, processes: int = 2, timeout: float = 600,
                      cpu: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m module argv...`` on ``processes`` ranks; ``config`` is where the launch config is written
    (``--multi_gpu``; not used with ``cpu``: then ``--cpu`` and no config file)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    if cpu:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", module, *argv]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      f"num_processes: {processes}\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\n"
                      "dynamo_config: {}\n")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu",
           "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", module, *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

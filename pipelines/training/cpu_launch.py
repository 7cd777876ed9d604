"""``accelerate launch --cpu --num_processes N`` as N CPU processes (:func:`spread_cpu_launch`).

accelerate 1.15 starts ONE process for ``--cpu`` unless MPI is set up (``--mpirun_hostfile``): its simple
launcher runs the script once, with ``ACCELERATE_USE_CPU=True`` and ``MASTER_ADDR``/``MASTER_PORT`` set (the
latter only when ``--num_processes`` > 1) but no ``WORLD_SIZE``. A script that calls :func:`spread_cpu_launch`
first notices that it is such a lone child, reads N from its parent's ``accelerate launch`` command line, and
starts N ranks of itself through ``torch.distributed.run`` (the same torchrun that ``accelerate launch
--multi_gpu`` uses) on the launcher's address and port; each rank's ``Accelerator(cpu=True)`` then joins a
gloo process group (accelerate's ``MULTI_CPU``). Outside that situation it does nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Optional

# printed by a process that stayed alone under `accelerate launch --cpu --num_processes N` (e.g. no psutil)
UNSPREAD_NOTE = ("note: `accelerate launch --cpu --num_processes N` started ONE process and it could not be spread "
                 "(see pipelines.training.cpu_launch); for N CPU processes over gloo use "
                 "`accelerate launch --multi_gpu --num_processes N ... --device cpu`")
_DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def launcher_processes(launcher_cmdline: Sequence[str]) -> Optional[int]:
    """``--num_processes`` of an ``accelerate launch`` command line (``[python, .../accelerate, launch, ...]`` or
    ``[python, -m, accelerate.commands.launch, ...]``; from ``--config_file`` when the flag is absent); None when
    the command line is not an ``accelerate launch``."""
    args = list(launcher_cmdline)
    for i, word in enumerate(args):
        if word == "accelerate.commands.launch" or (word == "launch" and i > 0
                                                     and os.path.basename(args[i - 1]).startswith("accelerate")):
            rest = args[i + 1:]
            break
    else:
        return None
    from accelerate.commands.launch import launch_command_parser

    try:
        parsed = launch_command_parser().parse_args(rest)
    except SystemExit:
        return None
    if parsed.num_processes is None and parsed.config_file:
        from accelerate.commands.config import load_config_from_file

        return int(load_config_from_file(parsed.config_file).num_processes or 1)
    return int(parsed.num_processes or 1)


def lone_cpu_child_processes() -> Optional[int]:
    """N when this process is the single child of ``accelerate launch --cpu --num_processes N`` (N > 1) that
    accelerate started without MPI; else None."""
    env = os.environ
    if not (_truthy(env.get("ACCELERATE_USE_CPU")) and "MASTER_ADDR" in env):
        return None
    if any(k in env for k in _DISTRIBUTED_ENV):
        return None
    try:
        import psutil

        parent = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no psutil, no permission: stay one process (accelerate's own behaviour)
        return None
    n = launcher_processes(parent)
    return n if n and n > 1 else None


def spread_cpu_launch(module: str, argv: Sequence[str]) -> Optional[int]:
    """Run ``python -m module argv`` as N gloo ranks when this process is a lone ``--cpu`` child (see the module
    docstring) and return their exit status; None (run on as one process) otherwise."""
    n = lone_cpu_child_processes()
    if n is None:
        return None
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", env.get("MASTER_ADDR", "127.0.0.1"), "--master_port", env.get("MASTER_PORT", "29500"),
           "-m", module, *argv]
    print(f"note: accelerate launch --cpu started one process; starting {n} CPU processes (gloo) through "
          "torch.distributed.run", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def exit_process(code: Optional[int]) -> None:
    """End a command-line run with ``code``. A rank of a multi-process run (``WORLD_SIZE`` > 1) ends with
    ``os._exit`` once its output is flushed: at interpreter teardown gloo's worker threads can still hold work
    whose destruction needs the GIL, and the rank then aborts ("terminate called without an active exception",
    SIGABRT) after its work is done and its process group destroyed (seen once in CI on ``studio.batch``'s
    two-rank test; pytorch/pytorch#179291 describes the race). Everything a rank writes (gallery rows,
    checkpoints, exports) is written and closed before this is called. A single process exits as usual."""
    code = 0 if code is None else int(code)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        import logging

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)

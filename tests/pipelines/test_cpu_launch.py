"""``accelerate launch --cpu --num_processes N``: reading N from the launcher and when a process spreads itself
(the real two-process launches are in test_training_ldm_accelerate.py and tests/studio/test_batch.py)."""
import sys

import pytest

from pipelines.training import cpu_launch

PY = sys.executable


@pytest.mark.parametrize("cmdline, expected", [
    ([PY, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "pipelines.train", "ldm"], 2),
    ([PY, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "3", "train.py", "--steps", "5"], 3),
    ([PY, "/venv/bin/accelerate", "launch", "--cpu", "-m", "pipelines.train", "ldm", "--num_processes", "9"], 1),
    ([PY, "-m", "pipelines.train", "ldm"], None),                  # not an accelerate launch
    ([PY, "/venv/bin/accelerate", "launch", "--no-such-flag"], None),  # a launch line that does not parse
])
def test_launcher_processes(cmdline, expected):
    assert cpu_launch.launcher_processes(cmdline) == expected


def test_launcher_processes_from_a_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_machines: 1\n"
                      "num_processes: 4\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n")
    assert cpu_launch.launcher_processes([PY, "/b/accelerate", "launch", "--config_file", str(config), "--cpu",
                                          "x.py"]) == 4


@pytest.fixture
def lone_child(monkeypatch):
    """The environment accelerate's simple launcher gives its one child for ``--cpu --num_processes 2``."""
    for key in cpu_launch._DISTRIBUTED_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    line = [PY, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "pipelines.train"]

    class Parent:
        def cmdline(self):
            return line

    import psutil

    monkeypatch.setattr(psutil, "Process", lambda pid: Parent())
    return line


def test_only_a_lone_cpu_child_spreads(lone_child, monkeypatch):
    assert cpu_launch.lone_cpu_child_processes() == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a rank of a distributed launch
    assert cpu_launch.lone_cpu_child_processes() is None
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")  # a GPU launch
    assert cpu_launch.lone_cpu_child_processes() is None
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("MASTER_ADDR")  # --num_processes 1: accelerate sets no master address
    assert cpu_launch.lone_cpu_child_processes() is None


def test_spread_runs_torchrun_with_the_launchers_address(lone_child, monkeypatch):
    seen = {}

    class Proc:
        def __init__(self, cmd, env):
            seen["cmd"], seen["env"] = cmd, env

        def wait(self):
            return 3

    monkeypatch.setattr(cpu_launch.subprocess, "Popen", Proc)
    assert cpu_launch.spread_cpu_launch("pipelines.train", ["ldm", "--steps", "4"]) == 3
    cmd = seen["cmd"]
    assert cmd[:3] == [PY, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and cmd[cmd.index("--master_port") + 1] == "29511"
    assert cmd[-4:] == ["pipelines.train", "ldm", "--steps", "4"] and cmd[-5] == "-m"
    monkeypatch.setenv("RANK", "0")
    assert cpu_launch.spread_cpu_launch("pipelines.train", ["ldm"]) is None  # a rank runs the job itself


@pytest.mark.parametrize("world_size, teardown_runs", [("2", False), ("1", True), (None, True)])
def test_exit_process_skips_teardown_only_for_a_rank_of_a_multi_process_run(world_size, teardown_runs):
    """A rank (WORLD_SIZE > 1) leaves with os._exit after flushing (no atexit handlers: no interpreter teardown,
    where gloo's threads can abort the process); a single process exits as usual. The code and the output
    arrive either way."""
    import os
    import subprocess
    import sys

    script = ("import atexit, sys\n"
              "from pipelines.training.cpu_launch import exit_process\n"
              "atexit.register(lambda: print('teardown'))\n"
              "print('work done', end='')\n"
              "sys.stderr.write('note')\n"
              "exit_process(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout.startswith("work done") and proc.stderr.startswith("note")
    assert ("teardown" in proc.stdout) == teardown_runs

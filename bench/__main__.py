"""Every benchmark in one run: ``python -m bench [--quick] [--only NAME,...] [--markdown FILE]``.

Each benchmark runs as its own process (``python -m bench.<name> ...``, so one's imports and caches do not
flatter the next), prints its own table, and reports its headline figures as ``BENCH-RESULT`` lines
(:mod:`bench.report`); this entry point gathers them into one table of ratios and medians with the goal each
is held to. Ratios are measured within one benchmark run (interleaved where the benchmark compares variants),
which is what stays meaningful on a noisy machine; absolute times are medians on this machine.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.report import parse

ROOT = Path(__file__).resolve().parent.parent
# name -> (arguments of a full run, arguments of a --quick run)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "overhead": (["--rounds", "15"], ["--rounds", "5"]),
    "families": (["--runs", "5"], ["--runs", "2"]),
    "launch": (["--runs", "5"], ["--runs", "2"]),
    "first_image": (["--runs", "5"], ["--runs", "2"]),
    "gallery_scale": (["--rows", "100000,1000000"], ["--rows", "100000"]),
    "concurrency": ([], ["--users", "2", "--each", "3"]),
    "embedding_map": ([], ["--items", "1000"]),
    "sweep_split": ([], []),
    "flow_t5_block": (["--repeats", "5"], ["--batch", "8", "--repeats", "2"]),
}


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_v = torch.__version__
    except ImportError:  # pragma: no cover
        gpu, torch_v = "torch missing", "-"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}, torch {torch_v}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (a smoke run)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    rows, failed = [], []
    for name in names:
        extra = BENCHES[name][1 if args.quick else 0]
        cmd = [sys.executable, "-m", f"bench.{name}", *extra]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        print(proc.stdout.rstrip())
        if proc.returncode != 0:
            print(proc.stderr[-2000:].rstrip())
            failed.append(name)
        print(f"(bench.{name}: {time.perf_counter() - start:.0f} s, exit {proc.returncode})", flush=True)
        rows += parse(proc.stdout)
    table = render(rows)
    print("\n" + machine() + "\n\n" + table)
    if args.markdown:
        args.markdown.write_text(machine() + "\n\n" + table + "\n", encoding="utf-8")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def render(rows: list[dict]) -> str:
    lines = ["| benchmark | measure | value | goal | met |", "|---|---|---:|---|---|"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['bench']} | {r['measure']} | {r['value']:g} {r['unit']} | {r['goal'] or ''} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

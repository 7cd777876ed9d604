"""One line per measured result, so that ``python -m bench`` can gather every benchmark's figures into one table.

A benchmark prints its own readable table and, for each headline figure, calls :func:`emit`, which prints
``BENCH-RESULT {json}``: the benchmark, what was measured, the value and unit, and the goal it is held to
(with whether it was met) when the issue sets one.
"""
from __future__ import annotations

import json
from typing import Optional

PREFIX = "BENCH-RESULT "


def emit(bench: str, measure: str, value: float, unit: str, goal: Optional[str] = None,
         met: Optional[bool] = None) -> None:
    record = {"bench": bench, "measure": measure, "value": round(float(value), 4), "unit": unit,
              "goal": goal, "met": met}
    print(PREFIX + json.dumps(record), flush=True)


def parse(lines: str) -> list[dict]:
    """The records among a benchmark's output lines."""
    return [json.loads(line[len(PREFIX):]) for line in lines.splitlines() if line.startswith(PREFIX)]

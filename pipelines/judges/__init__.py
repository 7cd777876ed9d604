"""Judges: classical (numpy) readers that check whether a sample shows what its prompt asked
for, one module per procedural world (``shapes`` for images, ``tones`` for audio). Importing this
package is cheap."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any


def accuracy(judge: Callable[[Any, Any], dict[str, bool]], samples: Iterable[Any], expecteds: Iterable[Any],
             attributes: Sequence[str]) -> dict[str, float]:
    """Per-attribute accuracy of ``judge(sample, expected)``; an attribute counts only for samples whose
    expectation has it."""
    right = {key: 0 for key in attributes}
    total = {key: 0 for key in attributes}
    for sample, expected in zip(samples, expecteds, strict=True):
        for key, ok in judge(sample, expected).items():
            total[key] += 1
            right[key] += int(ok)
    return {key: right[key] / total[key] for key in attributes if total[key]}

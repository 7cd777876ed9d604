"""Guidance sweep engine: input checks, cells equal single Generate requests, per-scale curves."""
import numpy as np
import pytest

from pipelines.events import CancelFlag, GenerationCancelled
from pipelines.guidance_sweep import (DEFAULT_SCALES, MAX_CELLS, check_grid, parse_scales, parse_seeds, run_sweep,
                                      summarise)
from pipelines.metrics import ClipScorer
from pipelines.requests import ImageRequest


def test_parse_scales_and_seeds():
    assert parse_scales("1, 2 7.5;2") == [1.0, 2.0, 7.5]
    assert parse_scales([1, 3]) == [1.0, 3.0]
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    assert len(DEFAULT_SCALES) == 8


@pytest.mark.parametrize("text, message", [
    ("", "at least one scale"), ("  ", "at least one scale"), ("1, lots", "'lots' is not a number"),
    ("nan", "out of range"), ("-1", "out of range"), ("1e9", "out of range"),
])
def test_bad_scales_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_scales(text)


def test_bad_seeds_and_oversized_grids_are_refused():
    with pytest.raises(ValueError, match="is not a seed"):
        parse_seeds("1, -2")
    with pytest.raises(ValueError, match=f"at most {MAX_CELLS} cells"):
        check_grid(list(range(9)), list(range(8)))
    assert check_grid(list(range(8)), list(range(8))) == 64


def test_sweep_cells_equal_single_requests_and_summarise(tiny_sd):
    scorer = ClipScorer.builtin()
    steps_seen = []
    cells = list(run_sweep(tiny_sd, "a red circle", [1.0, 4.0], [5, 6], steps=2, scorer=scorer,
                           on_step=lambda i, e: steps_seen.append((i, e.step))))
    assert [(c.row, c.column, c.seed, c.scale) for c in cells] == [(0, 0, 5, 1.0), (0, 1, 5, 4.0),
                                                                  (1, 0, 6, 1.0), (1, 1, 6, 4.0)]
    assert steps_seen == [(i, s) for i in range(4) for s in range(2)]
    single = tiny_sd.generate(ImageRequest("a red circle", num_inference_steps=2, guidance_scale=4.0, seed=6,
                                           capture_trajectory=False)).images[0]
    assert np.array_equal(np.asarray(single), np.asarray(cells[3].image))
    assert cells[3].clip_score == pytest.approx(scorer.clip_scores("a red circle", [single])[0], abs=1e-6)
    assert all(0.0 <= c.adherence <= 1.0 for c in cells)  # a Shapes prompt: the judge scores it
    points = summarise(cells)
    assert [p.scale for p in points] == [1.0, 4.0] and points[1].cells == [1, 3]
    assert points[0].clip_score == pytest.approx((cells[0].clip_score + cells[2].clip_score) / 2)
    assert points[0].diversity is not None and points[0].diversity >= 0


def test_sweep_without_scorer_and_cancel(tiny_sd):
    cells = list(run_sweep(tiny_sd, "an astronaut", [2.0], [0], steps=1))
    assert cells[0].clip_score is None and cells[0].adherence is None
    assert summarise(cells)[0].diversity is None
    flag = CancelFlag()
    flag.cancel()
    with pytest.raises(GenerationCancelled):
        list(run_sweep(tiny_sd, "a red circle", [1.0, 2.0], [0], steps=2, cancel=flag))

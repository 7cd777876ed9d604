"""The Motion world (video) and its judge: ground truth is judged right, noise and wrong
expectations wrong, and the temporal-consistency measure tells smooth clips from flicker."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.judges import motion as judge
from pipelines.worlds import motion, shapes


def test_eval_set_is_fixed_and_covers_every_direction():
    a, b = motion.eval_prompts(120), motion.eval_prompts(120)
    assert [c for _, c in a] == [c for _, c in b]
    assert len(a) == 120
    assert {r.direction for r, _ in a} == set(motion.DIRECTIONS)
    assert {r.colour for r, _ in a} == set(shapes.COLOURS)
    assert {r.shape for r, _ in a} == set(shapes.SHAPES)
    assert all(c.startswith("a ") and ("moving" in c or "staying still" in c) for _, c in a)


def test_judge_reads_ground_truth_clips_right():
    pairs = motion.eval_prompts(120)[::4]
    clips = [motion.render_clip(r, 16) for r, _ in pairs]
    assert judge.score(clips, [r for r, _ in pairs]) == {k: 1.0 for k in judge.ATTRIBUTES}
    # the same clips judged from their captions (the studio's path)
    for clip, (recipe, text) in zip(clips[:10], pairs[:10]):
        result = judge.judge_prompt(clip, text)
        assert result["detected_direction"] == recipe.direction
        assert all(v for k, v in result.items() if k != "detected_direction")


def test_judge_says_wrong_for_wrong_expectations_and_noise():
    rng = np.random.default_rng(0)
    recipe = motion.sample_recipe(rng, growth_prob=0.0, direction="right", colour="red", shape="circle",
                                  background="white")
    clip = motion.render_clip(recipe)
    assert judge.judge(clip, {"direction": "left", "colour": "blue", "shape": "square"}) == {
        "direction": False, "colour": False, "shape": False}
    assert judge.judge(clip[::-1], {"direction": "right"}) == {"direction": False}  # played backwards
    noise = rng.integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)
    result = judge.judge_prompt(noise, "a red circle moving right on a white background")
    assert not any(v for k, v in result.items() if k != "detected_direction")
    assert result["detected_direction"] is None


@pytest.mark.parametrize("direction", motion.DIRECTIONS)
def test_every_direction_and_growth_stays_on_canvas(direction):
    rng = np.random.default_rng(1)
    for _ in range(6):
        recipe = motion.sample_recipe(rng, growth_prob=1.0, direction=direction)
        clip = motion.render_clip(recipe, 16)
        assert all(p is not None for p in judge.track(clip))
        assert judge.direction_of(judge.track(clip)) == direction
        r = max(recipe.radius0, recipe.radius1)
        for u in (0.0, 1.0):
            cx, cy = recipe.centre_at(u)
            assert r <= cx <= 64 - r and r <= cy <= 64 - r


def test_fewer_frames_sample_the_same_path():
    recipe = motion.sample_recipe(np.random.default_rng(2), direction="down")
    full, half = motion.render_clip(recipe, 15), motion.render_clip(recipe, 8)
    np.testing.assert_array_equal(full[::2], half)


def test_captions_and_parsing_agree():
    rng = np.random.default_rng(3)
    for recipe, text in motion.sample_dataset(3, 50, drop_prob=0.3):
        parsed = motion.parse_prompt(text)
        assert parsed["direction"] == recipe.direction
        assert parsed["colour"] == recipe.colour and parsed["shape"] == recipe.shape
        if "background" in parsed:
            assert parsed["background"] == recipe.background
        if recipe.growth != "none" and ("growing" in text or "shrinking" in text):
            assert parsed["growth"] == recipe.growth
    assert motion.parse_prompt("a red circle on the left") is None  # no motion stated
    assert motion.parse_prompt("A Blue Star moving to the LEFT!")["direction"] == "left"
    assert motion.parse_prompt("a green cross staying still")["direction"] == "still"


def test_temporal_consistency_prefers_smooth_clips():
    rng = np.random.default_rng(4)
    recipe = motion.sample_recipe(rng, growth_prob=0.0, direction="right")
    clip = motion.render_clip(recipe, 16)
    smooth = judge.temporal_consistency(clip)
    shuffled = judge.temporal_consistency(clip[rng.permutation(16)])
    assert shuffled > 3 * smooth > 0
    still = motion.render_clip(motion.sample_recipe(rng, direction="still"), 16)
    assert judge.temporal_consistency(still) == 0.0
    assert judge.temporal_consistency(clip[:2]) == 0.0
    # uint8 and 0..1 float frames measure the same
    assert judge.temporal_consistency(clip.astype(np.float32) / 255) == pytest.approx(smooth, rel=1e-5)
    ref = judge.reference_consistency("a red circle moving right")
    assert ref is not None and ref > 0
    assert judge.reference_consistency("a red circle") is None

"""Clips on disk and in the gallery: MP4s that carry their parameters (read back without ffmpeg), the animated-PNG
fallback when ffmpeg is missing (with the fix in the message), gallery video rows with poster and trajectory, a
corrupt or missing clip reported for its row, the Video tab's form checks and its two measures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.worlds import motion
from studio.gallery import Gallery, GalleryQuery
from studio.gallery import video_files as vf
from studio.video_generation import (build_video_request, measure, measures_text, save_video_result, sprite_row,
                                     stack_rows, strip, wrap_strip)

PROMPT = "a red circle moving right on a white background"
PARAMS = {"prompt": PROMPT, "seed": 3, "num_frames": 8, "fps": 8.0, "note": 'quotes " = ; # and\nnewlines é'}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return motion.reference_clips(PROMPT, 8)[0]  # a ground-truth clip of PROMPT, (8, 64, 64, 3) uint8


def test_an_mp4_carries_its_parameters_and_frames(clip, tmp_path):
    encoded = vf.encode_clip(clip, 8, PARAMS)
    assert encoded.suffix == "mp4" and encoded.note is None and encoded.data[4:8] == b"ftyp"
    assert vf.read_clip_params(encoded.data) == PARAMS  # pure Python: no ffmpeg needed to read the recipe
    path = tmp_path / "clip.mp4"
    path.write_bytes(encoded.data)
    frames, fps, params = vf.read_clip(path)
    assert frames.shape == clip.shape and fps == 8.0 and params == PARAMS
    assert np.abs(frames.astype(int) - clip.astype(int)).mean() < 3  # H.264 at CRF 17: close to the frames
    assert vf.clip_error(path) is None


def test_without_ffmpeg_the_clip_is_an_animated_png_and_the_message_says_how_to_fix_it(clip, tmp_path, monkeypatch):
    monkeypatch.setattr(vf, "find_ffmpeg", lambda: None)
    encoded = vf.encode_clip(clip, 4, PARAMS)
    assert encoded.suffix == "png" and "pip install imageio-ffmpeg" in encoded.note
    path = tmp_path / "clip.png"
    path.write_bytes(encoded.data)
    frames, fps, params = vf.read_clip(path)
    np.testing.assert_array_equal(frames, clip)  # lossless
    assert fps == pytest.approx(4.0) and params == PARAMS
    with Gallery.open(tmp_path / "g") as gal:
        gen_id, note = gal.save_video(clip, fps=4, poster=Image.fromarray(clip[0]), params=PARAMS,
                                      fields={"family": "text_to_video"})
        assert "pip install imageio-ffmpeg" in note
        media, kind = gal.read_media(gen_id)
        assert kind == "video" and media.suffix == ".png" and gal.video_error(gen_id) is None
        assert vf.read_clip_params(media.read_bytes()) == PARAMS


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        vf.encode_clip(np.zeros((2, 8, 8, 3), np.float32), 8)
    with pytest.raises(ValueError, match="even frame sides"):
        vf.mp4_bytes(np.zeros((2, 7, 8, 3), np.uint8), 8)


def test_a_gallery_video_row_has_its_clip_poster_trajectory_and_measures(clip, tmp_path):
    from pipelines.video import VideoResult

    result = VideoResult(frames=clip, fps=8.0, params={**PARAMS, "model_id": "local/m", "family": "text_to_video"},
                         model_id="local/m", family="text_to_video", seconds=1.5)
    strips = [strip([Image.fromarray(f) for f in clip]) for _ in range(3)]  # 3 steps x 8 frames
    metrics = {"judge": {"colour": True}, "temporal_consistency": 0.01, "reference_consistency": 0.02}
    with Gallery.open(tmp_path / "g") as gal:
        gen_id, note = save_video_result(gal, result, metrics, strips)
        assert note is None
        row = gal.get(gen_id)
        assert row.media_type == "video" and row.family == "text_to_video" and row.model_id == "local/m"
        assert (row.width, row.height, row.seed, row.prompt) == (64, 64, 3, PROMPT)
        assert row.params["metrics"] == metrics and row.trajectory_frames == 3
        poster = gal.store.resolve(row.thumb_path)
        assert poster.suffix == ".png"
        np.testing.assert_array_equal(np.asarray(Image.open(poster).convert("RGB")), clip[4])  # the middle frame
        with Image.open(gal.store.resolve(row.trajectory_path)) as sprite:
            assert sprite.size == (8 * 64, 3 * 64)
            assert np.array_equal(np.asarray(sprite_row(sprite, 3, 1)), np.asarray(strips[1]))
        media, _ = gal.read_media(gen_id)
        assert media.suffix == ".mp4" and vf.read_clip_params(media.read_bytes())["metrics"] == metrics
        assert [r.id for r in gal.search(GalleryQuery(media_type="video"))[0]] == [gen_id]
        assert gal.delete(gen_id) and not media.exists() and not poster.exists()


def test_a_corrupt_or_missing_clip_is_reported_for_its_row_and_the_rest_works(clip, tmp_path):
    with Gallery.open(tmp_path / "g") as gal:
        ids = [gal.save_video(clip[k:], fps=8, poster=Image.fromarray(clip[0]), params={**PARAMS, "seed": k},
                              fields={"family": "text_to_video"})[0] for k in range(3)]
        gal.read_media(ids[1])[0].write_bytes(b"\x00\x00\x00\x18ftypisom but then nothing useful")
        gal.read_media(ids[2])[0].unlink()
        assert gal.video_error(ids[0]) is None
        assert "cannot be played" in gal.video_error(ids[1])
        assert gal.video_error(ids[2]) == "its video file is missing"
        assert gal.video_error(10_000) == "gallery item #10000 does not exist"
        assert {r.id for r in gal.search(GalleryQuery())[0]} == set(ids)


def test_a_long_strip_wraps_into_rows_of_eight():
    frames = [Image.new("RGB", (4, 4), (k * 10, 0, 0)) for k in range(10)]
    sheet = wrap_strip(strip(frames), 10)
    assert sheet.size == (8 * 4, 2 * 4)
    assert sheet.getpixel((1 * 4, 1 * 4)) == (90, 0, 0)  # frame 9: second row, second column
    assert wrap_strip(strip(frames[:3]), 3).size == (12, 4)


def test_trajectory_sprite_rows_round_trip():
    rows = [Image.new("RGB", (48, 16), (k * 40, 0, 0)) for k in range(4)]
    sprite = stack_rows(rows)
    assert sprite.size == (48, 64)
    assert sprite_row(sprite, 4, 2).getpixel((0, 0)) == (80, 0, 0)
    with pytest.raises(ValueError, match="outside the trajectory's 4 steps"):
        sprite_row(sprite, 4, 4)


@pytest.mark.parametrize(("values", "message"), [
    (("  ", "", 8, 8, 2, 3, 1), "Type a prompt first"), (("a red circle", "", 2.5, 8, 2, 3, 1), "Frames must be a whole"),
    (("a red circle", "", 8, "fast", 2, 3, 1), "Frames per second must be a number"),
    (("a red circle", "", 8, 8, 2, 3, -5), "Seed must be -1")])
def test_the_form_refuses_bad_values_with_a_reason(values, message):
    with pytest.raises(ValueError, match=message):
        build_video_request(*values)


def test_the_form_builds_a_request():
    req = build_video_request("a red circle", None, 8.0, "12", 3, 2.5, 7)
    assert (req.num_frames, req.fps, req.num_inference_steps, req.guidance_scale, req.seed) == (8, 12.0, 3, 2.5, 7)
    assert req.negative_prompt == "" and 0 <= build_video_request("a", "", 1, 1, 1, 1, -1).seed < 2 ** 32


def test_measures_of_a_ground_truth_clip(clip):
    metrics = measure(clip, PROMPT)
    assert metrics["judge"]["colour"] is True and metrics["judge"]["direction"] is True
    assert metrics["judge"]["detected_direction"] == "right"
    assert 0 <= metrics["temporal_consistency"] < 0.05 and metrics["reference_consistency"] is not None
    json.dumps(metrics)  # stored in the gallery row's JSON
    text = measures_text(metrics)
    assert "colour ✓" in text and "direction seen: right" in text and "(ground truth" in text


def test_measures_of_a_prompt_outside_the_grammar_say_the_judge_cannot_score():
    noise = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    metrics = measure(noise, "rain on a tin roof")
    assert metrics["judge"] is None and metrics["reference_consistency"] is None
    assert metrics["temporal_consistency"] > 0.05  # flicker is not smooth
    assert "cannot score" in measures_text(metrics)


def test_a_failing_judge_is_reported_not_raised(monkeypatch):
    from pipelines.judges import motion as judge

    def broken(frames, prompt):
        raise RuntimeError("boom")

    monkeypatch.setattr(judge, "judge_prompt", broken)
    metrics = measure(np.zeros((3, 16, 16, 3), np.uint8), PROMPT)
    assert "boom" in metrics["error"] and "⚠" in measures_text(metrics)


def test_video_default_settings_are_read_and_checked(tmp_path):
    from pipelines.default_settings import DefaultSettingsError, read_default_settings

    (tmp_path / "default_settings.json").write_text(json.dumps(
        {"guidance_scale": 4.0, "num_inference_steps": 20, "num_frames": 16, "fps": 8}))
    d = read_default_settings(tmp_path)
    assert (d["num_frames"], d["fps"], d["guidance_scale"]) == (16, 8.0, 4.0)
    (tmp_path / "default_settings.json").write_text('{"fps": 0}')
    with pytest.raises(DefaultSettingsError, match="fps must be"):
        read_default_settings(tmp_path)
    (tmp_path / "default_settings.json").write_text('{"num_frames": 2.5}')
    with pytest.raises(DefaultSettingsError, match="num_frames must be"):
        read_default_settings(tmp_path)

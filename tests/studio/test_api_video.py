"""The Video tab through gradio_client with a tiny AnimateDiff: a clip in the gallery as an MP4 with its parameters and
measures, the trajectory, Cancel, and clear refusals that save nothing."""
import time

import pytest
from gradio_client import Client

from studio.gallery import Gallery
from studio.gallery import video_files as vf

MODEL = "local/tiny-animatediff"


@pytest.fixture(scope="module")
def client(studio):
    return Client(studio.url, verbose=False)


def _gallery_id(status: str) -> int:
    return int(status.split("gallery item #")[1].split()[0].rstrip("."))


def test_generate_video_is_saved_as_an_mp4_with_its_parameters_and_measures(client, studio):
    status, player, animated, measures, frames, step, step_strip, params = client.predict(
        MODEL, "a red circle moving right", "", 4, 6, 2, 2.5, 77, api_name="/generate_video")
    assert status.startswith("Done") and "seed 77" in status and "4 frames at 6 fps" in status
    video = player["video"] if isinstance(player, dict) else player  # the client hands back the file's path
    assert str(video).endswith(".mp4")
    assert str(animated).endswith(".gif") and len(frames) == 4 and step_strip is not None
    assert (step["value"] if isinstance(step, dict) else step) == 2  # the slider ends on the last step
    assert "Temporal consistency" in measures and "(ground truth" in measures and "Judge:" in measures
    gen_id = _gallery_id(status)
    assert params["gallery_id"] == gen_id and params["num_frames"] == 4
    gallery = Gallery.open(studio.gallery_dir)
    try:
        row = gallery.get(gen_id)
        assert row.media_type == "video" and row.family == "text_to_video" and row.trajectory_frames == 2
        assert row.params["metrics"]["temporal_consistency"] is not None and row.steps == 2
        assert row.scheduler == "dpmpp_2m" and row.params["scheduler"] is None  # the model's own scheduler
        path, _ = gallery.read_media(gen_id)
        clip, fps, stored = vf.read_clip(path)
        assert clip.shape == (4, 16, 16, 3) and fps == 6.0
        assert stored["prompt"] == "a red circle moving right" and stored["seed"] == 77 and stored["fps"] == 6
        assert gallery.video_error(gen_id) is None
    finally:
        gallery.close()


def test_a_prompt_outside_the_motion_grammar_generates_and_says_the_judge_cannot_score(client):
    status, *_, measures, _, _, _, _ = client.predict(MODEL, "rain on a tin roof", "", 2, 8, 1, 1.0, 1,
                                                      api_name="/generate_video")
    assert status.startswith("Done") and "cannot score" in measures


@pytest.mark.parametrize(("frames", "fps", "prompt", "message"), [
    (0, 8, "a red circle", "Frames must be a whole number from 1 to 32, this model's limit"),
    (33, 8, "a red circle", "Frames must be a whole number from 1 to 32"),
    (4, 0, "a red circle", "Frames per second must be a number above 0"),
    (4, 500, "a red circle", "at most 60"),
    (4, 8, "   ", "Type a prompt first")])
def test_bad_values_state_the_limit_and_save_nothing(client, studio, frames, fps, prompt, message):
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        with pytest.raises(Exception, match=message):
            client.predict(MODEL, prompt, "", frames, fps, 2, 2.5, 1, api_name="/generate_video")
        assert gallery.count() == before
    finally:
        gallery.close()


def test_cancel_stops_a_video_run_and_saves_nothing(client, studio):
    gallery = Gallery.open(studio.gallery_dir)
    try:
        before = gallery.count()
        job = client.submit(MODEL, "a blue square moving up", "", 16, 8, 200, 2.5, 3, api_name="/generate_video")
        deadline = time.time() + 60
        while time.time() < deadline:
            outputs = job.outputs()
            if outputs and str(outputs[-1][0]).startswith("Denoising"):
                break
            time.sleep(0.05)
        assert client.predict(api_name="/cancel_video").startswith("Cancelling")
        status = job.result()[0]
        assert status.startswith("Cancelled after") and "of 200 steps" in status
        assert gallery.count() == before
    finally:
        gallery.close()


def test_video_models_are_not_offered_as_image_models(client):
    with pytest.raises(Exception, match="makes video, not images|Unknown model"):
        client.predict(MODEL, "a red circle", "", 2, 5.0, 1, 16, 16, "euler", 1, api_name="/generate")


def test_the_video_tab_starts_from_the_model_default_settings(tmp_path, tiny_models_dir):
    import json
    import shutil

    from studio.app import build_app
    from studio.services import build_services
    from studio.settings import Settings
    from studio.tabs.video import video_defaults

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "tiny-animatediff", models / "motion")
    (models / "motion" / "default_settings.json").write_text(json.dumps(
        {"guidance_scale": 3.5, "num_inference_steps": 12, "num_frames": 6, "fps": 4}))
    settings = Settings(models_dir=models, gallery_dir=tmp_path / "gallery", builtin_models_dir=tmp_path / "none",
                        use_hf_cache=False, device="cpu")
    services = build_services(settings)
    try:
        assert services.default_model_id() is None  # a video model is not an image model
        demo = build_app(services)
        props = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
        assert props["video-model"]["value"] == "local/motion"
        assert (props["video-frames"]["value"], props["video-fps"]["value"]) == (6, 4.0)
        assert (props["video-steps"]["value"], props["video-guidance"]["value"]) == (12, 3.5)
        assert {"generate_video", "cancel_video"} <= {d.get("api_name") for d in demo.config["dependencies"]}
        (models / "motion" / "default_settings.json").write_text('{"fps": "fast"}')  # broken: the usual values
        defaults, problem = video_defaults(services, "local/motion")
        assert defaults["fps"] == 8.0 and "fps must be" in problem
    finally:
        services.close()
